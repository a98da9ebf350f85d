// SPDX-License-Identifier: BSD-3-Clause

/// Reads a fuzz input from the front, one value at a time. Past the end
/// every value reads as zero, so that any input (the empty one too) is a
/// valid case, and a mutation changes the values after it least.
struct FuzzReader {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> UInt64 {
        let low = UInt64(byte())
        return low | UInt64(byte()) << 8
    }

    mutating func u32() -> UInt64 {
        let low = u16()
        return low | u16() << 16
    }

    /// A value in 0..<n (0 if n is 0), from as few bytes as n needs.
    mutating func below(_ n: UInt64) -> UInt64 {
        guard n > 1 else { return 0 }
        let value = n <= 256 ? UInt64(byte()) : n <= 65536 ? u16() : u32()
        return value % n
    }

    /// One of `choices`.
    mutating func pick<T>(_ choices: [T]) -> T { choices[Int(below(UInt64(choices.count)))] }
}

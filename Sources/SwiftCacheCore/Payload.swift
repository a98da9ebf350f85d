// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// The bytes of a write request: the client's data, or zeroes
/// (NBD_CMD_WRITE_ZEROES, with whether the client allows a hole).
enum Payload {
    case data(UnsafeRawBufferPointer)
    case zeroes(count: UInt64, mayTrim: Bool)

    var isZeroes: Bool {
        if case .zeroes = self { true } else { false }
    }

    /// What the plugin is asked to do with it, for messages: "write" or "zero".
    var request: String { isZeroes ? "zero" : "write" }

    var count: UInt64 {
        switch self {
        case .data(let bytes): UInt64(bytes.count)
        case .zeroes(let count, _): count
        }
    }

    /// Bytes `range` of the payload (relative to its start) to the cache file at `offset`.
    func store(_ range: Range<UInt64>, in storage: any CacheStorage, at offset: UInt64) throws(CacheError) {
        guard !range.isEmpty else { return }
        switch self {
        case .data(let bytes):
            try storage.write(
                UnsafeRawBufferPointer(rebasing: bytes[Int(range.lowerBound)..<Int(range.upperBound)]),
                at: offset)
        case .zeroes:
            try storage.zero(at: offset, length: UInt64(range.count))
        }
    }

    /// Bytes `range` of the payload to the plugin at `offset`, in requests it accepts.
    func send(_ range: Range<UInt64>, to backend: some Backend, at offset: UInt64, fua: Bool) throws(Errno) {
        guard !range.isEmpty else { return }
        switch self {
        case .data(let bytes):
            try backend.writeAll(
                UnsafeRawBufferPointer(rebasing: bytes[Int(range.lowerBound)..<Int(range.upperBound)]),
                at: offset, fua: fua)
        case .zeroes(_, let mayTrim) where backend.canZero:
            try backend.zero(count: UInt64(range.count), at: offset, fua: fua, mayTrim: mayTrim)
        case .zeroes:
            // One buffer of zeroes, sent as many times as it takes.
            let count = UInt64(range.count)
            let zeroes = try Buffer(count: Int(min(count, backend.transferLimit)))
            zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            var done: UInt64 = 0
            while done < count {
                let n = Int(min(count - done, UInt64(zeroes.bytes.count)))
                try backend.write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[..<n]), at: offset + done, fua: fua)
                done += UInt64(n)
            }
        }
    }
}

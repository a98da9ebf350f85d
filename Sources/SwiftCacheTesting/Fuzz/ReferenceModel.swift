// SPDX-License-Identifier: BSD-3-Clause
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the export must read as, byte by byte: the fuzzer's reference.
///
/// A byte is *known* (the cache must serve exactly it) or *unknown*: trimmed,
/// or under a write, zero or trim that failed, when the cache may serve the
/// old or the new bytes (or, after a trim, zeroes). An unknown byte becomes
/// known as soon as the cache says what it is (a read returns it, or block
/// status calls it zero): from then on the export must keep reading the same
/// until a request changes it.
///
/// Comparisons use memcmp and copies memcpy: the fuzzer instruments every
/// comparison Swift code makes, and a loop over each byte would cost more
/// than the requests it checks.
struct ReferenceModel {
    private(set) var bytes: [UInt8]
    /// The unknown bytes: sorted, disjoint, not touching.
    private var unknown: [Range<Int>] = []

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func isKnown(_ i: Int) -> Bool { !unknown.contains { $0.contains(i) } }

    /// A request wrote `data` at `offset`.
    mutating func set(_ data: UnsafeRawBufferPointer, at offset: Int) {
        guard data.count > 0 else { return }
        bytes.withUnsafeMutableBytes { _ = memcpy($0.baseAddress! + offset, data.baseAddress!, data.count) }
        markKnown(offset..<offset + data.count)
    }

    mutating func set(_ data: [UInt8], at offset: Int) {
        data.withUnsafeBytes { set($0, at: offset) }
    }

    mutating func setZero(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        bytes.withUnsafeMutableBytes { _ = memset($0.baseAddress! + range.lowerBound, 0, range.count) }
        markKnown(range)
    }

    /// The cache may now serve anything in `range` (until it says what).
    mutating func forget(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        var merged = range
        var kept: [Range<Int>] = []
        for u in unknown {
            if u.upperBound < merged.lowerBound || u.lowerBound > merged.upperBound {
                kept.append(u)
            } else {
                merged = min(u.lowerBound, merged.lowerBound)..<max(u.upperBound, merged.upperBound)
            }
        }
        kept.append(merged)
        unknown = kept.sorted { $0.lowerBound < $1.lowerBound }
    }

    private mutating func markKnown(_ range: Range<Int>) {
        guard unknown.contains(where: { $0.overlaps(range) }) else { return }
        unknown = unknown.flatMap { u -> [Range<Int>] in
            guard u.overlaps(range) else { return [u] }
            let left = u.lowerBound..<max(u.lowerBound, range.lowerBound)
            let right = min(u.upperBound, range.upperBound)..<u.upperBound
            return [left, right].filter { !$0.isEmpty }
        }
    }

    /// `range` cut into runs of known and of unknown bytes, in order.
    private func pieces(_ range: Range<Int>) -> [(bytes: Range<Int>, known: Bool)] {
        var result: [(Range<Int>, Bool)] = []
        var at = range.lowerBound
        for u in unknown where u.overlaps(range) {
            let part = u.clamped(to: range)
            if at < part.lowerBound { result.append((at..<part.lowerBound, true)) }
            result.append((part, false))
            at = part.upperBound
        }
        if at < range.upperBound { result.append((at..<range.upperBound, true)) }
        return result
    }

    /// Checks bytes the cache served from `offset`: the first known byte that
    /// differs, if any; unknown bytes take the values served.
    mutating func serve(_ served: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        let range = offset..<offset + served.count
        for (part, known) in pieces(range) {
            let from = served.baseAddress! + (part.lowerBound - offset)
            if known {
                if let at = firstDifference(part, from) { return at }
            } else {
                bytes.withUnsafeMutableBytes { _ = memcpy($0.baseAddress! + part.lowerBound, from, part.count) }
            }
        }
        markKnown(range)
        return nil
    }

    /// Block status called `range` zero: its known bytes must be, and its
    /// unknown ones are zeroes from now on. The first known non-zero byte.
    mutating func serveZeroes(_ range: Range<Int>) -> Int? {
        for (part, known) in pieces(range) {
            if known {
                if let at = firstDifference(part, zeroes: true) { return at }
            } else {
                bytes.withUnsafeMutableBytes { _ = memset($0.baseAddress! + part.lowerBound, 0, part.count) }
            }
        }
        markKnown(range)
        return nil
    }

    /// The first known byte of `range` that `actual` (bytes from `offset`)
    /// does not hold; unknown bytes are not compared.
    func firstMismatch(_ actual: [UInt8], from offset: Int, in range: Range<Int>) -> Int? {
        actual.withUnsafeBytes { raw in
            for (part, known) in pieces(range) where known {
                if let at = firstDifference(part, raw.baseAddress! + (part.lowerBound - offset)) { return at }
            }
            return nil
        }
    }

    /// The first known byte of `range` that is not zero and that `plugin`
    /// (bytes from `offset`) does not hold: data only the cache has.
    func firstCacheOnlyData(_ plugin: [UInt8], from offset: Int, in range: Range<Int>) -> Int? {
        bytes.withUnsafeBytes { model in
            plugin.withUnsafeBytes { theirs in
                for (part, known) in pieces(range) where known {
                    // By pages: one where the model is all zeroes, or the two
                    // agree, goes by memcmp; the others byte by byte.
                    var at = part.lowerBound
                    while at < part.upperBound {
                        let n = min(part.upperBound - at, 4096)
                        let mine = model.baseAddress! + at, other = theirs.baseAddress! + (at - offset)
                        if memcmp(mine, zeroPage, n) != 0 && memcmp(mine, other, n) != 0 {
                            for i in 0..<n where model[at + i] != 0 && model[at + i] != theirs[at + i - offset] {
                                return at + i
                            }
                        }
                        at += n
                    }
                }
                return nil
            }
        }
    }

    /// The first byte of `range` where the model and `other` (bytes from
    /// the start of `range`), or zeroes, differ.
    private func firstDifference(
        _ range: Range<Int>, _ other: UnsafeRawPointer? = nil, zeroes: Bool = false
    ) -> Int? {
        bytes.withUnsafeBytes { model in
            var at = range.lowerBound
            while at < range.upperBound {
                let n = min(range.upperBound - at, zeroPageSize)
                let mine = model.baseAddress! + at
                let theirs = zeroes ? zeroPage : other! + (at - range.lowerBound)
                if memcmp(mine, theirs, n) != 0 {
                    let first = (0..<n).first { i in
                        mine.load(fromByteOffset: i, as: UInt8.self) != theirs.load(fromByteOffset: i, as: UInt8.self)
                    }
                    return at + first!
                }
                at += n
            }
            return nil
        }
    }

}

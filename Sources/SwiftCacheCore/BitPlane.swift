// SPDX-License-Identifier: BSD-3-Clause
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One bit per block, 64 blocks to a word, so that scans (flush, reclaim)
/// skip empty words and cost little per block. The words come from
/// `calloc`, whose large allocations are untouched zero pages: the pages of
/// a plane take memory only once a block in them is set (a 1 TiB export of
/// which little is cached costs little). A copy shares the words until one
/// side changes them (copy on write, as an array would).
struct BitPlane {
    private var storage: Words
    private(set) var count: UInt64

    /// The words, read-only.
    var words: Words { storage }

    init(count: UInt64) {
        self.count = count
        // Only the tests make planes of more than zero blocks this way; the
        // cache grows its planes with `resize`, which reports a failure.
        guard let words = Words(count: Int((count + 63) / 64)) else {
            fatalError("BitPlane: cannot allocate \(count) bits")
        }
        storage = words
    }

    /// Changes the number of blocks, keeping the bits of blocks that remain;
    /// fails, changing nothing, if the memory cannot be had.
    mutating func resize(to newCount: UInt64) throws(CacheError) {
        self = try resized(to: newCount)
    }

    /// This plane with `newCount` blocks (the bits of blocks that remain kept).
    func resized(to newCount: UInt64) throws(CacheError) -> BitPlane {
        let newWords = Int((newCount + 63) / 64)
        guard let words = Words(count: newWords) else {
            throw CacheError(.noMemory, "allocating \(newWords * 8) bytes of block states")
        }
        let kept = min(newWords, storage.count)
        if kept > 0 { words.pointer.update(from: storage.pointer, count: kept) }
        if newCount % 64 != 0, newWords > 0, newWords <= storage.count {
            words.pointer[newWords - 1] &= (1 << (newCount % 64)) - 1
        }
        var plane = self
        plane.storage = words
        plane.count = newCount
        return plane
    }

    subscript(block: UInt64) -> Bool {
        get { storage[Int(block >> 6)] & (1 << (block & 63)) != 0 }
        set {
            let i = Int(block >> 6), bit: UInt64 = 1 << (block & 63)
            let word = storage[i]
            let changed = newValue ? word | bit : word & ~bit
            guard changed != word else { return }
            if !isKnownUniquelyReferenced(&storage) {
                guard let copy = Words(count: storage.count) else {
                    fatalError("BitPlane: cannot copy \(storage.count) words")
                }
                copy.pointer.update(from: storage.pointer, count: storage.count)
                storage = copy
            }
            storage.pointer[i] = changed
        }
    }

    /// Clears every bit (fresh zero pages: the old ones are given back).
    mutating func clearAll() {
        if let fresh = Words(count: storage.count) {
            storage = fresh
        } else {
            storage.pointer.update(repeating: 0, count: storage.count)
        }
    }

    /// The first set block in `from..<to`, if any.
    func firstSet(from: UInt64, to: UInt64) -> UInt64? {
        var block = from
        while block < to {
            let word = storage[Int(block >> 6)] >> (block & 63)
            if word != 0 {
                let found = block + UInt64(word.trailingZeroBitCount)
                return found < to ? found : nil
            }
            block = (block | 63) + 1
        }
        return nil
    }

    /// The first clear block in `from..<to`, or `to`.
    func firstClear(from: UInt64, to: UInt64) -> UInt64 {
        var block = from
        while block < to {
            let word = ~storage[Int(block >> 6)] >> (block & 63)
            if word != 0 {
                return min(block + UInt64(word.trailingZeroBitCount), to)
            }
            block = (block | 63) + 1
        }
        return to
    }

    /// A plane's words, zeroed by `calloc` and freed with the last plane
    /// that uses them.
    final class Words {
        fileprivate let pointer: UnsafeMutablePointer<UInt64>
        let count: Int

        fileprivate init?(count: Int) {
            guard let memory = calloc(max(count, 1), MemoryLayout<UInt64>.size) else { return nil }
            pointer = memory.assumingMemoryBound(to: UInt64.self)
            self.count = count
        }

        deinit { free(pointer) }

        subscript(i: Int) -> UInt64 {
            precondition(i >= 0 && i < count, "BitPlane word \(i) out of \(count)")
            return pointer[i]
        }
    }
}

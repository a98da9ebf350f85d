// SPDX-License-Identifier: BSD-3-Clause
/// Least-recently-used order for reclaim, in two bit planes (2 bits a block).
/// Only blocks with storage are candidates: known zeroes take no room.
///
/// A touched block is marked in `recent`. When `recent` holds a generation's
/// worth of blocks, it becomes `older` and a new generation starts. Reclaim
/// takes blocks in neither plane first, then blocks only in `older`, then any
/// block: a coarse LRU that costs 2 bits a block instead of a list node.
struct LRU {
    private var recent: BitPlane
    private var older: BitPlane
    private var recentCount: UInt64 = 0
    private let generationSize: UInt64
    /// Where the last victim search stopped, so successive searches spread out.
    private var hand: UInt64 = 0

    init(blocks: UInt64, generationSize: UInt64) {
        recent = BitPlane(count: blocks)
        older = BitPlane(count: blocks)
        self.generationSize = Swift.max(generationSize, 1)
    }

    /// On failure nothing changes.
    mutating func grow(to blocks: UInt64) throws(CacheError) {
        (recent, older) = (try recent.resized(to: blocks), try older.resized(to: blocks))
        if hand >= blocks { hand = 0 }
    }

    mutating func touch(_ blocks: Range<UInt64>) {
        for block in blocks where !recent[block] {
            recent[block] = true
            recentCount += 1
            if recentCount >= generationSize {
                swap(&recent, &older)
                recent.clearAll()
                recentCount = 0
            }
        }
    }

    mutating func forget(_ block: UInt64) {
        if recent[block] {
            recent[block] = false
            recentCount -= 1
        }
        older[block] = false
    }

    /// Up to `count` of the least recently used blocks of `blocks` with
    /// storage (whole or partial) that `isEvictable` accepts, in one lap per
    /// pass: blocks in neither plane, then blocks not recent, then any.
    mutating func victims(_ count: UInt64, in blocks: BlockMap, isEvictable: (UInt64) -> Bool) -> [UInt64] {
        let words = blocks.wordCount
        guard words > 0, count > 0 else { return [] }
        var chosen: [UInt64] = []
        var taken = Set<UInt64>()
        for pass in 0..<3 {
            // One lap from the hand: the start word's upper bits first, its
            // lower bits last.
            let start = hand % (UInt64(words) << 6)
            let startWord = Int(start >> 6)
            let startBit: UInt64 = 1 << (start & 63)
            for step in 0...words {
                let i = (startWord + step) % words
                var candidates = blocks.occupiedWord(i)
                if pass < 2 { candidates &= ~recent.words[i] }
                if pass < 1 { candidates &= ~older.words[i] }
                if step == 0 { candidates &= ~(startBit - 1) }
                if step == words { candidates &= startBit - 1 }
                while candidates != 0 {
                    let block = UInt64(i) << 6 + UInt64(candidates.trailingZeroBitCount)
                    candidates &= candidates - 1
                    if !taken.contains(block) && isEvictable(block) {
                        chosen.append(block)
                        taken.insert(block)
                        hand = block + 1
                        if UInt64(chosen.count) == count { return chosen }
                    }
                }
            }
        }
        return chosen
    }
}

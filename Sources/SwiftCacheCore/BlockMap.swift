// SPDX-License-Identifier: BSD-3-Clause
/// What the cache holds of one block.
public enum BlockState: Sendable, Equatable {
    /// Only the plugin has it.
    case notCached
    /// The cache file holds the same bytes as the plugin.
    case clean
    /// The cache file holds the whole block, newer than the plugin.
    case dirty
    /// The cache file holds some byte ranges of the block, newer than the
    /// plugin; the rest is only in the plugin (see `HeldRanges`).
    case partial
    /// The block reads as zeroes, and so does the plugin's copy: no data is
    /// stored (the cache file has a hole there).
    case zero
    /// The block reads as zeroes, newer than the plugin (a zero request, or a
    /// write of a whole block of zeroes): no data is stored, and write-back
    /// sends the plugin a zero request, allowed to punch a hole when the
    /// client allowed it (`mayTrim`).
    case dirtyZero(mayTrim: Bool)

    /// Whether the block takes room in the cache file (cache-max-size counts it).
    var occupiesStorage: Bool { self == .clean || self == .dirty || self == .partial }

    /// Whether the block is newer than the plugin (write-back sends it).
    var isDirty: Bool {
        switch self {
        case .dirty, .partial, .dirtyZero: true
        case .notCached, .clean, .zero: false
        }
    }

    /// Whether the block is known to read as zeroes.
    var isZero: Bool {
        switch self {
        case .zero, .dirtyZero: true
        case .notCached, .clean, .dirty, .partial: false
        }
    }
}

/// The state of every block in three bit planes (3 bits a block): `stored`,
/// `dirty` and `zero`.
///
///     notCached  ---        zero                 --z
///     clean      s--        dirtyZero(no trim)   -dz
///     dirty      sd-        dirtyZero(may trim)  sdz
///     partial    -d-
///
/// So `dirty` alone marks every block write-back must send, `stored`
/// without `zero` every block whose bytes the cache file holds whole, and
/// `zero` every block that reads as zeroes. A partial block's held ranges
/// are kept aside (only for such blocks, and at most `partialLimit` of
/// them). Counts are kept so that an empty flush and the size checks of
/// reclaim cost nothing.
struct BlockMap {
    private var stored: BitPlane
    private var dirty: BitPlane
    private var zero: BitPlane
    /// Blocks cached whole with their bytes in the cache file (clean or dirty).
    private(set) var cachedCount: UInt64 = 0
    /// Blocks write-back must send (dirty, partial or dirty zeroes).
    private(set) var dirtyCount: UInt64 = 0
    /// Blocks known to read as zeroes (clean or dirty).
    private(set) var zeroCount: UInt64 = 0
    /// Every dirty block lies in here (it only widens until none is left),
    /// so that finding dirty blocks costs by where they are, not by the
    /// export's size: a flush of one block of a 1 TiB export scans one word.
    private var dirtySpan: Range<UInt64> = 0..<0
    private var dirtyBlocks: Range<UInt64> { dirtySpan.clamped(to: 0..<blockCount) }
    private(set) var partials: [UInt64: HeldRanges] = [:]
    /// Clean blocks that hold only their first bytes, and how many: the
    /// block holding a connection's end, read through it (see `BlockStore`,
    /// "Whole blocks"). Every other block in a whole state holds all its bytes.
    private(set) var cleanLengths: [UInt64: UInt32] = [:]

    /// Beyond this many partial blocks, partial writes read the block first.
    static let partialLimit = 1 << 16

    init(blocks: UInt64) {
        stored = BitPlane(count: blocks)
        dirty = BitPlane(count: blocks)
        zero = BitPlane(count: blocks)
    }

    var blockCount: UInt64 { stored.count }

    /// Blocks with storage in the cache file (whole or partial).
    var occupiedCount: UInt64 { cachedCount + UInt64(partials.count) }

    /// Adds not-cached blocks up to `blocks` (the map never shrinks: a
    /// connection opened before the export shrank may still use them); on
    /// failure nothing changes.
    mutating func grow(to blocks: UInt64) throws(CacheError) {
        guard blocks > blockCount else { return }
        let grown = (try stored.resized(to: blocks), try dirty.resized(to: blocks), try zero.resized(to: blocks))
        (stored, dirty, zero) = grown
    }

    // MARK: Word masks: 64 blocks at a time

    /// Blocks whose bytes the cache file holds whole.
    func cachedWord(_ i: Int) -> UInt64 { stored.words[i] & ~zero.words[i] }
    /// Blocks with storage in the cache file (whole or partial): reclaim's candidates.
    func occupiedWord(_ i: Int) -> UInt64 { (stored.words[i] | dirty.words[i]) & ~zero.words[i] }
    /// Blocks in any state but not cached.
    private func knownWord(_ i: Int) -> UInt64 { stored.words[i] | dirty.words[i] | zero.words[i] }
    private func partialWord(_ i: Int) -> UInt64 { dirty.words[i] & ~stored.words[i] & ~zero.words[i] }
    private func zeroWord(_ i: Int) -> UInt64 { zero.words[i] }

    var wordCount: Int { stored.words.count }

    /// The first block in `from..<to` that `mask` sets.
    private func first(from: UInt64, to: UInt64, _ mask: (Int) -> UInt64) -> UInt64? {
        var block = from
        while block < to {
            let word = mask(Int(block >> 6)) >> (block & 63)
            if word != 0 {
                let found = block + UInt64(word.trailingZeroBitCount)
                return found < to ? found : nil
            }
            block = (block | 63) + 1
        }
        return nil
    }

    /// The first block in `from..<to` that `mask` does not set, or `to`.
    private func firstNot(from: UInt64, to: UInt64, _ mask: (Int) -> UInt64) -> UInt64 {
        first(from: from, to: to) { ~mask($0) } ?? to
    }

    // MARK: States

    /// Setting `.partial` is for `hold(_:in:length:)`, which records the ranges.
    subscript(block: UInt64) -> BlockState {
        get {
            switch (stored[block], dirty[block], zero[block]) {
            case (false, false, false): .notCached
            case (true, false, false): .clean
            case (true, true, false): .dirty
            case (false, true, false): .partial
            case (_, false, true): .zero
            case (let mayTrim, true, true): .dirtyZero(mayTrim: mayTrim)
            }
        }
        set {
            let old = self[block]
            guard newValue != old else { return }
            let bits: (stored: Bool, dirty: Bool, zero: Bool) =
                switch newValue {
                case .notCached: (false, false, false)
                case .clean: (true, false, false)
                case .dirty: (true, true, false)
                case .partial: (false, true, false)
                case .zero: (false, false, true)
                case .dirtyZero(let mayTrim): (mayTrim, true, true)
                }
            stored[block] = bits.stored
            dirty[block] = bits.dirty
            zero[block] = bits.zero
            let wasCached = old == .clean || old == .dirty, isCached = newValue == .clean || newValue == .dirty
            if wasCached != isCached { if isCached { cachedCount += 1 } else { cachedCount -= 1 } }
            if old.isZero != newValue.isZero { if newValue.isZero { zeroCount += 1 } else { zeroCount -= 1 } }
            if old.isDirty != newValue.isDirty {
                if newValue.isDirty {
                    dirtyCount += 1
                    dirtySpan =
                        dirtyCount == 1
                        ? block..<block + 1
                        : Swift.min(dirtySpan.lowerBound, block)..<Swift.max(dirtySpan.upperBound, block + 1)
                } else {
                    dirtyCount -= 1
                }
            }
            // (Most maps have neither: no hashing then.)
            if newValue != .partial, !partials.isEmpty { partials[block] = nil }
            if newValue != .clean, !cleanLengths.isEmpty { cleanLengths[block] = nil }
        }
    }

    /// Records a clean block holding its first `length` bytes (nil: all of them).
    mutating func setClean(_ block: UInt64, length: UInt32?) {
        self[block] = .clean
        if length != nil || !cleanLengths.isEmpty { cleanLengths[block] = length }
    }

    /// The first clean block in `blocks` that holds fewer bytes than `wanted` says are wanted of it.
    func firstCleanInPart(in blocks: Range<UInt64>, wanted: (UInt64) -> UInt64) -> UInt64? {
        guard !cleanLengths.isEmpty else { return nil }
        var first: UInt64?
        for (block, length) in cleanLengths where blocks.contains(block) && UInt64(length) < wanted(block) {
            first = min(first ?? block, block)
        }
        return first
    }

    /// A write is about to change a clean block of which only the first
    /// `length` bytes may count: it becomes a partial block holding them, so
    /// what the write keeps joins them (the block would otherwise claim all
    /// its bytes as written).
    mutating func holdCleanPart(_ block: UInt64, length: UInt32) {
        self[block] = .partial
        partials[block] = HeldRanges(0..<length)
    }

    mutating func set(_ blocks: Range<UInt64>, to state: BlockState) {
        for block in blocks { self[block] = state }
    }

    /// The ranges a partial block holds.
    func held(_ block: UInt64) -> HeldRanges? { partials[block] }

    /// Which of these not-cached or partial blocks can also hold the given
    /// range without passing the limits (per block, and on the number of
    /// partial blocks). Concurrent writers each check before they add, so the
    /// number of partial blocks may pass its limit by a few: it only bounds memory.
    func holdable(_ candidates: [(block: UInt64, range: Range<UInt32>)]) -> [UInt64] {
        var newBlocks = 0
        return candidates.compactMap { candidate in
            if let held = partials[candidate.block] {
                return held.inserting(candidate.range).ranges.count <= HeldRanges.limit ? candidate.block : nil
            }
            guard partials.count + newBlocks < BlockMap.partialLimit else { return nil }
            newBlocks += 1
            return candidate.block
        }
    }

    /// Records that a not-cached or partial block now also holds `range`;
    /// a block whose first `length` bytes are all held becomes dirty.
    mutating func hold(_ range: Range<UInt32>, in block: UInt64, length: UInt32) {
        var held = partials[block] ?? HeldRanges(range)
        held.insert(range)
        keep(held, in: block, length: length)
    }

    /// Makes `block` hold exactly `held` of its first `length` bytes.
    private mutating func keep(_ held: HeldRanges, in block: UInt64, length: UInt32) {
        if held.covers(length) {
            self[block] = .dirty
        } else {
            self[block] = .partial
            partials[block] = held
        }
    }

    /// The plugin takes the block's bytes `range` (of its first `length`)
    /// straight: what the block held there is forgotten. A block that held
    /// something newer than the plugin outside `range` keeps it as a partial
    /// block (dirty zeroes: the cache file reads zeroes there); any other
    /// leaves the cache. Returns whether the block still holds storage.
    mutating func release(_ range: Range<UInt32>, in block: UInt64, length: UInt32) -> Bool {
        let rest: HeldRanges?
        switch self[block] {
        case .dirty, .dirtyZero: rest = HeldRanges(0..<length).removing(range)
        case .partial: rest = partials[block]?.removing(range)
        case .notCached, .clean, .zero: rest = nil
        }
        guard let rest else {
            self[block] = .notCached
            return false
        }
        keep(rest, in: block, length: length)
        return true
    }

    /// The export now ends `length` bytes into `block`: what the block
    /// holds past that is gone with the end of the disk. A whole dirty block
    /// (data or zeroes) keeps its first `length` bytes as a partial block (an
    /// older, larger connection must not write the rest back), a partial
    /// block its ranges below `length`; a clean block is the caller's to drop.
    mutating func cut(_ block: UInt64, at length: UInt32) {
        switch self[block] {
        case .dirty, .dirtyZero:
            self[block] = .partial
            partials[block] = HeldRanges(0..<length)
        case .partial:
            if let kept = partials[block]?.below(length) { partials[block] = kept } else { self[block] = .notCached }
        case .clean, .zero, .notCached:
            break
        }
    }

    // MARK: Finding blocks

    /// The first block at or after `from` in any state but not cached.
    func known(from: UInt64) -> UInt64? { first(from: from, to: blockCount, knownWord) }

    /// The first block at or after `from` with storage (cached whole or partial).
    func occupied(from: UInt64) -> UInt64? { first(from: from, to: blockCount, occupiedWord) }

    /// Up to `count` blocks with storage that `isEvictable` accepts, in one
    /// lap from `hand` (for reclaim when there is no LRU order to follow).
    func victims(_ count: UInt64, hand: inout UInt64, isEvictable: (UInt64) -> Bool) -> [UInt64] {
        let start = hand < blockCount ? hand : 0
        var chosen: [UInt64] = []
        var from = start, wrapped = false
        while UInt64(chosen.count) < count {
            guard let block = wrapped ? first(from: from, to: start, occupiedWord) : occupied(from: from) else {
                if wrapped { break }
                wrapped = true
                from = 0
                continue
            }
            if isEvictable(block) { chosen.append(block) }
            from = block + 1
        }
        hand = from
        return chosen
    }

    /// The first block in `blocks` that is not cached at all.
    func firstNotCached(in blocks: Range<UInt64>) -> UInt64? {
        let end = firstNot(from: blocks.lowerBound, to: blocks.upperBound, knownWord)
        return end < blocks.upperBound ? end : nil
    }

    /// The first partial block in `blocks`, if any.
    func firstPartial(in blocks: Range<UInt64>) -> UInt64? {
        guard !partials.isEmpty else { return nil }
        return first(from: blocks.lowerBound, to: blocks.upperBound, partialWord)
    }

    /// What a read finds from block `from` on, and where the run of blocks
    /// like it ends (before `end`).
    func readRun(from: UInt64, to end: UInt64) -> (kind: ReadRun, end: UInt64) {
        if zero[from] { return (.zeroes, firstNot(from: from, to: end, zeroWord)) }
        if stored[from] { return (.cached, firstNot(from: from, to: end, cachedWord)) }
        return (.uncached, first(from: from, to: end) { knownWord($0) & ~partialWord($0) } ?? end)
    }

    /// The runs of blocks write-back must send within `blocks`.
    func dirtyRuns(in blocks: Range<UInt64>) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        let blocks = blocks.clamped(to: dirtyBlocks)
        var from = blocks.lowerBound
        while dirtyCount > 0, let start = dirty.firstSet(from: from, to: blocks.upperBound) {
            let end = dirty.firstClear(from: start, to: blocks.upperBound)
            runs.append(start..<end)
            from = end
        }
        return runs
    }

    /// A run of blocks to write back, cut where what it sends changes:
    /// bytes (dirty and partial blocks) or zeroes (with or without a hole).
    func writeBackPieces(of run: Range<UInt64>) -> [(blocks: Range<UInt64>, zeroes: ZeroWriteBack?)] {
        var pieces: [(blocks: Range<UInt64>, zeroes: ZeroWriteBack?)] = []
        for block in run {
            let zeroes: ZeroWriteBack? =
                if case .dirtyZero(let mayTrim) = self[block] {
                    mayTrim ? .mayTrim : .noHole
                } else {
                    nil
                }
            if let last = pieces.last, last.zeroes == zeroes {
                pieces[pieces.count - 1].blocks = last.blocks.lowerBound..<block + 1
            } else {
                pieces.append((block..<block + 1, zeroes))
            }
        }
        return pieces
    }

    /// The next run of blocks to write back at or after `from`, at most `limit` long.
    func nextDirtyRun(from: UInt64, limit: UInt64) -> Range<UInt64>? {
        guard dirtyCount > 0,
            let start = dirty.firstSet(from: Swift.max(from, dirtyBlocks.lowerBound), to: dirtyBlocks.upperBound)
        else { return nil }
        let end = dirty.firstClear(from: start, to: Swift.min(blockCount, start + limit))
        return start..<end
    }

    /// The runs of blocks in `blocks` whose block status is the cache's, not
    /// the plugin's (dirty ones and known zeroes), each of one state; sorted.
    func statusRuns(in blocks: Range<UInt64>) -> [(blocks: Range<UInt64>, state: BlockState)] {
        var runs: [(blocks: Range<UInt64>, state: BlockState)] = []
        let special: (Int) -> UInt64 = { dirty.words[$0] | zero.words[$0] }
        var from = blocks.lowerBound
        while dirtyCount > 0 || zeroCount > 0, let start = first(from: from, to: blocks.upperBound, special) {
            let state = self[start]
            var end = start + 1
            while end < blocks.upperBound && self[end] == state { end += 1 }
            runs.append((start..<end, state))
            from = end
        }
        return runs
    }
}

/// What a read finds in a run of blocks.
enum ReadRun {
    /// The cache file holds them whole.
    case cached
    /// They read as zeroes.
    case zeroes
    /// Not cached whole (some may be partial).
    case uncached
}

/// How write-back sends a run of dirty zero blocks.
enum ZeroWriteBack: Equatable {
    case mayTrim
    case noHole
}

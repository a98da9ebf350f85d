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
}

/// The state of every block in two bit planes (2 bits a block):
/// `cached` and `dirty`; dirty without cached is a partial block, whose held
/// ranges are kept aside (only for such blocks, and at most
/// `partialLimit` of them). Counts are kept so that an empty flush and the
/// size checks of reclaim cost nothing.
struct BlockMap {
    private(set) var cached: BitPlane
    private(set) var dirty: BitPlane
    private(set) var cachedCount: UInt64 = 0
    private(set) var dirtyCount: UInt64 = 0
    /// Every dirty block lies in here (it only widens until none is left),
    /// so that finding dirty blocks costs by where they are, not by the
    /// export's size: a flush of one block of a 1 TiB export scans one word.
    private var dirtySpan: Range<UInt64> = 0..<0
    private var dirtyBlocks: Range<UInt64> { dirtySpan.clamped(to: 0..<blockCount) }
    private(set) var partials: [UInt64: HeldRanges] = [:]

    /// Beyond this many partial blocks, partial writes read the block first.
    static let partialLimit = 1 << 16

    init(blocks: UInt64) {
        cached = BitPlane(count: blocks)
        dirty = BitPlane(count: blocks)
    }

    var blockCount: UInt64 { cached.count }

    /// Blocks with storage in the cache file (whole or partial).
    var occupiedCount: UInt64 { cachedCount + UInt64(partials.count) }

    /// Adds not-cached blocks up to `blocks` (the map never shrinks: a
    /// connection opened before the export shrank may still use them).
    mutating func grow(to blocks: UInt64) {
        guard blocks > blockCount else { return }
        cached.resize(to: blocks)
        dirty.resize(to: blocks)
    }

    /// The first block at or after `from` with storage (cached or partial).
    func occupied(from: UInt64) -> UInt64? {
        let inCache = cached.firstSet(from: from, to: blockCount)
        let inDirty = dirty.firstSet(from: from, to: blockCount)
        switch (inCache, inDirty) {
        case let (a?, b?): return Swift.min(a, b)
        case let (a, b): return a ?? b
        }
    }

    /// Setting `.partial` is for `hold(_:in:length:)`, which records the ranges.
    subscript(block: UInt64) -> BlockState {
        get { dirty[block] ? (cached[block] ? .dirty : .partial) : (cached[block] ? .clean : .notCached) }
        set {
            let wasCached = cached[block], wasDirty = dirty[block]
            let isCached = newValue == .clean || newValue == .dirty
            let isDirty = newValue == .dirty || newValue == .partial
            if wasCached != isCached {
                cached[block] = isCached
                if isCached { cachedCount += 1 } else { cachedCount -= 1 }
            }
            if wasDirty != isDirty {
                dirty[block] = isDirty
                if isDirty {
                    dirtyCount += 1
                    dirtySpan = dirtyCount == 1 ? block..<block + 1
                        : Swift.min(dirtySpan.lowerBound, block)..<Swift.max(dirtySpan.upperBound, block + 1)
                } else {
                    dirtyCount -= 1
                }
            }
            if newValue != .partial { partials[block] = nil }
        }
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
        if held.covers(length) {
            self[block] = .dirty
        } else {
            partials[block] = held
            self[block] = .partial
        }
    }

    /// The export now ends `length` bytes into `block`: what the block
    /// holds past that is gone with the end of the disk. A whole dirty block
    /// keeps its first `length` bytes as a partial block (an older, larger
    /// connection must not write the rest back), a partial block its ranges
    /// below `length`; a clean block is the caller's to drop.
    mutating func cut(_ block: UInt64, at length: UInt32) {
        switch self[block] {
        case .dirty:
            self[block] = .partial
            partials[block] = HeldRanges(0..<length)
        case .partial:
            if let kept = partials[block]?.below(length) { partials[block] = kept } else { self[block] = .notCached }
        case .clean, .notCached:
            break
        }
    }

    /// The first partial block in `blocks`, if any.
    func firstPartial(in blocks: Range<UInt64>) -> UInt64? {
        guard !partials.isEmpty else { return nil }
        var from = blocks.lowerBound
        while let block = dirty.firstSet(from: from, to: blocks.upperBound) {
            if !cached[block] { return block }
            from = block + 1
        }
        return nil
    }

    /// The runs of dirty or partial blocks within `blocks`.
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

    /// The runs of whole dirty blocks (not partial ones) within `blocks`.
    func wholeDirtyRuns(in blocks: Range<UInt64>) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        for run in dirtyRuns(in: blocks) {
            var from = run.lowerBound
            while let start = cached.firstSet(from: from, to: run.upperBound) {
                let end = cached.firstClear(from: start, to: run.upperBound)
                runs.append(start..<end)
                from = end
            }
        }
        return runs
    }

    /// The next run of dirty or partial blocks at or after `from`, at most `limit` long.
    func nextDirtyRun(from: UInt64, limit: UInt64) -> Range<UInt64>? {
        guard dirtyCount > 0,
              let start = dirty.firstSet(from: Swift.max(from, dirtyBlocks.lowerBound), to: dirtyBlocks.upperBound)
        else { return nil }
        let end = dirty.firstClear(from: start, to: Swift.min(blockCount, start + limit))
        return start..<end
    }
}

/// What the cache holds of one block.
public enum BlockState: Sendable, Equatable {
    /// Only the plugin has it.
    case notCached
    /// The cache file holds the same bytes as the plugin.
    case clean
    /// The cache file holds newer bytes than the plugin.
    case dirty
}

/// The state of every block in two bit planes (2 bits a block): `cached`
/// and `dirty` (dirty implies cached). Counts are kept so that an empty
/// flush and the size checks of reclaim cost nothing.
struct BlockMap {
    private(set) var cached: BitPlane
    private(set) var dirty: BitPlane
    private(set) var cachedCount: UInt64 = 0
    private(set) var dirtyCount: UInt64 = 0

    init(blocks: UInt64) {
        cached = BitPlane(count: blocks)
        dirty = BitPlane(count: blocks)
    }

    var blockCount: UInt64 { cached.count }

    mutating func resize(to blocks: UInt64) {
        for block in Swift.min(blocks, blockCount)..<blockCount { self[block] = .notCached }
        cached.resize(to: blocks)
        dirty.resize(to: blocks)
    }

    subscript(block: UInt64) -> BlockState {
        get { dirty[block] ? .dirty : cached[block] ? .clean : .notCached }
        set {
            let wasCached = cached[block], wasDirty = dirty[block]
            let isCached = newValue != .notCached, isDirty = newValue == .dirty
            if wasCached != isCached {
                cached[block] = isCached
                if isCached { cachedCount += 1 } else { cachedCount -= 1 }
            }
            if wasDirty != isDirty {
                dirty[block] = isDirty
                if isDirty { dirtyCount += 1 } else { dirtyCount -= 1 }
            }
        }
    }

    mutating func set(_ blocks: Range<UInt64>, to state: BlockState) {
        for block in blocks { self[block] = state }
    }

    /// The runs of dirty blocks within `blocks`.
    func dirtyRuns(in blocks: Range<UInt64>) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        var from = blocks.lowerBound
        while dirtyCount > 0, let start = dirty.firstSet(from: from, to: blocks.upperBound) {
            let end = dirty.firstClear(from: start, to: blocks.upperBound)
            runs.append(start..<end)
            from = end
        }
        return runs
    }

    /// The next run of dirty blocks at or after `from`, at most `limit` long.
    func nextDirtyRun(from: UInt64, limit: UInt64) -> Range<UInt64>? {
        guard dirtyCount > 0, let start = dirty.firstSet(from: from, to: blockCount) else { return nil }
        let end = dirty.firstClear(from: start, to: Swift.min(blockCount, start + limit))
        return start..<end
    }
}

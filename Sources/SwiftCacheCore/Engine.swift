import SystemPackage

/// The cache: one per filter, shared by every connection.
///
/// Shared state (block map, LRU, block locks) sits behind one mutex that is
/// only held to read or change that state, never across plugin or cache-file
/// I/O. Requests lock the blocks they touch instead (see `RangeLocks`), so
/// misses on different blocks reach the plugin in parallel and a request
/// never sees another's write half done.
public final class Engine: @unchecked Sendable {
    /// Largest single plugin request we make (nbdkit allows 64 MiB).
    public static let maxTransfer: UInt64 = 32 << 20
    /// writethrough writes at least this large store their cache copy while
    /// the plugin takes the write (see `storeThrough`).
    static let overlapThreshold: UInt64 = 256 << 10

    public let config: CacheConfig
    /// max(cache-min-block-size, the cache file system's block size).
    public let blockSize: UInt64
    let blockShift: UInt64
    let file: CacheFile
    let debug: DebugLog
    /// How many write-back requests may be in flight at once (1 unless
    /// nbdkit's final thread model is parallel).
    let writeBackThreads: Int
    let state: ConditionLock<State>

    struct State {
        var exportSize: UInt64 = 0
        var blocks = BlockMap(blocks: 0)
        var lru: LRU
        var locks = RangeLocks()
        /// One thread reclaims at a time; the others carry on.
        var reclaiming = false
    }

    public init(config: CacheConfig, file: CacheFile, debug: DebugLog = .off, writeBackThreads: Int = 1) {
        self.config = config
        self.writeBackThreads = max(1, writeBackThreads)
        self.file = file
        self.debug = debug
        let blockSize = max(config.minBlockSize, file.fileSystemBlockSize)
        self.blockSize = blockSize
        blockShift = UInt64(blockSize.trailingZeroBitCount)
        // A generation is half of what the cache may hold: "recent" then means
        // roughly the newer half of the cache.
        let capacity = config.maxSize.map { $0 / blockSize } ?? 0
        state = ConditionLock(State(lru: LRU(blocks: 0, generationSize: capacity / 2)))
    }

    /// Sizes the cache for an export of `size` bytes (each connection reports
    /// the plugin's size; the map only grows, so no cached block is lost).
    public func setExportSize(_ size: UInt64) throws(CacheError) {
        let old = exportSize
        guard size != old else { return }
        // A short last block cached whole holds nothing past the old end:
        // when the export grows, the plugin's bytes there must not be hidden
        // (or, for a dirty block, overwritten at write-back).
        let shortLast: Range<UInt64>? = size > old && old % blockSize != 0 ? (old >> blockShift)..<(old >> blockShift) + 1 : nil
        if let shortLast { lock(shortLast, exclusive: true) }
        defer { if let shortLast { unlock(shortLast, exclusive: true) } }
        try state.withLock { (s: inout State) throws(CacheError) in
            let blocks = (size + blockSize - 1) >> blockShift
            // Block states (and LRU) cost 2 (4) bits a block: refuse an export
            // whose map would not fit in half of the machine's memory.
            let mapBytes = blocks / 8 * (config.maxSize == nil ? 2 : 4)
            let memory = physicalMemory()
            guard memory == 0 || mapBytes <= memory / 2 else {
                throw CacheError(.noMemory, "an export of \(size) bytes needs \(mapBytes) bytes of cache metadata "
                                 + "with \(blockSize)-byte blocks (raise cache-min-block-size)")
            }
            if blocks > s.blocks.blockCount {
                try file.resize(to: blocks << blockShift)
                s.blocks.resize(to: blocks)
                if config.maxSize != nil { s.lru.resize(to: blocks) }
            }
            if let block = shortLast?.lowerBound, s.exportSize == old {
                switch s.blocks[block] {
                case .clean: s.blocks[block] = .notCached
                case .dirty: s.blocks.hold(0..<UInt32(old - (block << blockShift)), in: block,
                                           length: UInt32(min(size - (block << blockShift), blockSize)))
                case .notCached, .partial: break
                }
            }
            s.exportSize = size
        }
    }

    public var exportSize: UInt64 { state.withLock { $0.exportSize } }

    /// A block's state (for tests and debugging).
    public func state(ofBlock block: UInt64) -> BlockState {
        state.withLock { $0.blocks[block] }
    }

    /// Bytes of the cache file holding blocks, as reclaim counts them.
    public var cachedBytes: UInt64 { state.withLock { $0.blocks.occupiedCount } << blockShift }

    public var dirtyBlockCount: UInt64 { state.withLock { $0.blocks.dirtyCount } }

    // MARK: Block arithmetic

    /// The blocks that bytes `offset..<offset+count` touch (count > 0).
    func blocks(covering offset: UInt64, count: UInt64) -> Range<UInt64> {
        (offset >> blockShift)..<(((offset + count - 1) >> blockShift) + 1)
    }

    /// The bytes of `blocks`, the last one cut at the end of the export.
    func bytes(of blocks: Range<UInt64>, exportSize: UInt64) -> Range<UInt64> {
        let start = blocks.lowerBound << blockShift
        return start..<max(start, min(blocks.upperBound << blockShift, exportSize))
    }

    /// Checks that a request lies inside the export.
    func checkBounds(offset: UInt64, count: UInt64) throws(CacheError) -> UInt64 {
        let size = exportSize
        guard offset <= size, count <= size - offset else {
            throw CacheError(.invalidArgument, "request of \(count) bytes at \(offset) is beyond the end of the export (\(size))")
        }
        return size
    }

    // MARK: Block locks

    /// Locks `blocks`, exclusively when `exclusive` says so of the state at
    /// the moment they are free; returns which it was.
    func lock(_ blocks: Range<UInt64>, exclusiveIf exclusive: (State) -> Bool) -> Bool {
        var wantExclusive = false
        state.withLock(when: { s in
            wantExclusive = exclusive(s)
            return s.locks.canAcquire(blocks, exclusive: wantExclusive)
        }) { s in
            s.locks.acquire(blocks, exclusive: wantExclusive)
        }
        return wantExclusive
    }

    func lock(_ blocks: Range<UInt64>, exclusive: Bool) {
        _ = lock(blocks, exclusiveIf: { _ in exclusive })
    }

    func unlock(_ blocks: Range<UInt64>, exclusive: Bool) {
        state.update { $0.locks.release(blocks, exclusive: exclusive) }
    }

    /// Marks blocks (held exclusively) as holding `newState` and recently used.
    func mark(_ blocks: Range<UInt64>, _ newState: BlockState) {
        state.withLock { s in
            s.blocks.set(blocks, to: newState)
            if newState != .notCached && config.maxSize != nil { s.lru.touch(blocks) }
        }
    }

    /// Forgets cached copies (blocks held exclusively): their storage is freed,
    /// one hole per run of blocks, and they read from the plugin again.
    func drop(_ blocks: [UInt64]) {
        guard !blocks.isEmpty else { return }
        var runs: [Range<UInt64>] = []
        for block in blocks.sorted() {
            if let last = runs.last, last.upperBound == block {
                runs[runs.count - 1] = last.lowerBound..<block + 1
            } else {
                runs.append(block..<block + 1)
            }
        }
        for run in runs {
            do { try file.discard(at: run.lowerBound << blockShift, length: UInt64(run.count) << blockShift) } catch {
                debug("drop blocks \(run): \(error)")
            }
        }
        state.withLock { s in
            for block in blocks {
                s.blocks[block] = .notCached
                if config.maxSize != nil { s.lru.forget(block) }
            }
        }
    }

    /// How many blocks may be added before the cache passes its high
    /// threshold (at least 1): requests add blocks in chunks of this size and
    /// reclaim after each, so the limit holds whatever the request size.
    func headroom(upTo wanted: UInt64) -> UInt64 {
        guard let limit = highThresholdBytes else { return wanted }
        let used = cachedBytes
        let room = used < limit ? (limit - used) >> blockShift : 0
        return max(1, min(wanted, room))
    }

    var highThresholdBytes: UInt64? { config.maxSize.map { percent(config.highThreshold, of: $0) } }
    var lowThresholdBytes: UInt64? { config.maxSize.map { percent(config.lowThreshold, of: $0) } }

    /// `p`% of `size`, saturating (thresholds are any unsigned int).
    private func percent(_ p: UInt64, of size: UInt64) -> UInt64 {
        let (whole, overflow) = (size / 100).multipliedReportingOverflow(by: p)
        let (sum, overflow2) = whole.addingReportingOverflow(size % 100 * p / 100)
        return overflow || overflow2 ? .max : sum
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import Synchronization
import SystemPackage

/// The cache of one export, shared by every connection to it. Its request paths
/// (ReadPath, WritePath, Flush, Extents) decide what each request does and
/// call down into the block layer (`BlockStore`), which alone changes block
/// states; they never call each other, except that a FUA the plugin cannot
/// honour becomes a flush after the write.
public final class Engine: @unchecked Sendable {
    /// Largest single plugin request we make (nbdkit allows 64 MiB).
    public static let maxTransfer: UInt64 = 32 << 20
    /// writethrough writes at least this large store their cache copy while
    /// the plugin takes the write (see `storeThrough`).
    static let overlapThreshold: UInt64 = 256 << 10

    public let config: CacheConfig
    let blocks: BlockStore
    let debug: DebugLog
    /// Connections open with writes no flush has covered (see `connectionClosing`).
    let openWriters = Atomic(0)
    /// What this engine does and holds is counted here, with other engines
    /// sharing the same object (one per export).
    public let statistics: Statistics

    /// Builds the cache over `file`; fails on a configuration the core
    /// cannot work with (see `CacheConfig.validate`). Caches of several
    /// exports share one `budget`: cache-max-size limits them together.
    public init(
        config: CacheConfig, file: any CacheStorage, debug: DebugLog = .off, writeBackThreads: Int = 1,
        budget: CacheBudget = CacheBudget(), statistics: Statistics = Statistics()
    ) throws(CacheError) {
        try config.validate()
        self.config = config
        self.debug = debug
        self.statistics = statistics
        blocks = BlockStore(
            config: config, storage: file, debug: debug, writeBackThreads: writeBackThreads,
            budget: budget, statistics: statistics)
    }

    deinit { blocks.leaveStatistics() }

    var geometry: BlockGeometry { blocks.geometry }

    /// max(cache-min-block-size, the cache file system's block size).
    public var blockSize: UInt64 { geometry.blockSize }

    /// Sizes the cache for an export of `size` bytes, as a connection opening
    /// now sees it (see `BlockStore.resize`).
    public func setExportSize(_ size: UInt64) throws(CacheError) {
        try blocks.resize(to: size)
    }

    public var exportSize: UInt64 { blocks.exportSize }

    /// A block's state (for tests and debugging).
    public func state(ofBlock block: UInt64) -> BlockState { blocks.state(of: block) }

    /// Bytes of the cache file holding blocks, as cache-max-size counts them.
    public var cachedBytes: UInt64 { blocks.occupiedBlocks << geometry.shift }

    public var dirtyBlockCount: UInt64 { blocks.dirtyBlockCount }

    /// Checks that a request lies inside the export as the connection sees it.
    func checkBounds(offset: UInt64, count: UInt64, backend: some Backend) throws(CacheError) {
        guard offset <= backend.size, count <= backend.size - offset else {
            throw CacheError(
                .invalidArgument,
                "request of \(count) bytes at \(offset) is beyond the end of the export (\(backend.size))")
        }
    }
}

/// The part of a request's buffer that holds bytes `span` of the export.
func slice(
    _ buffer: UnsafeMutableRawBufferPointer, _ span: Range<UInt64>,
    of request: Range<UInt64>
) -> UnsafeMutableRawBufferPointer {
    let from = Int(span.lowerBound - request.lowerBound)
    return UnsafeMutableRawBufferPointer(rebasing: buffer[from..<from + span.count])
}

// SPDX-License-Identifier: BSD-3-Clause
import Synchronization
import SystemPackage

/// What the cache has done and what it holds, for `cache-stats=FILE` and
/// `-D swiftcache.stats=1`: counters that only grow (requests, hits and
/// misses, plugin bytes, write-backs, reclaims) and gauges of what the cache
/// holds now (cached, dirty and zero blocks), with the peaks of the first two.
///
/// One object may serve several engines (one per export): every number is a
/// sum over them. Counting is a relaxed atomic add, never a lock, so it stays
/// cheap on the request path.
public final class Statistics: Sendable {
    /// The requests the engine counts as they come in, one counter each.
    enum Request {
        case read, write, zero, trim, flush, extents, cache
    }

    private let reads = Atomic<UInt64>(0)
    private let writes = Atomic<UInt64>(0)
    private let zeroes = Atomic<UInt64>(0)
    private let trims = Atomic<UInt64>(0)
    private let flushes = Atomic<UInt64>(0)
    private let extentsCalls = Atomic<UInt64>(0)
    private let caches = Atomic<UInt64>(0)

    private let hitBlocks = Atomic<UInt64>(0)
    private let hitBytes = Atomic<UInt64>(0)
    private let missBlocks = Atomic<UInt64>(0)
    private let missBytes = Atomic<UInt64>(0)
    private let pluginReadBytes = Atomic<UInt64>(0)
    private let pluginWrittenBytes = Atomic<UInt64>(0)
    private let writeBackBlocks = Atomic<UInt64>(0)
    private let writeBackBytes = Atomic<UInt64>(0)
    private let reclaimedBlocks = Atomic<UInt64>(0)

    private let cachedBytes = Atomic<UInt64>(0)
    private let peakCachedBytes = Atomic<UInt64>(0)
    private let dirtyBytes = Atomic<UInt64>(0)
    private let peakDirtyBytes = Atomic<UInt64>(0)
    private let zeroBlocks = Atomic<UInt64>(0)

    public init() {}

    // MARK: Counting (the engine and the block layer)

    /// A request entered the engine.
    func count(_ request: Request) {
        switch request {
        case .read: reads.wrappingAdd(1, ordering: .relaxed)
        case .write: writes.wrappingAdd(1, ordering: .relaxed)
        case .zero: zeroes.wrappingAdd(1, ordering: .relaxed)
        case .trim: trims.wrappingAdd(1, ordering: .relaxed)
        case .flush: flushes.wrappingAdd(1, ordering: .relaxed)
        case .extents: extentsCalls.wrappingAdd(1, ordering: .relaxed)
        case .cache: caches.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// A read served `bytes` of its request from `blocks` blocks: from the
    /// cache file (hits) or from the plugin (misses).
    func served(blocks: Int, bytes: Int, fromCache: Bool) {
        if fromCache {
            hitBlocks.wrappingAdd(UInt64(blocks), ordering: .relaxed)
            hitBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed)
        } else {
            missBlocks.wrappingAdd(UInt64(blocks), ordering: .relaxed)
            missBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed)
        }
    }

    /// The plugin returned `bytes` bytes (any read, for whatever reason).
    func pluginRead(bytes: Int) { pluginReadBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed) }

    /// The plugin took `bytes` bytes of data (any write; zero and trim
    /// requests carry no data and are not counted).
    func pluginWrote(bytes: Int) { pluginWrittenBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed) }

    /// Bytes `span` of the export went to the plugin from dirty or partial
    /// blocks: counts them and the blocks they touch.
    func wroteBack(_ span: Range<UInt64>, in geometry: BlockGeometry) {
        guard !span.isEmpty else { return }
        let blocks = geometry.blocks(covering: span.lowerBound, count: UInt64(span.count))
        writeBackBlocks.wrappingAdd(UInt64(blocks.count), ordering: .relaxed)
        writeBackBytes.wrappingAdd(UInt64(span.count), ordering: .relaxed)
    }

    /// Reclaim dropped `blocks` blocks from the cache.
    func reclaimed(blocks: Int) { reclaimedBlocks.wrappingAdd(UInt64(blocks), ordering: .relaxed) }

    /// What the cache holds changed, by these differences: bytes of blocks
    /// with storage in the cache file (clean, dirty or partial, whole blocks
    /// as cache-max-size counts them), bytes of dirty and partial blocks, and
    /// known-zero blocks. The block layer reports each change once, after it
    /// (see `BlockGauges`), so the sums never go below zero.
    func blocksChanged(cachedBytes cachedDelta: Int64, dirtyBytes dirtyDelta: Int64, zeroBlocks zeroDelta: Int64) {
        if cachedDelta != 0 { Self.add(cachedDelta, to: cachedBytes, raising: peakCachedBytes) }
        if dirtyDelta != 0 { Self.add(dirtyDelta, to: dirtyBytes, raising: peakDirtyBytes) }
        if zeroDelta != 0 { zeroBlocks.wrappingAdd(UInt64(bitPattern: zeroDelta), ordering: .relaxed) }
    }

    /// Adds `delta` to `gauge` and raises `peak` to the new value if that is higher.
    private static func add(
        _ delta: Int64, to gauge: borrowing Atomic<UInt64>,
        raising peak: borrowing Atomic<UInt64>
    ) {
        let now = gauge.wrappingAdd(UInt64(bitPattern: delta), ordering: .relaxed).newValue
        var seen = peak.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = peak.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if exchanged { return }
            seen = original
        }
    }

    // MARK: Reading

    /// Every number as it is now. Each is read on its own: a request in
    /// flight may show in one and not yet in another.
    public func snapshot() -> Snapshot {
        let cached = cachedBytes.load(ordering: .relaxed), dirty = dirtyBytes.load(ordering: .relaxed)
        return Snapshot(
            reads: reads.load(ordering: .relaxed), writes: writes.load(ordering: .relaxed),
            zeroes: zeroes.load(ordering: .relaxed), trims: trims.load(ordering: .relaxed),
            flushes: flushes.load(ordering: .relaxed), extents: extentsCalls.load(ordering: .relaxed),
            caches: caches.load(ordering: .relaxed),
            hitBlocks: hitBlocks.load(ordering: .relaxed), hitBytes: hitBytes.load(ordering: .relaxed),
            missBlocks: missBlocks.load(ordering: .relaxed), missBytes: missBytes.load(ordering: .relaxed),
            pluginReadBytes: pluginReadBytes.load(ordering: .relaxed),
            pluginWrittenBytes: pluginWrittenBytes.load(ordering: .relaxed),
            writeBackBlocks: writeBackBlocks.load(ordering: .relaxed),
            writeBackBytes: writeBackBytes.load(ordering: .relaxed),
            reclaimedBlocks: reclaimedBlocks.load(ordering: .relaxed),
            cachedBytes: cached,
            // A peak is raised just after its gauge: never show it below the gauge.
            peakCachedBytes: max(cached, peakCachedBytes.load(ordering: .relaxed)),
            dirtyBytes: dirty,
            peakDirtyBytes: max(dirty, peakDirtyBytes.load(ordering: .relaxed)),
            zeroBlocks: zeroBlocks.load(ordering: .relaxed))
    }

    /// The numbers at one moment, and the report made of them.
    public struct Snapshot: Equatable, Sendable {
        /// Requests by kind, as clients sent them.
        public var reads: UInt64 = 0, writes: UInt64 = 0, zeroes: UInt64 = 0, trims: UInt64 = 0
        public var flushes: UInt64 = 0, extents: UInt64 = 0, caches: UInt64 = 0
        /// Blocks reads found in the cache, and the bytes the reads took from
        /// them. A partial block that a read completes from the plugin and
        /// keeps counts as a hit (its plugin bytes count as plugin reads).
        public var hitBlocks: UInt64 = 0, hitBytes: UInt64 = 0
        /// Blocks reads had to get from the plugin, and the bytes the reads took from them.
        public var missBlocks: UInt64 = 0, missBytes: UInt64 = 0
        /// Data the plugin returned and took, whatever the reason (misses,
        /// fills, NBD_CMD_CACHE, write-backs, writethrough, ...).
        public var pluginReadBytes: UInt64 = 0, pluginWrittenBytes: UInt64 = 0
        /// Dirty and partial blocks written back, and the bytes sent for them.
        public var writeBackBlocks: UInt64 = 0, writeBackBytes: UInt64 = 0
        /// Blocks reclaim dropped to keep the cache under cache-max-size.
        public var reclaimedBlocks: UInt64 = 0
        /// Bytes of the blocks the cache holds (clean, dirty or partial, as
        /// cache-max-size counts them), now and at their peak.
        public var cachedBytes: UInt64 = 0, peakCachedBytes: UInt64 = 0
        /// Bytes of the dirty and partial blocks, now and at their peak.
        public var dirtyBytes: UInt64 = 0, peakDirtyBytes: UInt64 = 0
        /// Blocks the cache knows to be zeroes, now.
        public var zeroBlocks: UInt64 = 0

        /// The share of the blocks read that came from the cache, if any were read.
        public var hitRatio: Double? {
            let total = hitBlocks + missBlocks
            return total == 0 ? nil : Double(hitBlocks) / Double(total)
        }

        /// The report `cache-stats=FILE` holds and `-D swiftcache.stats=1`
        /// logs: one item a line, exact counts first, sizes in binary units after.
        public var report: String {
            let ratio = hitRatio.map { "\(percent($0)) of the blocks read" } ?? "none (no blocks read)"
            return """
                swiftcache statistics
                requests: read \(reads), write \(writes), zero \(zeroes), trim \(trims), flush \(flushes), \
                extents \(extents), cache \(caches)
                read hits: \(blocks(hitBlocks)), \(size(hitBytes))
                read misses: \(blocks(missBlocks)), \(size(missBytes))
                hit ratio: \(ratio)
                plugin reads: \(size(pluginReadBytes))
                plugin writes: \(size(pluginWrittenBytes))
                write-backs: \(blocks(writeBackBlocks)), \(size(writeBackBytes))
                reclaims: \(blocks(reclaimedBlocks))
                zero blocks now: \(zeroBlocks)
                dirty now: \(size(dirtyBytes)), peak \(size(peakDirtyBytes))
                cached now: \(size(cachedBytes)), peak \(size(peakCachedBytes))

                """
        }
    }
}

/// "1 block", "3 blocks".
private func blocks(_ count: UInt64) -> String { count == 1 ? "1 block" : "\(count) blocks" }

/// "65536 bytes (64.0 KiB)": exact, then in the largest binary unit it reaches.
private func size(_ bytes: UInt64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var scaled = Double(bytes), unit = -1
    while scaled >= 1024, unit + 1 < units.count {
        scaled /= 1024
        unit += 1
    }
    return unit < 0 ? (bytes == 1 ? "1 byte" : "\(bytes) bytes") : "\(bytes) bytes (\(tenths(scaled)) \(units[unit]))"
}

/// 0.755 → "75.5%".
private func percent(_ fraction: Double) -> String { "\(tenths(fraction * 100))%" }

/// A non-negative number with one decimal, without Foundation's formatting.
private func tenths(_ value: Double) -> String {
    let rounded = UInt64((value * 10).rounded())
    return "\(rounded / 10).\(rounded % 10)"
}

/// The block layer's side of the gauges: what it last told the statistics
/// it holds. It calls `update` with its block map's counts after each
/// change, under its lock, and the differences go to
/// `Statistics.blocksChanged`; engines sharing one `Statistics` add up.
struct BlockGauges {
    let statistics: Statistics
    let blockShift: UInt64
    private var occupied: UInt64 = 0
    private var dirty: UInt64 = 0
    private var zero: UInt64 = 0

    init(statistics: Statistics, blockShift: UInt64) {
        self.statistics = statistics
        self.blockShift = blockShift
    }

    /// The map now holds `occupied` blocks with storage, `dirty` dirty or
    /// partial ones and `zero` known-zero ones.
    mutating func update(occupied: UInt64, dirty: UInt64, zero: UInt64 = 0) {
        guard occupied != self.occupied || dirty != self.dirty || zero != self.zero else { return }
        statistics.blocksChanged(
            cachedBytes: difference(occupied, self.occupied) &<< Int64(blockShift),
            dirtyBytes: difference(dirty, self.dirty) &<< Int64(blockShift),
            zeroBlocks: difference(zero, self.zero))
        (self.occupied, self.dirty, self.zero) = (occupied, dirty, zero)
    }

    /// The blocks leave the statistics (their engine goes).
    mutating func withdraw() { update(occupied: 0, dirty: 0, zero: 0) }

    private func difference(_ new: UInt64, _ old: UInt64) -> Int64 { Int64(truncatingIfNeeded: new &- old) }
}

extension BlockStore {
    /// The engine goes: its blocks no longer count in the gauges.
    func leaveStatistics() { state.withLock { $0.gauges.withdraw() } }
}

extension Engine {
    /// Counts a request as it enters the engine, and returns the plugin
    /// wrapped so that the bytes the request moves are counted too.
    func counting<Plugin: Backend>(_ request: Statistics.Request, _ backend: Plugin) -> CountedBackend<Plugin> {
        statistics.count(request)
        return CountedBackend(plugin: backend, statistics: statistics)
    }
}

/// The plugin as a request sees it: every call goes through, and the data
/// read and written are counted, whichever path sent them.
struct CountedBackend<Plugin: Backend>: Backend {
    let plugin: Plugin
    let statistics: Statistics

    var size: UInt64 { plugin.size }
    var canWrite: Bool { plugin.canWrite }
    var canFlush: Bool { plugin.canFlush }
    var canZero: Bool { plugin.canZero }
    var fuaMode: FUAMode { plugin.fuaMode }
    var maximumRequest: UInt64 { plugin.maximumRequest }
    var minimumRequest: UInt64 { plugin.minimumRequest }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        try plugin.read(into: buffer, at: offset)
        statistics.pluginRead(bytes: buffer.count)
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        try plugin.write(buffer, at: offset, fua: fua)
        statistics.pluginWrote(bytes: buffer.count)
    }

    func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        try plugin.zero(count: count, at: offset, fua: fua, mayTrim: mayTrim)
    }

    func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        try plugin.trim(count: count, at: offset, fua: fua)
    }

    func flush() throws(Errno) { try plugin.flush() }

    func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
        try plugin.extents(count: count, at: offset, onlyOne: onlyOne)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// `Statistics`: exact counts for known request sequences, gauges that
/// follow the block map, engines sharing one object, and the report text.
final class StatisticsTests: EngineTestCase {
    private func requests(_ s: Statistics.Snapshot) -> [UInt64] {
        [s.reads, s.writes, s.zeroes, s.trims, s.flushes, s.extents, s.caches]
    }

    func testRequestsAreCountedByKindAsClientsSentThem() throws {
        // FUA is emulated: a FUA write turns into a flush inside the engine,
        // which reaches the plugin but is not a client's flush.
        let b = MemoryBackend(size: MiB, seed: 500, fuaMode: .emulate)
        let e = try makeEngine(b)
        XCTAssertEqual(requests(e.statistics.snapshot()), [0, 0, 0, 0, 0, 0, 0])
        _ = try e.readBytes(0, 100, b)
        _ = try e.readBytes(B, 100, b)
        try e.writeBytes([1, 2, 3], at: 10, b)
        try e.writeBytes([4, 5, 6], at: 2 * B, fua: true, b)
        try e.zero(count: B, at: 3 * B, fua: false, mayTrim: true, fastZero: false, backend: b)
        assertCacheError(.notSupported) {
            try e.zero(count: B, at: 3 * B, fua: false, mayTrim: true, fastZero: true, backend: b)
        }
        try e.trim(count: B, at: 4 * B, fua: false, backend: b)
        try e.flush(backend: b)
        _ = try e.extents(count: MiB, at: 0, onlyOne: false, backend: b)
        try e.cache(count: B, at: 5 * B, backend: b)
        // A request the engine refuses still came in.
        assertCacheError(.invalidArgument) { _ = try e.readBytes(MiB, 1, b) }

        //                                          read write zero trim flush extents cache
        XCTAssertEqual(requests(e.statistics.snapshot()), [3, 2, 2, 1, 1, 1, 1])
        XCTAssertEqual(b.stats.flushes, 2, "the client's flush and the FUA write's")
    }

    func testReadHitsAndMissesInBlocksAndBytes() throws {
        let b = MemoryBackend(size: MiB, seed: 501)
        let e = try makeEngine(b, cacheOnRead: .always)
        // Blocks 0, 1 and 100 bytes of 2: all from the plugin, and kept.
        _ = try e.readBytes(0, 2 * B + 100, b)
        var s = e.statistics.snapshot()
        XCTAssertEqual([s.hitBlocks, s.hitBytes, s.missBlocks, s.missBytes], [0, 0, 3, 2 * B + 100])
        // Blocks 1 and 2 from the cache (2B - 10 bytes), 10 bytes of block 3 from the plugin.
        _ = try e.readBytes(B + 10, 2 * B, b)
        // 4 KiB inside block 0: one block hit.
        _ = try e.readBytes(0, 4096, b)
        s = e.statistics.snapshot()
        XCTAssertEqual([s.hitBlocks, s.hitBytes, s.missBlocks, s.missBytes], [3, 2 * B - 10 + 4096, 4, 2 * B + 110])
        XCTAssertEqual(s.hitRatio ?? -1, 3.0 / 7.0, accuracy: 1e-12)
        // Blocks 0-3 were filled whole from the plugin.
        XCTAssertEqual(s.pluginReadBytes, 4 * B)

        // NBD_CMD_CACHE fills blocks but serves no read: neither hit nor miss.
        try e.cache(count: 2 * B, at: 3 * B, backend: b)
        s = e.statistics.snapshot()
        XCTAssertEqual([s.hitBlocks, s.missBlocks], [3, 4])
        XCTAssertEqual(s.pluginReadBytes, 5 * B, "block 4 filled")
        XCTAssertEqual(s.pluginReadBytes, b.stats.readBytes)
        XCTAssertEqual(s.cachedBytes, 5 * B)
        XCTAssertEqual(s.cachedBytes, e.cachedBytes)
    }

    func testMissesWithoutCacheOnReadReadOnlyWhatTheRequestAsks() throws {
        let b = MemoryBackend(size: MiB, seed: 502)
        let e = try makeEngine(b, cacheOnRead: .never)
        _ = try e.readBytes(100, 2 * B, b)
        _ = try e.readBytes(100, 2 * B, b)
        let s = e.statistics.snapshot()
        XCTAssertEqual([s.hitBlocks, s.hitBytes, s.missBlocks, s.missBytes], [0, 0, 6, 4 * B])
        XCTAssertEqual(s.pluginReadBytes, 4 * B)
        XCTAssertEqual(s.hitRatio, 0)
        XCTAssertEqual(s.cachedBytes, 0)
    }

    func testAPartialBlockCompletedForAReadAndKeptIsAHit() throws {
        let b = MemoryBackend(size: MiB, seed: 518)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes(randomBytes(100, seed: 519), at: 10, b)
        _ = try e.readBytes(0, 4096, b)
        let s = e.statistics.snapshot()
        XCTAssertEqual([s.hitBlocks, s.hitBytes, s.missBlocks, s.pluginReadBytes], [1, 4096, 0, B])
        XCTAssertEqual(e.states(0..<1), [.dirty])
    }

    func testPluginBytesCountEveryPathThatMovesData() throws {
        let b = MemoryBackend(size: MiB, seed: 503)
        let e = try makeEngine(b, mode: .writethrough)
        // 100 bytes into a block the cache lacks: the block is read first
        // (read-modify-write), the 100 bytes go through.
        try e.writeBytes(randomBytes(100, seed: 504), at: 10, b)
        var s = e.statistics.snapshot()
        XCTAssertEqual([s.pluginReadBytes, s.pluginWrittenBytes], [B, 100])
        // A whole block: no read.
        try e.writeBytes(randomBytes(Int(B), seed: 505), at: 3 * B, b)
        // A zero carries no data to the plugin (it can zero).
        try e.zero(count: B, at: 5 * B, fua: false, mayTrim: false, fastZero: false, backend: b)
        s = e.statistics.snapshot()
        XCTAssertEqual([s.pluginReadBytes, s.pluginWrittenBytes], [B, 100 + B])
        XCTAssertEqual([s.pluginReadBytes, s.pluginWrittenBytes], [b.stats.readBytes, b.stats.writeBytes])
        XCTAssertEqual([s.writeBackBlocks, s.writeBackBytes], [0, 0], "writethrough writes nothing back")
    }

    func testWriteBacksAndTheDirtyAndCachedGauges() throws {
        let b = MemoryBackend(size: MiB, seed: 506)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes(randomBytes(Int(2 * B), seed: 507), at: 0, b)
        // 100 bytes of block 5: a partial block, dirty, counted whole.
        try e.writeBytes(randomBytes(100, seed: 508), at: 5 * B + 10, b)
        var s = e.statistics.snapshot()
        XCTAssertEqual(
            [s.dirtyBytes, s.peakDirtyBytes, s.cachedBytes, s.peakCachedBytes], [3 * B, 3 * B, 3 * B, 3 * B])
        XCTAssertEqual([s.pluginReadBytes, s.pluginWrittenBytes], [0, 0])

        // One request for blocks 0-1, one for the partial block's 100 bytes
        // (which then leaves the cache).
        try e.flush(backend: b)
        s = e.statistics.snapshot()
        XCTAssertEqual([s.writeBackBlocks, s.writeBackBytes], [3, 2 * B + 100])
        XCTAssertEqual(s.pluginWrittenBytes, 2 * B + 100)
        XCTAssertEqual(s.pluginWrittenBytes, b.stats.writeBytes)
        XCTAssertEqual([s.dirtyBytes, s.peakDirtyBytes, s.cachedBytes, s.peakCachedBytes], [0, 3 * B, 2 * B, 3 * B])
        XCTAssertEqual(e.states(0..<6), [.clean, .clean, .notCached, .notCached, .notCached, .notCached])

        // Nothing dirty: the next flush writes nothing back.
        try e.flush(backend: b)
        XCTAssertEqual(e.statistics.snapshot().writeBackBlocks, 3)
        // Trim drops the clean blocks.
        try e.trim(count: 2 * B, at: 0, fua: false, backend: b)
        s = e.statistics.snapshot()
        XCTAssertEqual([s.cachedBytes, s.peakCachedBytes, s.zeroBlocks], [0, 3 * B, 0])
    }

    /// 1 MiB of 64K blocks: reclaim starts when a block would make more
    /// than 15 and stops at 12 with the new block (SPEC §4 cache-max-size).
    func testReclaimCountsTheBlocksItDrops() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 509)
        let e = try makeEngine(b, cacheOnRead: .always, maxSize: MiB)
        for block: UInt64 in 0..<20 { _ = try e.readBytes(block * B, B, b) }
        // Blocks 1-15 fill the cache; 16 and 20 each make reclaim drop 4.
        var s = e.statistics.snapshot()
        XCTAssertEqual([s.reclaimedBlocks, s.cachedBytes, s.peakCachedBytes], [8, 12 * B, 15 * B])
        XCTAssertEqual(s.cachedBytes, e.cachedBytes)
        XCTAssertEqual([s.missBlocks, s.writeBackBlocks], [20, 0])

        // Dirty victims are written back before they are dropped.
        let w = MemoryBackend(size: 4 * MiB, seed: 510)
        let f = try makeEngine(w, maxSize: MiB)
        for block: UInt64 in 0..<20 { try f.writeBytes(randomBytes(Int(B), seed: 511 + block), at: block * B, w) }
        s = f.statistics.snapshot()
        XCTAssertEqual([s.reclaimedBlocks, s.writeBackBlocks, s.writeBackBytes], [8, 8, 8 * B])
        XCTAssertEqual([s.dirtyBytes, s.peakDirtyBytes, s.cachedBytes], [12 * B, 15 * B, 12 * B])
        XCTAssertEqual(s.dirtyBytes, f.dirtyBlockCount * B)
    }

    func testEnginesSharingOneStatisticsAddUp() throws {
        let statistics = Statistics()
        let b1 = MemoryBackend(size: MiB, seed: 512), b2 = MemoryBackend(size: MiB, seed: 513)
        let e1 = try makeEngine(b1, statistics: statistics)
        var e2: Engine? = try makeEngine(b2, statistics: statistics)
        try e1.writeBytes(randomBytes(Int(2 * B), seed: 514), at: 0, b1)
        try e2?.writeBytes(randomBytes(Int(3 * B), seed: 515), at: B, b2)
        _ = try e2?.readBytes(8 * B, 10, b2)
        var s = statistics.snapshot()
        XCTAssertEqual(requests(s), [1, 2, 0, 0, 0, 0, 0])
        XCTAssertEqual([s.dirtyBytes, s.cachedBytes, s.peakCachedBytes], [5 * B, 5 * B, 5 * B])
        XCTAssertIdentical(e1.statistics, statistics)

        // An engine that goes takes its blocks out of the gauges; its counts stay.
        e2 = nil
        s = statistics.snapshot()
        XCTAssertEqual(
            [s.dirtyBytes, s.cachedBytes, s.peakDirtyBytes, s.peakCachedBytes], [2 * B, 2 * B, 5 * B, 5 * B])
        XCTAssertEqual(requests(s), [1, 2, 0, 0, 0, 0, 0])
        XCTAssertEqual(s.missBlocks, 1)
    }

    /// Many threads through one engine, with reclaim and write-back threads:
    /// the request counts are exact and the gauges end equal to the block
    /// map (every change of it reached them).
    func testCountsAndGaugesStayExactUnderConcurrency() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 516)
        let e = try makeEngine(b, cacheOnRead: .always, maxSize: 2 * MiB, writeBackThreads: 4)
        let threads = 6, ops = 300
        let failures = Locked<[String]>([])
        runThreads(threads) { t in
            var rng = SplitMix64(seed: 517 + UInt64(t))
            for _ in 0..<ops {
                let offset = rng.next() % (4 * MiB - 1)
                let count = 1 + rng.next() % min(4 * MiB - offset, 200_000)
                do {
                    switch rng.next() % 10 {
                    case 0..<4: _ = try e.readBytes(offset, count, b)
                    case 4..<7: try e.writeBytes(randomBytes(Int(count), seed: rng.next()), at: offset, b)
                    case 7: try e.zero(count: count, at: offset, fua: false, mayTrim: true, fastZero: false, backend: b)
                    case 8: try e.trim(count: count, at: offset, fua: false, backend: b)
                    default: try e.flush(backend: b)
                    }
                } catch {
                    failures.withLock { $0.append("thread \(t): \(error)") }
                }
            }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        let s = e.statistics.snapshot()
        XCTAssertEqual(requests(s).reduce(0, +), UInt64(threads * ops))
        XCTAssertEqual(s.cachedBytes, e.cachedBytes)
        XCTAssertEqual(s.dirtyBytes, e.dirtyBlockCount * B)
        XCTAssertGreaterThanOrEqual(s.peakCachedBytes, s.cachedBytes)
        XCTAssertGreaterThan(s.reclaimedBlocks, 0)
        XCTAssertEqual([s.pluginReadBytes, s.pluginWrittenBytes], [b.stats.readBytes, b.stats.writeBytes])
        try e.flush(backend: b)
        XCTAssertEqual(e.statistics.snapshot().dirtyBytes, 0)
    }

    func testReport() {
        var s = Statistics.Snapshot()
        XCTAssertEqual(
            s.report,
            """
            swiftcache statistics
            requests: read 0, write 0, zero 0, trim 0, flush 0, extents 0, cache 0
            read hits: 0 blocks, 0 bytes
            read misses: 0 blocks, 0 bytes
            hit ratio: none (no blocks read)
            plugin reads: 0 bytes
            plugin writes: 0 bytes
            write-backs: 0 blocks, 0 bytes
            reclaims: 0 blocks
            zero blocks now: 0
            dirty now: 0 bytes, peak 0 bytes
            cached now: 0 bytes, peak 0 bytes

            """)
        s.reads = 12
        s.writes = 3
        s.flushes = 1
        s.extents = 2
        s.hitBlocks = 3
        s.hitBytes = 3 * B - 1
        s.missBlocks = 1
        s.missBytes = 1
        s.pluginReadBytes = B
        s.pluginWrittenBytes = 3 * MiB / 2
        s.writeBackBlocks = 24
        s.writeBackBytes = 3 * MiB / 2
        s.reclaimedBlocks = 1
        s.cachedBytes = 5 * (MiB << 10)
        s.peakCachedBytes = 5 * (MiB << 10) + 1
        s.peakDirtyBytes = 1023
        XCTAssertEqual(
            s.report,
            """
            swiftcache statistics
            requests: read 12, write 3, zero 0, trim 0, flush 1, extents 2, cache 0
            read hits: 3 blocks, 196607 bytes (192.0 KiB)
            read misses: 1 block, 1 byte
            hit ratio: 75.0% of the blocks read
            plugin reads: 65536 bytes (64.0 KiB)
            plugin writes: 1572864 bytes (1.5 MiB)
            write-backs: 24 blocks, 1572864 bytes (1.5 MiB)
            reclaims: 1 block
            zero blocks now: 0
            dirty now: 0 bytes, peak 1023 bytes
            cached now: 5368709120 bytes (5.0 GiB), peak 5368709121 bytes (5.0 GiB)

            """)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// SPEC §6: a failed cache-file call (ENOSPC, EDQUOT, EIO, a torn write)
/// fails the request with its errno or not at all, never traps, and leaves
/// every block state true: afterwards the export reads as the acknowledged
/// writes made it, a flush brings the plugin there, and block status never
/// calls cached data a hole. Write-back never needs room in the cache file.
///
/// Faults go in through the `CacheStorage` seam (`FaultyStorage`); the
/// plugin (`MemoryBackend`) works throughout.
final class FaultInjectionTests: EngineTestCase {
    private var rigBackends: [MemoryBackend] = []
    private var disks: [String: [UInt8]] = [:]

    override func tearDown() {
        for backend in rigBackends {
            XCTAssertEqual(backend.violations, [], "requests nbdkit would refuse")
        }
        rigBackends = []
        super.tearDown()
    }

    // MARK: The storage itself

    /// FaultyStorage fails the calls it is told to, tears and counts them.
    func testFaultyStorageFailsTearsAndCountsAsArmed() throws {
        let fs = try FaultyStorage(directory: directory)
        try fs.resize(to: MiB)
        let data = randomBytes(8192, seed: 1)
        func read(_ count: Int, at offset: UInt64) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            try out.withUnsafeMutableBytes { try fs.read(into: $0, at: offset) }
            return out
        }
        func write(_ bytes: [UInt8], at offset: UInt64) throws {
            try bytes.withUnsafeBytes { try fs.write($0, at: offset) }
        }

        // The next N after M.
        fs.fail(.write, .next(2, after: 1), with: .noSpace)
        try write(data, at: 0)
        for _ in 0..<2 { assertCacheError(.noSpace) { try write(data, at: 0) } }
        try write(data, at: 0)
        XCTAssertEqual(fs.calls(.write), 4)
        XCTAssertEqual(fs.failures(.write), 2)
        XCTAssertEqual(try read(8192, at: 0), data)

        // A torn write stores its first half, then fails.
        let newer = randomBytes(8192, seed: 2)
        fs.fail(.write, .always, with: .diskQuotaExceeded, torn: true)
        assertCacheError(.diskQuotaExceeded) { try write(newer, at: 0) }
        XCTAssertEqual(try read(8192, at: 0), Array(newer[..<4096]) + Array(data[4096...]))

        // Calls touching a range fail; others go through.
        fs.clearFaults()
        fs.fail(.zero, .overlapping(100_000..<100_001), with: .ioError)
        try fs.zero(at: 0, length: 4096)
        assertCacheError(.ioError) { try fs.zero(at: 98_304, length: 4096) }
        try fs.zero(at: 100_001, length: 4096)
        XCTAssertEqual(try read(8192, at: 0), Array(repeating: 0, count: 4096) + Array(data[4096...]))

        // Every nth call; a torn discard punches its first half.
        fs.fail(.discard, .every(2), with: .ioError, torn: true)
        try fs.discard(at: 0, length: 4096)
        assertCacheError(.ioError) { try fs.discard(at: 4096, length: 8192) }
        XCTAssertEqual(try read(8192, at: 0), Array(repeating: 0, count: 8192), "the first half was punched")
        try fs.discard(at: 0, length: 4096)
        XCTAssertEqual(fs.failures(.discard), 1)

        // A torn read leaves garbage behind; resize fails whole.
        try write(data, at: 0)
        fs.fail(.read, with: .ioError, torn: true)
        var buffer = [UInt8](repeating: 0, count: 8192)
        assertCacheError(.ioError) { try buffer.withUnsafeMutableBytes { try fs.read(into: $0, at: 0) } }
        XCTAssertEqual(Array(buffer[..<4096]), Array(data[..<4096]))
        XCTAssertEqual(Array(buffer[4096...]), Array(repeating: 0xEE, count: 4096))
        XCTAssertEqual(try read(8192, at: 0), data, "the one failure was used up")
        fs.fail(.resize, .always, with: .noSpace)
        assertCacheError(.noSpace) { try fs.resize(to: 2 * MiB) }
        XCTAssertEqual(fs.calls(.resize), 2)
        XCTAssertEqual(fs.totalFailures, 7)
    }

    // MARK: Sweeps: every cache-file call of each path, failing every way

    /// Read path: cache-on-read fills (data and zeroes), reads of cached
    /// blocks, partial blocks read and completed, NBD_CMD_CACHE.
    func testReadPathFaultsFailCleanlyAndKeepBlockStatesTrue() throws {
        let onRead = RigConfig(cacheOnRead: true, zeroes: [12 * B..<14 * B])
        try sweep([
            Scenario("cache-on-read fill of plugin data", onRead, [[.write]], setup: prepare) {
                $0.read(2 * B - 200, at: 10 * B + 100)
            },
            Scenario("cache-on-read fill of plugin zeroes", onRead, [[.zero]], setup: prepare) {
                $0.read(2 * B, at: 12 * B)
            },
            Scenario("read of dirty and clean blocks", onRead, [[.read]], setup: prepare) {
                $0.read(2 * B - 20, at: B + 10)
            },
            Scenario(
                "read of partial blocks, completed", RigConfig(), [[.read], [.write], [.read, .write]],
                setup: prepare
            ) {
                $0.read(3 * B, at: 3 * B)
            },
            Scenario(
                "NBD_CMD_CACHE of zero, partial and uncached blocks",
                RigConfig(zeroes: [12 * B..<14 * B]), [[.zero], [.write], [.read]], setup: prepare
            ) { r in
                r.cache(2 * B, at: 12 * B)
                r.cache(9 * B, at: 3 * B)
            },
            Scenario("cache-on-read read of the whole export", onRead, [[.read], [.write]], setup: prepare) {
                $0.read(MiB, at: 0)
            },
        ])
    }

    /// Write path: writeback writes of new, cached and partial blocks, edge
    /// completion past HeldRanges.limit, writethrough and FUA writes, zero
    /// (which punches) and trim (which discards).
    func testWritePathFaultsFailCleanlyAndKeepBlockStatesTrue() throws {
        let through = RigConfig(mode: .writethrough)
        try sweep([
            Scenario("writeback write of new whole blocks", RigConfig(), [[.write]], setup: prepare) {
                $0.write(2 * B, at: 10 * B)
            },
            Scenario(
                "writeback write over a dirty edge and a clean block", RigConfig(),
                [[.write], [.write, .discard]], setup: prepare
            ) {
                $0.write(B + B / 2, at: B + B / 2)
            },
            Scenario(
                "writeback write into part of a clean block", RigConfig(), [[.write], [.write, .discard]],
                setup: prepare
            ) {
                $0.write(1000, at: 2 * B + 5000)
            },
            Scenario("writeback writes into uncached and partial blocks", RigConfig(), [[.write]], setup: prepare) {
                $0.write(500, at: 11 * B + 300)
                $0.write(300, at: 3 * B + 10_000)
            },
            Scenario(
                "writeback write with partial edges around dirty blocks", RigConfig(), [[.write]],
                setup: prepare
            ) {
                $0.write(5 * B, at: 6 * B + 30_000)
            },
            Scenario("edge completion past HeldRanges.limit", RigConfig(), [[.read], [.write]], setup: prepare) {
                XCTAssertEqual($0.e.held(5)?.count, HeldRanges.limit, $0.label)
                $0.write(100, at: 5 * B + 2000)
            },
            Scenario(
                "writethrough write with read-modify-write edges", through, [[.write], [.write, .discard]],
                setup: prepareThrough
            ) {
                $0.write(3 * B, at: B + 1000)
            },
            Scenario(
                "writethrough write over clean blocks", through, [[.write], [.write, .discard]],
                setup: prepareThrough
            ) {
                $0.write(B + 3000, at: 2 * B + 5000)
            },
            Scenario(
                "FUA write over dirty, clean and partial blocks", RigConfig(), [[.write], [.write, .discard]],
                setup: prepare
            ) {
                $0.write(3 * B, at: B + 100, fua: true)
            },
            Scenario(
                "zero over dirty, clean, partial and uncached blocks", RigConfig(),
                [[.zero], [.zero, .discard]], setup: prepare
            ) {
                $0.zero(6 * B, at: B + 100)
                $0.zero(2 * B, at: 10 * B)
            },
            Scenario("writethrough zero", through, [[.zero]], setup: prepareThrough) {
                $0.zero(2 * B + 500, at: 2 * B)
            },
            Scenario("trim over dirty, clean and partial blocks", RigConfig(), [[.discard]], setup: prepare) {
                $0.trim(5 * B - 200, at: B + 100)
            },
        ])
    }

    /// Write-back: whole dirty runs, single-range partial blocks (sent
    /// alone), multi-range partial blocks (assembled, their gaps written).
    func testWriteBackFaultsFailCleanlyAndKeepBlockStatesTrue() throws {
        try sweep([
            Scenario(
                "flush of dirty, single-range and multi-range partial blocks", RigConfig(),
                [[.read], [.write], [.discard], [.read, .write, .discard]], setup: prepare
            ) { $0.flush() },
            Scenario(
                "flush when the plugin's minimum makes every partial block assembled",
                RigConfig(minimumRequest: 4096), [[.read], [.write]], setup: prepare
            ) { $0.flush() },
            Scenario(
                "flush of one run of partial and dirty blocks", RigConfig(), [[.read], [.write]],
                setup: { r in
                    prepare(r)
                    r.write(2 * B, at: 6 * B)
                }
            ) { $0.flush() },
            Scenario(
                "flush on four write-back threads", RigConfig(writeBackThreads: 4), [[.read], [.write]],
                setup: prepare
            ) { $0.flush() },
        ])
    }

    /// Reclaim (cache-max-size=1M): dirty victims written back, victims
    /// discarded, then the request's own blocks stored.
    func testReclaimFaultsFailCleanlyAndKeepBlockStatesTrue() throws {
        let limited = RigConfig(size: 4 * MiB, maxSize: MiB)
        try sweep([
            Scenario(
                "writeback write that needs room", limited, [[.read], [.discard], [.write], [.read, .discard]],
                setup: prepareFull
            ) {
                $0.write(10 * B, at: 20 * B)
            },
            Scenario(
                "cache-on-read fill that needs room", RigConfig(size: 4 * MiB, maxSize: MiB, cacheOnRead: true),
                [[.read], [.write], [.discard]], setup: prepareFull
            ) {
                $0.read(10 * B, at: 20 * B)
            },
            Scenario("NBD_CMD_CACHE that needs room", limited, [[.read], [.write]], setup: prepareFull) {
                $0.cache(12 * B, at: 30 * B)
            },
        ])
    }

    // MARK: Write-back never needs room in the cache file (SPEC §6)

    /// With every cache write and zero failing (ENOSPC), a flush of dirty,
    /// single-range and multi-range partial blocks succeeds and the plugin
    /// gets every acknowledged byte.
    func testFlushNeedsNoRoomInTheCacheFile() throws {
        let r = try makeRig(RigConfig(), "flush with a full cache file")
        prepare(r)
        r.fs.resetCounts()
        r.fs.fail([.write, .zero], .always, with: .noSpace)
        XCTAssertTrue(r.flush(), "write-back needs no room")
        XCTAssertGreaterThan(r.fs.failures(.write), 0, "the multi-range blocks' gaps could not be kept")
        XCTAssertEqual(r.e.dirtyBlockCount, 0)
        assertBytes(r.b.allBytes, r.model.bytes, "the plugin after the flush")
        XCTAssertEqual(r.e.partialBlockCount, 0, "partial blocks left the cache once written")
        // Everything still reads, faults and all.
        XCTAssertTrue(r.read(MiB, at: 0))
        try verify(r)
    }

    /// The same with torn cache writes, failing zeroes and discards, a plugin
    /// minimum of 4096 (every partial block is assembled) and four write-back threads.
    func testFlushNeedsNoRoomEvenWhenWritesTearAndDiscardsFail() throws {
        let r = try makeRig(
            RigConfig(size: 4 * MiB, writeBackThreads: 4, minimumRequest: 4096),
            "flush with torn writes")
        for quarter in UInt64(0)..<4 { prepareBlocks(r, at: quarter * MiB) }
        r.fs.fail([.write, .zero], .always, with: .noSpace, torn: true)
        r.fs.fail(.discard, .always, with: .ioError, torn: true)
        XCTAssertTrue(r.flush(), "write-back needs no room")
        XCTAssertEqual(r.e.dirtyBlockCount, 0)
        assertBytes(r.b.allBytes, r.model.bytes, "the plugin after the flush")
        XCTAssertTrue(r.read(4 * MiB, at: 0), "torn gap writes are never served")
        try verify(r)
    }

    /// With every cache write and zero failing, reads of acknowledged bytes
    /// in partial blocks (one range, several, at the limit) succeed, and the
    /// blocks stay partial.
    func testReadsOfPartialBlocksNeedNoRoomInTheCacheFile() throws {
        for cacheOnRead in [false, true] {
            let r = try makeRig(RigConfig(cacheOnRead: cacheOnRead), "cache-on-read \(cacheOnRead)")
            prepare(r)
            let held = (3..<6).map { r.e.held($0) }
            r.fs.fail([.write, .zero], .always, with: .noSpace, torn: true)
            XCTAssertTrue(r.read(3 * B, at: 3 * B), r.label)
            XCTAssertTrue(r.read(700, at: 3 * B + 4000), r.label)
            XCTAssertTrue(r.read(B - 1, at: 5 * B + 1), r.label)
            XCTAssertEqual(r.e.states(3..<6), [.partial, .partial, .partial], r.label)
            XCTAssertEqual((3..<6).map { r.e.held($0) }, held, r.label)
            if !cacheOnRead { XCTAssertTrue(r.read(MiB, at: 0), r.label) }
            try verify(r)
        }
    }

    // MARK: Write path

    /// A torn write over a dirty block goes to the plugin instead (SPEC §8):
    /// the block keeps its other bytes as a partial block, and forgets the
    /// torn ones.
    func testTornWriteOverADirtyBlockKeepsItsOtherBytes() throws {
        let r = try makeRig(RigConfig(), "torn write over a dirty block")
        prepare(r)
        r.arm([.write], .always, .noSpace, torn: true)
        XCTAssertTrue(r.write(20_000, at: B + 10_000))
        XCTAssertEqual(r.e.state(ofBlock: 1), .partial)
        XCTAssertEqual(r.e.held(1), [0..<10_000, 30_000..<UInt32(B)])
        XCTAssertTrue(r.read(B, at: B), "served from the cache file with the fault still armed")
        try verify(r)
    }

    /// A cache-file write failing over clean blocks drops them (they may
    /// hold half of it), even when the discard fails too, and the write goes
    /// to the plugin: they read the plugin's bytes.
    func testFailedWriteOverCleanBlocksDropsThemEvenWhenDiscardFails() throws {
        let r = try makeRig(RigConfig(), "failed write over clean blocks")
        r.cache(4 * B, at: 6 * B)
        XCTAssertEqual(r.e.states(6..<10), Array(repeating: .clean, count: 4))
        r.arm([.write, .discard], .always, .ioError, torn: true)
        XCTAssertTrue(r.write(3 * B, at: 6 * B + 1000))
        XCTAssertEqual(r.e.states(6..<10), [.notCached, .notCached, .notCached, .notCached])
        XCTAssertGreaterThan(r.fs.failures(.discard), 0)
        r.disarm()
        assertBytes(
            try r.e.readBytes(6 * B, 4 * B, r.b), r.b.bytes(6 * B, 4 * B),
            "the plugin's bytes, not half a write")
        try verify(r)
    }

    /// Trim succeeds when discarding fails: the blocks are forgotten all the
    /// same and read the plugin's zeroes, never the old cached bytes.
    func testTrimWithFailingDiscardStillForgetsTheBlocks() throws {
        let r = try makeRig(RigConfig(), "trim with failing discard")
        prepare(r)
        r.fs.fail(.discard, .always, with: .ioError)
        XCTAssertTrue(r.trim(8 * B, at: B))
        XCTAssertEqual(r.e.states(1..<9), Array(repeating: .notCached, count: 8))
        XCTAssertGreaterThan(r.fs.failures(.discard), 0)
        XCTAssertEqual(try r.e.readBytes(B, 8 * B, r.b), Array(repeating: 0, count: Int(8 * B)))
        try verify(r)
    }

    /// NBD_CMD_CACHE whose cache writes tear succeeds (keeping is
    /// optional) and leaves the blocks uncached; a later fill stores the
    /// plugin's bytes, never the torn half.
    func testCacheCommandWithTornWritesLeavesBlocksUncached() throws {
        let r = try makeRig(RigConfig(cacheOnRead: true), "NBD_CMD_CACHE with torn writes")
        r.arm([.write], .always, .noSpace, torn: true)
        XCTAssertTrue(r.cache(4 * B, at: 4 * B))
        XCTAssertEqual(r.e.states(4..<8), Array(repeating: .notCached, count: 4))
        XCTAssertEqual(r.e.cachedBytes, 0)
        r.disarm()
        XCTAssertTrue(r.cache(4 * B, at: 4 * B))
        XCTAssertEqual(r.e.states(4..<8), Array(repeating: .clean, count: 4))
        r.arm([.read], .always, .ioError)
        XCTAssertFalse(r.read(4 * B, at: 4 * B), "served from the cache file now")
        try verify(r)
    }

    /// A failed read of cached blocks changes nothing: states, held ranges
    /// and the bytes later reads return.
    func testFailedCachedReadChangesNothing() throws {
        let r = try makeRig(RigConfig(), "failed cached read")
        prepare(r)
        let states = r.e.states(0..<16), held = (0..<16).map { r.e.held(UInt64($0)) }
        for torn in [false, true] {
            r.arm([.read], .always, .ioError, torn: torn)
            XCTAssertFalse(r.read(MiB, at: 0))
            XCTAssertFalse(r.cache(3 * B, at: 3 * B))
            XCTAssertEqual(r.e.states(0..<16), states)
            XCTAssertEqual((0..<16).map { r.e.held(UInt64($0)) }, held)
        }
        try verify(r)
    }

    /// A write that must complete a block past HeldRanges.limit: when
    /// reading the held ranges fails, it fails with that errno and the block
    /// keeps its 16 ranges; when storing the completed block fails, the
    /// write goes to the plugin and the block forgets the bytes it wrote.
    func testEdgeCompletionPastTheHeldRangeLimitFailsCleanly() throws {
        let r = try makeRig(RigConfig(), "edge completion past HeldRanges.limit")
        prepare(r)
        let held = try XCTUnwrap(r.e.held(5))
        XCTAssertEqual(held.count, HeldRanges.limit)
        r.arm([.read], .always, .ioError, torn: true)
        XCTAssertFalse(r.write(100, at: 5 * B + 2000), "read EIO")
        XCTAssertEqual(r.e.state(ofBlock: 5), .partial)
        XCTAssertEqual(r.e.held(5), held)
        let released = held.reduce(into: HeldRanges(held[0])) { $0.insert($1) }.removing(2000..<2100)?.ranges
        for errno in [Errno.noSpace, .diskQuotaExceeded] {
            r.arm([.write], .always, errno, torn: true)
            XCTAssertTrue(r.write(100, at: 5 * B + 2000), "write \(errno)")
            XCTAssertEqual(r.e.state(ofBlock: 5), .partial)
            XCTAssertEqual(r.e.held(5), released)
        }
        r.disarm()
        XCTAssertTrue(r.write(100, at: 5 * B + 2000))
        XCTAssertEqual(r.e.state(ofBlock: 5), .dirty, "completed from the plugin")
        try verify(r)
    }

    /// Past BlockMap.partialLimit partial blocks (4K blocks), a write into a
    /// new block completes it from the plugin first: when the cache file
    /// fails, the write goes to the plugin; when it is full once, room is
    /// made (a quarter of the cache written back and dropped) and the write
    /// is kept, as a partial block now that there is room for one.
    func testEdgeCompletionPastThePartialBlockLimitFailsCleanly() throws {
        let small: UInt64 = 4096
        let limit = UInt64(BlockMap.partialLimit)
        let r = try makeRig(
            RigConfig(size: (limit + 16) * small, minBlockSize: small, seed: 0),
            "edge completion past BlockMap.partialLimit")
        try XCTSkipUnless(r.e.blockSize == small, "the cache file system's blocks are larger than 4K")
        for block in 0..<limit {
            XCTAssertTrue(r.write([UInt8(truncatingIfNeeded: block) | 1], at: block * small + 7))
        }
        XCTAssertEqual(r.e.partialBlockCount, BlockMap.partialLimit)
        r.arm([.write], .always, .ioError, torn: true)
        XCTAssertTrue(r.write(10, at: (limit + 1) * small + 100), "write EIO")
        XCTAssertEqual(r.e.state(ofBlock: limit + 1), .notCached)
        XCTAssertEqual(r.e.partialBlockCount, BlockMap.partialLimit, "no room is made for EIO")
        r.arm([.write], .next(1), .noSpace)
        XCTAssertTrue(r.write(10, at: (limit + 2) * small + 100))
        XCTAssertEqual(r.fs.failures(.write), 2)
        XCTAssertEqual(r.e.state(ofBlock: limit + 2), .partial, "kept once there was room (and partial room)")
        XCTAssertEqual(r.e.partialBlockCount, BlockMap.partialLimit * 3 / 4 + 1, "a quarter made room")
        r.disarm()
        XCTAssertTrue(r.write(10, at: (limit + 1) * small + 100))
        XCTAssertNotEqual(r.e.state(ofBlock: limit + 1), .notCached)
        try verify(r)
    }

    /// writethrough with a full cache file: the plugin gets the bytes, and
    /// no cached copy older than them is served or written back.
    func testWritethroughWithAFullCacheFileStillReachesThePlugin() throws {
        let r = try makeRig(RigConfig(mode: .writethrough), "writethrough with a full cache file")
        prepareThrough(r)
        r.arm([.write, .zero], .always, .noSpace, torn: true)
        let data = r.data(3 * B)
        r.write(data, at: B + 1000)
        XCTAssertEqual(r.b.bytes(B + 1000, 3 * B), data, "the plugin has the write")
        r.model.wrote(data, at: B + 1000)
        XCTAssertTrue(r.read(4 * B, at: B), "every cached copy is the plugin's")
        r.zero(B, at: 2 * B)
        XCTAssertEqual(r.b.bytes(2 * B, B), Array(repeating: 0, count: Int(B)))
        r.model.wrote(Array(repeating: 0, count: Int(B)), at: 2 * B)
        XCTAssertTrue(r.read(4 * B, at: B))
        try verify(r)
    }

    /// A FUA write in writeback with a full cache file: the plugin gets the
    /// bytes; the write fails or not, and block states stay true either way.
    func testFUAWriteWithAFullCacheFileReachesThePlugin() throws {
        let r = try makeRig(RigConfig(), "FUA write with a full cache file")
        prepare(r)
        r.arm([.write], .always, .noSpace, torn: true)
        let data = r.data(4 * B)
        r.write(data, at: 6 * B + 100, fua: true)
        XCTAssertEqual(r.b.bytes(6 * B + 100, 4 * B), data, "the plugin has the write")
        XCTAssertEqual(r.b.stats.writeLog.filter(\.fua), [Req(6 * B + 100, 4 * B, fua: true)])
        try verify(r)
    }

    // MARK: Reclaim

    /// cache-max-size=1M full of dirty blocks that cannot be read back for
    /// write-back: new writes go straight to the plugin, nothing is dropped.
    func testReclaimThatCannotReadDirtyVictimsSendsWritesToThePlugin() throws {
        let r = try makeRig(RigConfig(size: 4 * MiB, maxSize: MiB), "reclaim with failing cache reads")
        r.write(15 * B, at: 0)
        XCTAssertEqual(r.e.dirtyBlockCount, 15)
        r.fs.fail(.read, .always, with: .ioError)
        let data = r.data(4 * B)
        XCTAssertTrue(r.write(data, at: 20 * B), "no room: the write goes to the plugin")
        XCTAssertEqual(r.b.bytes(20 * B, 4 * B), data)
        XCTAssertEqual(r.e.dirtyBlockCount, 15, "the dirty blocks stay until they can be written back")
        XCTAssertLessThanOrEqual(r.e.cachedBytes, 15 * B)
        XCTAssertGreaterThan(r.fs.failures(.read), 0)
        try verify(r)
    }

    /// cache-max-size=1M with every discard failing: writes of 4 MiB succeed,
    /// the limit on cached blocks holds, no dirty block is lost.
    func testReclaimWithFailingDiscardsKeepsTheLimitAndLosesNothing() throws {
        let r = try makeRig(RigConfig(size: 4 * MiB, maxSize: MiB), "reclaim with failing discards")
        r.fs.fail(.discard, .always, with: .ioError, torn: true)
        var offset: UInt64 = 0, over: [UInt64] = []
        while offset < 4 * MiB {
            let count = min(4 * MiB - offset, 100_000)
            XCTAssertTrue(r.write(count, at: offset))
            if r.e.cachedBytes > MiB { over.append(offset) }
            offset += count
        }
        XCTAssertEqual(over, [], "cached bytes over cache-max-size")
        XCTAssertGreaterThan(r.fs.failures(.discard), 0)
        try verify(r)
    }

    // MARK: Extents

    /// Over a plugin of zeroes, failed writes, zeroes and write-backs never
    /// make block status call a dirty or partial block a hole or zero, and
    /// what it calls zero reads as zeroes.
    func testExtentsNeverCallDirtyDataAHoleAfterFailedRequests() throws {
        let r = try makeRig(RigConfig(zeroes: [0..<MiB]), "extents after failed requests")
        r.write(B, at: B)
        r.write(1000, at: 3 * B + 4096)
        for i in UInt64(0)..<3 { r.write(500, at: 4 * B + 100 + i * 8192) }
        try assertExtentsTruthful(r)
        let steps: [(String, [StorageCall], (Rig) -> Void)] = [
            ("torn write over an uncached hole", [.write], { $0.write(B, at: 6 * B) }),
            ("torn write over a dirty block", [.write], { $0.write(3000, at: B + 500) }),
            ("torn write into partial blocks", [.write], { $0.write(B, at: 3 * B + 30_000) }),
            ("failed zero over dirty and partial blocks", [.zero], { $0.zero(3 * B, at: B + 10) }),
            ("failed FUA write", [.write], { $0.write(2 * B, at: 8 * B + 5, fua: true) }),
            ("failed write-back", [.read], { $0.flush() }),
            ("failed write-back of gaps", [.write], { $0.flush() }),
        ]
        for (name, kinds, step) in steps {
            r.write(5000, at: 10 * B + 7)  // something dirty for the write-backs
            r.arm(kinds, .always, .noSpace, torn: true)
            step(r)
            try assertExtentsTruthful(r, after: name)
            r.disarm()
        }
        try verify(r)
    }

    /// An older connection that sees its last block only in part (the export
    /// grew) flushes what it wrote there: when the cache file cannot be read
    /// that flush fails and the block keeps its ranges; then it works.
    func testFlushOfALastBlockSeenInPartFailsCleanly() throws {
        let oldSize = MiB - 30_000
        let r = try makeRig(RigConfig(size: 2 * MiB, exportSize: oldSize), "a last block seen in part")
        let older = Connection(r.b, size: oldSize)
        try r.e.reopen(r.b, size: 2 * MiB)  // the export grew
        for offset in [15 * B, 15 * B + 1500] {
            let data = r.data(512)
            try r.e.writeBytes(data, at: offset, older)
            r.model.wrote(data, at: offset)
        }
        XCTAssertEqual(r.e.state(ofBlock: 15), .partial)
        let held = r.e.held(15)
        for errno in [Errno.ioError, .noSpace] {
            r.arm([.read], .always, errno, torn: true)
            XCTAssertFalse(
                r.attempt("flush through the older connection", file: #filePath, line: #line) {
                    try r.e.flush(backend: older)
                })
            XCTAssertEqual(r.e.held(15), held)
        }
        r.disarm()
        XCTAssertTrue(
            r.attempt("flush through the older connection", file: #filePath, line: #line) {
                try r.e.flush(backend: older)
            })
        XCTAssertEqual(r.e.state(ofBlock: 15), .clean, "held nothing past the older connection's end: clean that far")
        if let problem = r.model.mismatch(r.b.bytes(0, oldSize), at: 0) {
            XCTFail("the plugin up to the older connection's end: \(problem)")
        }
        XCTAssertEqual(older.violations.withLock { $0 }, [])
        try verify(r)
    }

    // MARK: Resize

    /// A connection whose cache file cannot grow fails to open; the cache
    /// keeps its blocks (a dirty short last block too) and a later open works.
    func testFailedResizeFailsTheOpenAndKeepsEveryBlock() throws {
        let r = try makeRig(RigConfig(size: 2 * MiB, exportSize: MiB - 30_000), "failed resize")
        prepare(r)
        r.write(B - 30_000, at: 15 * B)
        XCTAssertEqual(r.e.held(15), [0..<UInt32(B) - 30_000])
        let states = r.e.states(0..<16)
        for errno in [Errno.noSpace, .ioError, .fileTooLarge] {
            r.fs.fail(.resize, .always, with: errno)
            r.b.setSize(2 * MiB)
            assertCacheError(errno) { try r.e.setExportSize(2 * MiB) }
            r.b.setSize(MiB - 30_000)  // that connection never opened
            XCTAssertEqual(r.e.exportSize, MiB - 30_000)
            XCTAssertEqual(r.e.states(0..<16), states)
        }
        r.fs.clearFaults()
        XCTAssertTrue(r.read(MiB - 30_000, at: 0))
        try r.e.reopen(r.b, size: 2 * MiB)
        XCTAssertEqual(r.e.state(ofBlock: 15), .partial, "the plugin's bytes past the old end show through")
        try verify(r)
    }

    /// A shrink whose discards fail still forgets the blocks past the new
    /// end: after a growth they read the plugin's new bytes, not old cached ones.
    func testShrinkWithFailingDiscardsForgetsTheBlocksPastTheEnd() throws {
        let r = try makeRig(RigConfig(size: 2 * MiB), "shrink with failing discards")
        r.write(4 * B, at: 20 * B)
        r.cache(2 * B, at: 26 * B)
        r.write(1000, at: 29 * B + 10)
        XCTAssertEqual(
            r.e.states(19..<30),
            [
                .notCached, .dirty, .dirty, .dirty, .dirty, .notCached, .notCached,
                .clean, .clean, .notCached, .partial,
            ])
        r.fs.fail(.discard, .always, with: .ioError, torn: true)
        try r.e.reopen(r.b, size: MiB)
        XCTAssertGreaterThan(r.fs.failures(.discard), 0)
        XCTAssertEqual(r.e.states(16..<32), Array(repeating: .notCached, count: 16))
        let fresh = r.data(MiB)
        r.b.poke(fresh, at: MiB)  // the plugin's file grows again, with new bytes
        r.model.wrote(fresh, at: MiB)
        try r.e.reopen(r.b, size: 2 * MiB)
        XCTAssertTrue(r.read(MiB, at: MiB), "the plugin's new bytes")
        try verify(r)
    }

    // MARK: Random and concurrent

    /// Random requests of every kind, with random faults of every kind
    /// armed before a third of them: the model holds throughout and after.
    func testRandomRequestsUnderRandomFaultsKeepTheModel() throws {
        let configs = [
            RigConfig(size: 2 * MiB, maxSize: MiB, cacheOnRead: true, seed: 11),
            RigConfig(size: 2 * MiB, minimumRequest: 4096, seed: 12),
            RigConfig(size: 2 * MiB, mode: .writethrough, cacheOnRead: true, seed: 13),
            RigConfig(size: 2 * MiB, maxSize: MiB, writeBackThreads: 3, fuaMode: .emulate, seed: 14),
        ]
        let errnos: [Errno] = [.noSpace, .ioError, .diskQuotaExceeded]
        for (n, config) in configs.enumerated() {
            let r = try makeRig(config, "random config \(n)")
            var rng = SplitMix64(seed: config.seed)
            func random(_ bound: UInt64) -> UInt64 { rng.next() % bound }
            let size = config.size
            let unit = config.minimumRequest  // client requests keep to the plugin's minimum
            for _ in 0..<300 {
                if random(3) == 0 {
                    let kinds = [StorageCall.read, .write, .zero, .discard].filter { _ in random(2) == 0 }
                    let start = random(size)
                    let triggers: [FaultTrigger] = [
                        .next(1), .next(2, after: 1), .always, .every(2),
                        .overlapping(start..<start + random(4 * B) + 1),
                    ]
                    r.arm(
                        kinds.isEmpty ? [.write] : kinds, triggers[Int(random(5))], errnos[Int(random(3))],
                        torn: random(2) == 0)
                }
                let aligned = random(2) == 0
                var offset = aligned ? random(size / B) * B : random(size)
                var count = aligned ? (1 + random(4)) * B : 1 + random(3 * B)
                offset = min(offset, size - 1) / unit * unit
                count = max(unit, min(count, size - offset) / unit * unit)
                switch random(10) {
                case 0...3: r.write(count, at: offset, fua: random(8) == 0)
                case 4: r.zero(count, at: offset, fua: random(8) == 0, mayTrim: random(2) == 0)
                case 5: r.trim(count, at: offset)
                case 6, 7: r.read(count, at: offset)
                case 8: r.cache(count, at: offset)
                default: r.flush()
                }
                r.disarm()
            }
            try verify(r, flushFirst: n % 2 == 1)
        }
    }

    /// Four threads write, zero, read and flush their own quarter of the
    /// export while cache writes, reads and discards keep failing: every
    /// failure carries the injected errno, and the model holds afterwards.
    func testConcurrentRequestsUnderFaultsKeepTheModel() throws {
        let r = try makeRig(
            RigConfig(size: 4 * MiB, maxSize: 2 * MiB, writeBackThreads: 4, seed: 21),
            "concurrent requests under faults")
        r.fs.fail(.write, .every(3), with: .ioError, torn: true)
        r.fs.fail(.zero, .every(2), with: .ioError, torn: true)
        r.fs.fail(.read, .every(7), with: .ioError, torn: true)
        r.fs.fail(.discard, .every(2), with: .ioError)
        let model = Locked(r.model)
        let problems = Locked<[String]>([])
        let (e, b) = (r.e, r.b)
        runThreads(4) { t in
            var rng = SplitMix64(seed: 100 + UInt64(t))
            let base = UInt64(t) * MiB
            func note(_ problem: String) { problems.withLock { $0.append("thread \(t): \(problem)") } }
            func outcome(_ what: String, _ body: () throws -> Void) -> Bool {
                do {
                    try body()
                    return true
                } catch let error as CacheError {
                    if error.errno != .ioError { note("\(what): \(error)") }
                    return false
                } catch {
                    note("\(what): \(error)")
                    return false
                }
            }
            for i in 0..<80 {
                let offset = base + rng.next() % (MiB - 1)
                let count = min(base + MiB - offset, 1 + rng.next() % (2 * B))
                switch rng.next() % 6 {
                case 0, 1, 2:
                    let data = randomBytes(Int(count), seed: 1000 * UInt64(t) + UInt64(i))
                    let done = outcome("write") { try e.writeBytes(data, at: offset, b) }
                    model.withLock { done ? $0.wrote(data, at: offset) : $0.mayHaveWritten(data, at: offset) }
                case 3:
                    let zeroes = [UInt8](repeating: 0, count: Int(count))
                    let done = outcome("zero") {
                        try e.zero(count: count, at: offset, fua: false, mayTrim: true, fastZero: false, backend: b)
                    }
                    model.withLock { done ? $0.wrote(zeroes, at: offset) : $0.mayHaveWritten(zeroes, at: offset) }
                case 4:
                    var bytes: [UInt8] = []
                    if outcome("read", { bytes = try e.readBytes(offset, count, b) }),
                        let problem = model.withLock({ $0.mismatch(bytes, at: offset) })
                    {
                        note("read of \(count) at \(offset): \(problem)")
                    }
                default:
                    _ = outcome("flush") { try e.flush(backend: b) }
                }
            }
        }
        XCTAssertEqual(problems.withLock { $0 }, [])
        r.model = model.withLock { $0 }
        XCTAssertGreaterThan(r.fs.totalFailures, 0)
        try verify(r)
    }

    // MARK: - Helpers

    /// How to build a rig.
    struct RigConfig {
        var size: UInt64 = MiB
        /// The export's size as the first connection sees it (default: `size`).
        var exportSize: UInt64?
        var mode: CacheMode = .writeback
        var maxSize: UInt64?
        var cacheOnRead = false
        var minBlockSize: UInt64 = B
        var writeBackThreads = 1
        var minimumRequest: UInt64 = 1
        var fuaMode: FUAMode = .native
        /// Plugin bytes that are zeroes (the rest is random).
        var zeroes: [Range<UInt64>] = []
        /// Seeds the plugin's bytes; 0: one repeated byte (quick for large exports).
        var seed: UInt64 = 7
    }

    /// An engine over a FaultyStorage in the test's directory, as makeEngine
    /// builds one, and a MemoryBackend whose violations tearDown checks.
    func makeRig(_ c: RigConfig, _ label: String, file: StaticString = #filePath, line: UInt = #line) throws -> Rig {
        let key = "\(c.size) \(c.seed) \(c.zeroes)"
        var disk =
            disks[key]
            ?? (c.seed == 0
                ? [UInt8](repeating: 0x5A, count: Int(c.size))
                : randomBytes(Int(c.size), seed: c.seed))
        for zeroes in c.zeroes {
            disk.replaceSubrange(
                Int(zeroes.lowerBound)..<Int(zeroes.upperBound),
                with: repeatElement(0, count: zeroes.count))
        }
        disks[key] = disk
        let b = MemoryBackend(bytes: disk, fuaMode: c.fuaMode, minimumRequest: c.minimumRequest)
        rigBackends.append(b)
        b.setSize(c.exportSize ?? c.size)
        var config = CacheConfig()
        config.mode = c.mode
        config.cacheOnRead = c.cacheOnRead ? .always : .never
        config.maxSize = c.maxSize
        config.minBlockSize = c.minBlockSize
        let fs = try FaultyStorage(directory: directory)
        let e = try Engine(config: config, file: fs, writeBackThreads: c.writeBackThreads)
        try e.setExportSize(b.size)
        XCTAssertEqual(e.blockSize, max(c.minBlockSize, fs.fileSystemBlockSize), "block size", file: file, line: line)
        return Rig(e: e, b: b, fs: fs, label: label, model: Model(disk), seed: c.seed &* 1000)
    }

    /// One request path under faults: how to set the cache up (no faults),
    /// the sets of cache-file calls to fail in turn (the first of each set
    /// must fail at least once), and the requests.
    struct Scenario {
        let name: String
        let config: RigConfig
        let faultSets: [[StorageCall]]
        let setup: (Rig) -> Void
        let requests: (Rig) -> Void

        init(
            _ name: String, _ config: RigConfig, _ faultSets: [[StorageCall]], setup: @escaping (Rig) -> Void,
            _ requests: @escaping (Rig) -> Void
        ) {
            self.name = name
            self.config = config
            self.faultSets = faultSets
            self.setup = setup
            self.requests = requests
        }
    }

    /// How the armed calls fail.
    static let variants: [(name: String, trigger: FaultTrigger, errno: Errno, torn: Bool)] = [
        ("the first fails with ENOSPC", .next(1), .noSpace, false),
        ("all fail with EIO", .always, .ioError, false),
        ("all tear with EDQUOT", .always, .diskQuotaExceeded, true),
        ("the second tears with ENOSPC", .next(1, after: 1), .noSpace, true),
    ]

    /// Runs every scenario × fault set × variant, each on a fresh rig, and
    /// checks each with `verify`, read first or flush first.
    func sweep(_ scenarios: [Scenario], file: StaticString = #filePath, line: UInt = #line) throws {
        for scenario in scenarios {
            for kinds in scenario.faultSets {
                for (n, variant) in Self.variants.enumerated() {
                    let label = "\(scenario.name); \(kinds): \(variant.name)"
                    let r = try makeRig(scenario.config, label, file: file, line: line)
                    scenario.setup(r)
                    r.fs.resetCounts()
                    r.arm(kinds, variant.trigger, variant.errno, torn: variant.torn)
                    scenario.requests(r)
                    if variant.trigger != .next(1, after: 1) {
                        XCTAssertGreaterThan(
                            r.fs.failures(kinds[0]), 0, "\(label): the fault never fired",
                            file: file, line: line)
                    }
                    try verify(r, flushFirst: n % 2 == 1, file: file, line: line)
                }
            }
        }
    }

    /// With faults cleared: (b) the whole export reads as the model and
    /// block status tells no lie; (c) a flush succeeds and the plugin then
    /// holds the model; the cache agrees with it afterwards.
    func verify(_ r: Rig, flushFirst: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
        r.disarm()
        let size = r.b.size
        let zeroExtents = try assertExtentsTruthful(r, file: file, line: line)
        let flushed = "\(r.label): flush with faults cleared"
        if flushFirst {
            XCTAssertTrue(r.flush(file: file, line: line), flushed, file: file, line: line)
            r.model.settle(r.b.allBytes)
            assertExact(
                try r.e.readBytes(0, size, r.b), r.model.bytes, "\(r.label): read after the flush",
                file: file, line: line)
        } else {
            let whole = try r.e.readBytes(0, size, r.b)
            if let problem = r.model.mismatch(whole, at: 0) {
                XCTFail("\(r.label): the whole export: \(problem)", file: file, line: line)
            }
            r.model.settle(whole)
            XCTAssertTrue(r.flush(file: file, line: line), flushed, file: file, line: line)
        }
        XCTAssertEqual(r.e.dirtyBlockCount, 0, "\(r.label): dirty blocks after the flush", file: file, line: line)
        let plugin = r.b.allBytes
        assertExact(plugin, r.model.bytes, "\(r.label): the plugin after the flush", file: file, line: line)
        assertExact(
            try r.e.readBytes(0, size, r.b), plugin, "\(r.label): the cache against the plugin",
            file: file, line: line)
        for zero in zeroExtents
        where r.model.bytes[Int(zero.lowerBound)..<Int(zero.upperBound)].contains(where: { $0 != 0 }) {
            XCTFail("\(r.label): block status called \(zero) zero, it holds data", file: file, line: line)
        }
    }

    /// Asserts that `actual` is exactly `expected` from its start on
    /// (memcmp: megabytes compare in no time even in debug builds).
    func assertExact(
        _ actual: [UInt8], _ expected: [UInt8], _ what: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard actual.count <= expected.count else {
            return XCTFail("\(what): \(actual.count) bytes, expected at most \(expected.count)", file: file, line: line)
        }
        if let problem = Model(expected).mismatch(actual, at: 0) {
            XCTFail("\(what): \(problem)", file: file, line: line)
        }
    }

    /// Block status over the whole export: contiguous from 0, never a hole
    /// or zero over a dirty or partial block, zero only where the model
    /// allows zeroes. Returns the ranges it called zero.
    @discardableResult
    func assertExtentsTruthful(
        _ r: Rig, after step: String = "", file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> [Range<UInt64>] {
        let label = step.isEmpty ? r.label : "\(r.label), after \(step)"
        let size = r.b.size, shift = UInt64(r.e.blockSize.trailingZeroBitCount)
        let states = r.e.states(0..<(size + r.e.blockSize - 1) >> shift)
        let extents = try r.e.extents(count: size, at: 0, onlyOne: false, backend: r.b)
        var cursor: UInt64 = 0, zeroes: [Range<UInt64>] = []
        for extent in extents {
            XCTAssertEqual(extent.offset, cursor, "\(label): extents not contiguous", file: file, line: line)
            cursor = extent.offset + extent.length
            guard extent.type != 0, extent.length > 0 else { continue }
            for block in extent.offset >> shift...(cursor - 1) >> shift
            where [.dirty, .partial].contains(states[Int(block)]) {
                XCTFail(
                    "\(label): block status \(extent) calls \(states[Int(block)]) block \(block) "
                        + "a hole or zero", file: file, line: line)
            }
            if extent.type & Extent.zero != 0 {
                zeroes.append(extent.offset..<cursor)
                if let at = (extent.offset..<cursor).first(where: { !r.model.allows(0, at: Int($0)) }) {
                    XCTFail(
                        "\(label): block status \(extent) calls byte \(at) zero, it holds data",
                        file: file, line: line)
                }
            }
        }
        XCTAssertEqual(cursor, size, "\(label): extents end", file: file, line: line)
        return zeroes
    }
}

// MARK: - Setups

/// Blocks 1, 8, 9 dirty; 2 clean; 3 partial (one range); 4 partial (three
/// ranges); 5 partial (HeldRanges.limit ranges); the rest not cached
/// (offsets from `base`, a multiple of 16 blocks).
private func prepareBlocks(_ r: Rig, at base: UInt64) {
    let first = base / B
    r.write(B, at: base + B)
    r.cache(B, at: base + 2 * B)
    r.write(1000, at: base + 3 * B + 4096)
    for i in UInt64(0)..<3 { r.write(500, at: base + 4 * B + 100 + i * 8192) }
    for i in UInt64(0)..<UInt64(HeldRanges.limit) { r.write(100, at: base + 5 * B + 7 + i * 4096) }
    r.write(2 * B, at: base + 8 * B)
    XCTAssertEqual(
        r.e.states(first..<first + 10),
        [.notCached, .dirty, .clean, .partial, .partial, .partial, .notCached, .notCached, .dirty, .dirty],
        "\(r.label): prepared states")
}

private func prepare(_ r: Rig) { prepareBlocks(r, at: 0) }

/// writethrough: blocks 2 and 3 clean (NBD_CMD_CACHE), 6 clean (read-modify-written), the rest not cached.
private func prepareThrough(_ r: Rig) {
    r.cache(2 * B, at: 2 * B)
    r.write(1000, at: 6 * B + 50)
    XCTAssertEqual(
        r.e.states(0..<8),
        [.notCached, .notCached, .clean, .clean, .notCached, .notCached, .clean, .notCached],
        "\(r.label): prepared states")
}

/// cache-max-size=1M over 4 MiB (reclaim above 15 blocks, down to 12):
/// blocks 0...2 clean (oldest), 3...7 dirty, 8 partial (one range), 9
/// partial (three ranges), 10 and 11 dirty: 12 blocks.
private func prepareFull(_ r: Rig) {
    r.cache(3 * B, at: 0)
    r.write(5 * B, at: 3 * B)
    r.write(1000, at: 8 * B + 4096)
    for i in UInt64(0)..<3 { r.write(500, at: 9 * B + 100 + i * 8192) }
    r.write(2 * B, at: 10 * B)
    XCTAssertEqual(r.e.cachedBytes, 12 * B, "\(r.label): prepared")
}

// MARK: - The model and the rig

/// What the export must read: the bytes acknowledged requests left, and for
/// each failed one the bytes it tried to write, which every byte of its
/// range may read as instead (a failed write may leave any mix).
struct Model {
    private(set) var bytes: [UInt8]
    private var maybe: [(offset: Int, bytes: [UInt8])] = []

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// An acknowledged write: its bytes are certain.
    mutating func wrote(_ data: [UInt8], at offset: UInt64) {
        let offset = Int(offset), end = offset + data.count
        bytes.replaceSubrange(offset..<end, with: data)
        for i in maybe.indices {
            let lower = max(offset, maybe[i].offset), upper = min(end, maybe[i].offset + maybe[i].bytes.count)
            guard lower < upper else { continue }
            maybe[i].bytes.replaceSubrange(
                lower - maybe[i].offset..<upper - maybe[i].offset,
                with: data[lower - offset..<upper - offset])
        }
    }

    /// A failed write (or the unsure part of a trim): each byte may now read
    /// as before or as `data`.
    mutating func mayHaveWritten(_ data: [UInt8], at offset: UInt64) {
        maybe.append((Int(offset), data))
    }

    /// Whether byte `i` may read as `value`.
    func allows(_ value: UInt8, at i: Int) -> Bool {
        bytes[i] == value
            || maybe.contains {
                i >= $0.offset && i < $0.offset + $0.bytes.count
                    && $0.bytes[i - $0.offset] == value
            }
    }

    /// Where bytes read at `offset` break the model, if they do.
    func mismatch(_ actual: [UInt8], at offset: UInt64) -> String? {
        let offset = Int(offset)
        guard !actual.isEmpty else { return nil }
        var differing = 0, first: Int?
        actual.withUnsafeBytes { a in
            bytes.withUnsafeBytes { m in
                var i = 0
                while i < a.count {
                    let n = min(4096, a.count - i)
                    if memcmp(a.baseAddress! + i, m.baseAddress! + offset + i, n) != 0 {
                        // Only the failed writes that touch this piece can excuse a difference.
                        let piece = offset + i..<offset + i + n
                        let excuses = maybe.filter { piece.overlaps($0.offset..<$0.offset + $0.bytes.count) }
                        for j in i..<i + n where a[j] != m[offset + j] {
                            let at = offset + j
                            if !excuses.contains(where: {
                                at >= $0.offset && at < $0.offset + $0.bytes.count
                                    && $0.bytes[at - $0.offset] == a[j]
                            }) {
                                differing += 1
                                if first == nil { first = j }
                            }
                        }
                    }
                    i += n
                }
            }
        }
        guard let first else { return nil }
        return "\(differing) bytes break the model, first at \(offset + first): read \(actual[first]), "
            + "acknowledged \(bytes[offset + first])"
    }

    /// Takes the whole export as read (after `mismatch` found nothing wrong)
    /// as certain: failed writes' bytes must read the same from now on.
    mutating func settle(_ whole: [UInt8]) {
        for entry in maybe {
            let end = min(entry.offset + entry.bytes.count, whole.count)
            guard entry.offset < end else { continue }
            bytes.replaceSubrange(entry.offset..<end, with: whole[entry.offset..<end])
        }
        maybe = []
    }
}

/// An engine over a FaultyStorage and a MemoryBackend, and the model of
/// the export; its requests check their outcome as they go.
final class Rig {
    let e: Engine
    let b: MemoryBackend
    let fs: FaultyStorage
    let label: String
    var model: Model
    /// The errnos a request may fail with now (none while no fault is armed).
    private(set) var allowed: Set<Errno> = []
    private var seed: UInt64

    init(e: Engine, b: MemoryBackend, fs: FaultyStorage, label: String, model: Model, seed: UInt64) {
        self.e = e
        self.b = b
        self.fs = fs
        self.label = label
        self.model = model
        self.seed = seed
    }

    /// Fails `kinds` as told, and nothing else; requests may then fail with `errno`.
    func arm(_ kinds: [StorageCall], _ trigger: FaultTrigger, _ errno: Errno, torn: Bool = false) {
        fs.clearFaults()
        fs.fail(kinds, trigger, with: errno, torn: torn)
        allowed = [errno]
    }

    func disarm() {
        fs.clearFaults()
        allowed = []
    }

    /// Fresh pseudo-random bytes.
    func data(_ count: UInt64) -> [UInt8] {
        seed += 1
        return randomBytes(Int(count), seed: seed)
    }

    /// Runs a request: whether it succeeded. A failure must be a CacheError
    /// carrying an armed errno.
    func attempt(_ what: @autoclosure () -> String, file: StaticString, line: UInt, _ body: () throws -> Void) -> Bool {
        do {
            try body()
            return true
        } catch let error as CacheError {
            XCTAssertTrue(
                allowed.contains(error.errno), "\(label): \(what()) failed: \(error), armed: \(allowed)",
                file: file, line: line)
            return false
        } catch {
            XCTFail("\(label): \(what()) threw \(error), not a CacheError", file: file, line: line)
            return false
        }
    }

    @discardableResult
    func write(
        _ data: [UInt8], at offset: UInt64, fua: Bool = false,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Bool {
        let done = attempt("write of \(data.count) at \(offset)", file: file, line: line) {
            try e.writeBytes(data, at: offset, fua: fua, b)
        }
        if done { model.wrote(data, at: offset) } else { model.mayHaveWritten(data, at: offset) }
        return done
    }

    @discardableResult
    func write(
        _ count: UInt64, at offset: UInt64, fua: Bool = false,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Bool {
        write(data(count), at: offset, fua: fua, file: file, line: line)
    }

    @discardableResult
    func zero(
        _ count: UInt64, at offset: UInt64, fua: Bool = false, mayTrim: Bool = true,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Bool {
        let done = attempt("zero of \(count) at \(offset)", file: file, line: line) {
            try e.zero(count: count, at: offset, fua: fua, mayTrim: mayTrim, fastZero: false, backend: b)
        }
        let zeroes = [UInt8](repeating: 0, count: Int(count))
        if done { model.wrote(zeroes, at: offset) } else { model.mayHaveWritten(zeroes, at: offset) }
        return done
    }

    /// Blocks a trim covers whole read as zeroes; the rest of its range as
    /// before or as zeroes (a dirty edge keeps its bytes).
    @discardableResult
    func trim(_ count: UInt64, at offset: UInt64, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let done = attempt("trim of \(count) at \(offset)", file: file, line: line) {
            try e.trim(count: count, at: offset, fua: false, backend: b)
        }
        model.mayHaveWritten([UInt8](repeating: 0, count: Int(count)), at: offset)
        let blockSize = e.blockSize
        let first = (offset + blockSize - 1) / blockSize * blockSize, last = (offset + count) / blockSize * blockSize
        if done && first < last { model.wrote([UInt8](repeating: 0, count: Int(last - first)), at: first) }
        return done
    }

    /// A read; what it returns must fit the model.
    @discardableResult
    func read(_ count: UInt64, at offset: UInt64, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        var bytes: [UInt8] = []
        let done = attempt("read of \(count) at \(offset)", file: file, line: line) {
            bytes = try e.readBytes(offset, count, b)
        }
        if done, let problem = model.mismatch(bytes, at: offset) {
            XCTFail("\(label): read of \(count) at \(offset): \(problem)", file: file, line: line)
        }
        return done
    }

    /// NBD_CMD_CACHE.
    @discardableResult
    func cache(_ count: UInt64, at offset: UInt64, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        attempt("cache of \(count) at \(offset)", file: file, line: line) {
            try e.cache(count: count, at: offset, backend: b)
        }
    }

    /// A flush; once it succeeds the plugin must hold the model.
    @discardableResult
    func flush(file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let done = attempt("flush", file: file, line: line) { try e.flush(backend: b) }
        if done, e.config.mode != .unsafe, let problem = model.mismatch(b.allBytes, at: 0) {
            XCTFail("\(label): the plugin after a flush: \(problem)", file: file, line: line)
        }
        return done
    }
}

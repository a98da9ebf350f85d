// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// cache-max-size = 1 MiB with 64K blocks: 16 blocks; reclaim starts above
/// 95% (more than 15 blocks) and stops at 80% (12 blocks or fewer).
final class ReclaimTests: EngineTestCase {
    func testSingleBigWriteInWritebackLosesNoDirtyBlock() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 110)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        let peak = sampleCachedBytes(e, b)
        let data = randomBytes(Int(8 * MiB), seed: 111)
        try e.writeBytes(data, at: 0, b)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, MiB, "cachedBytes during the write")
        XCTAssertGreaterThan(b.stats.writes, 0, "blocks were written back to make room")
        assertBytes(try e.readBytes(0, 8 * MiB, b), data, "read back before flush")
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, data, "backend after flush")
    }

    func testManySmallSequentialWritesInWritebackLoseNoDirtyBlock() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 112)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        let data = randomBytes(Int(8 * MiB), seed: 113)
        var rng = SplitMix64(seed: 114)
        var offset = 0
        var overLimit: [String] = []
        while offset < data.count {
            let count = min(data.count - offset, 1 + Int(rng.next() % 150_000))
            try e.writeBytes(Array(data[offset..<offset + count]), at: UInt64(offset), b)
            if e.cachedBytes > MiB { overLimit.append("\(e.cachedBytes) after writing \(count) at \(offset)") }
            offset += count
        }
        XCTAssertEqual(overLimit, [], "cachedBytes over cache-max-size")
        assertBytes(try e.readBytes(0, 8 * MiB, b), data, "read back before flush")
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, data, "backend after flush")
    }

    func testManySmallRandomOverlappingWritesInWritebackLoseNoDirtyBlock() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 115)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        var model = b.allBytes
        var rng = SplitMix64(seed: 116)
        var overLimit: [String] = []
        for i in 0..<1500 {
            let offset = Int(rng.next() % (8 * MiB - 1))
            let count = min(model.count - offset, 1 + Int(rng.next() % 100_000))
            let data = randomBytes(count, seed: 1000 + UInt64(i))
            try e.writeBytes(data, at: UInt64(offset), b)
            model.replaceSubrange(offset..<offset + count, with: data)
            if e.cachedBytes > MiB { overLimit.append("\(e.cachedBytes) after writing \(count) at \(offset)") }
        }
        XCTAssertEqual(overLimit, [], "cachedBytes over cache-max-size")
        assertBytes(try e.readBytes(0, 8 * MiB, b), model, "read back before flush")
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    func testUnsafeModeReclaimWritesDirtyBlocksBack() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 117)
        let e = try makeEngine(b, mode: .unsafe, maxSize: MiB)
        let data = randomBytes(Int(4 * MiB), seed: 118)
        try e.writeBytes(data, at: 0, b)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        // What was dropped is in the backend; the rest is still dirty in the cache.
        let dirty = e.dirtyBlockCount
        XCTAssertEqual(b.stats.writeBytes, (64 - dirty) * B)
        assertBytes(try e.readBytes(0, 4 * MiB, b), data)
    }

    func testReclaimWritesBackDirtyBlocksLeastRecentlyUsedFirst() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 119)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        var model = b.allBytes
        for block in UInt64(0)..<15 {
            let data = randomBytes(Int(B), seed: 120 + block)
            try e.writeBytes(data, at: block * B, b)
            model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
        }
        XCTAssertEqual(b.stats.writes, 0, "15 blocks fit under the high threshold")
        XCTAssertEqual(e.dirtyBlockCount, 15)
        let data = randomBytes(Int(B), seed: 135)
        try e.writeBytes(data, at: 15 * B, b)
        model.replaceSubrange(Int(15 * B)..<Int(16 * B), with: data)
        // 16 blocks would pass 95%: the 4 oldest are written back and dropped,
        // down to 80% with the new block, as one run (as a flush would send them).
        XCTAssertEqual(b.stats.writeLog, [Req(0, 4 * B)])
        XCTAssertEqual(
            e.states(0..<17),
            Array(repeating: .notCached, count: 4)
                + Array(repeating: .dirty, count: 12) + [.notCached])
        XCTAssertEqual(e.cachedBytes, 12 * B)
        assertBytes(b.bytes(0, 4 * B), Array(model[..<Int(4 * B)]))
        assertBytes(try e.readBytes(0, 16 * B, b), Array(model[..<Int(16 * B)]))
    }

    func testRecentlyReadBlockSurvivesReclaim() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 140)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always, maxSize: MiB)
        for block in UInt64(0)..<15 { _ = try e.readBytes(block * B, 10, b) }
        XCTAssertEqual(e.cachedBytes, 15 * B)
        _ = try e.readBytes(0, 10, b)  // block 0 is now the most recently used
        XCTAssertEqual(b.stats.reads, 15)
        _ = try e.readBytes(15 * B, 10, b)  // the 16th block: reclaim down to 12
        XCTAssertEqual(e.cachedBytes, 12 * B)
        XCTAssertEqual(e.state(ofBlock: 0), .clean, "the recently read block survives")
        XCTAssertEqual(e.states(1..<5), Array(repeating: .notCached, count: 4), "the oldest go")
        XCTAssertEqual(e.states(5..<16), Array(repeating: .clean, count: 11))
        assertBytes(try e.readBytes(0, 10, b), b.bytes(0, 10))
        XCTAssertEqual(b.stats.reads, 16)
    }

    func testWithoutTheRecentReadTheOldestBlockGoes() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 141)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always, maxSize: MiB)
        for block in UInt64(0)..<16 { _ = try e.readBytes(block * B, 10, b) }
        XCTAssertEqual(e.cachedBytes, 12 * B)
        XCTAssertEqual(e.states(0..<4), Array(repeating: .notCached, count: 4))
        XCTAssertEqual(e.states(4..<16), Array(repeating: .clean, count: 12))
    }

    /// Reads that cache nothing (cache-on-read off, blocks not cached) must
    /// not age the cache. `load` touches every block of the request in the
    /// LRU, cached or not: 8 uncached blocks read fill a generation, the
    /// generation turns over, and the blocks that were "older" lose that
    /// mark; the next reclaim then picks by position, not by age, and drops
    /// the block written last instead of the oldest ones.
    func testReadsThatCacheNothingDoNotAgeTheCache() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 147)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .never, maxSize: MiB)
        for block in UInt64(0)..<15 { try e.writeBytes(randomBytes(Int(B), seed: 148 + block), at: block * B, b) }
        try e.writeBytes(randomBytes(Int(B), seed: 170), at: 0, b)  // block 0: the most recently written
        for block in UInt64(30)..<38 { _ = try e.readBytes(block * B, 10, b) }  // cache nothing
        XCTAssertEqual(e.cachedBytes, 15 * B)
        try e.writeBytes(randomBytes(Int(B), seed: 171), at: 15 * B, b)  // 16 blocks: reclaim 4
        XCTAssertEqual(e.cachedBytes, 12 * B)
        XCTAssertEqual(
            e.states(0..<5), [.dirty] + Array(repeating: .notCached, count: 4),
            "block 0, written last but one, survives; the oldest (1...4) go")
    }

    func testCacheOnReadOfTheWholeExportStaysUnderTheLimit() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 142)
        let e = try makeEngine(b, mode: .writethrough, cacheOnRead: .always, maxSize: MiB)
        let peak = sampleCachedBytes(e, b)
        assertBytes(try e.readBytes(0, 8 * MiB, b), b.allBytes)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, MiB, "cachedBytes during the read")
        try e.cache(count: 8 * MiB, at: 0, backend: b)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        let data = randomBytes(Int(8 * MiB), seed: 143)
        try e.writeBytes(data, at: 0, b)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, MiB, "cachedBytes during the write")
        assertBytes(b.allBytes, data)
        assertBytes(try e.readBytes(0, 8 * MiB, b), data)
    }

    /// While nothing can be written back, the limit still holds: writes the
    /// cache has no room for go to the plugin, whose error the client gets;
    /// no acknowledged write is dropped, and a flush sends them all later.
    func testDirtyBlocksThatCannotBeWrittenBackAreKept() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 144)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        b.failNextWrites(1_000_000, .ioError)
        var model = b.allBytes
        var failed = 0
        for block in UInt64(0)..<40 {
            let data = randomBytes(Int(B), seed: 145 + block)
            do {
                try e.writeBytes(data, at: block * B, b)
                model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
            } catch let error as CacheError {
                XCTAssertEqual(error.errno, .ioError, "the plugin's error")
                failed += 1
            }
            XCTAssertLessThanOrEqual(e.cachedBytes, 15 * B, "the high threshold holds")
        }
        XCTAssertEqual(failed, 25, "15 blocks fit; the rest can only go to the failing plugin")
        XCTAssertEqual(e.dirtyBlockCount, 15, "no acknowledged block is dropped unwritten")
        assertBytes(try e.readBytes(0, 4 * MiB, b), model)
        b.clearFaults()
        try e.flush(backend: b)
        assertBytes(b.allBytes, model)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(try e.readBytes(0, 4 * MiB, b), model)
    }

    func testReclaimIsSkippedForDirtyBlocksWhenThePluginCannotWrite() throws {
        // A read-only plugin: dirty blocks cannot exist in practice, but clean
        // ones from cache-on-read must still be reclaimed without writing.
        let b = MemoryBackend(size: 4 * MiB, seed: 146, canWrite: false)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always, maxSize: MiB)
        assertBytes(try e.readBytes(0, 4 * MiB, b), b.allBytes)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        XCTAssertEqual(b.stats.writes, 0)
    }
}

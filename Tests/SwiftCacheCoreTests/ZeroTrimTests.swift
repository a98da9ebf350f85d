import XCTest
import SystemPackage
@testable import SwiftCacheCore

final class ZeroTests: EngineTestCase {
    func testFastZeroFailsWithENOTSUPAndChangesNothing() throws {
        for mode in CacheMode.allCases {
            let b = MemoryBackend(size: MiB, seed: 70)
            let e = try makeEngine(b, mode: mode, cacheOnRead: .always)
            try e.writeBytes(randomBytes(Int(B), seed: 71), at: B, b)   // dirty (clean in writethrough)
            let before = try e.readBytes(0, 6 * B, b)                    // the rest of 0..<6 clean
            let states = e.states(0..<8)
            let stats = b.stats
            let disk = b.allBytes

            for fua in [false, true] {
                assertCacheError(.notSupported) {
                    try e.zero(count: 3 * B, at: 1000, fua: fua, fastZero: true, backend: b)
                }
                assertCacheError(.notSupported) {
                    try e.zero(count: 2 * B, at: 5 * B, fua: fua, fastZero: true, backend: b)
                }
            }
            XCTAssertEqual(e.states(0..<8), states, "\(mode)")
            XCTAssertEqual(b.stats, stats, "\(mode)")
            assertBytes(b.allBytes, disk, "\(mode): backend")
            assertBytes(try e.readBytes(0, 6 * B, b), before, "\(mode): read back")
            XCTAssertEqual(b.stats, stats, "\(mode): the read back came from the cache")
        }
    }

    func testZeroInWritebackIsCachedUntilFlush() throws {
        let b = MemoryBackend(size: MiB, seed: 72)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let original = model
        try e.zero(count: 200_000, at: 10_000, fua: false, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))

        // Bytes 10000..<210000: partial blocks 0 and 3 are read, nothing is written.
        XCTAssertEqual(b.stats.readLog.sorted(), [Req(0, B), Req(3 * B, B)])
        XCTAssertEqual(b.stats.writes + b.stats.zeros + b.stats.trims + b.stats.flushes, 0)
        XCTAssertEqual(e.states(0..<5), [.dirty, .dirty, .dirty, .dirty, .notCached])
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
        assertBytes(b.allBytes, original, "backend before flush")

        try e.flush(backend: b)
        assertBytes(b.allBytes, model, "backend after flush")
        XCTAssertGreaterThan(b.stats.writes + b.stats.zeros, 0)
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(e.dirtyBlockCount, 0)
    }

    func testZeroOverCachedDataInWriteback() throws {
        let b = MemoryBackend(size: MiB, seed: 73)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always)
        var model = b.allBytes
        _ = try e.readBytes(0, 4 * B, b)
        let reads = b.stats.reads
        try e.zero(count: 2 * B + 10, at: B - 5, fua: false, fastZero: false, backend: b)
        model.replaceSubrange(Int(B) - 5..<Int(3 * B) + 5, with: repeatElement(0, count: Int(2 * B) + 10))
        XCTAssertEqual(b.stats.reads, reads, "cached blocks need no read-modify-write")
        XCTAssertEqual(e.states(0..<5), [.dirty, .dirty, .dirty, .dirty, .notCached])
        assertBytes(try e.readBytes(0, 4 * B, b), Array(model[..<Int(4 * B)]))
        try e.flush(backend: b)
        assertBytes(b.allBytes, model)
    }

    func testZeroInWritethroughUsesThePluginZero() throws {
        let b = MemoryBackend(size: MiB, seed: 74, canZero: true)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes
        try e.zero(count: 200_000, at: 10_000, fua: false, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))
        XCTAssertEqual(b.stats.zeroLog, [Req(10_000, 200_000)])
        XCTAssertEqual(b.stats.writes + b.stats.reads, 0)
        XCTAssertEqual(e.states(0..<4), [.notCached, .clean, .clean, .notCached])
        assertBytes(b.allBytes, model)
        assertBytes(try e.readBytes(0, MiB, b), model)
    }

    func testZeroInWritethroughWithoutPluginZeroWritesZeroes() throws {
        let b = MemoryBackend(size: MiB, seed: 75, canZero: false)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes
        try e.zero(count: 200_000, at: 10_000, fua: false, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))
        XCTAssertEqual(b.stats.writeLog, [Req(10_000, 200_000)])
        XCTAssertEqual(b.stats.zeros, 0)
        assertBytes(b.allBytes, model)
        assertBytes(try e.readBytes(0, MiB, b), model)
    }

    func testZeroWithNativeFUAInWritebackGoesThrough() throws {
        let b = MemoryBackend(size: MiB, seed: 76, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        try e.zero(count: B, at: 2 * B, fua: true, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeroLog, [Req(2 * B, B, fua: true)])
        XCTAssertEqual(e.state(ofBlock: 2), .clean)
        assertBytes(b.bytes(2 * B, B), Array(repeating: 0, count: Int(B)))
        assertBytes(try e.readBytes(2 * B, B, b), Array(repeating: 0, count: Int(B)))
    }
}

final class TrimTests: EngineTestCase {
    func testTrimDropsWhollyCoveredBlocksAndReachesTheBackend() throws {
        let b = MemoryBackend(size: MiB, seed: 80)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        try e.cache(count: 4 * B, at: 0, backend: b)                       // 0...3 clean
        let dirty = randomBytes(Int(2 * B), seed: 81)
        try e.writeBytes(dirty, at: 5 * B, b)                               // 5, 6 dirty
        try e.writeBytes([1, 2, 3], at: 7 * B + 1000, b)                    // 7 dirty (RMW)
        model.replaceSubrange(Int(5 * B)..<Int(7 * B), with: dirty)
        model.replaceSubrange(Int(7 * B) + 1000..<Int(7 * B) + 1003, with: [1, 2, 3])
        XCTAssertEqual(e.states(0..<8), [.clean, .clean, .clean, .clean, .notCached, .dirty, .dirty, .dirty])

        // Blocks 1 and 2, whole.
        try e.trim(count: 2 * B, at: B, fua: false, backend: b)
        model.replaceSubrange(Int(B)..<Int(3 * B), with: repeatElement(0, count: Int(2 * B)))
        // Blocks 5 and 6 whole, 50 bytes of 7 (dirty, partly covered: it stays).
        try e.trim(count: 2 * B + 50, at: 5 * B, fua: false, backend: b)
        model.replaceSubrange(Int(5 * B)..<Int(7 * B) + 50, with: repeatElement(0, count: Int(2 * B) + 50))

        XCTAssertEqual(b.stats.trimLog, [Req(B, 2 * B), Req(5 * B, 2 * B + 50)])
        XCTAssertEqual(e.states(0..<8), [.clean, .notCached, .notCached, .clean, .notCached, .notCached, .notCached, .dirty])
        XCTAssertEqual(e.dirtyBlockCount, 1)
        XCTAssertEqual(e.cachedBytes, 3 * B)
        // The trimmed blocks read from the backend (zeroes, like the memory plugin).
        let reads = b.stats.reads
        assertBytes(try e.readBytes(B, 2 * B, b), Array(repeating: 0, count: Int(2 * B)))
        XCTAssertEqual(b.stats.reads, reads + 1)

        // Only block 7 is left to write back.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(7 * B, B)])
        // Block 7's bytes beyond the trim are what was written; the 50 trimmed bytes are unspecified.
        assertBytes(b.bytes(7 * B + 50, B - 50), Array(model[Int(7 * B) + 50..<Int(8 * B)]))
        assertBytes(b.bytes(0, 7 * B), Array(model[..<Int(7 * B)]))
    }

    func testTrimOfPartOfACleanBlockDropsIt() throws {
        let b = MemoryBackend(size: MiB, seed: 82)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always)
        var model = b.allBytes
        _ = try e.readBytes(0, B, b)
        try e.trim(count: 100, at: 0, fua: false, backend: b)
        model.replaceSubrange(0..<100, with: repeatElement(0, count: 100))
        XCTAssertEqual(b.stats.trimLog, [Req(0, 100)])
        XCTAssertEqual(e.state(ofBlock: 0), .notCached, "the clean copy no longer matches the plugin")
        assertBytes(try e.readBytes(0, B, b), Array(model[..<Int(B)]))
    }

    func testTrimFailureKeepsDirtyBlocks() throws {
        let b = MemoryBackend(size: MiB, seed: 83)
        let e = try makeEngine(b, mode: .writeback)
        let data = randomBytes(Int(B), seed: 84)
        try e.writeBytes(data, at: 0, b)
        b.failWrites(in: 0..<MiB, .ioError)
        assertCacheError(.ioError) { try e.trim(count: B, at: 0, fua: false, backend: b) }
        XCTAssertEqual(e.state(ofBlock: 0), .dirty)
        b.clearFaults()
        try e.flush(backend: b)
        assertBytes(b.bytes(0, B), data)
    }
}

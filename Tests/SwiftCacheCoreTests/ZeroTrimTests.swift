// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class ZeroTests: EngineTestCase {
    func testFastZeroFailsWithENOTSUPAndChangesNothing() throws {
        for mode in CacheMode.allCases {
            let b = MemoryBackend(size: MiB, seed: 70)
            let e = try makeEngine(b, mode: mode, cacheOnRead: .always)
            try e.writeBytes(randomBytes(Int(B), seed: 71), at: B, b)  // dirty (clean in writethrough)
            let before = try e.readBytes(0, 6 * B, b)  // the rest of 0..<6 clean
            let states = e.states(0..<8)
            let stats = b.stats
            let disk = b.allBytes

            for fua in [false, true] {
                assertCacheError(.notSupported) {
                    try e.zero(count: 3 * B, at: 1000, fua: fua, mayTrim: true, fastZero: true, backend: b)
                }
                assertCacheError(.notSupported) {
                    try e.zero(count: 2 * B, at: 5 * B, fua: fua, mayTrim: true, fastZero: true, backend: b)
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
        try e.zero(count: 200_000, at: 10_000, fua: false, mayTrim: true, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))

        // Bytes 10000..<210000: blocks 1 and 2 whole (dirty zeroes, no data
        // stored), blocks 0 and 3 in part (partial: nothing is read). Nothing
        // reaches the plugin.
        XCTAssertEqual(b.stats, BackendStats())
        XCTAssertEqual(
            e.states(0..<5),
            [
                .partial, .dirtyZero(mayTrim: true), .dirtyZero(mayTrim: true), .partial, .notCached,
            ])
        XCTAssertEqual(e.cachedBytes, 2 * B, "known zeroes take no room")
        XCTAssertEqual(e.held(0), [10_000..<UInt32(B)])
        XCTAssertEqual(e.held(3), [0..<UInt32(210_000 - 3 * B)])
        assertBytes(try e.readBytes(B, 2 * B, b), Array(model[Int(B)..<Int(3 * B)]), "whole zeroed blocks")
        XCTAssertEqual(b.stats.reads, 0, "whole zeroed blocks read from the cache")
        assertBytes(b.allBytes, original, "backend before flush")

        // Flush: the partial blocks write exactly their zeroes, the whole
        // blocks go as one plugin zero, allowed to trim (SPEC §8); no plugin read.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(10_000, B - 10_000), Req(3 * B, 210_000 - 3 * B)])
        XCTAssertEqual(b.stats.zeroLog, [Req(B, 2 * B)])
        XCTAssertEqual(b.stats.zeroesMayTrim, 1)
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(e.states(0..<5), [.notCached, .zero, .zero, .notCached, .notCached])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
    }

    func testReadingAPartlyZeroedBlockCompletesIt() throws {
        let b = MemoryBackend(size: MiB, seed: 77)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        try e.zero(count: 200_000, at: 10_000, fua: false, mayTrim: true, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))
        // Reading everything completes blocks 0 and 3 (one read each) and reads
        // the uncached rest; the zeroes come from the cache.
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
        XCTAssertEqual(b.stats.readLog.sorted(), [Req(0, B), Req(3 * B, B), Req(4 * B, 12 * B)])
        XCTAssertEqual(
            e.states(0..<5),
            [
                .dirty, .dirtyZero(mayTrim: true), .dirtyZero(mayTrim: true), .dirty, .notCached,
            ])
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(0, B), Req(3 * B, B)], "the edges are whole")
        XCTAssertEqual(b.stats.zeroLog, [Req(B, 2 * B)], "the zeroes between them one zero request")
        assertBytes(b.allBytes, model, "backend after flush")
    }

    func testZeroOverCachedDataInWriteback() throws {
        let b = MemoryBackend(size: MiB, seed: 73)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always)
        var model = b.allBytes
        _ = try e.readBytes(0, 4 * B, b)
        let reads = b.stats.reads
        try e.zero(count: 2 * B + 10, at: B - 5, fua: false, mayTrim: true, fastZero: false, backend: b)
        model.replaceSubrange(Int(B) - 5..<Int(3 * B) + 5, with: repeatElement(0, count: Int(2 * B) + 10))
        XCTAssertEqual(b.stats.reads, reads, "cached blocks need no read-modify-write")
        XCTAssertEqual(
            e.states(0..<5),
            [
                .dirty, .dirtyZero(mayTrim: true), .dirtyZero(mayTrim: true), .dirty, .notCached,
            ])
        XCTAssertEqual(e.cachedBytes, 2 * B, "the zeroed blocks gave their room back")
        assertBytes(try e.readBytes(0, 4 * B, b), Array(model[..<Int(4 * B)]))
        try e.flush(backend: b)
        assertBytes(b.allBytes, model)
    }

    func testZeroInWritethroughUsesThePluginZero() throws {
        let b = MemoryBackend(size: MiB, seed: 74, canZero: true)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes
        try e.zero(count: 200_000, at: 10_000, fua: false, mayTrim: true, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))
        XCTAssertEqual(b.stats.zeroLog, [Req(10_000, 200_000)])
        XCTAssertEqual(b.stats.writes, 0)
        // Like a write: the partly zeroed edge blocks are read to be kept whole.
        XCTAssertEqual(Set(b.stats.readLog), [Req(0, B), Req(3 * B, B)])
        XCTAssertEqual(e.states(0..<4), [.clean, .zero, .zero, .clean])
        assertBytes(b.allBytes, model)
        assertBytes(try e.readBytes(0, MiB, b), model)
        XCTAssertEqual(b.stats.reads, 3, "blocks 0...3 from the cache, 4...15 in one plugin read")
    }

    func testZeroInWritethroughWithoutPluginZeroWritesZeroes() throws {
        let b = MemoryBackend(size: MiB, seed: 75, canZero: false)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes
        try e.zero(count: 200_000, at: 10_000, fua: false, mayTrim: true, fastZero: false, backend: b)
        model.replaceSubrange(10_000..<210_000, with: repeatElement(0, count: 200_000))
        XCTAssertEqual(b.stats.writeLog, [Req(10_000, 200_000)])
        XCTAssertEqual(b.stats.zeros, 0)
        assertBytes(b.allBytes, model)
        assertBytes(try e.readBytes(0, MiB, b), model)
    }

    func testZeroWithNativeFUAInWritebackGoesThrough() throws {
        let b = MemoryBackend(size: MiB, seed: 76, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        try e.zero(count: B, at: 2 * B, fua: true, mayTrim: true, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeroLog, [Req(2 * B, B, fua: true)])
        XCTAssertEqual(e.state(ofBlock: 2), .zero)
        assertBytes(b.bytes(2 * B, B), Array(repeating: 0, count: Int(B)))
        assertBytes(try e.readBytes(2 * B, B, b), Array(repeating: 0, count: Int(B)))
    }
}

final class TrimTests: EngineTestCase {
    func testTrimDropsWhollyCoveredBlocksAndReachesTheBackend() throws {
        let b = MemoryBackend(size: MiB, seed: 80)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        try e.cache(count: 4 * B, at: 0, backend: b)  // 0...3 clean
        try e.writeBytes([9, 9], at: 4 * B + 5, b)  // 4 partial
        let dirty = randomBytes(Int(2 * B), seed: 81)
        try e.writeBytes(dirty, at: 5 * B, b)  // 5, 6 dirty
        try e.writeBytes([1, 2, 3], at: 7 * B + 1000, b)  // 7 partial
        model.replaceSubrange(Int(5 * B)..<Int(7 * B), with: dirty)
        model.replaceSubrange(Int(7 * B) + 1000..<Int(7 * B) + 1003, with: [1, 2, 3])
        XCTAssertEqual(e.states(0..<8), [.clean, .clean, .clean, .clean, .partial, .dirty, .dirty, .partial])
        XCTAssertEqual(b.stats.reads, 1, "only the CACHE request read the plugin")

        // Blocks 1 and 2, whole.
        try e.trim(count: 2 * B, at: B, fua: false, backend: b)
        model.replaceSubrange(Int(B)..<Int(3 * B), with: repeatElement(0, count: Int(2 * B)))
        // Blocks 4 (partial), 5 and 6 whole, 50 bytes of 7 (partial, partly covered: it stays).
        try e.trim(count: 3 * B + 50, at: 4 * B, fua: false, backend: b)
        model.replaceSubrange(Int(4 * B)..<Int(7 * B) + 50, with: repeatElement(0, count: Int(3 * B) + 50))

        XCTAssertEqual(b.stats.trimLog, [Req(B, 2 * B), Req(4 * B, 3 * B + 50)])
        XCTAssertEqual(
            e.states(0..<8),
            [
                .clean, .notCached, .notCached, .clean, .notCached, .notCached, .notCached, .partial,
            ])
        XCTAssertEqual(e.held(7), [1000..<1003], "a partly trimmed partial block keeps what it holds")
        XCTAssertEqual(e.dirtyBlockCount, 1)
        XCTAssertEqual(e.cachedBytes, 3 * B)
        // The trimmed blocks read from the backend (zeroes, like the memory plugin).
        let reads = b.stats.reads
        assertBytes(try e.readBytes(B, 2 * B, b), Array(repeating: 0, count: Int(2 * B)))
        assertBytes(try e.readBytes(4 * B, 3 * B, b), Array(repeating: 0, count: Int(3 * B)))
        XCTAssertEqual(b.stats.reads, reads + 2)

        // Only block 7's held bytes are left to write back: one exact write, no read.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(7 * B + 1000, 3)])
        XCTAssertEqual(b.stats.reads, reads + 2)
        XCTAssertEqual(e.state(ofBlock: 7), .notCached)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
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

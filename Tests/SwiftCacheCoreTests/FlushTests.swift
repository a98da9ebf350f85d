// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class FlushTests: EngineTestCase {
    func testWriteBackFailureKeepsTheBlockDirtyAndWritesTheOthers() throws {
        let b = MemoryBackend(size: MiB, seed: 90)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let original = model
        for block: UInt64 in [0, 2, 4] {
            let data = randomBytes(Int(B), seed: 91 + block)
            try e.writeBytes(data, at: block * B, b)
            model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
        }
        b.failWrites(in: 2 * B + 100..<2 * B + 101, .ioError)
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(e.states(0..<5), [.clean, .notCached, .dirty, .notCached, .clean])
        XCTAssertEqual(e.dirtyBlockCount, 1)
        XCTAssertEqual(b.stats.writeLog, [Req(0, B), Req(4 * B, B)])
        XCTAssertEqual(b.stats.failedWrites, 1)
        assertBytes(b.bytes(0, B), Array(model[..<Int(B)]), "block 0")
        assertBytes(b.bytes(2 * B, B), Array(original[Int(2 * B)..<Int(3 * B)]), "block 2 (failed)")
        assertBytes(b.bytes(4 * B, B), Array(model[Int(4 * B)..<Int(5 * B)]), "block 4")
        // The dirty data is still served.
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")

        b.clearFaults()
        let flushes = b.stats.flushes
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(0, B), Req(4 * B, B), Req(2 * B, B)])
        XCTAssertEqual(b.stats.flushes, flushes + 1)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.states(0..<5), [.clean, .notCached, .clean, .notCached, .clean])
        assertBytes(b.allBytes, model, "backend")
    }

    func testFirstErrorIsReportedWhenSeveralWriteBacksFail() throws {
        let b = MemoryBackend(size: MiB, seed: 92)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        for block: UInt64 in [1, 3, 5] {
            let data = randomBytes(Int(B), seed: 93 + block)
            try e.writeBytes(data, at: block * B, b)
            model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
        }
        // Block 1 fails with ENOSPC, then block 3 with EIO: the first error is reported.
        b.failNextWrites(1, .noSpace)
        b.failWrites(in: 3 * B..<4 * B, .ioError)
        assertCacheError(.noSpace) { try e.flush(backend: b) }
        XCTAssertEqual(e.states(1..<6), [.dirty, .notCached, .dirty, .notCached, .clean])
        XCTAssertEqual(b.stats.writeLog, [Req(5 * B, B)])
        b.clearFaults()
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model)
    }

    func testFailureInsideAContiguousRunLosesNothing() throws {
        let b = MemoryBackend(size: 2 * MiB, seed: 94)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let data = randomBytes(Int(16 * B), seed: 95)
        try e.writeBytes(data, at: 0, b)
        model.replaceSubrange(0..<Int(16 * B), with: data)
        b.failWrites(in: 7 * B + 5..<7 * B + 6)
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(e.state(ofBlock: 7), .dirty, "the block that failed to write back stays dirty")
        assertBytes(try e.readBytes(0, 2 * MiB, b), model)
        b.clearFaults()
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model)
    }

    func testPluginFlushFailureIsReported() throws {
        let b = MemoryBackend(size: MiB, seed: 96)
        let e = try makeEngine(b, mode: .writeback)
        let data = randomBytes(Int(B), seed: 97)
        try e.writeBytes(data, at: 0, b)
        b.failNextFlushes(1, .ioError)
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(b.stats.failedFlushes, 1)
        XCTAssertEqual(b.stats.writeLog, [Req(0, B)])
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.flushes, 1)
        assertBytes(b.bytes(0, B), data)
    }

    func testFlushCoalescesContiguousDirtyBlocks() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 98)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        // 16 blocks written one by one in a scrambled order, plus runs 20...23 and 30.
        var order = Array(UInt64(0)..<16) + Array(UInt64(20)..<24) + [30]
        var rng = SplitMix64(seed: 99)
        order.shuffle(using: &rng)
        for block in order {
            let data = randomBytes(Int(B), seed: 100 + block)
            try e.writeBytes(data, at: block * B, b)
            model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
        }
        XCTAssertEqual(e.dirtyBlockCount, 21)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(0, 16 * B), Req(20 * B, 4 * B), Req(30 * B, B)])
        XCTAssertEqual(b.stats.flushes, 1)
        assertBytes(b.allBytes, model)
    }

    func testFlushWithoutPluginFlushStillWritesBack() throws {
        let b = MemoryBackend(size: MiB, seed: 101, canFlush: false)
        let e = try makeEngine(b, mode: .writeback)
        let data = randomBytes(Int(B), seed: 102)
        try e.writeBytes(data, at: 3 * B, b)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(3 * B, B)])
        XCTAssertEqual(b.stats.flushes, 0)
        assertBytes(b.bytes(3 * B, B), data)
    }

    func testWritethroughFlushOnlyFlushesThePlugin() throws {
        let b = MemoryBackend(size: MiB, seed: 103)
        let e = try makeEngine(b, mode: .writethrough)
        try e.writeBytes(randomBytes(1000, seed: 104), at: 0, b)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writes, 1)
        XCTAssertEqual(b.stats.flushes, 1)
    }
}

/// SPEC §8 "No stranded writes": a closing connection writes back what is dirty.
final class ConnectionClosingTests: EngineTestCase {
    func testWritebackWritesEveryDirtyBlockBackAsTheConnectionCloses() throws {
        let b = MemoryBackend(size: MiB, seed: 95, canFlush: false)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        for (offset, count) in [(100, 5000), (3 * B, Int(2 * B)), (9 * B + 7, 300)] as [(UInt64, Int)] {
            let data = randomBytes(count, seed: offset)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        XCTAssertGreaterThan(e.dirtyBlockCount, 0)
        let writes = ConnectionWrites()
        e.connectionWrote(writes)
        try e.connectionClosing(writes, backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.unwritten.blocks, 0)
        XCTAssertEqual(b.stats.flushes, 0, "the client asked for no flush")
        assertBytes(b.allBytes, model)
    }

    func testUnsafeKeepsDirtyBlocksAndCountsWhatWouldBeLost() throws {
        let b = MemoryBackend(size: MiB, seed: 96)
        let e = try makeEngine(b, mode: .unsafe)
        let original = b.allBytes
        try e.writeBytes(randomBytes(Int(B), seed: 1), at: 0, b)
        try e.writeBytes(randomBytes(300, seed: 2), at: 5 * B + 10, b)
        let writes = ConnectionWrites()
        e.connectionWrote(writes)
        try e.connectionClosing(writes, backend: b)
        assertBytes(b.allBytes, original)
        XCTAssertEqual(e.unwritten.blocks, 2)
        XCTAssertEqual(e.unwritten.bytes, B + 300)
    }

    func testAFailedWriteBackIsReportedAndTheBlockStaysDirty() throws {
        let b = MemoryBackend(size: MiB, seed: 97)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes(randomBytes(Int(B), seed: 3), at: 2 * B, b)
        b.failNextWrites(1, .ioError)
        let writes = ConnectionWrites()
        e.connectionWrote(writes)
        assertCacheError(.ioError) { try e.connectionClosing(writes, backend: b) }
        XCTAssertEqual(e.unwritten.blocks, 1)
        XCTAssertEqual(e.unwritten.bytes, B)
    }

    /// Only the last connection open with unflushed writes writes back as
    /// it closes; a reader's close, or a writer's whose writes a flush
    /// covered, writes nothing back.
    func testTheLastWriterToCloseWritesEverythingBack() throws {
        let b = MemoryBackend(size: MiB, seed: 98)
        let e = try makeEngine(b, mode: .writeback)
        let original = b.allBytes
        let first = ConnectionWrites(), second = ConnectionWrites(), reader = ConnectionWrites()
        try e.writeBytes(randomBytes(Int(B), seed: 4), at: 0, b)
        e.connectionWrote(first)
        try e.writeBytes(randomBytes(Int(B), seed: 5), at: 4 * B, b)
        e.connectionWrote(second)
        try e.connectionClosing(reader, backend: b)
        try e.connectionClosing(first, backend: b)
        assertBytes(b.allBytes, original, "a writer is still open: it will write everything back")
        XCTAssertEqual(e.dirtyBlockCount, 2)
        try e.connectionClosing(second, backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0, "the last writer wrote back both")

        try e.writeBytes(randomBytes(Int(B), seed: 6), at: 8 * B, b)
        e.connectionWrote(first)
        e.connectionFlushing(first)
        try e.flush(backend: b)
        try e.writeBytes(randomBytes(Int(B), seed: 7), at: 9 * B, b)  // by a connection still open
        let writes = b.stats.writes
        try e.connectionClosing(first, backend: b)
        XCTAssertEqual(b.stats.writes, writes, "a flush covered this connection's writes")
        XCTAssertEqual(e.dirtyBlockCount, 1)
    }
}

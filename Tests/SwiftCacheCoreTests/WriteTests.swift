// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class WriteTests: EngineTestCase {
    // MARK: writeback

    func testWritebackKeepsWholeBlockWritesUntilFlush() throws {
        let b = MemoryBackend(size: MiB, seed: 20)
        let e = try makeEngine(b, mode: .writeback)
        let original = b.allBytes
        let data = randomBytes(Int(3 * B), seed: 21)
        try e.writeBytes(data, at: B, b)

        XCTAssertEqual(b.stats, BackendStats(), "nothing reaches the backend before a flush")
        XCTAssertEqual(e.states(0..<5), [.notCached, .dirty, .dirty, .dirty, .notCached])
        XCTAssertEqual(e.dirtyBlockCount, 3)
        XCTAssertEqual(e.cachedBytes, 3 * B)
        assertBytes(try e.readBytes(B, 3 * B, b), data, "read back")
        assertBytes(b.allBytes, original, "backend before flush")
        XCTAssertEqual(b.stats.reads, 0)

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(B, 3 * B)])
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(e.states(0..<5), [.notCached, .clean, .clean, .clean, .notCached])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        var model = original
        model.replaceSubrange(Int(B)..<Int(4 * B), with: data)
        assertBytes(b.allBytes, model, "backend after flush")

        // Nothing dirty: a flush only flushes the plugin.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writes, 1)
        XCTAssertEqual(b.stats.flushes, 2)
    }

    func testWritebackPartialWriteOfUncachedBlockReadsNothingAndKeepsItPartial() throws {
        let b = MemoryBackend(size: MiB, seed: 22)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes

        // Part of uncached block 1: no plugin read, the block holds just those bytes.
        let data = randomBytes(1000, seed: 23)
        try e.writeBytes(data, at: B + 5000, b)
        model.replaceSubrange(Int(B) + 5000..<Int(B) + 6000, with: data)
        XCTAssertEqual(b.stats, BackendStats(), "a write in writeback never reaches the plugin")
        XCTAssertEqual(e.states(0..<3), [.notCached, .partial, .notCached])
        XCTAssertEqual(e.held(1), [5000..<6000])
        XCTAssertEqual(e.cachedBytes, B, "a partial block occupies a block")
        XCTAssertEqual(e.dirtyBlockCount, 1)
        // Reading it completes it: one plugin read of the block, then it is whole and dirty.
        assertBytes(try e.readBytes(B, B, b), Array(model[Int(B)..<Int(2 * B)]), "merged block")
        XCTAssertEqual(b.stats.readLog, [Req(B, B)], "the block is read once, to complete it")
        XCTAssertEqual(e.state(ofBlock: 1), .dirty)
        XCTAssertNil(e.held(1))
        assertBytes(try e.readBytes(B + 4000, 3000, b), Array(model[Int(B) + 4000..<Int(B) + 7000]))
        XCTAssertEqual(b.stats.reads, 1, "the completed block is read from the cache")

        // A write straddling blocks 2 and 3: two partial blocks, nothing read.
        let straddle = randomBytes(200, seed: 24)
        try e.writeBytes(straddle, at: 3 * B - 100, b)
        model.replaceSubrange(Int(3 * B) - 100..<Int(3 * B) + 100, with: straddle)
        XCTAssertEqual(b.stats.reads, 1)
        XCTAssertEqual(e.states(0..<5), [.notCached, .dirty, .partial, .partial, .notCached])
        XCTAssertEqual(e.held(2), [UInt32(B) - 100..<UInt32(B)])
        XCTAssertEqual(e.held(3), [0..<100])

        // Partial head and tail with whole blocks between: the edges are partial,
        // the whole blocks dirty, nothing read.
        let wide = randomBytes(Int(3 * B), seed: 25)
        try e.writeBytes(wide, at: 5 * B + 123, b)
        model.replaceSubrange(Int(5 * B) + 123..<Int(8 * B) + 123, with: wide)
        XCTAssertEqual(b.stats.reads, 1)
        XCTAssertEqual(e.states(4..<10), [.notCached, .partial, .dirty, .dirty, .partial, .notCached])
        XCTAssertEqual(e.held(5), [123..<UInt32(B)])
        XCTAssertEqual(e.held(8), [0..<123])

        // A partial write of a block the cache holds whole reads nothing and keeps it dirty.
        try e.writeBytes([9, 9, 9], at: B + 7, b)
        model.replaceSubrange(Int(B) + 7..<Int(B) + 10, with: [9, 9, 9])
        XCTAssertEqual(e.state(ofBlock: 1), .dirty)

        // A write overlapping a held range merges with it.
        let more = randomBytes(250, seed: 26)
        try e.writeBytes(more, at: 3 * B - 300, b)
        model.replaceSubrange(Int(3 * B) - 300..<Int(3 * B) - 50, with: more)
        XCTAssertEqual(e.held(2), [UInt32(B) - 300..<UInt32(B)])

        XCTAssertEqual(b.stats.readLog, [Req(B, B)])
        XCTAssertEqual(b.stats.writes, 0)
        XCTAssertEqual(e.cachedBytes, 7 * B)
        XCTAssertEqual(e.dirtyBlockCount, 7)

        // Flush: each one-range partial block writes exactly its bytes and
        // leaves the cache; whole dirty blocks go in runs. Nothing is read.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(B, B)], "write-back of one-range partial blocks reads nothing")
        XCTAssertEqual(
            b.stats.writeLog.sorted(),
            [
                Req(B, B), Req(3 * B - 300, 300), Req(3 * B, 100),
                Req(5 * B + 123, B - 123), Req(6 * B, 2 * B), Req(8 * B, 123),
            ])
        XCTAssertEqual(
            e.states(0..<10),
            [
                .notCached, .clean, .notCached, .notCached, .notCached,
                .notCached, .clean, .clean, .notCached, .notCached,
            ])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.cachedBytes, 3 * B)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
    }

    func testWritebackPartialWriteOfCleanBlockReadsNothing() throws {
        let b = MemoryBackend(size: MiB, seed: 26)
        let e = try makeEngine(b, mode: .writeback)
        try e.cache(count: B, at: 0, backend: b)
        XCTAssertEqual(b.stats.reads, 1)
        try e.writeBytes([1, 2, 3, 4], at: 1000, b)
        XCTAssertEqual(b.stats.reads, 1)
        XCTAssertEqual(e.state(ofBlock: 0), .dirty)
        var model = b.bytes(0, B)
        model.replaceSubrange(1000..<1004, with: [1, 2, 3, 4])
        assertBytes(try e.readBytes(0, B, b), model)
    }

    func testWritebackPartialWriteSucceedsWhileThePluginFailsReadsAndAFailedCompletionChangesNothing() throws {
        let b = MemoryBackend(size: MiB, seed: 27)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        b.failNextReads(1000, .ioError)

        // Partial writes need no plugin read: they succeed however the plugin reads.
        try e.writeBytes([1, 2, 3], at: 100, b)
        try e.writeBytes([4, 5], at: 5000, b)
        model.replaceSubrange(100..<103, with: [1, 2, 3])
        model.replaceSubrange(5000..<5002, with: [4, 5])
        XCTAssertEqual(b.stats.failedReads, 0, "the writes did not try to read")
        XCTAssertEqual(e.state(ofBlock: 0), .partial)
        XCTAssertEqual(e.held(0), [100..<103, 5000..<5002])

        // Any read of the block, even of held bytes only, and CACHE must
        // complete it first: that read fails, and nothing changes.
        assertCacheError(.ioError) { _ = try e.readBytes(0, B, b) }
        assertCacheError(.ioError) { _ = try e.readBytes(100, 3, b) }
        assertCacheError(.ioError) { try e.cache(count: 10, at: 5000, backend: b) }
        XCTAssertEqual(b.stats.failedReads, 3)
        // A flush needs the block whole (two ranges): its completion fails too.
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(b.stats.failedReads, 4)
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(b.stats.writes, 0)
        XCTAssertEqual(e.state(ofBlock: 0), .partial)
        XCTAssertEqual(e.held(0), [100..<103, 5000..<5002])
        XCTAssertEqual(e.dirtyBlockCount, 1)
        XCTAssertEqual(e.cachedBytes, B)

        // Once reads work again, the data is right.
        b.clearFaults()
        assertBytes(try e.readBytes(0, B, b), Array(model[..<Int(B)]), "completed block")
        XCTAssertEqual(b.stats.readLog, [Req(0, B)])
        XCTAssertEqual(e.state(ofBlock: 0), .dirty)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(0, B)])
        XCTAssertEqual(b.stats.reads, 1)
        XCTAssertEqual(e.state(ofBlock: 0), .clean)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    // MARK: writethrough

    func testWritethroughWritesReachTheBackendAtOnce() throws {
        let b = MemoryBackend(size: MiB, seed: 30)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes

        let data = randomBytes(Int(2 * B), seed: 31)
        try e.writeBytes(data, at: 0, b)
        model.replaceSubrange(0..<Int(2 * B), with: data)
        XCTAssertEqual(b.stats.writeLog, [Req(0, 2 * B)])
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.states(0..<3), [.clean, .clean, .notCached], "whole blocks are kept as clean copies")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after the write")
        assertBytes(try e.readBytes(0, 2 * B, b), data)
        XCTAssertEqual(b.stats.reads, 0)

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writes, 1, "a flush has nothing to write back")
        XCTAssertEqual(b.stats.flushes, 1)
    }

    /// SPEC §4: writethrough stores what it writes, and partial blocks are
    /// read-modify-written: the plugin gets the client's bytes as they are,
    /// and a partly written block the cache lacks is read to be kept whole.
    func testWritethroughPartialWritesReadModifyWriteUncachedBlocks() throws {
        let b = MemoryBackend(size: MiB, seed: 32)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes

        // Partial write of an uncached block: passed through as it is, and
        // the block read once to be cached whole.
        let data = randomBytes(1000, seed: 33)
        try e.writeBytes(data, at: 2 * B + 5000, b)
        model.replaceSubrange(Int(2 * B) + 5000..<Int(2 * B) + 6000, with: data)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B + 5000, 1000)])
        XCTAssertEqual(b.stats.readLog, [Req(2 * B, B)])
        XCTAssertEqual(e.state(ofBlock: 2), .clean)
        assertBytes(try e.readBytes(2 * B, B, b), Array(model[Int(2 * B)..<Int(3 * B)]), "from the cache")
        XCTAssertEqual(b.stats.reads, 1)

        // Partial head and tail with whole blocks between: one plugin write of
        // the bytes as they are; the two edge blocks are read; all are clean.
        let wide = randomBytes(Int(3 * B), seed: 34)
        try e.writeBytes(wide, at: 4 * B + 10, b)
        model.replaceSubrange(Int(4 * B) + 10..<Int(7 * B) + 10, with: wide)
        XCTAssertEqual(b.stats.writeLog.last, Req(4 * B + 10, 3 * B))
        XCTAssertEqual(Set(b.stats.readLog.dropFirst()), [Req(4 * B, B), Req(7 * B, B)])
        XCTAssertEqual(e.states(4..<8), [.clean, .clean, .clean, .clean])
        assertBytes(try e.readBytes(4 * B, 4 * B, b), Array(model[Int(4 * B)..<Int(8 * B)]), "from the cache")
        XCTAssertEqual(b.stats.reads, 3)

        // Partial write of a cached block: it is updated in place and stays clean.
        try e.cache(count: B, at: 0, backend: b)
        XCTAssertEqual(b.stats.reads, 4)
        try e.writeBytes([5, 6, 7], at: 100, b)
        model.replaceSubrange(100..<103, with: [5, 6, 7])
        XCTAssertEqual(b.stats.writeLog.last, Req(100, 3))
        XCTAssertEqual(b.stats.reads, 4)
        XCTAssertEqual(e.state(ofBlock: 0), .clean)
        assertBytes(try e.readBytes(0, B, b), Array(model[..<Int(B)]), "updated clean copy")
        XCTAssertEqual(b.stats.reads, 4)

        assertBytes(b.allBytes, model, "backend")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
        XCTAssertEqual(e.dirtyBlockCount, 0)
    }

    /// The read of a read-modify-write is optional: if it fails, the block
    /// is left out of the cache and the write still succeeds (rewriting a
    /// bad sector must work).
    func testWritethroughPartialWriteWhoseBlockCannotBeReadStillSucceeds() throws {
        let b = MemoryBackend(size: MiB, seed: 40)
        let e = try makeEngine(b, mode: .writethrough)
        var model = b.allBytes
        b.failNextReads(1, .ioError)
        let data = randomBytes(512, seed: 41)
        try e.writeBytes(data, at: 3 * B + 1024, b)
        model.replaceSubrange(Int(3 * B) + 1024..<Int(3 * B) + 1536, with: data)
        XCTAssertEqual(b.stats.failedReads, 1)
        XCTAssertEqual(b.stats.writeLog, [Req(3 * B + 1024, 512)])
        XCTAssertEqual(e.state(ofBlock: 3), .notCached)
        assertBytes(b.allBytes, model, "backend")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
    }

    /// A FUA write in writeback goes through to the plugin but never reads
    /// it: a partly written block the cache lacks is left out.
    func testFUAPartialWriteInWritebackDoesNotReadTheBackend() throws {
        let b = MemoryBackend(size: MiB, seed: 38, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        let data = randomBytes(1000, seed: 39)
        try e.writeBytes(data, at: 2 * B + 5000, fua: true, b)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B + 5000, 1000, fua: true)])
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 2), .notCached)
        assertBytes(try e.readBytes(2 * B + 5000, 1000, b), data)
    }

    func testWritethroughWriteFailureLeavesNoNewDataMarkedClean() throws {
        let b = MemoryBackend(size: MiB, seed: 35)
        let e = try makeEngine(b, mode: .writethrough, cacheOnRead: .always)
        let original = b.allBytes
        _ = try e.readBytes(0, 4 * B, b)
        XCTAssertEqual(e.states(0..<4), [.clean, .clean, .clean, .clean])

        b.failWrites(in: 0..<MiB, .noSpace)
        // Partial head (cached), whole block 1, partial block 2 (cached), and whole uncached block 5.
        assertCacheError(.noSpace) { try e.writeBytes(randomBytes(150_000, seed: 36), at: 1000, b) }
        assertCacheError(.noSpace) { try e.writeBytes(randomBytes(Int(B), seed: 37), at: 5 * B, b) }
        XCTAssertEqual(b.stats.writes, 0)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        for block in UInt64(0)..<6 {
            XCTAssertNotEqual(e.state(ofBlock: block), .dirty, "block \(block)")
        }
        // Whatever the cache kept, reads give what the backend has.
        assertBytes(try e.readBytes(0, MiB, b), original, "read back after the failed writes")
        assertBytes(b.allBytes, original, "backend")
        b.clearFaults()
        assertBytes(try e.readBytes(0, MiB, b), original, "read back after clearing the fault")
    }

    func testWritethroughTornWriteFailureDropsCleanCopies() throws {
        // The plugin stores half of the write, then fails: the clean copies
        // the write touched no longer match it and must not be served.
        let b = MemoryBackend(size: MiB, seed: 38)
        let e = try makeEngine(b, mode: .writethrough, cacheOnRead: .always)
        _ = try e.readBytes(0, 4 * B, b)
        b.setFaults {
            $0.failWrites = 1
            $0.writeError = .ioError
            $0.tornWrites = true
        }
        let data = randomBytes(Int(3 * B), seed: 39)
        assertCacheError(.ioError) { try e.writeBytes(data, at: 1000, b) }
        XCTAssertEqual(b.stats.failedWrites, 1)
        assertBytes(b.bytes(1000, 3 * B / 2), Array(data[..<Int(3 * B / 2)]), "the plugin kept the first half")
        assertBytes(try e.readBytes(0, 4 * B, b), b.bytes(0, 4 * B), "read back equals what the plugin holds")
    }

    func testWritebackFUATornWriteFailureDropsCleanCopies() throws {
        let b = MemoryBackend(size: MiB, seed: 138, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always)
        _ = try e.readBytes(0, 4 * B, b)
        b.setFaults {
            $0.failWrites = 1
            $0.writeError = .ioError
            $0.tornWrites = true
        }
        let data = randomBytes(Int(3 * B), seed: 139)
        assertCacheError(.ioError) { try e.writeBytes(data, at: 1000, fua: true, b) }
        assertBytes(b.bytes(1000, 3 * B / 2), Array(data[..<Int(3 * B / 2)]), "the plugin kept the first half")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(try e.readBytes(0, 4 * B, b), b.bytes(0, 4 * B), "read back equals what the plugin holds")
    }

    // MARK: unsafe

    func testUnsafeFlushIsANoOp() throws {
        let b = MemoryBackend(size: MiB, seed: 40)
        let e = try makeEngine(b, mode: .unsafe)
        let original = b.allBytes
        let data = randomBytes(Int(2 * B), seed: 41)
        try e.writeBytes(data, at: 3 * B, b)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats, BackendStats())
        XCTAssertEqual(e.states(3..<5), [.dirty, .dirty])
        XCTAssertEqual(e.dirtyBlockCount, 2)
        assertBytes(try e.readBytes(3 * B, 2 * B, b), data)
        assertBytes(b.allBytes, original)
    }

    // MARK: FUA

    func testFUANativeInWritebackGoesThroughAtOnce() throws {
        let b = MemoryBackend(size: MiB, seed: 50, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes

        let block0 = randomBytes(Int(B), seed: 51)
        try e.writeBytes(block0, at: 0, fua: true, b)
        model.replaceSubrange(0..<Int(B), with: block0)
        XCTAssertEqual(b.stats.writeLog, [Req(0, B, fua: true)])
        XCTAssertEqual(b.stats.flushes, 0)
        XCTAssertEqual(e.state(ofBlock: 0), .clean)
        assertBytes(b.bytes(0, B), block0)

        // Partial FUA write of an uncached block: through, nothing read, not cached.
        try e.writeBytes([1, 2, 3], at: 70_000, fua: true, b)
        model.replaceSubrange(70_000..<70_003, with: [1, 2, 3])
        XCTAssertEqual(b.stats.writeLog.last, Req(70_000, 3, fua: true))
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 1), .notCached)

        // Partial FUA write of a dirty block: the plugin gets the bytes, the block stays dirty.
        let block2 = randomBytes(Int(B), seed: 52)
        try e.writeBytes(block2, at: 2 * B, b)
        model.replaceSubrange(Int(2 * B)..<Int(3 * B), with: block2)
        try e.writeBytes([7, 7], at: 2 * B + 10, fua: true, b)
        model.replaceSubrange(Int(2 * B) + 10..<Int(2 * B) + 12, with: [7, 7])
        XCTAssertEqual(b.stats.writeLog.last, Req(2 * B + 10, 2, fua: true))
        XCTAssertEqual(e.state(ofBlock: 2), .dirty)
        assertBytes(b.bytes(2 * B + 10, 2), [7, 7])
        assertBytes(try e.readBytes(2 * B, B, b), Array(model[Int(2 * B)..<Int(3 * B)]))

        // A whole-block FUA write over a dirty block makes it clean.
        let block2b = randomBytes(Int(B), seed: 53)
        try e.writeBytes(block2b, at: 2 * B, fua: true, b)
        model.replaceSubrange(Int(2 * B)..<Int(3 * B), with: block2b)
        XCTAssertEqual(e.state(ofBlock: 2), .clean)
        XCTAssertEqual(b.stats.flushes, 0)
        assertBytes(b.allBytes, model)
        XCTAssertEqual(e.dirtyBlockCount, 0)
    }

    func testFUAEmulatedInWritebackBecomesAFlush() throws {
        let b = MemoryBackend(size: MiB, seed: 54, fuaMode: .emulate)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let block5 = randomBytes(Int(B), seed: 55)
        try e.writeBytes(block5, at: 5 * B, b)
        model.replaceSubrange(Int(5 * B)..<Int(6 * B), with: block5)
        XCTAssertEqual(b.stats.writes, 0)

        let block0 = randomBytes(Int(B), seed: 56)
        try e.writeBytes(block0, at: 0, fua: true, b)
        model.replaceSubrange(0..<Int(B), with: block0)
        // Every dirty block is written back (without FUA), then the plugin is flushed once.
        XCTAssertEqual(b.stats.writeLog, [Req(0, B), Req(5 * B, B)])
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(e.states(0..<6), [.clean, .notCached, .notCached, .notCached, .notCached, .clean])
        assertBytes(b.allBytes, model)
    }

    func testFUAEmulatedInWritethroughBecomesAFlush() throws {
        let b = MemoryBackend(size: MiB, seed: 57, fuaMode: .emulate)
        let e = try makeEngine(b, mode: .writethrough)
        try e.writeBytes([1, 2, 3], at: 10, fua: true, b)
        XCTAssertEqual(b.stats.writeLog, [Req(10, 3)])
        XCTAssertEqual(b.stats.flushes, 1)
        assertBytes(b.bytes(10, 3), [1, 2, 3])
    }

    func testFUAInUnsafeModeWritesNothingAndFlushesNothing() throws {
        let b = MemoryBackend(size: MiB, seed: 58, fuaMode: .native)
        let e = try makeEngine(b, mode: .unsafe)
        var model = b.allBytes
        let data = randomBytes(Int(B), seed: 59)
        try e.writeBytes(data, at: B, fua: true, b)
        try e.writeBytes([1], at: 10, fua: true, b)
        model.replaceSubrange(Int(B)..<Int(2 * B), with: data)
        model[10] = 1
        // FUA is ignored: the writes stay in the cache like any other (the
        // partial one as a partial block), and nothing reaches the plugin.
        XCTAssertEqual(b.stats, BackendStats())
        XCTAssertEqual(e.states(0..<2), [.partial, .dirty])
        XCTAssertEqual(e.held(0), [10..<11])
        assertBytes(try e.readBytes(B, B, b), data)
        XCTAssertEqual(b.stats.reads, 0)
        assertBytes(try e.readBytes(0, B, b), Array(model[..<Int(B)]))
        XCTAssertEqual(b.stats.readLog, [Req(0, B)], "reading the partial block completes it")
        XCTAssertEqual(e.states(0..<2), [.dirty, .dirty])
        XCTAssertEqual(b.stats.writes + b.stats.flushes, 0)
    }

    func testWritesBeyondTheEndAreRefused() throws {
        let b = MemoryBackend(size: MiB, seed: 60)
        let e = try makeEngine(b, mode: .writeback)
        assertCacheError(.invalidArgument) { try e.writeBytes([1, 2], at: MiB - 1, b) }
        assertCacheError(.invalidArgument) {
            try e.zero(count: 2, at: MiB - 1, fua: false, mayTrim: true, fastZero: false, backend: b)
        }
        assertCacheError(.invalidArgument) { try e.trim(count: 2, at: MiB - 1, fua: false, backend: b) }
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(b.stats, BackendStats())
    }
}

/// Requests larger than nbdkit lets a filter send to the plugin (64 MiB for
/// reads and writes) are split; the backend records any that is not.
final class LargeRequestTests: EngineTestCase {
    func testRequestsOverSixtyFourMiBAreSplit() throws {
        let size: UInt64 = 72 * MiB
        for mode in [CacheMode.writeback, .writethrough] {
            let b = MemoryBackend(bytes: [UInt8](repeating: 0, count: Int(size)))
            let e = try makeEngine(b, mode: mode, cacheOnRead: .always)
            let data = randomBytes(Int(size), seed: 170)
            try e.writeBytes(data, at: 0, b)
            try e.flush(backend: b)
            XCTAssertEqual(b.stats.writeBytes, size, "\(mode)")
            XCTAssertLessThanOrEqual(b.stats.writeLog.map(\.length).max() ?? 0, 64 * MiB, "\(mode)")
            assertBytes(b.allBytes, data, "\(mode): backend")
            let b2 = MemoryBackend(bytes: data)
            let e2 = try makeEngine(b2, mode: mode, cacheOnRead: mode == .writeback ? .always : .never)
            assertBytes(try e2.readBytes(0, size, b2), data, "\(mode): read")
            XCTAssertEqual(b2.stats.readBytes, size, "\(mode)")
            XCTAssertGreaterThan(b2.stats.reads, 1, "\(mode)")
        }
    }
}

/// Large writethrough writes store their cache copy on a second thread while
/// the plugin takes the write (writeBackThreads > 1 stands for nbdkit's
/// parallel thread model).
final class OverlappedWritethroughTests: EngineTestCase {
    func testLargeWritethroughWriteOnTwoThreads() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 71)
        let e = try makeEngine(b, mode: .writethrough, cacheOnRead: .always, writeBackThreads: 4)
        _ = try e.readBytes(0, 2 * B, b)  // blocks 0, 1 clean
        var model = b.allBytes
        let data = randomBytes(Int(MiB), seed: 72)  // blocks 0...16, partial at both ends
        try e.writeBytes(data, at: 1000, b)
        model.replaceSubrange(1000..<1000 + Int(MiB), with: data)
        XCTAssertEqual(b.stats.writes, 1, "one plugin write per client write")
        assertBytes(b.allBytes, model, "backend")
        XCTAssertEqual(e.dirtyBlockCount, 0, "nothing is left dirty")
        XCTAssertEqual(e.states(0..<2), [.clean, .clean], "the cached head block stays a clean copy")
        XCTAssertEqual(e.state(ofBlock: 16), .clean, "a partly written uncached block is read and kept")
        let reads = b.stats.reads
        assertBytes(try e.readBytes(0, 17 * B, b), Array(model[..<Int(17 * B)]), "read back from the cache")
        XCTAssertEqual(b.stats.reads, reads, "blocks 0...16 were all cached")
    }

    func testLargeWritethroughFailureOnTwoThreadsKeepsNoNewDataAsClean() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 73)
        let e = try makeEngine(b, mode: .writethrough, cacheOnRead: .always, writeBackThreads: 4)
        _ = try e.readBytes(0, 4 * B, b)
        let original = b.allBytes
        b.failWrites(in: 0..<4 * MiB, .noSpace)
        assertCacheError(.noSpace) { try e.writeBytes(randomBytes(Int(MiB), seed: 74), at: 1000, b) }
        XCTAssertEqual(e.dirtyBlockCount, 0)
        b.clearFaults()
        assertBytes(try e.readBytes(0, 2 * MiB, b), Array(original[..<Int(2 * MiB)]), "reads give what the plugin has")
    }
}

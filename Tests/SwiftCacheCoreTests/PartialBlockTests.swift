// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

final class HeldRangesTests: XCTestCase {
    func testInsertKeepsRangesSortedDisjointAndMerged() {
        var held = HeldRanges(500..<600)
        XCTAssertEqual(held.ranges, [500..<600])
        held.insert(100..<200)  // before
        held.insert(900..<1000)  // after
        XCTAssertEqual(held.ranges, [100..<200, 500..<600, 900..<1000])
        held.insert(550..<700)  // overlaps one: merged
        XCTAssertEqual(held.ranges, [100..<200, 500..<700, 900..<1000])
        held.insert(700..<710)  // touches the end of one: merged
        XCTAssertEqual(held.ranges, [100..<200, 500..<710, 900..<1000])
        held.insert(90..<100)  // touches the start of one: merged
        XCTAssertEqual(held.ranges, [90..<200, 500..<710, 900..<1000])
        held.insert(520..<530)  // inside one: nothing changes
        XCTAssertEqual(held.ranges, [90..<200, 500..<710, 900..<1000])
        held.insert(201..<499)  // between two, touching neither
        XCTAssertEqual(held.ranges, [90..<200, 201..<499, 500..<710, 900..<1000])
        held.insert(150..<950)  // bridges all
        XCTAssertEqual(held.ranges, [90..<1000])
        held.insert(0..<10)
        held.insert(20..<30)
        held.insert(10..<20)  // fills the gap exactly: three merge
        XCTAssertEqual(held.ranges, [0..<30, 90..<1000])
        held.insert(0..<2000)  // covers everything
        XCTAssertEqual(held.ranges, [0..<2000])
    }

    func testInsertingLeavesTheOriginalAlone() {
        let held = HeldRanges(10..<20)
        let more = held.inserting(30..<40)
        XCTAssertEqual(held.ranges, [10..<20])
        XCTAssertEqual(more.ranges, [10..<20, 30..<40])
        XCTAssertEqual(HeldRanges.limit, 16)
    }

    func testGapsAndCovers() {
        var held = HeldRanges(100..<200)
        held.insert(300..<400)
        XCTAssertEqual(held.gaps(1000), [0..<100, 200..<300, 400..<1000])
        XCTAssertEqual(held.gaps(250), [0..<100, 200..<250], "ranges past the length are ignored")
        XCTAssertFalse(held.covers(1000))

        var ends = HeldRanges(0..<100)
        ends.insert(900..<1000)
        XCTAssertEqual(ends.gaps(1000), [100..<900])
        XCTAssertFalse(ends.covers(1000))

        XCTAssertEqual(HeldRanges(0..<1000).gaps(1000), [])
        XCTAssertTrue(HeldRanges(0..<1000).covers(1000))
        XCTAssertTrue(HeldRanges(0..<16960).covers(16960), "a short last block")
        XCTAssertFalse(HeldRanges(0..<16960).covers(65536))
        XCTAssertFalse(HeldRanges(1..<1000).covers(1000))
        XCTAssertFalse(HeldRanges(0..<999).covers(1000))
        XCTAssertEqual(HeldRanges(1..<999).gaps(1000), [0..<1, 999..<1000])
    }

    /// Random inserts against a bitmap: the ranges are the maximal runs of
    /// held bytes, the gaps the rest.
    func testRandomInsertsMatchABitmap() {
        var rng = SplitMix64(seed: 4242)
        let length: UInt32 = 4096
        for round in 0..<300 {
            var bits = [Bool](repeating: false, count: Int(length))
            var held: HeldRanges?
            for _ in 0..<(1 + rng.next() % 14) {
                let a = UInt32(rng.next() % UInt64(length))
                let z = a + 1 + UInt32(rng.next() % UInt64(min(400, length - a)))
                if held == nil { held = HeldRanges(a..<z) } else { held!.insert(a..<z) }
                for i in a..<z { bits[Int(i)] = true }
            }
            var runs: [Range<UInt32>] = [], gaps: [Range<UInt32>] = []
            var i: UInt32 = 0
            while i < length {
                var j = i
                while j < length && bits[Int(j)] == bits[Int(i)] { j += 1 }
                if bits[Int(i)] { runs.append(i..<j) } else { gaps.append(i..<j) }
                i = j
            }
            XCTAssertEqual(held!.ranges, runs, "round \(round)")
            XCTAssertEqual(held!.gaps(length), gaps, "round \(round)")
            XCTAssertEqual(held!.covers(length), gaps.isEmpty, "round \(round)")
        }
    }
}

/// Partial blocks (writeback and unsafe): a write never reads the plugin; a
/// block written in part keeps the ranges it holds until a read completes it
/// or a write-back sends them.
final class PartialBlockTests: EngineTestCase {
    // MARK: Writes

    func testRandom4KWritesOverAColdCacheNeverReadThePlugin() throws {
        let b = MemoryBackend(size: 16 * MiB, seed: 400)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        var rng = SplitMix64(seed: 401)
        for i in 0..<600 {
            let offset = Int(rng.next() % (16 * MiB / 4096)) * 4096
            let data = randomBytes(4096, seed: 1000 + UInt64(i))
            try e.writeBytes(data, at: UInt64(offset), b)
            model.replaceSubrange(offset..<offset + 4096, with: data)
        }
        // Block 10 written whole in 16 pieces, out of order: dirty, nothing read.
        for piece in [3, 0, 15, 7, 1, 2, 14, 4, 5, 6, 13, 8, 9, 12, 10, 11] {
            let offset = Int(10 * B) + piece * 4096
            let data = randomBytes(4096, seed: 5000 + UInt64(piece))
            try e.writeBytes(data, at: UInt64(offset), b)
            model.replaceSubrange(offset..<offset + 4096, with: data)
        }
        XCTAssertEqual(b.stats, BackendStats(), "616 writes, no plugin request at all")
        let blocks = UInt64(256)
        let states = e.states(0..<blocks)
        XCTAssertFalse(states.contains(.clean))
        XCTAssertTrue(states.contains(.notCached))
        XCTAssertEqual(states[10], .dirty, "ranges that cover the block make it dirty")
        XCTAssertGreaterThan((0..<blocks).filter { (e.held($0)?.count ?? 0) >= 2 }.count, 10)
        XCTAssertGreaterThan((0..<blocks).filter { e.held($0)?.count == 1 }.count, 0)

        // What a flush must cost: a one-range partial block is one exact
        // write; a block of 2+ ranges is one read, then written with its
        // dirty neighbours as one run.
        var expectedReads: [Req] = [], expectedWrites: [Req] = []
        var runStart: UInt64?
        for block in 0...blocks {
            let held = block < blocks ? e.held(block) : nil
            let joinsRun = block < blocks && (states[Int(block)] == .dirty || (held?.count ?? 0) >= 2)
            if let held, held.count >= 2 { expectedReads.append(Req(block * B, B)) }
            if let held, held.count == 1 {
                expectedWrites.append(Req(block * B + UInt64(held[0].lowerBound), UInt64(held[0].count)))
            }
            if joinsRun, runStart == nil { runStart = block }
            if !joinsRun, let start = runStart {
                expectedWrites.append(Req(start * B, (block - start) * B))
                runStart = nil
            }
        }
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog.sorted(), expectedReads)
        XCTAssertEqual(b.stats.writeLog.sorted(), expectedWrites.sorted())
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.partialBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, 16 * MiB, b), model, "read back")
    }

    func testSeventeenDisjointRangesCompleteTheBlockInstead() throws {
        let b = MemoryBackend(size: MiB, seed: 402)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        func write(_ range: Range<Int>, in block: Int) throws {
            let data = randomBytes(range.count, seed: UInt64(block * 100_000 + range.lowerBound))
            try e.writeBytes(data, at: UInt64(block * Int(B) + range.lowerBound), b)
            model.replaceSubrange(block * Int(B) + range.lowerBound..<block * Int(B) + range.upperBound, with: data)
        }
        for i in 0..<16 { try write(i * 1000..<i * 1000 + 10, in: 1) }
        XCTAssertEqual(e.held(1)?.count, 16)
        XCTAssertEqual(b.stats.reads, 0)
        // Writes that touch or bridge ranges do not add one: no read.
        try write(3010..<3020, in: 1)
        XCTAssertEqual(e.held(1)?.count, 16)
        try write(4005..<5005, in: 1)
        XCTAssertEqual(e.held(1)?.count, 15)
        try write(20_000..<20_010, in: 1)
        XCTAssertEqual(e.held(1)?.count, 16)
        XCTAssertEqual(e.state(ofBlock: 1), .partial)
        XCTAssertEqual(b.stats.reads, 0)

        // A 17th range: the block is completed from the plugin first.
        try write(30_000..<30_010, in: 1)
        XCTAssertEqual(b.stats.readLog, [Req(B, B)])
        XCTAssertEqual(e.state(ofBlock: 1), .dirty)
        XCTAssertNil(e.held(1))
        assertBytes(try e.readBytes(B, B, b), Array(model[Int(B)..<Int(2 * B)]), "completed block")
        XCTAssertEqual(b.stats.reads, 1)

        // The same as the tail edge of a longer write: block 3 completed, block 2 whole.
        for i in 0..<16 { try write(51_000 + i * 900..<51_000 + i * 900 + 10, in: 3) }
        XCTAssertEqual(e.held(3)?.count, 16)
        try write(Int(B) - 5000..<Int(B), in: 2)  // block 2 partial (one range)
        let long = randomBytes(Int(B) + 50_000, seed: 403)
        try e.writeBytes(long, at: 2 * B, b)
        model.replaceSubrange(Int(2 * B)..<Int(3 * B) + 50_000, with: long)
        XCTAssertEqual(b.stats.readLog, [Req(B, B), Req(3 * B, B)])
        XCTAssertEqual(e.states(1..<4), [.dirty, .dirty, .dirty])

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(B, 3 * B)])
        XCTAssertEqual(b.stats.reads, 2)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    // MARK: Reads

    func testReadingAPartialBlockIsOneReadAndMergesTheBytes() throws {
        // Each way of touching the partial block 2: (cache-on-read, read offset, read count; nil = CACHE).
        let cases: [(CacheOnRead, UInt64, UInt64?)] = [
            (.never, 2 * B + 1500, 100),  // held bytes only
            (.never, 2 * B + 5000, 100),  // a gap only
            (.never, 2 * B, B),  // the whole block
            (.always, 2 * B + 5000, 100),
            (.always, B + 100, 2 * B),  // uncached neighbours too
            (.never, B + 100, 2 * B),
            (.never, 2 * B + 10, nil),  // NBD_CMD_CACHE
        ]
        for (n, (cacheOnRead, offset, count)) in cases.enumerated() {
            let what = "case \(n)"
            let b = MemoryBackend(size: MiB, seed: 404 + UInt64(n))
            let e = try makeEngine(b, mode: .writeback, cacheOnRead: cacheOnRead)
            var model = b.allBytes
            for range in [10..<20, 1000..<3000, 60_000..<Int(B)] {
                let data = randomBytes(range.count, seed: UInt64(range.lowerBound))
                try e.writeBytes(data, at: 2 * B + UInt64(range.lowerBound), b)
                model.replaceSubrange(Int(2 * B) + range.lowerBound..<Int(2 * B) + range.upperBound, with: data)
            }
            XCTAssertEqual(e.held(2), [10..<20, 1000..<3000, 60_000..<UInt32(B)], what)
            // The plugin's copy of the held bytes changes: the cache's are newer
            // and must survive the completion (only the gaps are filled).
            b.poke(Array(repeating: 0xEE, count: 2000), at: 2 * B + 1000)

            if let count {
                assertBytes(try e.readBytes(offset, count, b), Array(model[Int(offset)..<Int(offset + count)]), what)
            } else {
                try e.cache(count: 10, at: offset, backend: b)
            }
            let completion = Req(2 * B, B)
            XCTAssertEqual(
                b.stats.readLog.filter { $0 == completion }, [completion],
                "\(what): one read completes the block")
            let touching2 = b.stats.readLog.filter { $0.offset <= 2 * B && $0.offset + $0.length > 2 * B }
            XCTAssertEqual(touching2, [completion], "\(what): no other read of block 2")
            XCTAssertEqual(e.state(ofBlock: 2), .dirty, what)
            XCTAssertNil(e.held(2), what)
            if cacheOnRead == .always && count == 2 * B {
                XCTAssertEqual(b.stats.readLog.sorted(), [Req(B, B), Req(2 * B, B), Req(3 * B, B)], what)
                XCTAssertEqual(e.states(1..<4), [.clean, .dirty, .clean], what)
            }
            let reads = b.stats.reads
            assertBytes(try e.readBytes(2 * B, B, b), Array(model[Int(2 * B)..<Int(3 * B)]), "\(what): merged block")
            XCTAssertEqual(b.stats.reads, reads, "\(what): the completed block reads from the cache")

            try e.flush(backend: b)
            XCTAssertEqual(b.stats.writeLog, [Req(2 * B, B)], what)
            assertBytes(b.bytes(2 * B, B), Array(model[Int(2 * B)..<Int(3 * B)]), "\(what): backend")
        }
    }

    func testSimultaneousReadsOfAPartialBlockCompleteItOnce() throws {
        let b = MemoryBackend(size: MiB, seed: 420)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        try e.writeBytes([1, 2, 3], at: 3 * B + 500, b)
        model.replaceSubrange(Int(3 * B) + 500..<Int(3 * B) + 503, with: [1, 2, 3])
        let expected = model
        b.setReadDelay(microseconds: 20_000)
        let start = Locked(0)
        let failures = Locked<[String]>([])
        runThreads(8) { t in
            start.withLock { $0 += 1 }
            while start.withLock({ $0 }) < 8 { sched_yield() }
            let offset = 3 * Int(B) + t * 300
            do {
                let got = try e.readBytes(UInt64(offset), 1000, b)
                if got != Array(expected[offset..<offset + 1000]) {
                    failures.withLock { $0.append("thread \(t): wrong data") }
                }
            } catch {
                failures.withLock { $0.append("thread \(t): \(error)") }
            }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertEqual(b.stats.readLog, [Req(3 * B, B)])
        XCTAssertEqual(e.state(ofBlock: 3), .dirty)
    }

    // MARK: Write-back

    func testOneRangeFlushesAsOneExactWriteAndLeavesTheCache() throws {
        let b = MemoryBackend(size: MiB, seed: 430)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        func write(_ count: Int, at offset: UInt64) throws {
            let data = randomBytes(count, seed: offset)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        try write(1000, at: 3 * B + 100)  // middle of block 3
        try write(10, at: 5 * B)  // start of block 5
        try write(10, at: 7 * B - 10)  // end of block 6
        try write(Int(B), at: 7 * B)  // block 7 whole, between
        try write(20, at: 8 * B + 3)  // block 8, after dirty block 7
        XCTAssertEqual(e.states(3..<9), [.partial, .notCached, .partial, .partial, .dirty, .partial])
        XCTAssertEqual(e.cachedBytes, 5 * B)

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(
            b.stats.writeLog.sorted(),
            [
                Req(3 * B + 100, 1000), Req(5 * B, 10), Req(7 * B - 10, 10),
                Req(7 * B, B), Req(8 * B + 3, 20),
            ])
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(e.states(3..<9), [.notCached, .notCached, .notCached, .notCached, .clean, .notCached])
        XCTAssertEqual(e.cachedBytes, B)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.partialBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        // The written-back block now reads from the plugin (cache-on-read is off).
        assertBytes(try e.readBytes(3 * B, B, b), Array(model[Int(3 * B)..<Int(4 * B)]))
        XCTAssertEqual(b.stats.readLog, [Req(3 * B, B)])
        XCTAssertEqual(e.state(ofBlock: 3), .notCached)
        // Nothing left: another flush writes nothing.
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writes, 5)
    }

    func testTwoRangesAreCompletedAndWrittenWholeWithTheirRun() throws {
        let b = MemoryBackend(size: MiB, seed: 431)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        func write(_ count: Int, at offset: UInt64) throws {
            let data = randomBytes(count, seed: offset)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        try write(Int(B), at: 2 * B)  // 2 dirty
        try write(100, at: 3 * B + 100)  // 3: two ranges
        try write(100, at: 3 * B + 5000)
        try write(Int(B), at: 4 * B)  // 4 dirty
        try write(1, at: 10 * B + 7)  // 10: two ranges, alone
        try write(1, at: 10 * B + 9)
        XCTAssertEqual(e.held(3), [100..<200, 5000..<5100])
        XCTAssertEqual(e.held(10), [7..<8, 9..<10])
        XCTAssertEqual(b.stats.reads, 0)

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog.sorted(), [Req(3 * B, B), Req(10 * B, B)], "one read per block of 2+ ranges")
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(2 * B, 3 * B), Req(10 * B, B)], "written whole, with the run")
        XCTAssertEqual(e.states(2..<5), [.clean, .clean, .clean])
        XCTAssertEqual(e.state(ofBlock: 10), .clean)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
    }

    func testPartialBlockAtTheEndOfAnExportNotAMultipleOfTheBlockSize() throws {
        let size: UInt64 = 1_000_000  // block 15: 983040..<1000000 (16960 bytes)
        let last: UInt64 = 983_040
        let b = MemoryBackend(size: size, seed: 432)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        func write(_ count: Int, at offset: UInt64) throws {
            let data = randomBytes(count, seed: offset &+ UInt64(count))
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        // One range: flushed as exactly its bytes.
        try write(100, at: 999_000)
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        XCTAssertEqual(e.held(15), [15_960..<16_060])
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(999_000, 100)])
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 15), .notCached)

        // Two ranges, one ending at the end of the export: completed with the
        // block's 16960 bytes and written back whole, never past the end.
        try write(10, at: size - 10)
        try write(10, at: last)
        XCTAssertEqual(e.held(15), [0..<10, 16_950..<16_960])
        b.resetStats()
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(last, 16_960)])
        XCTAssertEqual(b.stats.writeLog, [Req(last, 16_960)])
        XCTAssertEqual(e.state(ofBlock: 15), .clean)
        assertBytes(b.allBytes, model, "backend")

        // Covering the short block in two writes makes it dirty with no read.
        try e.trim(count: size - last, at: last, fua: false, backend: b)  // forget it
        model.replaceSubrange(Int(last)..., with: repeatElement(0, count: Int(size - last)))
        XCTAssertEqual(e.state(ofBlock: 15), .notCached)
        b.resetStats()
        try write(10_000, at: last)
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        try write(Int(size - last) - 10_000, at: last + 10_000)
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        XCTAssertEqual(e.held(15), [0..<16_960], "held ranges cover the short block")
        XCTAssertEqual(b.stats.reads, 0)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(last, 16_960)])

        // Reading a partial short block completes it with one read of 16960 bytes.
        XCTAssertEqual(e.state(ofBlock: 15), .clean)
        try e.trim(count: size - last, at: last, fua: false, backend: b)  // forget it again
        model.replaceSubrange(Int(last)..., with: repeatElement(0, count: Int(size - last)))
        try write(5, at: size - 5)
        try write(5, at: last + 100)
        b.resetStats()
        assertBytes(try e.readBytes(size - 20, 20, b), Array(model[(Int(size) - 20)...]))
        XCTAssertEqual(b.stats.readLog, [Req(last, 16_960)])
        XCTAssertEqual(e.held(15), [0..<16_960], "kept as far as the export goes")
        try e.flush(backend: b)
        assertBytes(b.allBytes, model, "backend after the last flush")
    }

    func testFailedWriteBackKeepsThePartialBlockAndALaterFlushWritesIt() throws {
        let b = MemoryBackend(size: MiB, seed: 433)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let original = model
        func write(_ count: Int, at offset: UInt64) throws {
            let data = randomBytes(count, seed: offset)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        try write(500, at: 2 * B + 1000)  // 2: one range; its write-back fails
        try write(500, at: 4 * B + 1000)  // 4: one range
        try write(10, at: 6 * B + 10)  // 6: two ranges
        try write(10, at: 6 * B + 30)
        b.failWrites(in: 2 * B + 1200..<2 * B + 1201, .ioError)
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(b.stats.failedWrites, 1)
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(4 * B + 1000, 500), Req(6 * B, B)], "the others are written")
        XCTAssertEqual(b.stats.readLog, [Req(6 * B, B)])
        XCTAssertEqual(e.state(ofBlock: 2), .partial, "a failed write-back keeps what the block holds")
        XCTAssertEqual(e.held(2), [1000..<1500])
        XCTAssertEqual(e.dirtyBlockCount, 1)
        assertBytes(b.bytes(2 * B, B), Array(original[Int(2 * B)..<Int(3 * B)]), "block 2 not written")

        b.clearFaults()
        b.resetStats()
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B + 1000, 500)])
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 2), .notCached)
        assertBytes(b.allBytes, model, "backend after the second flush")
    }

    func testFailedWriteBackOfACompletedBlockKeepsItDirty() throws {
        let b = MemoryBackend(size: MiB, seed: 434)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        for offset: UInt64 in [6 * B + 10, 6 * B + 30] {
            try e.writeBytes([7, 7], at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + 2, with: [7, 7])
        }
        b.failNextWrites(1, .noSpace)
        assertCacheError(.noSpace) { try e.flush(backend: b) }
        // It was completed (one read) before the write failed: whole and dirty now.
        XCTAssertEqual(b.stats.readLog, [Req(6 * B, B)])
        XCTAssertEqual(b.stats.failedWrites, 1)
        XCTAssertEqual(e.state(ofBlock: 6), .dirty)
        assertBytes(try e.readBytes(6 * B, B, b), Array(model[Int(6 * B)..<Int(7 * B)]))
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(6 * B, B)], "no second read")
        XCTAssertEqual(b.stats.writeLog, [Req(6 * B, B)])
        assertBytes(b.allBytes, model, "backend")
    }

    // MARK: Parallel write-back

    /// Counts write requests in flight (the backend's write hook sleeps a
    /// little so that overlapping requests show).
    private func trackParallelWrites(_ b: MemoryBackend) -> (maxInFlight: Locked<Int>, threads: Locked<Set<UInt>>) {
        let inFlight = Locked(0), maxInFlight = Locked(0)
        let threads = Locked<Set<UInt>>([])
        b.setOnWrite { _ in
            let me = UInt(pthread_self())
            threads.withLock { _ = $0.insert(me) }
            let now = inFlight.withLock {
                $0 += 1
                return $0
            }
            maxInFlight.withLock { $0 = max($0, now) }
            usleep(20_000)  // long enough for the other threads to start, even on a busy machine
            inFlight.withLock { $0 -= 1 }
        }
        return (maxInFlight, threads)
    }

    func testParallelWriteBackWritesEveryScatteredPartialBlockOnce() throws {
        let b = MemoryBackend(size: 512 * B, seed: 440)
        let e = try makeEngine(b, mode: .writeback, writeBackThreads: 8)
        var model = b.allBytes
        var rng = SplitMix64(seed: 441)
        var expected: [Req] = []
        for block in stride(from: UInt64(0), to: 512, by: 2) {
            let start = rng.next() % (B - 1)
            let count = 1 + rng.next() % min(B - 1 - start, 3000)
            let data = randomBytes(Int(count), seed: block)
            try e.writeBytes(data, at: block * B + start, b)
            model.replaceSubrange(Int(block * B + start)..<Int(block * B + start + count), with: data)
            expected.append(Req(block * B + start, count))
        }
        XCTAssertEqual(e.partialBlockCount, 256)
        let (maxInFlight, threads) = trackParallelWrites(b)
        try e.flush(backend: b)
        b.setOnWrite(nil)
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(b.stats.writeLog.sorted(), expected, "each partial block written once, exactly its range")
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertGreaterThan(maxInFlight.withLock { $0 }, 1, "write-back requests overlapped")
        XCTAssertGreaterThan(threads.withLock { $0.count }, 1, "write-back ran on several threads")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.partialBlockCount, 0)
        XCTAssertEqual(e.cachedBytes, 0)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    func testParallelWriteBackStillCoalescesRuns() throws {
        let size = 48 * MiB
        let b = MemoryBackend(bytes: [UInt8](repeating: 0, count: Int(size)))
        let e = try makeEngine(b, mode: .writeback, writeBackThreads: 8)
        var model = b.allBytes
        func write(_ count: Int, at offset: UInt64) throws {
            let data = randomBytes(count, seed: offset &+ 1)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        try write(Int(40 * MiB), at: 0)  // 0..<640: longer than one request
        var order = Array(UInt64(650)..<666) + Array(UInt64(670)..<674) + [680]
        var rng = SplitMix64(seed: 442)
        order.shuffle(using: &rng)
        for block in order { try write(Int(B), at: block * B) }
        try write(10, at: 690 * B + 10)  // 690: two ranges, then 691...693 dirty
        try write(10, at: 690 * B + 100)
        try write(Int(3 * B), at: 691 * B)
        try write(10, at: 700 * B + 50)  // 700: one range, then 701 dirty
        try write(Int(B), at: 701 * B)
        let (maxInFlight, _) = trackParallelWrites(b)
        try e.flush(backend: b)
        b.setOnWrite(nil)
        XCTAssertEqual(b.stats.readLog, [Req(690 * B, B)])
        XCTAssertEqual(
            b.stats.writeLog.sorted(),
            [
                Req(0, 32 * MiB), Req(32 * MiB, 8 * MiB),  // cut at 32 MiB
                Req(650 * B, 16 * B), Req(670 * B, 4 * B), Req(680 * B, B),
                Req(690 * B, 4 * B),  // the completed block joins its run
                Req(700 * B + 50, 10), Req(701 * B, B),  // a one-range block does not
            ])
        XCTAssertGreaterThan(maxInFlight.withLock { $0 }, 1, "write-back requests overlapped")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    func testParallelWriteBackFailureKeepsThatBlockAndWritesTheOthers() throws {
        let b = MemoryBackend(size: 256 * B, seed: 443)
        let e = try makeEngine(b, mode: .writeback, writeBackThreads: 8)
        var model = b.allBytes
        let original = model
        for block in stride(from: UInt64(1), to: 256, by: 4) {
            let data = randomBytes(100, seed: block)
            try e.writeBytes(data, at: block * B + 200, b)
            model.replaceSubrange(Int(block * B) + 200..<Int(block * B) + 300, with: data)
        }
        b.failWrites(in: 101 * B..<102 * B, .ioError)
        assertCacheError(.ioError) { try e.flush(backend: b) }
        XCTAssertEqual(b.stats.writes, 63)
        XCTAssertEqual(b.stats.failedWrites, 1)
        XCTAssertEqual(e.dirtyBlockCount, 1)
        XCTAssertEqual(e.state(ofBlock: 101), .partial)
        XCTAssertEqual(e.held(101), [200..<300])
        assertBytes(b.bytes(101 * B, B), Array(original[Int(101 * B)..<Int(102 * B)]), "block 101 not written")
        b.clearFaults()
        b.resetStats()
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(101 * B + 200, 100)])
        XCTAssertEqual(b.stats.reads, 0)
        assertBytes(b.allBytes, model, "backend")
    }

    // MARK: Reclaim

    func testReclaimOfManyPartialBlocksKeepsEveryByteAndTheLimit() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 450)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        let peak = sampleCachedBytes(e, b)
        var model = b.allBytes
        var rng = SplitMix64(seed: 451)
        var overLimit: [String] = []
        var written: Set<Req> = []

        // Phase 1: one small write in each of the 128 blocks, in random order:
        // every block is partial with one range, so reclaim writes back exactly
        // those bytes and never reads.
        var blocks = Array(UInt64(0)..<128)
        blocks.shuffle(using: &rng)
        for block in blocks {
            let start = rng.next() % (B - 4096)
            let count = 1 + rng.next() % 4096
            let data = randomBytes(Int(count), seed: block)
            try e.writeBytes(data, at: block * B + start, b)
            model.replaceSubrange(Int(block * B + start)..<Int(block * B + start + count), with: data)
            written.insert(Req(block * B + start, count))
            if e.cachedBytes > MiB { overLimit.append("phase 1: \(e.cachedBytes) after block \(block)") }
        }
        XCTAssertEqual(b.stats.reads, 0, "reclaiming one-range partial blocks reads nothing")
        XCTAssertGreaterThan(b.stats.writes, 100, "most blocks were reclaimed")
        XCTAssertEqual(b.stats.writeLog.filter { !written.contains($0) }, [], "reclaim writes exactly the held bytes")
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)

        // Phase 2: small random writes anywhere: blocks of several ranges,
        // completed by reclaim before they are written back.
        for i in 0..<1500 {
            let offset = Int(rng.next() % (8 * MiB - 1))
            let count = min(model.count - offset, 1 + Int(rng.next() % 5000))
            let data = randomBytes(count, seed: 10_000 + UInt64(i))
            try e.writeBytes(data, at: UInt64(offset), b)
            model.replaceSubrange(offset..<offset + count, with: data)
            if e.cachedBytes > MiB { overLimit.append("phase 2: \(e.cachedBytes) after writing \(count) at \(offset)") }
        }
        XCTAssertEqual(overLimit, [], "cachedBytes over cache-max-size")
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, MiB, "cachedBytes during the writes")
        XCTAssertLessThanOrEqual(e.allocatedBytes, MiB, "the cache file's allocated size")
        XCTAssertGreaterThan(e.partialBlockCount, 0)
        b.setOnRead(nil)
        b.setOnWrite(nil)

        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(e.partialBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, 8 * MiB, b), model, "read back")
    }

    func testReclaimKeepsPartialBlocksThatCannotBeWrittenBack() throws {
        let b = MemoryBackend(size: 4 * MiB, seed: 452)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        b.failNextWrites(1_000_000, .ioError)
        var model = b.allBytes
        var expected: [Req] = []
        for block in UInt64(0)..<40 {
            let data = randomBytes(300, seed: block)
            do {
                try e.writeBytes(data, at: block * B + 1000, b)
                model.replaceSubrange(Int(block * B) + 1000..<Int(block * B) + 1300, with: data)
                expected.append(Req(block * B + 1000, 300))
            } catch let error as CacheError {
                XCTAssertEqual(error.errno, .ioError, "no room, and the plugin fails: its error")
            }
        }
        XCTAssertEqual(e.partialBlockCount, 15, "no partial block is dropped unwritten")
        XCTAssertEqual(e.dirtyBlockCount, 15)
        XCTAssertEqual(b.stats.reads, 0)
        b.clearFaults()
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog.sorted(), expected)
        assertBytes(b.allBytes, model)
    }

    // MARK: Extents

    func testExtentsOverAPartialBlockAreData() throws {
        // Zeroes in blocks 0...7, data in 8...15.
        var bytes = [UInt8](repeating: 0, count: Int(MiB))
        bytes.replaceSubrange(Int(8 * B)..., with: randomBytes(Int(8 * B), seed: 460).map { $0 | 1 })
        let b = MemoryBackend(bytes: bytes)
        let e = try makeEngine(b, mode: .writeback)
        let holeZero = Extent.hole | Extent.zero
        try e.writeBytes([5], at: 3 * B + 40_000, b)
        try e.zero(count: 100, at: 3 * B + 10, fua: false, mayTrim: true, fastZero: false, backend: b)
        try e.writeBytes([6], at: 9 * B + 7, b)
        XCTAssertEqual(e.states(3..<4) + e.states(9..<10), [.partial, .partial])
        XCTAssertEqual(e.held(3), [10..<110, 40_000..<40_001])

        let all: [Extent] = [
            Extent(offset: 0, length: 3 * B, type: holeZero),
            Extent(offset: 3 * B, length: B, type: 0),
            Extent(offset: 4 * B, length: 4 * B, type: holeZero),
            Extent(offset: 8 * B, length: 8 * B, type: 0),
        ]
        XCTAssertEqual(try e.extents(count: MiB, at: 0, onlyOne: false, backend: b), all)
        XCTAssertEqual(
            try e.extents(count: MiB - 3 * B - 5, at: 3 * B + 5, onlyOne: true, backend: b).first,
            Extent(offset: 3 * B + 5, length: B - 5, type: 0))
        XCTAssertEqual(
            try e.extents(count: 10, at: 3 * B + 50_000, onlyOne: false, backend: b),
            [Extent(offset: 3 * B + 50_000, length: 10, type: 0)], "a gap of a partial block too")
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.states(3..<4), [.partial])

        // After a flush the plugin holds the byte and says so itself.
        try e.flush(backend: b)
        XCTAssertEqual(e.states(3..<4), [.clean])
        XCTAssertEqual(try e.extents(count: MiB, at: 0, onlyOne: false, backend: b), all)
    }

    func testExtentsRacingTheWriteBackOfAPartialBlockNeverCallDataAHole() throws {
        let b = MemoryBackend(bytes: [UInt8](repeating: 0, count: Int(MiB)))
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes([9, 9, 9], at: 2 * B + 500, b)
        // The plugin answers "hole" for block 2, then the flush writes the
        // block's bytes back and drops it before the engine looks again.
        b.setAfterExtentsComputed { try? e.flush(backend: b) }
        let list = try e.extents(count: B, at: 2 * B, onlyOne: false, backend: b)
        b.setAfterExtentsComputed(nil)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B + 500, 3)], "the flush ran during the extents call")
        XCTAssertEqual(e.state(ofBlock: 2), .notCached)
        XCTAssertEqual(list.first?.offset, 2 * B)
        XCTAssertEqual(list.first?.type, 0, "block 2 holds data, but extents say \(list)")
    }

    // MARK: FUA and writethrough over partial blocks

    func testFUAWriteOverAPartialBlockKeepsItsHeldBytes() throws {
        let b = MemoryBackend(size: MiB, seed: 470, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        func write(_ count: Int, at offset: UInt64, fua: Bool = false) throws {
            let data = randomBytes(count, seed: offset &* 3 &+ UInt64(count))
            try e.writeBytes(data, at: offset, fua: fua, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        try write(100, at: 2 * B + 100)  // block 2 partial
        try write(100, at: 2 * B + 300, fua: true)  // through; the block holds it too
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B + 300, 100, fua: true)])
        XCTAssertEqual(e.state(ofBlock: 2), .partial)
        XCTAssertEqual(e.held(2), [100..<200, 300..<400])
        try write(100, at: 2 * B + 150, fua: true)  // over a held range
        XCTAssertEqual(e.held(2), [100..<250, 300..<400])
        XCTAssertEqual(b.stats.reads, 0)
        assertBytes(
            b.bytes(2 * B + 150, 100), Array(model[Int(2 * B) + 150..<Int(2 * B) + 250]),
            "through to the plugin")
        assertBytes(try e.readBytes(2 * B, B, b), Array(model[Int(2 * B)..<Int(3 * B)]), "cache after FUA writes")
        XCTAssertEqual(b.stats.readLog, [Req(2 * B, B)])

        try write(100, at: 5 * B)  // block 5 partial
        try write(Int(3 * B), at: 4 * B, fua: true)  // 4...6 whole: block 5 becomes clean
        XCTAssertEqual(b.stats.writeLog.last, Req(4 * B, 3 * B, fua: true))
        XCTAssertEqual(e.states(4..<7), [.clean, .clean, .clean])
        XCTAssertNil(e.held(5))

        try write(100, at: 7 * B)  // block 7 partial
        try write(Int(B) - 100, at: 7 * B + 100, fua: true)  // the rest of it: now whole
        XCTAssertEqual(e.state(ofBlock: 7), .dirty, "its first 100 bytes are still only in the cache")
        XCTAssertEqual(b.stats.reads, 1)

        try write(10, at: 9 * B + 50)  // block 9 partial
        try write(20, at: 9 * B + 55, fua: true)  // the FUA write overlaps it
        XCTAssertEqual(e.held(9), [50..<75])

        try e.flush(backend: b)
        XCTAssertEqual(b.stats.reads, 1, "no block needed completing")
        XCTAssertEqual(
            Array(b.stats.writeLog.filter { !$0.fua }).sorted(),
            [Req(2 * B, B), Req(7 * B, B), Req(9 * B + 50, 25)])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read back")
    }

    func testEmulatedFUAOverAPartialBlockFlushesItsBytes() throws {
        let b = MemoryBackend(size: MiB, seed: 471, fuaMode: .emulate)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes([1, 2, 3], at: B + 10, fua: true, b)
        XCTAssertEqual(b.stats.writeLog, [Req(B + 10, 3)])
        XCTAssertEqual(b.stats.flushes, 1)
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 1), .notCached)
        assertBytes(b.bytes(B + 10, 3), [1, 2, 3])
    }

    /// The limit of 16 ranges a block holds applies to FUA writes too.
    func testFUAWriteOverAPartialBlockKeepsTheRangeLimit() throws {
        let b = MemoryBackend(size: MiB, seed: 472, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        for i in 0..<16 {
            let offset = B + UInt64(i) * 1000
            try e.writeBytes([UInt8(i + 1)], at: offset, b)
            model[Int(offset)] = UInt8(i + 1)
        }
        XCTAssertEqual(e.held(1)?.count, 16)
        try e.writeBytes([99], at: B + 30_000, fua: true, b)
        model[Int(B) + 30_000] = 99
        XCTAssertLessThanOrEqual(
            e.held(1)?.count ?? 0, HeldRanges.limit,
            "a FUA write gave block 1 more than \(HeldRanges.limit) ranges")
        try e.flush(backend: b)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    // MARK: Limits

    /// At most `BlockMap.partialLimit` partial blocks: past it, a partial
    /// write completes its block from the plugin first. A write with a
    /// partial head and a partial tail adds two blocks at once.
    func testNoMorePartialBlocksThanTheLimit() throws {
        let limit = UInt64(BlockMap.partialLimit)
        let size = (limit + 8) * 4096
        let b = MemoryBackend(bytes: [UInt8](repeating: 0, count: Int(size)))
        let e = try makeEngine(b, mode: .writeback, minBlockSize: 4096)
        try XCTSkipUnless(e.blockSize == 4096, "needs 4K cache blocks")
        for block in UInt64(0)..<limit - 1 {
            try e.writeBytes([1], at: block * 4096 + 7, b)
        }
        XCTAssertEqual(e.partialBlockCount, BlockMap.partialLimit - 1)
        XCTAssertEqual(b.stats.reads, 0)
        // One write whose head and tail are both new partial blocks: one of
        // them fits, the other must be completed.
        try e.writeBytes([2, 2], at: (limit + 1) * 4096 - 1, b)
        XCTAssertLessThanOrEqual(e.partialBlockCount, BlockMap.partialLimit, "more partial blocks than the limit")
        // Past the limit a partial write reads its block first.
        let partials = e.partialBlockCount
        try e.writeBytes([3], at: (limit + 4) * 4096 + 9, b)
        XCTAssertEqual(e.state(ofBlock: limit + 4), .dirty)
        XCTAssertEqual(b.stats.readLog.last, Req((limit + 4) * 4096, 4096))
        XCTAssertEqual(e.partialBlockCount, partials, "no partial block added past the limit")
        var expected = [UInt8](repeating: 0, count: 4096)
        expected[9] = 3
        assertBytes(try e.readBytes((limit + 4) * 4096, 4096, b), expected)
    }

    /// A plugin with a block size minimum gets aligned write-backs: a held
    /// range that is aligned goes alone, one that is not has its block
    /// completed and written whole (a client that ignores the advertised
    /// minimum must not pass it on to the plugin).
    func testWriteBackKeepsToThePluginsMinimumBlockSize() throws {
        let b = MemoryBackend(size: MiB, seed: 90, minimumRequest: 4096)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        for (offset, count) in [(2 * B + 8192, 4096), (4 * B + 100, 1000), (6 * B + 4096, 5000)] {
            let data = randomBytes(count, seed: offset)
            try e.writeBytes(data, at: offset, b)
            model.replaceSubrange(Int(offset)..<Int(offset) + count, with: data)
        }
        XCTAssertEqual(e.states(2..<7), [.partial, .notCached, .partial, .notCached, .partial])
        XCTAssertEqual(b.stats.reads, 0)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(2 * B + 8192, 4096), Req(4 * B, B), Req(6 * B, B)])
        XCTAssertEqual(b.stats.readLog.sorted(), [Req(4 * B, B), Req(6 * B, B)])
        assertBytes(b.allBytes, model)
        assertBytes(try e.readBytes(0, MiB, b), model)
    }
}

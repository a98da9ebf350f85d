// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class ConcurrencyTests: EngineTestCase {
    /// 8 writer threads each own the bytes of every 8th stripe of 4099 bytes
    /// (so every block is shared by all of them and stripes straddle block
    /// edges). Each does random unaligned writes, zeroes and FUA writes inside
    /// its own stripes, reads random ranges anywhere and checks the bytes it
    /// owns, and after each of its own flushes checks that the backend holds
    /// its latest write. A ninth thread flushes all along. At the end every
    /// byte read through the engine and, after a final flush, in the backend
    /// equals the model.
    private func runStripedWriters(
        mode: CacheMode, cacheOnRead: CacheOnRead, maxSize: UInt64?,
        size: UInt64, minBlockSize: UInt64 = B, writeBackThreads: Int = 1, ops: Int,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let threads = 8
        let stripe = 4099
        let b = MemoryBackend(size: size, seed: 200, fuaMode: .emulate)
        let e = try makeEngine(
            b, mode: mode, cacheOnRead: cacheOnRead, maxSize: maxSize, minBlockSize: minBlockSize,
            writeBackThreads: writeBackThreads)
        let initial = b.allBytes
        let stripes = (Int(size) + stripe - 1) / stripe
        let models = Locked<[[UInt8]]>(Array(repeating: [], count: threads))
        let failures = Locked<[String]>([])
        let writersLeft = Locked(threads)
        let checksBackend = mode != .unsafe

        runThreads(threads + 1) { t in
            if t == threads {
                // The flusher.
                var flushes = 0
                while writersLeft.withLock({ $0 }) > 0 {
                    do { try e.flush(backend: b) } catch {
                        failures.withLock { $0.append("flusher: \(error)") }
                    }
                    flushes += 1
                    usleep(500)
                }
                return
            }
            var rng = SplitMix64(seed: 300 + UInt64(t))
            var model = initial
            func fail(_ message: String) { failures.withLock { $0.append("thread \(t): \(message)") } }
            for op in 0..<ops {
                // One of this thread's stripes.
                let s = (Int(rng.next() % UInt64((stripes - t + threads - 1) / threads))) * threads + t
                let lo = s * stripe, hi = min(lo + stripe, Int(size))
                let a = lo + Int(rng.next() % UInt64(hi - lo))
                let z = a + 1 + Int(rng.next() % UInt64(hi - a))
                let kind = rng.next() % 100
                do {
                    switch kind {
                    case 0..<45, 45..<50:
                        let data = randomBytes(z - a, seed: rng.next())
                        let fua = kind >= 45
                        try e.writeBytes(data, at: UInt64(a), fua: fua, b)
                        model.replaceSubrange(a..<z, with: data)
                        if fua && checksBackend && b.bytes(UInt64(a), z - a) != data {
                            fail("op \(op): FUA write at \(a)+\(z - a) is not in the backend")
                        }
                    case 50..<58:
                        try e.zero(
                            count: UInt64(z - a), at: UInt64(a), fua: false, mayTrim: true, fastZero: false,
                            backend: b)
                        model.replaceSubrange(a..<z, with: repeatElement(0, count: z - a))
                    case 58..<62:
                        try e.flush(backend: b)
                        // Everything this thread wrote before the flush is in the backend.
                        if checksBackend {
                            let backend = b.bytes(UInt64(lo), hi - lo)
                            if Array(model[lo..<hi]) != backend {
                                fail("op \(op): after flush the backend's stripe \(s) differs")
                            }
                        }
                    case 62..<65:
                        let offset = Int(rng.next() % size)
                        try e.cache(count: UInt64(min(200_000, Int(size) - offset)), at: UInt64(offset), backend: b)
                    default:
                        let offset = Int(rng.next() % size)
                        let count = 1 + min(Int(size) - offset - 1, Int(rng.next() % 200_000))
                        let got = try e.readBytes(UInt64(offset), count, b)
                        // Check the bytes of this thread's stripes.
                        var i = offset
                        while i < offset + count {
                            let st = i / stripe
                            let end = min((st + 1) * stripe, offset + count)
                            if st % threads == t, got[(i - offset)..<(end - offset)] != model[i..<end] {
                                fail("op \(op): read \(offset)+\(count) differs in stripe \(st)")
                                break
                            }
                            i = end
                        }
                    }
                } catch {
                    fail("op \(op): \(error)")
                }
            }
            let finalModel = model
            models.withLock { $0[t] = finalModel }
            writersLeft.withLock { $0 -= 1 }
        }

        XCTAssertEqual(failures.withLock { $0 }, [], file: file, line: line)
        let perThread = models.withLock { $0 }
        var expected = initial
        for i in expected.indices { expected[i] = perThread[(i / stripe) % threads][i] }
        assertBytes(try e.readBytes(0, size, b), expected, "read through the engine", file: file, line: line)
        if checksBackend {
            try e.flush(backend: b)
            XCTAssertEqual(e.dirtyBlockCount, 0, file: file, line: line)
            assertBytes(b.allBytes, expected, "backend after the final flush", file: file, line: line)
        }
        if let maxSize {
            XCTAssertLessThanOrEqual(
                e.cachedBytes, maxSize + UInt64(threads) * 4 * e.blockSize,
                "cachedBytes far over cache-max-size", file: file, line: line)
        }
    }

    func testConcurrentWritebackWithCacheOnRead() throws {
        try runStripedWriters(mode: .writeback, cacheOnRead: .always, maxSize: nil, size: 2 * MiB, ops: 300)
    }

    func testConcurrentWritebackWithReclaim() throws {
        try runStripedWriters(mode: .writeback, cacheOnRead: .never, maxSize: MiB, size: 4 * MiB, ops: 300)
    }

    func testConcurrentWritebackWithCacheOnReadAndReclaimAnd4KBlocks() throws {
        try runStripedWriters(
            mode: .writeback, cacheOnRead: .always, maxSize: MiB, size: 2 * MiB,
            minBlockSize: 4096, ops: 300)
    }

    func testConcurrentWritebackWithParallelWriteBack() throws {
        try runStripedWriters(
            mode: .writeback, cacheOnRead: .never, maxSize: nil, size: 2 * MiB,
            writeBackThreads: 8, ops: 300)
    }

    func testConcurrentWritebackWithParallelWriteBackReclaimAnd4KBlocks() throws {
        try runStripedWriters(
            mode: .writeback, cacheOnRead: .always, maxSize: MiB, size: 2 * MiB,
            minBlockSize: 4096, writeBackThreads: 8, ops: 300)
    }

    func testConcurrentWritethrough() throws {
        try runStripedWriters(mode: .writethrough, cacheOnRead: .always, maxSize: MiB, size: 2 * MiB, ops: 300)
    }

    func testConcurrentUnsafe() throws {
        try runStripedWriters(mode: .unsafe, cacheOnRead: .always, maxSize: MiB, size: 2 * MiB, ops: 300)
    }

    /// Many threads read the same uncached block at once with cache-on-read:
    /// one fills it from the plugin, the others wait and read the cache.
    func testSimultaneousReadsOfOneUncachedBlockReadThePluginOnce() throws {
        let b = MemoryBackend(size: MiB, seed: 210)
        let e = try makeEngine(b, mode: .writeback, cacheOnRead: .always)
        b.setReadDelay(microseconds: 20_000)
        let disk = b.allBytes
        let start = Locked(0)
        let failures = Locked<[String]>([])
        runThreads(8) { t in
            // Start together.
            start.withLock { $0 += 1 }
            while start.withLock({ $0 }) < 8 { sched_yield() }
            let offset = 3 * Int(B) + t * 1000
            do {
                let got = try e.readBytes(UInt64(offset), 5000, b)
                if got != Array(disk[offset..<offset + 5000]) {
                    failures.withLock { $0.append("thread \(t): wrong data") }
                }
            } catch {
                failures.withLock { $0.append("thread \(t): \(error)") }
            }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertEqual(b.stats.readLog, [Req(3 * B, B)])
        XCTAssertEqual(e.state(ofBlock: 3), .clean)
    }

    /// A writer fills a 4-block unaligned range with one byte value after
    /// another; readers must always see a single value across the range.
    private func runTornReadCheck(
        mode: CacheMode, cacheOnRead: CacheOnRead, maxSize: UInt64? = nil,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let b = MemoryBackend(size: MiB, seed: 220, fuaMode: .native)
        let e = try makeEngine(b, mode: mode, cacheOnRead: cacheOnRead, maxSize: maxSize)
        let offset: UInt64 = 30_000, count = 200_000
        try e.writeBytes(Array(repeating: 0, count: count), at: offset, b)
        let done = Locked(false)
        let torn = Locked<[String]>([])
        runThreads(5) { t in
            switch t {
            case 0:
                for generation in 1...120 {
                    do {
                        try e.writeBytes(
                            Array(repeating: UInt8(generation), count: count), at: offset,
                            fua: generation % 7 == 0, b)
                    } catch { torn.withLock { $0.append("writer: \(error)") } }
                }
                done.withLock { $0 = true }
            case 1:
                while !done.withLock({ $0 }) {
                    do { try e.flush(backend: b) } catch { torn.withLock { $0.append("flush: \(error)") } }
                    usleep(200)
                }
            default:
                while !done.withLock({ $0 }) {
                    do {
                        let got = try e.readBytes(offset - UInt64(t), count + 2 * t, b)
                        let body = got[t..<t + count]
                        if let first = body.first, body.contains(where: { $0 != first }) {
                            let values = Set(body).sorted()
                            torn.withLock { $0.append("reader \(t): saw values \(values) in one read") }
                            return
                        }
                    } catch { torn.withLock { $0.append("reader \(t): \(error)") } }
                }
            }
        }
        XCTAssertEqual(torn.withLock { $0 }, [], file: file, line: line)
        assertBytes(try e.readBytes(offset, count, b), Array(repeating: 120, count: count), file: file, line: line)
        if mode != .unsafe {
            try e.flush(backend: b)
            assertBytes(b.bytes(offset, count), Array(repeating: 120, count: count), "backend", file: file, line: line)
        }
    }

    func testReadsNeverSeeHalfAWriteInWriteback() throws {
        try runTornReadCheck(mode: .writeback, cacheOnRead: .never)
    }

    func testReadsNeverSeeHalfAWriteInWritebackWithReclaim() throws {
        try runTornReadCheck(mode: .writeback, cacheOnRead: .always, maxSize: MiB)
    }

    func testReadsNeverSeeHalfAWriteInWritethrough() throws {
        try runTornReadCheck(mode: .writethrough, cacheOnRead: .never)
    }

    func testReadsNeverSeeHalfAWriteInWritethroughWithCacheOnRead() throws {
        try runTornReadCheck(mode: .writethrough, cacheOnRead: .always)
    }

    /// A cache fill from the plugin never overwrites newer data written
    /// meanwhile: while a reader's plugin read of block 1 is in flight, a
    /// writer writes block 1; whatever order the engine picks, the block ends
    /// up with the written data.
    func testFillNeverOverwritesANewerWrite() throws {
        for mode in [CacheMode.writeback, .writethrough] {
            let b = MemoryBackend(size: MiB, seed: 230)
            let e = try makeEngine(b, mode: mode, cacheOnRead: .always)
            let data = randomBytes(Int(B), seed: 231)
            let readStarted = Locked(false)
            b.setOnRead { req in
                if req.offset == B {
                    readStarted.withLock { $0 = true }
                    usleep(30_000)
                }
            }
            let failures = Locked<[String]>([])
            runThreads(2) { t in
                do {
                    if t == 0 {
                        _ = try e.readBytes(B, 100, b)
                    } else {
                        while !readStarted.withLock({ $0 }) { usleep(100) }
                        try e.writeBytes(data, at: B, b)
                    }
                } catch { failures.withLock { $0.append("\(t): \(error)") } }
            }
            b.setOnRead(nil)
            XCTAssertEqual(failures.withLock { $0 }, [])
            assertBytes(try e.readBytes(B, B, b), data, "\(mode)")
            try e.flush(backend: b)
            assertBytes(b.bytes(B, B), data, "\(mode): backend")
        }
    }
}

/// Deterministic replays of races found by the striped-writer tests.
final class FlushRaceTests: EngineTestCase {
    /// A flush picks a dirty run (block 0) and waits for it while a FUA
    /// write holds it; the FUA write leaves block 0 clean. When the flush gets
    /// block 0, it looks for dirty sub-runs "inside" the run but
    /// `nextDirtyRun(from:limit:)` only bounds the run's length, not its
    /// start, so it finds block 5, which the flush has NOT locked, writes it
    /// back and marks it clean. A write to block 5 that runs meanwhile (it
    /// can: nothing holds block 5) is then marked clean and never reaches the
    /// plugin. (With reclaim in place of that write, the flush writes a
    /// punched block back as zeroes and marks a dropped block clean: the
    /// striped-writer tests see whole blocks of zeroes.)
    func testFlushNeverWritesBackBlocksItHasNotLocked() throws {
        let b = MemoryBackend(size: MiB, seed: 240, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes(randomBytes(Int(B), seed: 241), at: 0, b)
        try e.writeBytes(randomBytes(Int(B), seed: 242), at: 5 * B, b)
        let new0 = randomBytes(Int(B), seed: 243)
        let new5 = randomBytes(Int(B), seed: 244)
        let flushDone = Locked(false), writerDone = Locked(false), armed = Locked(true)
        let seen = Locked<[String]>([])

        b.setOnWrite { req in
            if req.offset == 0 && req.fua {
                // Inside the FUA write of block 0, which holds block 0: start a
                // flush; it finds block 0 dirty and waits for it.
                let started = Locked(false)
                Thread {
                    started.withLock { $0 = true }
                    do { try e.flush(backend: b) } catch { seen.withLock { $0.append("flush: \(error)") } }
                    flushDone.withLock { $0 = true }
                }.start()
                for _ in 0..<5000 where !started.withLock({ $0 }) { usleep(1000) }
                usleep(200_000)
            } else if req.offset == 5 * B && !req.fua
                && armed.withLock({
                    let was = $0
                    $0 = false
                    return was
                })
            {
                // The flush writes block 5 back. Is block 5 held? Another request writes it now.
                let held = e.isLocked(5)
                seen.withLock { $0.append("write-back of block 5 with block 5 \(held ? "held" : "NOT held")") }
                Thread {
                    do { try e.writeBytes(new5, at: 5 * B, b) } catch {
                        seen.withLock { $0.append("writer: \(error)") }
                    }
                    writerDone.withLock { $0 = true }
                }.start()
                // A writer must wait for the flush; give it 200 ms to show that it does not.
                for _ in 0..<200 where !writerDone.withLock({ $0 }) { usleep(1000) }
            }
        }
        try e.writeBytes(new0, at: 0, fua: true, b)
        for _ in 0..<5000 where !(flushDone.withLock { $0 } && writerDone.withLock { $0 }) { usleep(1000) }
        b.setOnWrite(nil)
        XCTAssertTrue(flushDone.withLock { $0 } && writerDone.withLock { $0 }, "flush and writer finished")

        XCTAssertEqual(seen.withLock { $0 }, ["write-back of block 5 with block 5 held"])
        XCTAssertEqual(e.state(ofBlock: 5), .dirty, "block 5 was written after its write-back")
        try e.flush(backend: b)
        assertBytes(b.bytes(0, B), new0, "block 0")
        assertBytes(b.bytes(5 * B, B), new5, "block 5: the second write must reach the plugin")
    }

    /// The same mistake at the other end: a dirty sub-run may start inside
    /// the locked run and continue past its end. Run 0..<3 is picked (block 3
    /// clean); while the flush waits for it, block 3 is written (dirty) and
    /// block 0 is made clean by a FUA write. The sub-run search from block 0
    /// with "limit 3" then returns 1..<4: block 3 is written back unlocked.
    func testFlushSubRunsStayInsideTheLockedRun() throws {
        let b = MemoryBackend(size: MiB, seed: 250, fuaMode: .native)
        let e = try makeEngine(b, mode: .writeback)
        for block in UInt64(0)..<3 { try e.writeBytes(randomBytes(Int(B), seed: 251 + block), at: block * B, b) }
        let block3 = randomBytes(Int(B), seed: 255)
        let unheld = Locked<[String]>([])
        let flushDone = Locked(false)
        b.setOnWrite { req in
            if req.offset == 0 && req.fua {
                let started = Locked(false)
                Thread {
                    started.withLock { $0 = true }
                    try? e.flush(backend: b)
                    flushDone.withLock { $0 = true }
                }.start()
                for _ in 0..<5000 where !started.withLock({ $0 }) { usleep(1000) }
                usleep(200_000)  // the flush now waits for block 0
                try? e.writeBytes(block3, at: 3 * B, b)
            } else if !req.fua {
                let blocks = (req.offset / B)..<((req.offset + req.length + B - 1) / B)
                let free = blocks.filter { !e.isLocked($0) }
                if !free.isEmpty { unheld.withLock { $0.append("write-back of blocks \(blocks): \(free) not held") } }
            }
        }
        try e.writeBytes(randomBytes(Int(B), seed: 256), at: 0, fua: true, b)
        for _ in 0..<5000 where !flushDone.withLock({ $0 }) { usleep(1000) }
        b.setOnWrite(nil)
        XCTAssertTrue(flushDone.withLock { $0 })
        XCTAssertEqual(unheld.withLock { $0 }, [], "the flush wrote back blocks it did not hold")
        try e.flush(backend: b)
        assertBytes(b.bytes(3 * B, B), block3)
    }

    /// `make sanitize` runs AddressSanitizer without its leak check, which
    /// XCTest floods (see scripts/sanitize), so this is the check that the
    /// core holds no reference cycle: an engine used by several threads, with
    /// parallel write-back, reclaim and a budget shared with another engine,
    /// is freed, with its block layer and cache file, when its last reference
    /// goes, and leaves the budget.
    func testAnEngineUsedByManyThreadsIsFreedWhenItGoes() throws {
        let budget = CacheBudget()
        let b2 = MemoryBackend(size: MiB, seed: 260)
        let other = try makeEngine(b2, cacheOnRead: .always, budget: budget)
        _ = try other.readBytes(0, MiB, b2)
        weak var engine: Engine?
        weak var store: BlockStore?
        weak var file: CacheFile?
        let failures = Locked<[String]>([])
        try {
            let b = MemoryBackend(size: 4 * MiB, seed: 261)
            let e = try makeEngine(
                b, cacheOnRead: .always, maxSize: 2 * MiB, writeBackThreads: 4, budget: budget)
            (engine, store, file) = (e, e.blocks, e.blocks.storage as? CacheFile)
            // The core's own threads, joined before this returns (runThreads'
            // Foundation threads may still hold the closure, and `e`, for a while).
            concurrently(4, threads: 4) { t in
                var rng = SplitMix64(seed: 262 + UInt64(t))
                for _ in 0..<40 {
                    let offset = rng.next() % (4 * MiB - 1)
                    let count = 1 + rng.next() % min(4 * MiB - offset, 300_000)
                    do {
                        switch rng.next() % 4 {
                        case 0: _ = try e.readBytes(offset, count, b)
                        case 1: try e.flush(backend: b)
                        default: try e.writeBytes(randomBytes(Int(count), seed: rng.next()), at: offset, b)
                        }
                    } catch {
                        failures.withLock { $0.append("thread \(t): \(error)") }
                    }
                }
            }
            try e.flush(backend: b)
            XCTAssertGreaterThan(e.statistics.snapshot().reclaimedBlocks, 0, "reclaim ran")
        }()
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertNil(engine, "the engine outlives its last reference")
        XCTAssertNil(store, "the block layer outlives its engine")
        XCTAssertNil(file, "the cache file outlives its engine")
        XCTAssertEqual(budget.withTotal { $0 }, other.blocks.occupiedBlocks, "the budget still counts the engine")
    }
}

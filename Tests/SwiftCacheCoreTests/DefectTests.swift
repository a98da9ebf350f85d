// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// The seven defects of issue 7, each pinned at the core level by the
/// behaviour SPEC §4 and §6 require.
final class DefectTests: EngineTestCase {
    // MARK: 1. Write-back never needs cache space (request pattern)

    /// A partial block holding two ranges goes back as one whole-block write built from one plugin read.
    func testPartialBlockWithTwoRangesIsWrittenBackAsOneWholeBlock() throws {
        let b = MemoryBackend(size: MiB, seed: 700)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let first = randomBytes(100, seed: 701), second = randomBytes(200, seed: 702)
        try e.writeBytes(first, at: B + 10, b)
        try e.writeBytes(second, at: B + 1000, b)
        model.replaceSubrange(Int(B) + 10..<Int(B) + 110, with: first)
        model.replaceSubrange(Int(B) + 1000..<Int(B) + 1200, with: second)
        XCTAssertEqual(e.state(ofBlock: 1), .partial)
        XCTAssertEqual(e.held(1), [10..<110, 1000..<1200])
        XCTAssertEqual(b.stats.reads + b.stats.writes, 0, "a writeback write never reaches the plugin")
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(B, B)], "one plugin read of the whole block")
        XCTAssertEqual(b.stats.writeLog, [Req(B, B)], "one plugin write of the whole block")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read after flush")
    }

    /// A two-range partial block next to a dirty block joins its run: one write, one read of the partial block only.
    func testPartialBlockJoinsTheRunOfItsDirtyNeighbour() throws {
        let b = MemoryBackend(size: MiB, seed: 703)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        let whole = randomBytes(Int(B), seed: 704)
        let first = randomBytes(300, seed: 705), second = randomBytes(40, seed: 706)
        try e.writeBytes(whole, at: 2 * B, b)
        try e.writeBytes(first, at: 3 * B + 7, b)
        try e.writeBytes(second, at: 3 * B + 5000, b)
        model.replaceSubrange(Int(2 * B)..<Int(3 * B), with: whole)
        model.replaceSubrange(Int(3 * B) + 7..<Int(3 * B) + 307, with: first)
        model.replaceSubrange(Int(3 * B) + 5000..<Int(3 * B) + 5040, with: second)
        XCTAssertEqual(e.states(2..<4), [.dirty, .partial])
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(3 * B, B)])
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B, 2 * B)])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
    }

    /// A single range off the plugin's minimum goes back as a whole block from one read; an aligned one goes alone.
    func testSingleRangeNotAlignedToThePluginMinimumIsWrittenBackWhole() throws {
        let b = MemoryBackend(size: MiB, seed: 707, minimumRequest: 4096)
        let e = try makeEngine(b, mode: .writeback)
        var model = b.allBytes
        // Start and end unaligned; start aligned, end not; both aligned.
        let writes: [(offset: UInt64, count: Int)] = [(B + 10, 100), (3 * B, 5000), (5 * B + 4096, 8192)]
        for (i, w) in writes.enumerated() {
            let data = randomBytes(w.count, seed: 708 + UInt64(i))
            try e.writeBytes(data, at: w.offset, b)
            model.replaceSubrange(Int(w.offset)..<Int(w.offset) + w.count, with: data)
        }
        XCTAssertEqual(e.states(1..<6), [.partial, .notCached, .partial, .notCached, .partial])
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.readLog.sorted(), [Req(B, B), Req(3 * B, B)], "one read per unaligned block")
        XCTAssertEqual(b.stats.writeLog.sorted(), [Req(B, B), Req(3 * B, B), Req(5 * B + 4096, 8192)])
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flush")
        assertBytes(try e.readBytes(0, MiB, b), model, "read after flush")
    }

    // MARK: 2. cache-max-size holds under concurrency

    /// 16 concurrent 4 MiB writes with cache-max-size=1M never take the cache past its high threshold, nor fail.
    func testMaxSizeHoldsUnderSixteenConcurrentWriters() throws {
        let size = 128 * MiB, threads = 16, each = 4 * MiB
        let b = MemoryBackend(bytes: [UInt8](repeating: 0, count: Int(size)))
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB)
        // 95% of 1 MiB, in whole 64 KiB blocks: 15.
        let high = 15 * B
        let peak = sampleCachedBytes(e, b)
        let polled = Locked<UInt64>(0)
        let chunks = (0..<threads).map { randomBytes(Int(each), seed: 720 + UInt64($0)) }
        var model = b.allBytes
        for (i, chunk) in chunks.enumerated() {
            model.replaceSubrange(i * Int(8 * MiB)..<i * Int(8 * MiB) + chunk.count, with: chunk)
        }
        let failures = Locked<[String]>([])
        let writersLeft = Locked(threads)
        runThreads(threads + 1) { t in
            if t == threads {
                // Samples between backend calls too.
                while writersLeft.withLock({ $0 }) > 0 {
                    let now = e.cachedBytes
                    polled.withLock { $0 = max($0, now) }
                    usleep(20)
                }
                return
            }
            do { try e.writeBytes(chunks[t], at: UInt64(t) * 8 * MiB, b) } catch {
                failures.withLock { $0.append("writer \(t): \(error)") }
            }
            writersLeft.withLock { $0 -= 1 }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, high, "cachedBytes at a backend call")
        XCTAssertLessThanOrEqual(polled.withLock { $0 }, high, "cachedBytes polled during the writes")
        XCTAssertLessThanOrEqual(e.cachedBytes, high)
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, high, "cachedBytes during the flush")
        assertBytes(b.allBytes, model, "backend after flush")
    }

    // MARK: 3. Never call the backend past a connection's size

    /// An engine sized 4 MiB, then grown to 8 MiB by a second connection `b` (A still sees 4 MiB).
    private func grownEngine(
        seed: UInt64, sizeA: UInt64 = 4 * MiB, cacheOnRead: CacheOnRead = .never,
        maxSize: UInt64? = nil
    ) throws -> (MemoryBackend, Engine, Connection) {
        let b = MemoryBackend(size: 8 * MiB, seed: seed)
        let e = try makeEngine(b, size: sizeA, cacheOnRead: cacheOnRead, maxSize: maxSize)
        let a = Connection(b, size: sizeA)
        try e.reopen(b, size: 8 * MiB)
        XCTAssertEqual(b.size, 8 * MiB)
        return (b, e, a)
    }

    /// A flush through a connection that sees 4 MiB skips blocks past its end; they stay dirty until `b` flushes.
    func testFlushThroughAShorterConnectionSkipsBlocksPastItsEnd() throws {
        let (b, e, a) = try grownEngine(seed: 730)
        var model = b.allBytes
        let far = randomBytes(Int(B), seed: 731)
        let straddling = randomBytes(Int(4 * B), seed: 732)
        let partial = randomBytes(100, seed: 733)
        try e.writeBytes(far, at: 6 * MiB, b)
        try e.writeBytes(straddling, at: 4 * MiB - 2 * B, b)
        try e.writeBytes(partial, at: 5 * MiB + 10, b)
        model.replaceSubrange(Int(6 * MiB)..<Int(6 * MiB + B), with: far)
        model.replaceSubrange(Int(4 * MiB - 2 * B)..<Int(4 * MiB + 2 * B), with: straddling)
        model.replaceSubrange(Int(5 * MiB) + 10..<Int(5 * MiB) + 110, with: partial)
        let farBlock = 6 * MiB / B, partialBlock = 5 * MiB / B
        try e.flush(backend: a)
        XCTAssertEqual(a.violations.withLock { $0 }, [], "requests past A's end")
        XCTAssertEqual(e.states(62..<66), [.clean, .clean, .dirty, .dirty], "only blocks inside A went back")
        XCTAssertEqual(e.state(ofBlock: farBlock), .dirty)
        XCTAssertEqual(e.state(ofBlock: partialBlock), .partial)
        assertBytes(b.bytes(4 * MiB - 2 * B, 2 * B), Array(straddling[..<Int(2 * B)]), "blocks inside A")
        XCTAssertNotEqual(b.bytes(6 * MiB, B), far, "the block at 6 MiB is not written back through A")
        // A's reads still see everything it can see.
        assertBytes(try e.readBytes(0, 4 * MiB, a), Array(model[..<Int(4 * MiB)]), "read through A")
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flushing through b")
        XCTAssertEqual(a.violations.withLock { $0 }, [])
    }

    /// Reclaim run by a connection that sees 4 MiB never writes back a dirty block past its end.
    func testReclaimThroughAShorterConnectionSkipsBlocksPastItsEnd() throws {
        let (b, e, a) = try grownEngine(seed: 734, maxSize: MiB)
        var model = b.allBytes
        let far = randomBytes(Int(B), seed: 735)
        try e.writeBytes(far, at: 6 * MiB, b)
        model.replaceSubrange(Int(6 * MiB)..<Int(6 * MiB + B), with: far)
        b.resetStats()
        // 2 MiB through A, in 256 KiB writes: twice cache-max-size, so reclaim runs on A.
        for i in UInt64(0)..<8 {
            let data = randomBytes(Int(256 << 10), seed: 736 + i)
            try e.writeBytes(data, at: i * (256 << 10), a)
            model.replaceSubrange(Int(i * (256 << 10))..<Int((i + 1) * (256 << 10)), with: data)
        }
        XCTAssertGreaterThan(b.stats.writes, 0, "reclaim wrote blocks back")
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        XCTAssertEqual(a.violations.withLock { $0 }, [], "requests past A's end")
        XCTAssertEqual(e.state(ofBlock: 6 * MiB / B), .dirty, "the block at 6 MiB stays dirty")
        XCTAssertNotEqual(b.bytes(6 * MiB, B), far)
        assertBytes(try e.readBytes(0, 4 * MiB, a), Array(model[..<Int(4 * MiB)]), "read through A")
        try e.flush(backend: a)
        XCTAssertEqual(e.state(ofBlock: 6 * MiB / B), .dirty, "still dirty after A's flush")
        XCTAssertEqual(e.dirtyBlockCount, 1)
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model, "backend after flushing through b")
        XCTAssertEqual(a.violations.withLock { $0 }, [])
    }

    /// Cache-on-read through A, whose short last block the grown engine sees whole, reads only up to A's end.
    func testCacheOnReadOfAShortLastBlockThroughAShorterConnection() throws {
        let sizeA = 4 * MiB + 1000
        let (b, e, a) = try grownEngine(seed: 737, sizeA: sizeA, cacheOnRead: .always)
        let lastA = sizeA / B
        assertBytes(try e.readBytes(4 * MiB - B, B + 1000, a), b.bytes(4 * MiB - B, B + 1000), "A's last bytes")
        assertBytes(try e.readBytes(sizeA - 1, 1, a), b.bytes(sizeA - 1, 1), "A's last byte")
        assertBytes(try e.readBytes(0, sizeA, a), b.bytes(0, sizeA), "all of A")
        XCTAssertEqual(a.violations.withLock { $0 }, [], "requests past A's end")
        XCTAssertEqual(e.state(ofBlock: lastA - 1), .clean)
        // b sees the block whole; then A reads it from the cache.
        assertBytes(try e.readBytes(4 * MiB, B, b), b.bytes(4 * MiB, B), "the block through b")
        XCTAssertEqual(e.state(ofBlock: lastA), .clean)
        b.resetStats()
        assertBytes(try e.readBytes(4 * MiB, 1000, a), b.bytes(4 * MiB, 1000), "A's last bytes, cached")
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(a.violations.withLock { $0 }, [])
    }

    /// A dirty block straddling A's unaligned end is not written back through A, only through b.
    func testDirtyBlockAcrossAnUnalignedConnectionEndWaitsForALongerConnection() throws {
        let sizeA = 4 * MiB + 1000
        let (b, e, a) = try grownEngine(seed: 738, sizeA: sizeA)
        var model = b.allBytes
        let data = randomBytes(Int(B), seed: 739)
        try e.writeBytes(data, at: 4 * MiB, b)
        model.replaceSubrange(Int(4 * MiB)..<Int(4 * MiB + B), with: data)
        try e.flush(backend: a)
        XCTAssertEqual(a.violations.withLock { $0 }, [], "requests past A's end")
        XCTAssertEqual(e.state(ofBlock: 4 * MiB / B), .dirty)
        assertBytes(try e.readBytes(4 * MiB, 1000, a), Array(data[..<1000]), "A reads the cached bytes")
        try e.flush(backend: b)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, model)
        XCTAssertEqual(a.violations.withLock { $0 }, [])
    }

    // MARK: 4. Shrink forgets

    /// After a shrink and a regrowth, reads past the old end return the plugin's new bytes, not stale cached ones.
    func testShrinkForgetsCleanBlocksPastTheNewEnd() throws {
        let b = MemoryBackend(size: MiB, seed: 740)
        let e = try makeEngine(b, cacheOnRead: .always)
        assertBytes(try e.readBytes(0, MiB, b), b.allBytes)
        XCTAssertEqual(e.states(0..<16), Array(repeating: .clean, count: 16))
        try e.reopen(b, size: 512 << 10)
        XCTAssertEqual(e.states(8..<16), Array(repeating: .notCached, count: 8), "forgotten past the new end")
        XCTAssertEqual(e.states(0..<8), Array(repeating: .clean, count: 8), "kept before it")
        let fresh = randomBytes(512 << 10, seed: 741)
        b.poke(fresh, at: 512 << 10)
        try e.reopen(b, size: MiB)
        assertBytes(try e.readBytes(512 << 10, 512 << 10, b), fresh, "read after regrowth")
        assertBytes(try e.readBytes(0, MiB, b), b.allBytes, "everything")
    }

    /// A shrink to an unaligned size keeps the now-short last block, and a regrowth forgets it: no stale tail.
    func testShrinkToAnUnalignedSizeThenGrowReadsNewBytes() throws {
        let b = MemoryBackend(size: MiB, seed: 742)
        let e = try makeEngine(b, cacheOnRead: .always)
        assertBytes(try e.readBytes(0, MiB, b), b.allBytes)
        let end: UInt64 = (512 << 10) + 1000
        try e.reopen(b, size: end)
        XCTAssertEqual(e.states(9..<16), Array(repeating: .notCached, count: 7))
        b.poke(randomBytes(Int(MiB - end), seed: 743), at: end)
        try e.reopen(b, size: MiB)
        assertBytes(try e.readBytes(512 << 10, 512 << 10, b), b.bytes(512 << 10, 512 << 10), "read after regrowth")
    }

    /// Dirty and partial blocks past the new end are dropped (dirtyBlockCount says so) and never written back.
    func testShrinkDropsDirtyBlocksPastTheNewEnd() throws {
        let b = MemoryBackend(size: MiB, seed: 744)
        let e = try makeEngine(b, mode: .writeback)
        let kept = randomBytes(Int(B), seed: 745)
        try e.writeBytes(kept, at: 2 * B, b)
        try e.writeBytes(randomBytes(Int(B), seed: 746), at: 12 * B, b)
        try e.writeBytes(randomBytes(100, seed: 747), at: 13 * B + 5, b)
        XCTAssertEqual(e.dirtyBlockCount, 3)
        XCTAssertEqual(e.states(12..<14), [.dirty, .partial])
        try e.reopen(b, size: 512 << 10)
        XCTAssertEqual(e.dirtyBlockCount, 1, "only block 2 is still dirty")
        XCTAssertEqual(e.states(12..<14), [.notCached, .notCached])
        XCTAssertEqual(e.partialBlockCount, 0)
        XCTAssertEqual(e.state(ofBlock: 2), .dirty)
        let fresh = randomBytes(512 << 10, seed: 748)
        b.poke(fresh, at: 512 << 10)
        try e.reopen(b, size: MiB)
        assertBytes(try e.readBytes(512 << 10, 512 << 10, b), fresh, "read after regrowth")
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B, B)], "only the block inside the export goes back")
        assertBytes(b.bytes(512 << 10, 512 << 10), fresh, "the plugin's new bytes are not overwritten")
        assertBytes(b.bytes(2 * B, B), kept)
    }

    // MARK: 5. One FUA write reaches the plugin once

    /// A 16 MiB FUA write with cache-max-size=4M sends exactly 16 MiB to the plugin, and the cache stays under 4 MiB.
    func testFUAWriteLargerThanTheCacheReachesThePluginOnce() throws {
        for threads in [1, 4] {
            let b = MemoryBackend(size: 16 * MiB, seed: 750)
            let e = try makeEngine(b, mode: .writeback, maxSize: 4 * MiB, writeBackThreads: threads)
            let peak = sampleCachedBytes(e, b)
            let data = randomBytes(Int(16 * MiB), seed: 751)
            try e.writeBytes(data, at: 0, fua: true, b)
            XCTAssertEqual(b.stats.writeBytes, 16 * MiB, "plugin bytes, \(threads) threads")
            XCTAssertTrue(b.stats.writeLog.allSatisfy(\.fua), "every plugin write carries FUA")
            XCTAssertLessThanOrEqual(peak.withLock { $0 }, 4 * MiB, "cachedBytes during the write")
            XCTAssertLessThanOrEqual(e.cachedBytes, 4 * MiB)
            assertBytes(b.allBytes, data, "backend after the FUA write")
            XCTAssertEqual(e.dirtyBlockCount, 0, "the plugin has every block")
            try e.flush(backend: b)
            XCTAssertEqual(b.stats.writeBytes, 16 * MiB, "the flush writes nothing again")
            assertBytes(try e.readBytes(0, 16 * MiB, b), data, "read back")
            XCTAssertLessThanOrEqual(peak.withLock { $0 }, 4 * MiB, "cachedBytes during the read")
        }
    }

    /// With emulated FUA (write, then flush) a 16 MiB write still reaches the plugin exactly once.
    func testEmulatedFUAWriteLargerThanTheCacheReachesThePluginOnce() throws {
        let b = MemoryBackend(size: 16 * MiB, seed: 752, fuaMode: .emulate)
        let e = try makeEngine(b, mode: .writeback, maxSize: 4 * MiB)
        let peak = sampleCachedBytes(e, b)
        let data = randomBytes(Int(16 * MiB), seed: 753)
        try e.writeBytes(data, at: 0, fua: true, b)
        XCTAssertEqual(b.stats.writeBytes, 16 * MiB)
        XCTAssertGreaterThanOrEqual(b.stats.flushes, 1)
        XCTAssertLessThanOrEqual(peak.withLock { $0 }, 4 * MiB)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, data)
    }

    // MARK: 6. NO_HOLE is honoured

    /// In writethrough a NO_HOLE zero reaches the plugin without MAY_TRIM; a trimmable one passes MAY_TRIM on.
    func testWritethroughZeroPassesMayTrimAsItCame() throws {
        let b = MemoryBackend(size: MiB, seed: 760)
        let e = try makeEngine(b, mode: .writethrough)
        try e.zero(count: 3 * B, at: B, fua: false, mayTrim: false, fastZero: false, backend: b)
        try e.zero(count: 1000, at: 5 * B + 10, fua: false, mayTrim: false, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeros, 2)
        XCTAssertEqual(b.stats.zeroesMayTrim, 0, "NO_HOLE zeroes carried MAY_TRIM")
        XCTAssertEqual(b.bytes(B, 3 * B), [UInt8](repeating: 0, count: Int(3 * B)))
        XCTAssertEqual(b.bytes(5 * B + 10, 1000), [UInt8](repeating: 0, count: 1000))
        b.resetStats()
        try e.zero(count: 2 * B, at: 8 * B, fua: false, mayTrim: true, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeros, 1)
        XCTAssertEqual(b.stats.zeroesMayTrim, 1, "MAY_TRIM passed on")
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.zeroesMayTrim, 1)
    }

    /// A FUA zero in writeback reaches the plugin with MAY_TRIM exactly as the client sent it.
    func testWritebackFUAZeroPassesMayTrimAsItCame() throws {
        let b = MemoryBackend(size: MiB, seed: 761)
        let e = try makeEngine(b, mode: .writeback)
        try e.zero(count: 3 * B, at: B, fua: true, mayTrim: false, fastZero: false, backend: b)
        try e.zero(count: 1000, at: 5 * B + 10, fua: true, mayTrim: false, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeros, 2)
        XCTAssertTrue(b.stats.zeroLog.allSatisfy(\.fua))
        XCTAssertEqual(b.stats.zeroesMayTrim, 0, "NO_HOLE zeroes carried MAY_TRIM")
        XCTAssertEqual(b.bytes(B, 3 * B), [UInt8](repeating: 0, count: Int(3 * B)))
        XCTAssertEqual(b.bytes(5 * B + 10, 1000), [UInt8](repeating: 0, count: 1000))
        b.resetStats()
        try e.zero(count: 2 * B, at: 8 * B, fua: true, mayTrim: true, fastZero: false, backend: b)
        XCTAssertEqual(b.stats.zeros, 1)
        XCTAssertEqual(b.stats.zeroesMayTrim, 1, "MAY_TRIM passed on")
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.zeroesMayTrim, 1)
    }

    /// A NO_HOLE zero cached in writeback (plain, or FUA the plugin emulates) never reaches it with MAY_TRIM.
    func testWritebackCachedNoHoleZeroNeverCarriesMayTrim() throws {
        for fuaMode in [FUAMode.native, .emulate] {
            let b = MemoryBackend(size: MiB, seed: 762, fuaMode: fuaMode)
            let e = try makeEngine(b, mode: .writeback)
            try e.zero(count: 3 * B, at: B, fua: fuaMode == .emulate, mayTrim: false, fastZero: false, backend: b)
            try e.zero(count: 1000, at: 5 * B + 10, fua: false, mayTrim: false, fastZero: false, backend: b)
            try e.flush(backend: b)
            XCTAssertEqual(b.stats.zeroesMayTrim, 0, "NO_HOLE zeroes carried MAY_TRIM (\(fuaMode))")
            XCTAssertEqual(b.bytes(B, 3 * B), [UInt8](repeating: 0, count: Int(3 * B)))
            XCTAssertEqual(b.bytes(5 * B + 10, 1000), [UInt8](repeating: 0, count: 1000))
        }
    }

    // MARK: 7. Reclaim coalesces

    /// With 4 KiB blocks and cache-max-size=1M, 8 MiB of 1 MiB writes reach the plugin in few, large requests.
    func testReclaimWritesBackCoalescedRuns() throws {
        let b = MemoryBackend(size: 8 * MiB, seed: 770)
        let e = try makeEngine(b, mode: .writeback, maxSize: MiB, minBlockSize: 4096)
        let data = randomBytes(Int(8 * MiB), seed: 771)
        for i in 0..<8 {
            try e.writeBytes(Array(data[i * Int(MiB)..<(i + 1) * Int(MiB)]), at: UInt64(i) * MiB, b)
        }
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB)
        try e.flush(backend: b)
        let stats = b.stats
        XCTAssertLessThanOrEqual(stats.writes, 64, "plugin writes")
        XCTAssertGreaterThanOrEqual(stats.writeBytes / UInt64(max(1, stats.writes)), 128 << 10, "average write")
        XCTAssertEqual(stats.writeBytes, 8 * MiB, "each byte once")
        XCTAssertEqual(e.dirtyBlockCount, 0)
        assertBytes(b.allBytes, data, "backend after flush")
    }
}

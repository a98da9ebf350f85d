// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class ReadTests: EngineTestCase {
    func testUnalignedReadWithCacheOnReadNeverGoesToTheBackendAndCachesNothing() throws {
        let b = MemoryBackend(size: MiB, seed: 1)
        let e = try makeEngine(b)
        assertBytes(try e.readBytes(1000, 200_000, b), b.bytes(1000, 200_000))
        // One uncached run: one plugin read of exactly the bytes asked for.
        XCTAssertEqual(b.stats.readLog, [Req(1000, 200_000)])
        XCTAssertEqual(e.cachedBytes, 0)
        XCTAssertEqual(e.states(0..<16), Array(repeating: .notCached, count: 16))
        assertBytes(try e.readBytes(1000, 200_000, b), b.bytes(1000, 200_000))
        XCTAssertEqual(b.stats.reads, 2)
        XCTAssertEqual(b.stats.writes + b.stats.zeros + b.stats.trims + b.stats.flushes, 0)
    }

    func testUnalignedHeadAndTailWithCacheOnReadAlways() throws {
        let b = MemoryBackend(size: MiB, seed: 2)
        let e = try makeEngine(b, cacheOnRead: .always)
        // Head within block 1, tail within block 2.
        assertBytes(try e.readBytes(B + 65000, 1000, b), b.bytes(B + 65000, 1000))
        // Both blocks are missing: one run, one plugin read of both.
        XCTAssertEqual(b.stats.readLog, [Req(B, 2 * B)])
        XCTAssertEqual(e.states(0..<4), [.notCached, .clean, .clean, .notCached])
        // Smaller pieces of the same blocks come from the cache.
        assertBytes(try e.readBytes(B + 1, 1, b), b.bytes(B + 1, 1))
        assertBytes(try e.readBytes(2 * B - 7, 14, b), b.bytes(2 * B - 7, 14))
        assertBytes(try e.readBytes(B, 2 * B, b), b.bytes(B, Int(2 * B)))
        XCTAssertEqual(b.stats.reads, 1)
        XCTAssertEqual(e.cachedBytes, 2 * B)
        // A head in cached block 2 and a tail in uncached block 3: only block 3 is read.
        assertBytes(try e.readBytes(3 * B - 10, 20, b), b.bytes(3 * B - 10, 20))
        XCTAssertEqual(b.stats.readLog, [Req(B, 2 * B), Req(3 * B, B)])
        // A head in uncached block 0 and a tail in cached block 1.
        assertBytes(try e.readBytes(B - 3, 6, b), b.bytes(B - 3, 6))
        XCTAssertEqual(b.stats.readLog, [Req(B, 2 * B), Req(3 * B, B), Req(0, B)])
        XCTAssertEqual(e.states(0..<5), [.clean, .clean, .clean, .clean, .notCached])
    }

    func testReadSpanningManyBlocksMixesCachedAndUncachedRuns() throws {
        let b = MemoryBackend(size: MiB, seed: 3)
        let e = try makeEngine(b, cacheOnRead: .always)
        assertBytes(try e.readBytes(12345, 700_000, b), b.bytes(12345, 700_000))
        // Blocks 0...10, read as one run (partial head block: through a staging buffer).
        XCTAssertEqual(b.stats.readLog, [Req(0, 11 * B)])
        XCTAssertEqual(e.states(0..<12), Array(repeating: .clean, count: 11) + [.notCached])
        XCTAssertEqual(e.cachedBytes, 11 * B)
        // Again: all from the cache.
        assertBytes(try e.readBytes(12345, 700_000, b), b.bytes(12345, 700_000))
        XCTAssertEqual(b.stats.reads, 1)
        // Cache some holes in the middle out of the picture: blocks 11..15 are fetched as one run.
        assertBytes(try e.readBytes(0, Int(MiB), b), b.allBytes)
        XCTAssertEqual(b.stats.readLog, [Req(0, 11 * B), Req(11 * B, 5 * B)])
        XCTAssertEqual(e.cachedBytes, MiB)
        // Any unaligned window now comes from the cache.
        var rng = SplitMix64(seed: 33)
        let disk = b.allBytes
        for _ in 0..<200 {
            let offset = Int(rng.next() % MiB)
            let count = 1 + Int(rng.next() % (MiB - UInt64(offset)))
            assertBytes(
                try e.readBytes(UInt64(offset), count, b), Array(disk[offset..<offset + count]),
                "window \(offset)+\(count)")
        }
        XCTAssertEqual(b.stats.reads, 2)
    }

    func testReadsOfCachedBlocksSeeTheCacheNotTheBackend() throws {
        // Proves the data really comes from the cache file: the backend changes
        // behind the cache's back and the cached blocks keep the old bytes.
        let b = MemoryBackend(size: MiB, seed: 4)
        let e = try makeEngine(b, cacheOnRead: .always)
        let before = b.bytes(0, Int(2 * B))
        _ = try e.readBytes(0, Int(B), b)
        b.poke(Array(repeating: 0x11, count: Int(2 * B)), at: 0)
        let got = try e.readBytes(0, Int(2 * B), b)
        assertBytes(Array(got[..<Int(B)]), Array(before[..<Int(B)]), "cached block 0")
        assertBytes(Array(got[Int(B)...]), Array(repeating: 0x11, count: Int(B)), "uncached block 1")
    }

    func testExportSizeNotAMultipleOfTheBlockSize() throws {
        let size: UInt64 = 1_000_000  // 15 whole blocks and 16960 bytes
        let b = MemoryBackend(size: size, seed: 5)
        let e = try makeEngine(b, cacheOnRead: .always)
        // A read that ends exactly at the end of the export.
        assertBytes(try e.readBytes(999_900, 100, b), b.bytes(999_900, 100))
        XCTAssertEqual(b.stats.readLog, [Req(983_040, 16960)], "the last block is cut at the end of the export")
        XCTAssertEqual(e.state(ofBlock: 15), .clean)
        assertBytes(try e.readBytes(0, Int(size), b), b.allBytes)
        XCTAssertEqual(b.stats.readLog, [Req(983_040, 16960), Req(0, 15 * B)])
        assertBytes(try e.readBytes(999_999, 1, b), b.bytes(999_999, 1))
        assertBytes(try e.readBytes(983_040, 16960, b), b.bytes(983_040, 16960))
        XCTAssertEqual(b.stats.reads, 2)
        XCTAssertEqual(e.cachedBytes, 16 * B)
        // One byte past the end is refused.
        assertCacheError(.invalidArgument) { _ = try e.readBytes(999_999, 2, b) }
        assertCacheError(.invalidArgument) { _ = try e.readBytes(1_000_000, 1, b) }
        assertCacheError(.invalidArgument) { try e.cache(count: 2, at: 999_999, backend: b) }
        XCTAssertEqual(b.stats.reads, 2)

        // Writing into the short last block and flushing writes exactly its bytes.
        let data = randomBytes(5000, seed: 55)
        try e.writeBytes(data, at: 995_000, b)
        // A short block is never dirty (that would claim all its bytes): its
        // clean bytes and the write make a partial block holding all of them.
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        XCTAssertEqual(e.held(15), [0..<16960])
        assertBytes(try e.readBytes(983_040, 16960, b), b.bytes(983_040, 11960) + data)
        XCTAssertEqual(b.stats.reads, 2, "served from the cache")
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(983_040, 16960)])
        assertBytes(b.bytes(995_000, 5000), data)
    }

    func testExportSizeNotAMultipleOfTheBlockSizeWithoutCacheOnRead() throws {
        let size: UInt64 = 1_000_000
        let b = MemoryBackend(size: size, seed: 6)
        let e = try makeEngine(b)
        assertBytes(try e.readBytes(0, Int(size), b), b.allBytes)
        assertBytes(try e.readBytes(936_000, 64_000, b), b.bytes(936_000, 64_000))
        XCTAssertEqual(b.stats.readLog, [Req(0, size), Req(936_000, 64_000)])

        // Partial write of the uncached short last block: nothing read, it is partial.
        var model = b.allBytes
        let data = randomBytes(100, seed: 66)
        try e.writeBytes(data, at: 999_000, b)
        model.replaceSubrange(999_000..<999_100, with: data)
        XCTAssertEqual(b.stats.reads, 2)
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        XCTAssertEqual(e.held(15), [15960..<16060])
        // Reading it completes it with one read of its 16960 bytes.
        assertBytes(try e.readBytes(983_040, 16960, b), Array(model[983_040...]))
        XCTAssertEqual(b.stats.readLog, [Req(0, size), Req(936_000, 64_000), Req(983_040, 16960)])
        XCTAssertEqual(e.state(ofBlock: 15), .partial)
        XCTAssertEqual(e.held(15), [0..<16960], "all of it, up to the end of the export")
        assertBytes(try e.readBytes(983_040, 16960, b), Array(model[983_040...]))
        XCTAssertEqual(b.stats.reads, 3, "the second read is served from the cache")
        // A write of the whole short block is not partial: no plugin read.
        b.resetStats()
        let whole = randomBytes(16960, seed: 67)
        try e.writeBytes(whole, at: 983_040, b)
        model.replaceSubrange(983_040..<1_000_000, with: whole)
        XCTAssertEqual(b.stats.reads, 0)
        try e.flush(backend: b)
        XCTAssertEqual(b.stats.writeLog, [Req(983_040, 16960)])
        assertBytes(b.allBytes, model)
    }

    func testCacheOnReadNeverReadsTheBackendEveryTime() throws {
        let b = MemoryBackend(size: MiB, seed: 7)
        let e = try makeEngine(b, cacheOnRead: .never)
        for _ in 0..<3 { assertBytes(try e.readBytes(B, Int(B), b), b.bytes(B, Int(B))) }
        XCTAssertEqual(b.stats.readLog, [Req(B, B), Req(B, B), Req(B, B)])
        XCTAssertEqual(e.state(ofBlock: 1), .notCached)
    }

    func testCacheOnReadWhilePathExistsIsCheckedPerRequest() throws {
        let flag = directory + "/cache-on-read"
        let b = MemoryBackend(size: MiB, seed: 8)
        let e = try makeEngine(b, cacheOnRead: .whilePathExists(FilePath(flag)))

        // No file: off.
        _ = try e.readBytes(0, 100, b)
        _ = try e.readBytes(0, 100, b)
        XCTAssertEqual(b.stats.reads, 2)
        XCTAssertEqual(e.state(ofBlock: 0), .notCached)

        // File created: on.
        touchFile(flag)
        assertBytes(try e.readBytes(0, 100, b), b.bytes(0, 100))
        XCTAssertEqual(b.stats.reads, 3)
        XCTAssertEqual(b.stats.readLog.last, Req(0, B))
        XCTAssertEqual(e.state(ofBlock: 0), .clean)
        assertBytes(try e.readBytes(0, 100, b), b.bytes(0, 100))
        XCTAssertEqual(b.stats.reads, 3)

        // File removed: off again, but what was cached stays cached.
        unlink(flag)
        _ = try e.readBytes(B, 100, b)
        _ = try e.readBytes(B, 100, b)
        XCTAssertEqual(b.stats.reads, 5)
        XCTAssertEqual(e.state(ofBlock: 1), .notCached)
        assertBytes(try e.readBytes(0, 100, b), b.bytes(0, 100))
        XCTAssertEqual(b.stats.reads, 5)
    }

    func testCacheCommandPopulatesEvenWithCacheOnReadNever() throws {
        let b = MemoryBackend(size: MiB, seed: 9)
        let e = try makeEngine(b, cacheOnRead: .never)
        try e.cache(count: 200_000, at: 70_000, backend: b)
        // Bytes 70000..<270000 lie in blocks 1...4.
        XCTAssertEqual(b.stats.readLog, [Req(B, 4 * B)])
        XCTAssertEqual(e.states(0..<6), [.notCached, .clean, .clean, .clean, .clean, .notCached])
        XCTAssertEqual(e.cachedBytes, 4 * B)
        assertBytes(try e.readBytes(70_000, 200_000, b), b.bytes(70_000, 200_000))
        assertBytes(try e.readBytes(B, Int(4 * B), b), b.bytes(B, Int(4 * B)))
        try e.cache(count: 4 * B, at: B, backend: b)
        XCTAssertEqual(b.stats.reads, 1)
        // Partly cached range: only the missing blocks are fetched.
        try e.cache(count: 3 * B, at: 3 * B, backend: b)
        XCTAssertEqual(b.stats.readLog, [Req(B, 4 * B), Req(5 * B, B)])
        // CACHE of a dirty block leaves it dirty.
        try e.writeBytes(Array(repeating: 7, count: Int(B)), at: 8 * B, b)
        try e.cache(count: B, at: 8 * B, backend: b)
        XCTAssertEqual(e.state(ofBlock: 8), .dirty)
        XCTAssertEqual(b.stats.reads, 2)
    }

    func testReadErrorIsReportedAndNothingIsCached() throws {
        let b = MemoryBackend(size: MiB, seed: 10)
        let e = try makeEngine(b, cacheOnRead: .always)
        b.failNextReads(1, .ioError)
        assertCacheError(.ioError) { _ = try e.readBytes(100, 1000, b) }
        XCTAssertEqual(e.state(ofBlock: 0), .notCached)
        XCTAssertEqual(e.cachedBytes, 0)
        XCTAssertEqual(b.stats.failedReads, 1)
        // The filter keeps serving.
        assertBytes(try e.readBytes(100, 1000, b), b.bytes(100, 1000))
        XCTAssertEqual(e.state(ofBlock: 0), .clean)
        XCTAssertEqual(b.stats.reads, 1)
    }

    func testExportSizeGrowsWithoutLosingCachedBlocks() throws {
        let b = MemoryBackend(size: 2 * MiB, seed: 11)
        let e = try makeEngine(b, size: MiB, cacheOnRead: .always)
        _ = try e.readBytes(0, 10, b)
        try e.writeBytes([1, 2, 3], at: B + 5, b)
        assertCacheError(.invalidArgument) { _ = try e.readBytes(MiB, 1, b) }
        try e.reopen(b, size: 2 * MiB)
        XCTAssertEqual(e.exportSize, 2 * MiB)
        XCTAssertEqual(e.states(0..<2), [.clean, .partial])
        XCTAssertEqual(e.held(1), [5..<8], "the partial block keeps its bytes")
        assertBytes(try e.readBytes(MiB + B, 100, b), b.bytes(MiB + B, 100))
        XCTAssertEqual(e.state(ofBlock: 17), .clean)
        var block1 = b.bytes(B, B)
        block1.replaceSubrange(5..<8, with: [1, 2, 3])
        assertBytes(try e.readBytes(B, B, b), block1, "the partial block after the growth")
        XCTAssertEqual(e.state(ofBlock: 1), .dirty)
    }

    /// The export grows from a size that is not a multiple of the block size:
    /// the old short last block becomes a whole block. Its bytes past the old
    /// end were never in the cache (the cache file reads zeroes there), so a
    /// block cached whole (clean or dirty) must not serve them, nor write them
    /// back over the plugin's bytes.
    func testExportGrowthPastAShortLastBlockKeepsThePluginBytesPastTheOldEnd() throws {
        let oldSize = MiB - 1000  // block 15 is 64536 bytes long
        for (n, mode) in ["clean", "dirty", "partial"].enumerated() {
            let b = MemoryBackend(size: 2 * MiB, seed: 12 + UInt64(n))
            let e = try makeEngine(b, size: oldSize, cacheOnRead: .always)
            var model = b.allBytes
            let data = randomBytes(Int(oldSize - 15 * B), seed: 20 + UInt64(n))
            switch mode {
            case "clean":
                _ = try e.readBytes(15 * B, 10, b)
            case "dirty":
                try e.writeBytes(data, at: 15 * B, b)
                model.replaceSubrange(Int(15 * B)..<Int(oldSize), with: data)
            default:
                try e.writeBytes(Array(data[100...]), at: 15 * B + 100, b)
                model.replaceSubrange(Int(15 * B) + 100..<Int(oldSize), with: data[100...])
            }
            XCTAssertEqual(e.state(ofBlock: 15), mode == "clean" ? .clean : .partial, mode)
            try e.reopen(b, size: 2 * MiB)
            assertBytes(
                try e.readBytes(15 * B, B, b), Array(model[Int(15 * B)..<Int(16 * B)]),
                "\(mode): old short block read after the growth")
            try e.flush(backend: b)
            assertBytes(b.allBytes, model, "\(mode): backend after flush")
        }
    }
    /// Plugin data that is all zeroes is kept as known zeroes (SPEC §8): no
    /// second plugin read, nothing allocated, no room taken.
    func testZeroPluginDataIsCachedAsAHole() throws {
        var disk = [UInt8](repeating: 0, count: Int(MiB))
        disk.replaceSubrange(Int(4 * B)..<Int(5 * B), with: randomBytes(Int(B), seed: 40))
        disk[Int(6 * B) - 1] = 7  // block 5: one byte of data, at its very end
        let b = MemoryBackend(bytes: disk)
        let e = try makeEngine(b, cacheOnRead: .always)
        assertBytes(try e.readBytes(0, 4 * B, b), Array(disk[..<Int(4 * B)]))
        XCTAssertEqual(e.states(0..<4), Array(repeating: .zero, count: 4))
        XCTAssertEqual(e.allocatedBytes, 0, "four blocks of zeroes")
        XCTAssertEqual(e.cachedBytes, 0, "known zeroes take no room")
        let reads = b.stats.reads
        assertBytes(try e.readBytes(0, 4 * B, b), Array(disk[..<Int(4 * B)]))
        XCTAssertEqual(b.stats.reads, reads, "known zeroes read nothing from the plugin")
        assertBytes(try e.readBytes(4 * B, 2 * B, b), Array(disk[Int(4 * B)..<Int(6 * B)]))
        XCTAssertGreaterThanOrEqual(e.allocatedBytes, 2 * B, "data is written")
        // Unaligned, through the staging buffer: block 6 of zeroes, block 7 too.
        assertBytes(try e.readBytes(6 * B + 10, Int(B), b), Array(disk[Int(6 * B) + 10..<Int(7 * B) + 10]))
        XCTAssertLessThan(e.allocatedBytes, 3 * B, "blocks 6 and 7 are holes")
        XCTAssertEqual(e.states(4..<8), [.clean, .clean, .zero, .zero])
        // All from the cache now.
        assertBytes(try e.readBytes(0, 8 * B, b), Array(disk[..<Int(8 * B)]))
        XCTAssertEqual(b.stats.reads, 3)
    }

    /// A hole is punched, not assumed: a block cached whole as a short last
    /// block and uncached when the export grew still has its old bytes in the
    /// cache file, and plugin zeroes must replace them.
    func testZeroPluginDataReplacesOldBytesInTheCacheFile() throws {
        let b = MemoryBackend(size: 2 * MiB, seed: 42)
        let e = try makeEngine(b, size: MiB - 1000, cacheOnRead: .always)
        _ = try e.readBytes(15 * B, 10, b)
        XCTAssertEqual(e.state(ofBlock: 15), .clean)
        let zeroes = [UInt8](repeating: 0, count: Int(B))
        b.poke(zeroes, at: 15 * B)
        try e.reopen(b, size: 2 * MiB)
        assertBytes(try e.readBytes(15 * B, B, b), zeroes, "after the growth")
        assertBytes(try e.readBytes(15 * B, B, b), zeroes, "from the cache")
        XCTAssertEqual(b.stats.reads, 2)
    }

    func testIsAllZeroLooksAtEveryByte() {
        for count in [0, 1, 63, 255, 256, 257, 511, 512, 4096 + 3] {
            var bytes = [UInt8](repeating: 0, count: count)
            bytes.withUnsafeBytes { XCTAssertTrue($0.isAllZero, "\(count) zero bytes") }
            for position in Set([0, count / 2, count - 1, count - 2, 255, 256]).filter({ $0 >= 0 && $0 < count }) {
                bytes[position] = 0x80
                bytes.withUnsafeBytes { XCTAssertFalse($0.isAllZero, "byte \(position) of \(count)") }
                bytes[position] = 0
            }
        }
    }
}

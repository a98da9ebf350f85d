// SPDX-License-Identifier: BSD-3-Clause
import Foundation
import XCTest

@testable import SwiftCacheCore

/// The fuzzer's inputs, replayed through its decoder and checks
/// (SwiftCacheTesting's `FuzzCase`, fuzz/README.md): every input it ever
/// found failing (fuzz/regressions/) and the seed corpus
/// (fuzz/corpus/seed-*) must pass.
final class FuzzRegressionTests: XCTestCase {
    /// The package's fuzz/ directory, found from this file's path.
    private static let fuzz = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fuzz")

    private func replay(_ folder: String, prefix: String = "", atLeast: Int) throws {
        let directory = FuzzRegressionTests.fuzz.appendingPathComponent(folder)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasPrefix(prefix) && !$0.hasSuffix(".md") }.sorted()
        XCTAssertGreaterThanOrEqual(names.count, atLeast, "inputs in \(directory.path)")
        let directories = try FuzzDirectories.make()
        defer { directories.remove() }
        for name in names {
            let input = try [UInt8](Data(contentsOf: directory.appendingPathComponent(name)))
            if let failure = FuzzCase.run(input, in: directories) {
                XCTFail("fuzz/\(folder)/\(name):\n\(failure)")
            }
        }
    }

    func testEveryInputTheFuzzerFoundFailingPasses() throws {
        try replay("regressions", atLeast: 1)
    }

    func testTheSeedCorpusPasses() throws {
        try replay("corpus", prefix: "seed-", atLeast: 1)
    }
}

/// Defects the fuzzer found (fuzz/README.md, "Defects it found"), each as
/// the smallest case that showed it; each failed before its fix.
final class FuzzerFoundDefectTests: EngineTestCase {
    /// Defect 1: the export shrinks, a connection that still sees it
    /// larger writes the whole block the new end cuts (as it sees it), and
    /// the export grows again: the growth cuts that dirty block at the old
    /// end, so its own write reads back as the plugin's old bytes.
    func testAGrowthKeepsWhatAnOlderConnectionWrotePastTheShrunkEnd() throws {
        let disk = MemoryBackend(size: 200_000, seed: 1)
        let e = try makeEngine(disk, size: 100_000, mode: .writeback)
        let older = Connection(disk, size: 100_000)
        try e.setExportSize(70_000)  // a new connection sees the export shrunk
        let data = randomBytes(100_000 - Int(B), seed: 2)
        try e.writeBytes(data, at: B, older)
        try e.setExportSize(100_000)  // another connection opens: the export grew back
        assertBytes(try e.readBytes(B, data.count, older), data, "the older connection reads its own write")
        try e.flush(backend: older)
        assertBytes(disk.bytes(B, data.count), data, "and the plugin gets it")
    }

    /// Defect 2: after a shrink, a connection that still sees the export
    /// larger fills (or writes) the block holding its own, unaligned end; when
    /// the export grows past that end, the cache serves the block's bytes past
    /// it (zeroes) as the export's, and a flush writes them over the plugin's.
    func testAGrowthPastAnOlderConnectionsEndReadsThePlugin() throws {
        for dirty in [false, true] {
            let disk = MemoryBackend(size: 200_000, seed: 1)
            let e = try makeEngine(disk, size: 100_000, mode: .writeback, cacheOnRead: .always)
            let older = Connection(disk, size: 100_000)
            try e.setExportSize(50_000)
            if dirty {
                try e.writeBytes(randomBytes(100_000 - Int(B), seed: 2), at: B, older)
            } else {
                _ = try e.readBytes(B, 100_000 - B, older)
            }
            try e.reopen(disk, size: 200_000)  // the export grew past the older connection's end
            let expected = disk.bytes(100_000, 2 * B - 100_000)
            assertBytes(try e.readBytes(100_000, 2 * B - 100_000, disk), expected, "dirty \(dirty): read")
            try e.flush(backend: disk)
            assertBytes(disk.bytes(100_000, 2 * B - 100_000), expected, "dirty \(dirty): the plugin after a flush")
        }
    }

    /// Defect 3: after a shrink inside a block, a connection that sees
    /// the new end writes that whole (short) block; a flush through an older,
    /// larger connection then writes the block to its full length, zeroes past
    /// the new end, over the plugin's bytes (growing a file that shrank).
    func testAFlushThroughAnOlderConnectionWritesNothingPastTheShrunkEnd() throws {
        let disk = MemoryBackend(size: 200_000, seed: 1)
        let e = try makeEngine(disk, size: 100_000, mode: .writeback)
        let older = Connection(disk, size: 100_000), smaller = Connection(disk, size: 70_000)
        try e.setExportSize(70_000)
        let past = disk.bytes(70_000, 30_000)
        try e.writeBytes(randomBytes(70_000 - Int(B), seed: 3), at: B, smaller)
        disk.resetStats()
        try e.flush(backend: older)
        XCTAssertEqual(disk.stats.writeLog, [Req(B, 70_000 - B)], "only the bytes before the new end")
        assertBytes(disk.bytes(70_000, 30_000), past, "the plugin's bytes past the new end")
    }

    /// Defect 5 (found once the fuzzer kept older, larger connections open
    /// across a shrink): such a connection reads the blocks past the new end
    /// (cache-on-read) as it sees them; when the export grows again with new
    /// bytes there, the cache must serve the plugin's new bytes, not its copy.
    func testAGrowthDropsCleanCopiesPastTheOldEnd() throws {
        let disk = MemoryBackend(size: 300_000, seed: 1)
        let e = try makeEngine(disk, size: 200_000, mode: .writeback, cacheOnRead: .always)
        let older = Connection(disk, size: 200_000)
        try e.setExportSize(30_000)
        _ = try e.readBytes(0, 200_000, older)  // blocks 0 to 2 whole, block 3 in part
        let fresh = randomBytes(270_000, seed: 5)
        disk.poke(fresh, at: 30_000)  // the file grew again, with new bytes
        try e.reopen(disk, size: 300_000)
        assertBytes(try e.readBytes(30_000, 270_000, disk), fresh)
        assertBytes(try e.readBytes(0, 30_000, older), disk.bytes(0, 30_000), "what lies before the old end stays")
    }

    /// Defect 6 (found with defect 5): the new end cuts a block of dirty
    /// zeroes, which keeps its first bytes as a partial block; a read through
    /// an older, larger connection completed it from the plugin's bytes past
    /// the new end and kept it whole, as dirty, so a growth kept those bytes
    /// and served them instead of the plugin's new ones.
    func testAPartialBlockIsNotCompletedPastTheExportsEnd() throws {
        let disk = MemoryBackend(size: 300_000, seed: 1)
        let e = try makeEngine(disk, size: 200_000, mode: .writeback, cacheOnRead: .always)
        let older = Connection(disk, size: 200_000)
        try e.zero(count: 200_000, at: 0, fua: false, mayTrim: false, fastZero: false, backend: older)
        try e.setExportSize(30_000)
        assertBytes(try e.readBytes(0, 1000, older), [UInt8](repeating: 0, count: 1000))
        XCTAssertEqual(e.held(0), [0..<30_000], "not completed past the end")
        let fresh = randomBytes(270_000, seed: 5)
        disk.poke(fresh, at: 30_000)  // the file grew again, with new bytes
        try e.reopen(disk, size: 300_000)
        assertBytes(try e.readBytes(0, 300_000, disk), [UInt8](repeating: 0, count: 30_000) + fresh)
    }

    /// Defect 7 (found with the fix of 6): an older, larger connection reads
    /// a block the new end cuts, whole as it sees it (clean); a write into
    /// it made it dirty whole, the plugin's bytes past the new end with it,
    /// and a growth kept them instead of the plugin's new ones.
    func testAWriteIntoACleanCopyPastTheEndDoesNotMakeThatCopyWritten() throws {
        for fua in [false, true] {
            let disk = MemoryBackend(size: 300_000, seed: 1)
            let e = try makeEngine(disk, size: 200_000, mode: .writeback, cacheOnRead: .always)
            let older = Connection(disk, size: 200_000), smaller = Connection(disk, size: 30_000)
            try e.setExportSize(30_000)
            _ = try e.readBytes(0, Int(B), older)
            XCTAssertEqual(e.state(ofBlock: 0), .clean)
            var model = disk.bytes(0, 30_000)
            let data = randomBytes(100, seed: 3)
            try e.writeBytes(data, at: 1000, fua: fua, smaller)
            model.replaceSubrange(1000..<1100, with: data)
            let fresh = randomBytes(270_000, seed: 5)
            disk.poke(fresh, at: 30_000)  // the file grew again, with new bytes
            try e.reopen(disk, size: 300_000)
            assertBytes(try e.readBytes(0, 300_000, disk), model + fresh, "fua \(fua)")
            try e.flush(backend: disk)
            assertBytes(disk.bytes(0, 300_000), model + fresh, "fua \(fua): the plugin")
        }
    }

    /// Defect 4: with cache-max-size=1M and 1 MiB blocks, a FUA write
    /// across two blocks of dirty zeroes finds no room, goes to the plugin, and
    /// leaves both blocks taking room (one dirty, one partial): 2 MiB counted,
    /// two blocks past the high threshold.
    func testAWriteWithNoRoomOverDirtyZeroesTakesNoRoom() throws {
        let disk = MemoryBackend(size: 3 * MiB, seed: 1)
        let e = try makeEngine(disk, mode: .writeback, maxSize: MiB, minBlockSize: MiB)
        try e.zero(count: 2 * MiB, at: 0, fua: false, mayTrim: false, fastZero: false, backend: disk)
        let data = randomBytes(1000, seed: 2)
        try e.writeBytes(data, at: MiB - 500, fua: true, disk)
        XCTAssertLessThanOrEqual(e.cachedBytes, MiB * 95 / 100 + MiB, "past the high threshold by one block at most")
        var model = [UInt8](repeating: 0, count: Int(2 * MiB))
        model.replaceSubrange(Int(MiB) - 500..<Int(MiB) + 500, with: data)
        assertBytes(try e.readBytes(0, 2 * MiB, disk), model)
    }

    /// Defect 4, when the plugin fails the zeroes around the write (found
    /// by the fuzzer in the first fix, which then kept the partial block
    /// anyway): the write fails, and the block stays dirty zeroes.
    func testAWriteWithNoRoomOverDirtyZeroesFailsCleanlyWhenThePluginFails() throws {
        // FUA: the zeroes are written back before the write; without: the
        // reclaim that looks for room fails to write block 0 back, then the zeroes around.
        for fua in [true, false] {
            let disk = MemoryBackend(size: 3 * MiB, seed: 1)
            let e = try makeEngine(disk, mode: .writeback, maxSize: MiB, minBlockSize: MiB)
            try e.zero(count: 2 * MiB, at: 0, fua: false, mayTrim: false, fastZero: false, backend: disk)
            disk.failNextWrites(fua ? 1 : 2, .noSpace)
            assertCacheError(.noSpace) { try e.writeBytes(randomBytes(1000, seed: 2), at: MiB - 500, fua: fua, disk) }
            XCTAssertLessThanOrEqual(e.cachedBytes, MiB, "fua \(fua): one block, which the write had room for")
            XCTAssertEqual(e.state(ofBlock: 1), .dirtyZero(mayTrim: false), "fua \(fua)")
            let zeroes = [UInt8](repeating: 0, count: Int(MiB) - 500)
            assertBytes(try e.readBytes(MiB + 500, Int(MiB) - 500, disk), zeroes, "fua \(fua)")
            try e.flush(backend: disk)
            assertBytes(disk.bytes(MiB + 500, Int(MiB) - 500), zeroes, "fua \(fua)")
        }
    }

    /// Defect 4, with the file's allocated size: a write that finds no
    /// room over a block of dirty zeroes it covers in part sends its bytes to
    /// the plugin and keeps the block's other zeroes as a partial block, which
    /// counts without a reservation; a read then completes the block from the
    /// plugin, and the cache file holds 1 MiB where 10% of 2 MiB plus one
    /// 512 KiB block is the most it may.
    func testAReadOfABlockAWriteWithNoRoomLeftPartialKeepsToTheLimit() throws {
        let block: UInt64 = 512 << 10
        let disk = MemoryBackend(size: 2 * MiB, seed: 1)
        let e = try makeEngine(disk, mode: .writeback, maxSize: 2 * MiB, minBlockSize: block) {
            $0.highThreshold = 10
            $0.lowThreshold = 5
        }
        let limit = 2 * MiB / 10 + block
        try e.zero(count: 2 * MiB, at: 0, fua: false, mayTrim: false, fastZero: false, backend: disk)
        try e.writeBytes(randomBytes(100, seed: 2), at: 3 * block + 10, disk)  // block 3 takes room
        try e.writeBytes(randomBytes(Int(block) - 980, seed: 3), at: 2 * block + 1000, disk)  // no room for block 2
        XCTAssertLessThanOrEqual(e.cachedBytes, limit, "counted")
        _ = try e.readBytes(0, 2 * MiB, disk)
        XCTAssertLessThanOrEqual(e.allocatedBytes, limit, "allocated")
    }
}

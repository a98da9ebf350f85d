// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// Connections that see the export at different sizes (it grew or shrank
/// between them): the cache never asks the plugin for a byte past a
/// connection's end, and never drops or strands a block because of it.
final class ExportSizeTests: EngineTestCase {
    /// After a shrink, an older, larger connection writes past the new end;
    /// a flush through the smaller connection must leave that block alone
    /// (not drop it), and the older connection's flush writes it.
    func testAPartialBlockPastASmallerConnectionsEndIsNotDropped() throws {
        let disk = MemoryBackend(size: 10 * MiB, seed: 600)
        let e = try makeEngine(disk, mode: .writeback)
        let older = Connection(disk, size: 10 * MiB), smaller = Connection(disk, size: 5 * MiB)
        try e.setExportSize(5 * MiB)  // the export shrank: a new connection sees 5 MiB
        let data = randomBytes(512, seed: 601)
        try e.writeBytes(data, at: 8 * MiB, older)
        XCTAssertEqual(e.state(ofBlock: 128), .partial)
        try e.flush(backend: smaller)
        XCTAssertEqual(e.state(ofBlock: 128), .partial, "past this connection's end: left for one that sees it")
        XCTAssertEqual(smaller.violations.withLock { $0 }, [])
        try e.flush(backend: older)
        assertBytes(disk.bytes(8 * MiB, 512), data)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        XCTAssertEqual(older.violations.withLock { $0 }, [])
    }

    /// A connection opened at a size that is not a multiple of the block size
    /// sees its last block only in part once the export grew: its flush still
    /// writes what it wrote there (up to its end), and the block stays dirty
    /// for a connection that sees all of it.
    func testAFlushWritesTheConnectionsOwnLastBlockSeenInPart() throws {
        let disk = MemoryBackend(size: 10 * MiB, seed: 610)
        let oldSize = 5 * MiB + 2048
        let e = try makeEngine(disk, size: oldSize, mode: .writeback)
        let older = Connection(disk, size: oldSize)
        try e.reopen(disk, size: 10 * MiB)  // the export grew
        let first = randomBytes(512, seed: 611), second = randomBytes(100, seed: 612)
        try e.writeBytes(first, at: 5 * MiB, older)
        try e.writeBytes(second, at: 5 * MiB + 1500, older)
        try e.flush(backend: older)
        assertBytes(disk.bytes(5 * MiB, 512), first, "flushed through the connection that wrote it")
        assertBytes(disk.bytes(5 * MiB + 1500, 100), second)
        XCTAssertEqual(older.violations.withLock { $0 }, [])
        XCTAssertEqual(e.state(ofBlock: 80), .clean, "held nothing past its end: clean as far as it sees")
        // A whole dirty block written by the larger connection: the older one
        // sends only its part and the block stays dirty.
        let whole = randomBytes(Int(B), seed: 613)
        try e.writeBytes(whole, at: 80 * B, disk)
        try e.flush(backend: older)
        XCTAssertEqual(older.violations.withLock { $0 }, [])
        assertBytes(disk.bytes(80 * B, 2048), Array(whole[..<2048]))
        XCTAssertEqual(e.state(ofBlock: 80), .dirty)
        try e.flush(backend: disk)
        assertBytes(disk.bytes(80 * B, B), whole)
        XCTAssertEqual(e.dirtyBlockCount, 0)
    }

    /// A shrink forgets a block past the new end even when a request of an
    /// older connection holds it at that moment: it waits for the request.
    func testAShrinkWaitsForBlocksInUseAndForgetsThem() throws {
        let disk = MemoryBackend(size: 10 * MiB, seed: 620)
        let e = try makeEngine(disk, mode: .writeback, cacheOnRead: .always)
        let older = Connection(disk, size: 10 * MiB)
        let shrunk = Locked(false)
        // The plugin's disk keeps 10 MiB of bytes; connections opening while
        // it is "truncated" see 5 MiB.
        let armed = Locked(true)
        let shrinker = Locked<Thread?>(nil)
        disk.setOnRead { req in
            guard req.offset == 100 * B,
                armed.withLock({
                    let was = $0
                    $0 = false
                    return was
                })
            else { return }
            // While the older connection fills block 100, the export shrinks.
            let thread = Thread {
                try? e.setExportSize(5 * MiB)
                shrunk.withLock { $0 = true }
            }
            shrinker.withLock { $0 = thread }
            thread.start()
            usleep(100_000)
            XCTAssertFalse(shrunk.withLock { $0 }, "the shrink waits for block 100")
        }
        _ = try e.readBytes(100 * B, 10, older)
        for _ in 0..<5000 where !shrunk.withLock({ $0 }) { usleep(1000) }
        disk.setOnRead(nil)
        XCTAssertTrue(shrunk.withLock { $0 })
        XCTAssertEqual(e.state(ofBlock: 100), .notCached, "forgotten once the read let go of it")
        // The export grows again with new bytes: they are read, not the old ones.
        let fresh = randomBytes(Int(B), seed: 621)
        disk.poke(fresh, at: 100 * B)
        try e.setExportSize(10 * MiB)
        assertBytes(try e.readBytes(100 * B, B, disk), fresh)
    }

    /// A shrink to a size inside a block cuts that block: an older, larger
    /// connection that writes into it must not write the bytes past the new
    /// end back (they would grow the file again with truncated data).
    func testAShrinkInsideABlockCutsItsTail() throws {
        for dirty in [false, true] {
            let disk = MemoryBackend(size: 100_000, seed: 630)
            let e = try makeEngine(disk, mode: .writeback, cacheOnRead: .always)
            let older = Connection(disk, size: 100_000), smaller = Connection(disk, size: 70_000)
            if dirty {
                try e.writeBytes(randomBytes(100_000 - Int(B), seed: 631), at: B, older)
            } else {
                _ = try e.readBytes(0, 100_000, older)
            }
            try e.setExportSize(70_000)  // the file was truncated to 70000 bytes
            disk.resetStats()
            if dirty {
                try e.flush(backend: smaller)
                XCTAssertEqual(disk.stats.writeLog, [Req(B, 70_000 - B)], "dirty: only the bytes before the new end")
            } else {
                XCTAssertEqual(e.state(ofBlock: 1), .notCached, "clean: the cut block is forgotten")
            }
            disk.resetStats()
            try e.writeBytes(Array(repeating: 7, count: 10), at: 66_000, older)
            try e.flush(backend: older)
            // What the cut block holds clean (a smaller connection flushed or read it) goes back with the write.
            let written = dirty ? Req(B, 70_000 - B) : Req(66_000, 10)
            XCTAssertEqual(disk.stats.writeLog, [written], "dirty=\(dirty): nothing past 70000 is written back")
            XCTAssertEqual(older.violations.withLock { $0 } + smaller.violations.withLock { $0 }, [])
        }
    }

    /// A connection that sees its last block only in part (the export grew)
    /// cannot complete it from the plugin: a write that would need that (the
    /// block holds all the ranges it may) goes to the plugin instead of
    /// failing (SPEC §8), and the block forgets the bytes it wrote.
    func testAWriteThatCannotCompleteAPartlySeenBlockGoesToThePlugin() throws {
        let disk = MemoryBackend(size: 256 << 10, seed: 620)
        let oldSize: UInt64 = 171_072
        let e = try makeEngine(disk, size: oldSize, mode: .writeback)
        let older = Connection(disk, size: oldSize)
        try e.reopen(disk, size: 256 << 10)  // the export grew
        var model = disk.allBytes
        for i in 0..<20 {
            let offset = 2 * B + UInt64(i) * 100
            try e.writeBytes([UInt8(i + 1)], at: offset, older)
            model[Int(offset)] = UInt8(i + 1)
        }
        XCTAssertEqual(e.state(ofBlock: 2), .partial)
        XCTAssertEqual(older.violations.withLock { $0 }, [])
        assertBytes(try e.readBytes(2 * B, Int(oldSize - 2 * B), older), Array(model[Int(2 * B)..<Int(oldSize)]))
        try e.flush(backend: older)
        assertBytes(disk.bytes(2 * B, Int(oldSize - 2 * B)), Array(model[Int(2 * B)..<Int(oldSize)]))
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// One cache shared by several connections (SPEC §3, multi-conn).
final class ConnectionTests: EngineTestCase {
    func testAFlushOnAnyConnectionWritesBackEveryConnectionsBlocks() throws {
        let disk = MemoryBackend(size: MiB, seed: 260)
        let a = Connection(disk, canWrite: true), b = Connection(disk, canWrite: true)
        let e = try makeEngine(disk, mode: .writeback)
        let dataA = randomBytes(Int(B), seed: 261), dataB = randomBytes(1000, seed: 262)
        try e.writeBytes(dataA, at: B, a)
        try e.writeBytes(dataB, at: 5 * B + 7, b)
        XCTAssertEqual(disk.stats.writes, 0)
        try e.flush(backend: b)
        assertBytes(disk.bytes(B, B), dataA, "connection A's write, flushed by B")
        assertBytes(disk.bytes(5 * B + 7, 1000), dataB)
        XCTAssertEqual(e.dirtyBlockCount, 0)
        // And a read on either connection sees the other's write.
        assertBytes(try e.readBytes(B, B, b), dataA)
    }

    func testFlushThroughAReadOnlyConnectionWritesNothing() throws {
        let disk = MemoryBackend(size: MiB, seed: 263)
        let rw = Connection(disk, canWrite: true), ro = Connection(disk, canWrite: false)
        let e = try makeEngine(disk, mode: .writeback)
        let data = randomBytes(Int(B), seed: 264)
        try e.writeBytes(data, at: 2 * B, rw)
        assertCacheError(.readOnlyFileSystem) { try e.flush(backend: ro) }
        XCTAssertEqual(ro.violations.withLock { $0 }, [])
        XCTAssertEqual(e.state(ofBlock: 2), .dirty)
        XCTAssertEqual(disk.stats.writes, 0)
        // Nothing dirty: a read-only flush is fine.
        try e.flush(backend: rw)
        try e.flush(backend: ro)
        assertBytes(disk.bytes(2 * B, B), data)
    }

    func testReclaimThroughAReadOnlyConnectionKeepsDirtyBlocks() throws {
        let disk = MemoryBackend(size: 4 * MiB, seed: 265)
        let rw = Connection(disk, canWrite: true), ro = Connection(disk, canWrite: false)
        let e = try makeEngine(disk, mode: .writeback, cacheOnRead: .always, maxSize: MiB)
        var model = disk.allBytes
        for block in UInt64(0)..<12 {
            let data = randomBytes(Int(B), seed: 266 + block)
            try e.writeBytes(data, at: block * B, rw)
            model.replaceSubrange(Int(block * B)..<Int((block + 1) * B), with: data)
        }
        XCTAssertEqual(disk.stats.writes, 0)
        // Reads on the read-only connection fill the cache past the limit:
        // only clean blocks may go, since dirty ones cannot be written back here.
        assertBytes(try e.readBytes(20 * B, 2 * MiB, ro), Array(model[Int(20 * B)..<Int(20 * B + 2 * MiB)]))
        XCTAssertEqual(ro.violations.withLock { $0 }, [])
        XCTAssertEqual(disk.stats.writes, 0)
        XCTAssertEqual(e.dirtyBlockCount, 12, "no dirty block dropped")
        assertBytes(try e.readBytes(0, 4 * MiB, ro), model)
        try e.flush(backend: rw)
        assertBytes(disk.allBytes, model)
    }
}

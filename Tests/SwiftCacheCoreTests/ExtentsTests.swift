// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

final class ExtentsTests: EngineTestCase {
    let holeZero = Extent.hole | Extent.zero

    /// 1 MiB: zeroes in blocks 0...7, data in blocks 8...15.
    func makeDisk(seed: UInt64) -> MemoryBackend {
        var bytes = [UInt8](repeating: 0, count: Int(MiB))
        bytes.replaceSubrange(Int(8 * B)..., with: randomBytes(Int(8 * B), seed: seed).map { $0 | 1 })
        return MemoryBackend(bytes: bytes)
    }

    func testCleanCachePassesThePluginAnswerThrough() throws {
        let b = makeDisk(seed: 150)
        let e = try makeEngine(b, mode: .writeback)
        XCTAssertEqual(
            try e.extents(count: MiB, at: 0, onlyOne: false, backend: b),
            [
                Extent(offset: 0, length: 8 * B, type: holeZero),
                Extent(offset: 8 * B, length: 8 * B, type: 0),
            ])
        XCTAssertEqual(
            try e.extents(count: 100, at: 1000, onlyOne: false, backend: b),
            [Extent(offset: 1000, length: 100, type: holeZero)])
        XCTAssertEqual(
            try e.extents(count: 8 * B, at: 4 * B, onlyOne: true, backend: b),
            [Extent(offset: 4 * B, length: 4 * B, type: holeZero)])
    }

    func testUnflushedWriteOverAHoleIsData() throws {
        let b = makeDisk(seed: 151)
        let e = try makeEngine(b, mode: .writeback)
        try e.writeBytes(randomBytes(1000, seed: 152), at: 70_000, b)  // block 1 partial
        XCTAssertEqual(e.state(ofBlock: 1), .partial)

        XCTAssertEqual(
            try e.extents(count: MiB, at: 0, onlyOne: false, backend: b),
            [
                Extent(offset: 0, length: B, type: holeZero),
                Extent(offset: B, length: B, type: 0),
                Extent(offset: 2 * B, length: 6 * B, type: holeZero),
                Extent(offset: 8 * B, length: 8 * B, type: 0),
            ])
        // Starting inside the dirty block: the first extent starts at the offset asked for.
        XCTAssertEqual(
            try e.extents(count: 100_000, at: 70_000, onlyOne: false, backend: b),
            [
                Extent(offset: 70_000, length: 2 * B - 70_000, type: 0),
                Extent(offset: 2 * B, length: 170_000 - 2 * B, type: holeZero),
            ])
        let one = try e.extents(count: 100_000, at: 70_000, onlyOne: true, backend: b)
        XCTAssertEqual(one.first, Extent(offset: 70_000, length: 2 * B - 70_000, type: 0))
        let fromZero = try e.extents(count: MiB, at: 0, onlyOne: true, backend: b)
        XCTAssertEqual(fromZero.first, Extent(offset: 0, length: B, type: holeZero))
        let inside = try e.extents(count: 10, at: B + 5, onlyOne: true, backend: b)
        XCTAssertEqual(inside.first, Extent(offset: B + 5, length: 10, type: 0))
        // Clean regions keep the plugin's type.
        XCTAssertEqual(
            try e.extents(count: 100, at: 2 * B + 5, onlyOne: false, backend: b),
            [Extent(offset: 2 * B + 5, length: 100, type: holeZero)])
        // Block status neither reads the plugin nor changes the partial block.
        XCTAssertEqual(b.stats.reads, 0)
        XCTAssertEqual(e.state(ofBlock: 1), .partial)
        XCTAssertEqual(e.held(1), [UInt32(70_000 - B)..<UInt32(71_000 - B)])
    }

    func testExtentsListsAreContiguousAndCoverFromTheOffset() throws {
        let b = makeDisk(seed: 153)
        let e = try makeEngine(b, mode: .writeback)
        // Partial blocks (one byte each) and one whole dirty block.
        for block: UInt64 in [0, 2, 3, 6, 9] {
            try e.writeBytes([1], at: block * B + 17, b)
        }
        try e.writeBytes(Array(repeating: 1, count: Int(B)), at: 5 * B, b)
        XCTAssertEqual(
            e.states(0..<10),
            [
                .partial, .notCached, .partial, .partial, .notCached,
                .dirty, .partial, .notCached, .notCached, .partial,
            ])
        var rng = SplitMix64(seed: 154)
        for _ in 0..<300 {
            let offset = rng.next() % MiB
            let count = 1 + rng.next() % (MiB - offset)
            let list = try e.extents(count: count, at: offset, onlyOne: false, backend: b)
            XCTAssertEqual(list.first?.offset, offset)
            var next = offset
            for extent in list {
                XCTAssertEqual(extent.offset, next, "extents must be contiguous")
                XCTAssertGreaterThan(extent.length, 0)
                // Nothing dirty or partial may be called a hole or zero.
                if extent.type != 0 {
                    for block in (extent.offset / B)...((extent.offset + extent.length - 1) / B) {
                        XCTAssertEqual(e.state(ofBlock: block), .notCached, "block \(block) in \(extent)")
                    }
                }
                next = extent.offset + extent.length
            }
            XCTAssertEqual(next, offset + count)
        }
    }

    func testCleanAndFlushedBlocksKeepThePluginType() throws {
        let b = makeDisk(seed: 155)
        let e = try makeEngine(b, mode: .writeback)
        try e.cache(count: B, at: 3 * B, backend: b)  // clean copy of a hole
        try e.writeBytes([1, 2, 3], at: B + 10, b)
        try e.zero(
            count: B, at: 9 * B, fua: false, mayTrim: true, fastZero: false,
            backend: b)  // dirty zeroes over data: zero, and a hole as the client allowed (SPEC §8)
        XCTAssertEqual(
            try e.extents(count: MiB, at: 0, onlyOne: false, backend: b),
            [
                Extent(offset: 0, length: B, type: holeZero),
                Extent(offset: B, length: B, type: 0),
                Extent(offset: 2 * B, length: 6 * B, type: holeZero),
                Extent(offset: 8 * B, length: B, type: 0),
                Extent(offset: 9 * B, length: B, type: holeZero),
                Extent(offset: 10 * B, length: 6 * B, type: 0),
            ])
        try e.flush(backend: b)
        // Now the plugin has block 1's data and block 9's zeroes, and says so itself.
        XCTAssertEqual(
            try e.extents(count: MiB, at: 0, onlyOne: false, backend: b),
            [
                Extent(offset: 0, length: B, type: holeZero),
                Extent(offset: B, length: B, type: 0),
                Extent(offset: 2 * B, length: 6 * B, type: holeZero),
                Extent(offset: 8 * B, length: B, type: 0),
                Extent(offset: 9 * B, length: B, type: holeZero),
                Extent(offset: 10 * B, length: 6 * B, type: 0),
            ])
    }

    func testPluginAnswersThatDoNotStartAtTheOffset() throws {
        let b = makeDisk(seed: 160)
        let e = try makeEngine(b, mode: .writeback)
        // A plugin that answers from the start of its 64K region, before the offset: clipped.
        b.setExtentsAnswer { _, offset, _ in
            let start = offset & ~(B - 1)
            return [Extent(offset: start, length: 2 * B, type: Extent.hole | Extent.zero)]
        }
        XCTAssertEqual(
            try e.extents(count: 1000, at: B + 100, onlyOne: false, backend: b),
            [Extent(offset: B + 100, length: 1000, type: holeZero)])
        // A plugin whose answer starts after the offset: the gap is claimed as data.
        b.setExtentsAnswer { _, offset, _ in [Extent(offset: offset + 10, length: 100, type: Extent.hole)] }
        XCTAssertEqual(
            try e.extents(count: 1000, at: 5000, onlyOne: false, backend: b),
            [
                Extent(offset: 5000, length: 10, type: 0),
                Extent(offset: 5010, length: 100, type: Extent.hole),
            ])
        // No answer at all: data.
        b.setExtentsAnswer { _, _, _ in [] }
        XCTAssertEqual(
            try e.extents(count: 1000, at: 5000, onlyOne: true, backend: b),
            [Extent(offset: 5000, length: 1000, type: 0)])
        b.setExtentsAnswer(nil)
    }

    func testPluginExtentsErrorIsReported() throws {
        let b = makeDisk(seed: 161)
        let e = try makeEngine(b, mode: .writeback)
        assertCacheError(.invalidArgument) { _ = try e.extents(count: 2, at: MiB - 1, onlyOne: false, backend: b) }
        XCTAssertEqual(try e.extents(count: 0, at: 0, onlyOne: false, backend: b), [])
    }

    /// Connection A asks for block status while connection B flushes: the
    /// plugin answers "hole" for a block that is still dirty, then B's flush
    /// writes the block back and marks it clean, and only then does A's filter
    /// look at the block map. The block is clean by then, so the stale "hole"
    /// passes through although the data under it is not zero. nbdkit runs the
    /// two requests on different threads with nothing ordering them.
    func testExtentsRacingAFlushNeverCallDataAHole() throws {
        let b = makeDisk(seed: 156)
        let e = try makeEngine(b, mode: .writeback)
        let data = randomBytes(Int(B), seed: 157).map { $0 | 1 }
        try e.writeBytes(data, at: 2 * B, b)
        b.setAfterExtentsComputed { try? e.flush(backend: b) }
        let list = try e.extents(count: B, at: 2 * B, onlyOne: false, backend: b)
        b.setAfterExtentsComputed(nil)
        XCTAssertEqual(b.stats.writeLog, [Req(2 * B, B)], "the flush ran during the extents call")
        XCTAssertEqual(list.first?.offset, 2 * B)
        XCTAssertEqual(list.first?.type, 0, "block 2 holds data, but extents say \(list)")
    }

    /// The same race with reclaim instead of flush: reclaim writes the dirty
    /// block back and drops it while the plugin's answer is in flight.
    func testExtentsRacingAReclaimNeverCallDataAHole() throws {
        let b = makeDisk(seed: 158)
        let e = try makeEngine(b, size: MiB, mode: .writeback, maxSize: MiB)
        let data = randomBytes(Int(B), seed: 159).map { $0 | 1 }
        try e.writeBytes(data, at: 0, b)  // block 0: dirty, the oldest
        b.setAfterExtentsComputed {
            // Another connection writes 15 more blocks: reclaim writes block 0 back and drops it.
            for block in UInt64(1)..<16 { try? e.writeBytes([1], at: block * B, b) }
        }
        let list = try e.extents(count: B, at: 0, onlyOne: true, backend: b)
        b.setAfterExtentsComputed(nil)
        XCTAssertEqual(e.state(ofBlock: 0), .notCached, "block 0 was reclaimed during the extents call")
        assertBytes(b.bytes(0, B), data)
        XCTAssertEqual(list.first?.type, 0, "block 0 holds data, but extents say \(list)")
    }

    /// Zeroes over data, written back while the plugin answers (SPEC §8):
    /// before, the block was dirty zeroes (zero and a hole); after, known
    /// zeroes (the plugin may not have punched it). The answer true of both
    /// is zero without the hole; data written over zeroes meanwhile is data.
    func testExtentsRacingAZeroWriteBackSayZeroAndNothingMore() throws {
        let b = makeDisk(seed: 161)
        let e = try makeEngine(b, mode: .writeback)
        try e.zero(count: 2 * B, at: 9 * B, fua: false, mayTrim: true, fastZero: false, backend: b)
        XCTAssertEqual(e.states(9..<11), [.dirtyZero(mayTrim: true), .dirtyZero(mayTrim: true)])
        b.setAfterExtentsComputed {
            try? e.flush(backend: b)
            try? e.writeBytes([1], at: 10 * B + 7, b)
        }
        let list = try e.extents(count: 3 * B, at: 9 * B, onlyOne: false, backend: b)
        b.setAfterExtentsComputed(nil)
        XCTAssertEqual(b.stats.zeroLog, [Req(9 * B, 2 * B)], "written back during the extents call")
        XCTAssertEqual(
            list,
            [
                Extent(offset: 9 * B, length: B, type: Extent.zero),
                Extent(offset: 10 * B, length: 2 * B, type: 0),
            ])
    }
}

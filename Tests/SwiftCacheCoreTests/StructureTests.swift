// SPDX-License-Identifier: BSD-3-Clause
import XCTest

@testable import SwiftCacheCore

final class BitPlaneTests: XCTestCase {
    func testSetGetAcrossWords() {
        var plane = BitPlane(count: 200)
        XCTAssertEqual(plane.words.count, 4)
        for block: UInt64 in [0, 63, 64, 129, 199] { plane[block] = true }
        for block in UInt64(0)..<200 {
            XCTAssertEqual(plane[block], [0, 63, 64, 129, 199].contains(block), "block \(block)")
        }
        plane[63] = false
        XCTAssertFalse(plane[63])
        XCTAssertTrue(plane[64])
        plane.clearAll()
        XCTAssertNil(plane.firstSet(from: 0, to: 200))
    }

    func testFirstSet() {
        var plane = BitPlane(count: 200)
        for block: UInt64 in [0, 63, 64, 129] { plane[block] = true }
        XCTAssertEqual(plane.firstSet(from: 0, to: 200), 0)
        XCTAssertEqual(plane.firstSet(from: 1, to: 200), 63)
        XCTAssertEqual(plane.firstSet(from: 64, to: 200), 64)
        XCTAssertEqual(plane.firstSet(from: 65, to: 200), 129)
        XCTAssertNil(plane.firstSet(from: 130, to: 200))
        XCTAssertNil(plane.firstSet(from: 1, to: 63), "the end is exclusive")
        XCTAssertEqual(plane.firstSet(from: 1, to: 64), 63)
        XCTAssertNil(plane.firstSet(from: 65, to: 129))
        XCTAssertNil(plane.firstSet(from: 5, to: 5))
    }

    func testFirstClear() {
        var plane = BitPlane(count: 200)
        for block in UInt64(0)..<130 { plane[block] = true }
        XCTAssertEqual(plane.firstClear(from: 0, to: 200), 130)
        XCTAssertEqual(plane.firstClear(from: 0, to: 100), 100, "none clear before the end: the end")
        XCTAssertEqual(plane.firstClear(from: 130, to: 200), 130)
        XCTAssertEqual(plane.firstClear(from: 150, to: 200), 150)
        plane[70] = false
        XCTAssertEqual(plane.firstClear(from: 0, to: 200), 70)
        XCTAssertEqual(plane.firstClear(from: 71, to: 200), 130)

        var full = BitPlane(count: 128)
        for block in UInt64(0)..<128 { full[block] = true }
        XCTAssertEqual(full.firstClear(from: 0, to: 128), 128)
        XCTAssertEqual(full.firstClear(from: 127, to: 128), 128)
    }

    func testResizeKeepsRemainingBitsAndForgetsTheRest() throws {
        var shared = BitPlane(count: 200)
        shared[5] = true
        let copy = shared
        shared[6] = true
        XCTAssertFalse(copy[6], "a copy keeps its own bits (copy on write)")
        XCTAssertTrue(copy[5])

        var plane = BitPlane(count: 200)
        for block: UInt64 in [10, 69, 100, 150] { plane[block] = true }
        try plane.resize(to: 70)
        XCTAssertEqual(plane.count, 70)
        XCTAssertEqual(plane.words.count, 2)
        XCTAssertTrue(plane[10])
        XCTAssertTrue(plane[69])
        try plane.resize(to: 200)
        XCTAssertEqual(plane.count, 200)
        XCTAssertTrue(plane[10])
        XCTAssertTrue(plane[69])
        XCTAssertFalse(plane[100], "a block cut off by a shrink must not come back")
        XCTAssertFalse(plane[150])
        XCTAssertEqual(plane.firstSet(from: 70, to: 200), nil)
        try plane.resize(to: 0)
        XCTAssertEqual(plane.words.count, 0)
        try plane.resize(to: 65)
        XCTAssertNil(plane.firstSet(from: 0, to: 65))
        XCTAssertEqual(plane.firstClear(from: 0, to: 65), 0)
    }
}

final class BlockMapTests: XCTestCase {
    func testStatesAndCounts() {
        var map = BlockMap(blocks: 100)
        XCTAssertEqual(map.blockCount, 100)
        XCTAssertEqual(map[3], .notCached)
        map[3] = .dirty
        XCTAssertEqual(map[3], .dirty)
        XCTAssertEqual(map.readRun(from: 3, to: 4).kind, .cached, "dirty implies cached")
        XCTAssertEqual(map.cachedCount, 1)
        XCTAssertEqual(map.dirtyCount, 1)
        map[3] = .dirty
        XCTAssertEqual(map.cachedCount, 1)
        XCTAssertEqual(map.dirtyCount, 1)
        map[3] = .clean
        XCTAssertEqual(map[3], .clean)
        XCTAssertEqual(map.cachedCount, 1)
        XCTAssertEqual(map.dirtyCount, 0)
        map[3] = .notCached
        XCTAssertEqual(map.cachedCount, 0)
        XCTAssertEqual(map.dirtyCount, 0)
        map.set(10..<20, to: .clean)
        map.set(15..<25, to: .dirty)
        XCTAssertEqual(map.cachedCount, 15)
        XCTAssertEqual(map.dirtyCount, 10)
        XCTAssertEqual(
            (9..<26).map { map[$0] },
            [.notCached] + Array(repeating: .clean, count: 5)
                + Array(repeating: .dirty, count: 10) + [.notCached])
    }

    func testNextDirtyRun() {
        var map = BlockMap(blocks: 200)
        XCTAssertNil(map.nextDirtyRun(from: 0, limit: 100))
        map.set(2..<5, to: .dirty)
        map[10] = .dirty
        map.set(60..<71, to: .dirty)
        map[199] = .dirty
        map.set(5..<10, to: .clean)
        XCTAssertEqual(map.nextDirtyRun(from: 0, limit: 100), 2..<5)
        XCTAssertEqual(map.nextDirtyRun(from: 3, limit: 100), 3..<5)
        XCTAssertEqual(map.nextDirtyRun(from: 5, limit: 100), 10..<11)
        XCTAssertEqual(map.nextDirtyRun(from: 11, limit: 3), 60..<63, "runs are cut at the limit")
        XCTAssertEqual(map.nextDirtyRun(from: 63, limit: 100), 63..<71, "runs cross word boundaries")
        XCTAssertEqual(map.nextDirtyRun(from: 71, limit: 100), 199..<200)
        XCTAssertNil(map.nextDirtyRun(from: 200, limit: 100))
    }

    func testPartialBlocksHoldRangesUntilWhole() throws {
        var map = BlockMap(blocks: 100)
        map.hold(100..<200, in: 5, length: 65536)
        XCTAssertEqual(map[5], .partial)
        XCTAssertEqual(map.readRun(from: 5, to: 6).kind, .uncached, "a partial block is not cached whole")
        XCTAssertTrue(map[5].isDirty)
        XCTAssertEqual(map.cachedCount, 0)
        XCTAssertEqual(map.dirtyCount, 1)
        XCTAssertEqual(map.occupiedCount, 1, "but it occupies a block of the cache file")
        XCTAssertEqual(map.held(5)?.ranges, [100..<200])
        XCTAssertNil(map.held(4))
        map.hold(300..<400, in: 5, length: 65536)
        XCTAssertEqual(map.held(5)?.ranges, [100..<200, 300..<400])
        map.hold(200..<300, in: 5, length: 65536)
        XCTAssertEqual(map.held(5)?.ranges, [100..<400])
        XCTAssertEqual(map.dirtyCount, 1)
        XCTAssertEqual(map.occupiedCount, 1)

        map[3] = .dirty
        XCTAssertEqual(map.firstPartial(in: 0..<100), 5, "dirty block 3 is not partial")
        XCTAssertNil(map.firstPartial(in: 6..<100))
        XCTAssertNil(map.firstPartial(in: 0..<5))
        XCTAssertEqual(map.dirtyRuns(in: 0..<100), [3..<4, 5..<6], "partial blocks are written back too")
        map[4] = .dirty
        XCTAssertEqual(map.dirtyRuns(in: 0..<100), [3..<6])
        XCTAssertEqual(map.nextDirtyRun(from: 0, limit: 10), 3..<6)

        // Ranges that merge to cover the block make it dirty.
        map.hold(0..<100, in: 5, length: 65536)
        XCTAssertEqual(map[5], .partial)
        map.hold(400..<65536, in: 5, length: 65536)
        XCTAssertEqual(map[5], .dirty)
        XCTAssertNil(map.held(5))
        XCTAssertNil(map.firstPartial(in: 0..<100))
        XCTAssertEqual(map.cachedCount, 3)
        XCTAssertEqual(map.dirtyCount, 3)
        XCTAssertEqual(map.occupiedCount, 3)

        // A short last block is whole at its own length.
        map.hold(0..<16960, in: 99, length: 16960)
        XCTAssertEqual(map[99], .dirty)
        map[99] = .notCached

        // Any other state forgets the ranges.
        map.hold(10..<20, in: 7, length: 65536)
        map[7] = .clean
        XCTAssertNil(map.held(7))
        XCTAssertEqual(map.dirtyCount, 3)
        map.hold(10..<20, in: 8, length: 65536)
        map[8] = .notCached
        XCTAssertNil(map.held(8))
        XCTAssertEqual(map.occupiedCount, 4)
        XCTAssertEqual(map.dirtyCount, 3)

        // Growing keeps every block; new ones are not cached.
        map.hold(10..<20, in: 70, length: 65536)
        XCTAssertEqual(map.occupiedCount, 5)
        try map.grow(to: 200)
        XCTAssertEqual(map.held(70), HeldRanges(10..<20))
        XCTAssertEqual(map.occupiedCount, 5)
        XCTAssertEqual(map[150], .notCached)
        XCTAssertEqual(map.occupied(from: 71), nil)
        XCTAssertEqual(map.occupied(from: 9), 70)
    }

    func testCanHoldKeepsTheLimits() {
        var map = BlockMap(blocks: 100)
        XCTAssertTrue(map.holdable([(1, 0..<10)]) == [1])
        for i in UInt32(0)..<UInt32(HeldRanges.limit) { map.hold(i * 100..<i * 100 + 10, in: 1, length: 65536) }
        XCTAssertEqual(map.held(1)?.ranges.count, 16)
        XCTAssertFalse(map.holdable([(1, 5000..<5010)]) == [1], "a 17th range")
        XCTAssertTrue(map.holdable([(1, 10..<20)]) == [1], "touching a range: still 16")
        XCTAssertTrue(map.holdable([(1, 50..<150)]) == [1], "bridging two ranges: 15")
        XCTAssertEqual(map.held(1)?.ranges.count, 16, "canHold changes nothing")
    }

    func testNoMorePartialBlocksThanTheLimit() {
        let limit = UInt64(BlockMap.partialLimit)
        var map = BlockMap(blocks: limit + 10)
        for block in UInt64(0)..<limit - 1 { map.hold(0..<1, in: block, length: 65536) }
        XCTAssertTrue(map.holdable([(limit, 0..<1)]) == [limit], "the last one allowed")
        map.hold(0..<1, in: limit - 1, length: 65536)
        XCTAssertEqual(map.partials.count, BlockMap.partialLimit)
        XCTAssertFalse(map.holdable([(limit, 0..<1)]) == [limit], "no new partial block past the limit")
        XCTAssertTrue(map.holdable([(3, 5..<6)]) == [3], "an existing partial block may still grow")
        map[3] = .dirty
        XCTAssertTrue(map.holdable([(limit, 0..<1)]) == [limit])
    }

    func testGrowKeepsCountsRightAndNeverShrinks() throws {
        var map = BlockMap(blocks: 100)
        map.set(0..<10, to: .clean)
        map.set(90..<100, to: .dirty)
        try map.grow(to: 95)
        XCTAssertEqual(map.blockCount, 100, "the map never shrinks")
        try map.grow(to: 150)
        XCTAssertEqual(map.cachedCount, 20)
        XCTAssertEqual(map.dirtyCount, 10)
        XCTAssertEqual(map[97], .dirty)
        XCTAssertEqual(map[120], .notCached)
        XCTAssertEqual(map.nextDirtyRun(from: 0, limit: 1000), 90..<100)
    }
}

extension LRU {
    /// The one least recently used block `isEvictable` accepts.
    mutating func victim(_ blocks: BlockMap, isEvictable: (UInt64) -> Bool) -> UInt64? {
        victims(1, in: blocks, isEvictable: isEvictable).first
    }
}

final class LRUTests: XCTestCase {
    /// A block map in which `set` are clean.
    private func map(_ count: UInt64, _ set: [UInt64]) -> BlockMap {
        var map = BlockMap(blocks: count)
        for block in set { map[block] = .clean }
        return map
    }

    func testUntouchedBlocksGoFirstThenOlderThenRecent() {
        var lru = LRU(blocks: 128, generationSize: 4)
        let cached = map(128, Array(0..<6))
        lru.touch(0..<4)  // a full generation: 0...3 become "older"
        lru.touch(4..<5)  // 4 is recent
        XCTAssertEqual(lru.victim(cached, isEvictable: { _ in true }), 5, "never touched")
        let without5 = map(128, Array(0..<5))
        XCTAssertEqual(
            lru.victim(without5, isEvictable: { _ in true }).map { $0 < 4 }, true,
            "then the older generation")
        XCTAssertEqual(lru.victim(without5, isEvictable: { $0 >= 4 }), 4, "then any block")
        XCTAssertNil(lru.victim(without5, isEvictable: { _ in false }))
        XCTAssertNil(lru.victim(map(128, []), isEvictable: { _ in true }))
    }

    func testVictimsSpreadAndForgetResets() {
        var lru = LRU(blocks: 256, generationSize: 1000)
        let cached = map(256, [3, 70, 200])
        var seen: Set<UInt64> = []
        var current = cached
        while let v = lru.victim(current, isEvictable: { _ in true }) {
            seen.insert(v)
            current[v] = .notCached
            lru.forget(v)
        }
        XCTAssertEqual(seen, [3, 70, 200])
        lru.touch(3..<4)
        lru.forget(3)
        XCTAssertEqual(
            lru.victim(map(256, [3, 4]), isEvictable: { _ in true }), 3,
            "a forgotten block counts as untouched")
    }

    func testTouchingAgainDoesNotAgeOthers() {
        var lru = LRU(blocks: 64, generationSize: 3)
        lru.touch(0..<1)
        lru.touch(0..<1)
        lru.touch(0..<1)
        lru.touch(1..<2)  // 2 distinct blocks: still one generation
        let cached = map(64, [0, 1, 2])
        XCTAssertEqual(lru.victim(cached, isEvictable: { _ in true }), 2)
        XCTAssertEqual(lru.victim(map(64, [0, 1]), isEvictable: { $0 != 1 }), 0)
    }

    func testPartialAndDirtyBlocksAreCandidatesNotUncachedOnes() {
        var lru = LRU(blocks: 256, generationSize: 1000)
        var blocks = BlockMap(blocks: 256)
        XCTAssertNil(lru.victim(blocks, isEvictable: { _ in true }))
        blocks.hold(10..<20, in: 130, length: 65536)  // partial: it occupies space too
        XCTAssertEqual(blocks[130], .partial)
        XCTAssertEqual(lru.victim(blocks, isEvictable: { _ in true }), 130)
        blocks[7] = .dirty
        lru.touch(130..<131)
        XCTAssertEqual(lru.victim(blocks, isEvictable: { _ in true }), 7, "the untouched block first")
        XCTAssertEqual(lru.victim(blocks, isEvictable: { $0 != 7 }), 130)
        blocks[130] = .notCached
        blocks[7] = .notCached
        XCTAssertNil(lru.victim(blocks, isEvictable: { _ in true }))
    }
}

final class RangeLocksTests: XCTestCase {
    func testSharedAndExclusive() {
        var locks = RangeLocks()
        XCTAssertTrue(locks.canAcquire(0..<4, exclusive: true))
        locks.acquire(0..<4, exclusive: false)
        XCTAssertTrue(locks.isLocked(0))
        XCTAssertTrue(locks.isLocked(3))
        XCTAssertFalse(locks.isLocked(4))
        XCTAssertTrue(locks.canAcquire(2..<6, exclusive: false), "readers share")
        XCTAssertFalse(locks.canAcquire(3..<6, exclusive: true), "a writer waits for readers")
        XCTAssertTrue(locks.canAcquire(4..<6, exclusive: true), "disjoint blocks never wait")
        locks.acquire(2..<6, exclusive: false)
        locks.release(0..<4, exclusive: false)
        XCTAssertFalse(locks.isLocked(0))
        XCTAssertTrue(locks.isLocked(2), "still held by the second reader")
        XCTAssertFalse(locks.canAcquire(0..<3, exclusive: true))
        locks.release(2..<6, exclusive: false)
        XCTAssertTrue(locks.canAcquire(0..<6, exclusive: true))

        locks.acquire(10..<12, exclusive: true)
        XCTAssertFalse(locks.canAcquire(11..<12, exclusive: false), "readers wait for a writer")
        XCTAssertFalse(locks.canAcquire(9..<11, exclusive: true))
        XCTAssertTrue(locks.canAcquire(12..<13, exclusive: true))
        locks.release(10..<12, exclusive: true)
        XCTAssertFalse(locks.isLocked(10))
        XCTAssertTrue(locks.canAcquire(0..<100, exclusive: true))
    }
}

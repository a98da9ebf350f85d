// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// Random single-threaded request sequences in every configuration, checked
/// against a byte-array model after every request. Trimmed bytes are
/// unspecified until written again: the model marks them unknown.
final class ModelTests: EngineTestCase {
    private func run(
        mode: CacheMode, maxSize: UInt64?, cacheOnRead: CacheOnRead, minBlockSize: UInt64,
        fuaMode: FUAMode, canZero: Bool, seed: UInt64, ops: Int, writeBackThreads: Int = 1
    ) throws {
        let size: UInt64 = 2 * MiB - 12_345  // not a multiple of any block size
        let maxText = maxSize.map(String.init) ?? "none"
        let what =
            "\(mode) max=\(maxText) \(cacheOnRead) bs=\(minBlockSize) \(fuaMode) zero=\(canZero) "
            + "threads=\(writeBackThreads)"
        let b = MemoryBackend(size: size, seed: seed, canZero: canZero, fuaMode: fuaMode)
        let e = try makeEngine(
            b, mode: mode, cacheOnRead: cacheOnRead, maxSize: maxSize, minBlockSize: minBlockSize,
            writeBackThreads: writeBackThreads)
        var model = b.allBytes
        var unknown: [Range<Int>] = []  // trimmed, not written since
        var rng = SplitMix64(seed: seed)
        func written(_ r: Range<Int>) {
            unknown = unknown.flatMap { u -> [Range<Int>] in
                guard u.overlaps(r) else { return [u] }
                let left = u.lowerBound..<min(u.upperBound, max(u.lowerBound, r.lowerBound))
                let right = max(u.lowerBound, min(u.upperBound, r.upperBound))..<u.upperBound
                return [left, right].filter { !$0.isEmpty }
            }
        }
        /// `actual` (bytes from `offset`) with the unknown bytes taken from the model.
        func masked(_ actual: [UInt8], _ offset: Int) -> [UInt8] {
            var out = actual
            for u in unknown {
                let r = u.clamped(to: offset..<offset + actual.count)
                if !r.isEmpty { out.replaceSubrange(r.lowerBound - offset..<r.upperBound - offset, with: model[r]) }
            }
            return out
        }
        func range(max: UInt64) -> (Int, Int) {
            let offset = Int(rng.next() % size)
            let count = 1 + Int(rng.next() % min(max, size - UInt64(offset)))
            return (offset, count)
        }
        for op in 0..<ops {
            let kind = rng.next() % 100
            let (offset, count) = range(max: rng.next() % 4 == 0 ? 600_000 : 70_000)
            let at = "\(what), op \(op)"
            switch kind {
            case 0..<35:
                let data = randomBytes(count, seed: rng.next())
                let fua = rng.next() % 6 == 0
                try e.writeBytes(data, at: UInt64(offset), fua: fua, b)
                model.replaceSubrange(offset..<offset + count, with: data)
                written(offset..<offset + count)
                if mode == .writethrough || (fua && mode != .unsafe) {
                    assertBytes(b.bytes(UInt64(offset), count), data, "\(at): write through / FUA reached the plugin")
                }
            case 35..<45:
                try e.zero(
                    count: UInt64(count), at: UInt64(offset), fua: false, mayTrim: true, fastZero: false,
                    backend: b)
                model.replaceSubrange(offset..<offset + count, with: repeatElement(0, count: count))
                written(offset..<offset + count)
            case 45..<48:
                try e.trim(count: UInt64(count), at: UInt64(offset), fua: false, backend: b)
                unknown.append(offset..<offset + count)
            case 48..<50:
                try e.cache(count: UInt64(count), at: UInt64(offset), backend: b)
            case 50..<56:
                try e.flush(backend: b)
                if mode != .unsafe {
                    XCTAssertEqual(e.dirtyBlockCount, 0, at)
                    assertBytes(masked(b.allBytes, 0), model, "\(at): backend after flush")
                }
            case 56..<66:
                // Block status never calls bytes that read as non-zero a hole or zero.
                let list = try e.extents(
                    count: UInt64(count), at: UInt64(offset), onlyOne: rng.next() % 2 == 0,
                    backend: b)
                XCTAssertEqual(list.first?.offset, UInt64(offset), at)
                for extent in list where extent.type & Extent.zero != 0 {
                    let lo = Int(extent.offset), hi = Int(extent.offset + extent.length)
                    if masked(Array(repeating: 0, count: hi - lo), lo) != Array(model[lo..<hi]) {
                        XCTFail("\(at): \(extent) says zero over data")
                    }
                }
            default:
                assertBytes(
                    masked(try e.readBytes(UInt64(offset), count, b), offset),
                    Array(model[offset..<offset + count]),
                    "\(at): read \(offset)+\(count)")
            }
            if let maxSize, e.cachedBytes > maxSize {
                XCTFail("\(at): cachedBytes \(e.cachedBytes) over \(maxSize)")
            }
        }
        assertBytes(masked(try e.readBytes(0, size, b), 0), model, "\(what): final read")
        if mode != .unsafe {
            try e.flush(backend: b)
            assertBytes(masked(b.allBytes, 0), model, "\(what): backend after the final flush")
        }
    }

    private func runMode(_ mode: CacheMode, seed: UInt64, writeBackThreads: Int = 1) throws {
        var n: UInt64 = 0
        for maxSize in [nil, MiB] {
            for cacheOnRead in [CacheOnRead.always, .never] {
                for minBlockSize in [B, 4096] {
                    n += 1
                    try run(
                        mode: mode, maxSize: maxSize, cacheOnRead: cacheOnRead, minBlockSize: minBlockSize,
                        fuaMode: n % 2 == 0 ? .native : .emulate, canZero: n % 3 != 0,
                        seed: seed + n, ops: 150, writeBackThreads: writeBackThreads)
                }
            }
        }
    }

    func testRandomRequestsInWriteback() throws { try runMode(.writeback, seed: 1000) }
    func testRandomRequestsInWritebackWithParallelWriteBack() throws {
        try runMode(.writeback, seed: 4000, writeBackThreads: 8)
    }
    func testRandomRequestsInWritethrough() throws { try runMode(.writethrough, seed: 2000) }
    func testRandomRequestsInUnsafe() throws { try runMode(.unsafe, seed: 3000) }
}

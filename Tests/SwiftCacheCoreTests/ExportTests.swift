// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// SPEC §8 "One cache per export": caches of several exports share only
/// cache-max-size's budget.
final class ExportTests: EngineTestCase {
    func testExportsSharingABudgetStayWithinCacheMaxSizeTogether() throws {
        let budget = CacheBudget()
        let a = MemoryBackend(size: 4 * MiB, seed: 1), b = MemoryBackend(size: 3 * MiB + 512, seed: 2)
        let ea = try makeEngine(a, maxSize: MiB, budget: budget)
        let eb = try makeEngine(b, maxSize: MiB, budget: budget)
        var modelA = a.allBytes, modelB = b.allBytes
        let peakA = sampleCachedBytes(ea, a), peakB = sampleCachedBytes(eb, b)
        for i in 0..<24 {
            let (e, backend) = i % 2 == 0 ? (ea, a) : (eb, b)
            let data = randomBytes(Int(B), seed: 100 + UInt64(i))
            let offset = UInt64(i / 2) * B + 100
            try e.writeBytes(data, at: offset, backend)
            if i % 2 == 0 {
                modelA.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
            } else {
                modelB.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
            }
            XCTAssertLessThanOrEqual(ea.cachedBytes + eb.cachedBytes, 15 * B, "together within the high threshold")
        }
        XCTAssertLessThanOrEqual(peakA.withLock { $0 } + peakB.withLock { $0 }, 16 * B)
        assertBytes(try ea.readBytes(0, 4 * MiB, a), modelA, "export a")
        assertBytes(try eb.readBytes(0, 3 * MiB + 512, b), modelB, "export b")
        try ea.flush(backend: a)
        try eb.flush(backend: b)
        assertBytes(a.allBytes, modelA, "plugin a")
        assertBytes(b.allBytes, modelB, "plugin b")
    }

    func testAFullBudgetSendsAnotherExportsWritesToItsPlugin() throws {
        let budget = CacheBudget()
        let a = MemoryBackend(size: 2 * MiB, seed: 3), b = MemoryBackend(size: 2 * MiB, seed: 4)
        let ea = try makeEngine(a, maxSize: MiB, budget: budget)
        let eb = try makeEngine(b, maxSize: MiB, budget: budget)
        try ea.writeBytes(randomBytes(Int(15 * B), seed: 5), at: 0, a)
        XCTAssertEqual(ea.cachedBytes, 15 * B, "export a fills the budget")
        let data = randomBytes(Int(2 * B), seed: 6)
        try eb.writeBytes(data, at: 4 * B, b)
        XCTAssertEqual(eb.cachedBytes, 0, "no room in the shared budget")
        XCTAssertEqual(ea.dirtyBlockCount, 15, "export b never writes back export a's blocks")
        assertBytes(b.bytes(4 * B, 2 * B), data, "export b's write went to its plugin")
    }

    /// An export with no room of its own to reclaim takes the clean blocks
    /// of another (least recently used first): one export's old reads do not
    /// shut the others out of the cache.
    func testAnExportReclaimsAnotherExportsCleanBlocks() throws {
        let budget = CacheBudget()
        let a = MemoryBackend(size: 2 * MiB, seed: 7), b = MemoryBackend(size: 2 * MiB, seed: 8)
        let ea = try makeEngine(a, cacheOnRead: .always, maxSize: MiB, budget: budget)
        let eb = try makeEngine(b, cacheOnRead: .always, maxSize: MiB, budget: budget)
        assertBytes(try ea.readBytes(0, 2 * MiB, a), a.allBytes)
        XCTAssertGreaterThanOrEqual(ea.cachedBytes, 12 * B, "export a fills the budget with clean blocks")
        assertBytes(try eb.readBytes(0, 4 * B, b), b.bytes(0, 4 * B))
        XCTAssertEqual(eb.cachedBytes, 4 * B, "export b keeps what it read")
        XCTAssertLessThanOrEqual(ea.cachedBytes + eb.cachedBytes, 15 * B)
        let reads = b.stats.reads
        assertBytes(try eb.readBytes(0, 4 * B, b), b.bytes(0, 4 * B))
        XCTAssertEqual(b.stats.reads, reads, "read again from the cache")
    }
}

// SPDX-License-Identifier: BSD-3-Clause
// The in-memory plugin, the fault-injecting cache file and the helpers every
// test uses live in SwiftCacheTesting (shared with the fuzzer); exported here
// so that each test file sees them.
@_exported import SwiftCacheTesting
import SystemPackage
import XCTest

@testable import SwiftCacheCore

// B and MiB are units, named as such in the tests' arithmetic (4 * B, 10 * MiB).
// swift-format-ignore: AlwaysUseLowerCamelCase
/// 64 KiB, the default cache block size.
let B: UInt64 = 65536
// swift-format-ignore: AlwaysUseLowerCamelCase
let MiB: UInt64 = 1 << 20

/// Gives each test a fresh temporary directory for its cache file, builds
/// engines in it, and checks at the end that no backend saw a request that
/// breaks nbdkit's rules.
class EngineTestCase: XCTestCase {
    var directory = ""
    private var backends: [MemoryBackend] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        directory = try makeTemporaryDirectory()
    }

    override func tearDown() {
        for backend in backends {
            XCTAssertEqual(backend.violations, [], "requests nbdkit would refuse")
        }
        backends = []
        removeDirectory(directory)
        super.tearDown()
    }

    /// An engine over `backend` for an export of `size` (default: the backend's
    /// size), writing back on up to `writeBackThreads` threads at once.
    func makeEngine(
        _ backend: MemoryBackend, size: UInt64? = nil, mode: CacheMode = .writeback,
        cacheOnRead: CacheOnRead = .never, maxSize: UInt64? = nil,
        minBlockSize: UInt64 = B, writeBackThreads: Int = 1, budget: CacheBudget = CacheBudget(),
        statistics: Statistics = Statistics(),
        configure: (inout CacheConfig) -> Void = { _ in },
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> Engine {
        backends.append(backend)
        var config = CacheConfig()
        config.mode = mode
        config.cacheOnRead = cacheOnRead
        config.maxSize = maxSize
        config.minBlockSize = minBlockSize
        configure(&config)
        let cacheFile = try CacheFile(directory: FilePath(directory))
        let engine = try Engine(
            config: config, file: cacheFile, writeBackThreads: writeBackThreads, budget: budget,
            statistics: statistics)
        if let size { backend.setSize(size) }
        try engine.setExportSize(backend.size)
        // SPEC §4: block size = max(cache-min-block-size, the file system's block size).
        XCTAssertEqual(
            engine.blockSize, max(minBlockSize, cacheFile.fileSystemBlockSize), "block size", file: file,
            line: line)
        return engine
    }

    /// Asserts that `body` throws a `CacheError` carrying `expected`.
    /// Records the largest `cachedBytes` seen whenever the engine calls the
    /// backend: the limit must hold during a request, not only after it.
    func sampleCachedBytes(_ e: Engine, _ b: MemoryBackend) -> Locked<UInt64> {
        let peak = Locked<UInt64>(0)
        let sample: @Sendable (Req) -> Void = { _ in
            let now = e.cachedBytes
            peak.withLock { $0 = max($0, now) }
        }
        b.setOnRead(sample)
        b.setOnWrite(sample)
        return peak
    }

    func assertCacheError(
        _ expected: Errno, file: StaticString = #filePath, line: UInt = #line,
        _ body: () throws -> Void
    ) {
        do {
            try body()
            XCTFail("expected \(expected), nothing was thrown", file: file, line: line)
        } catch let error as CacheError {
            XCTAssertEqual(error.errno, expected, "\(error)", file: file, line: line)
        } catch {
            XCTFail("expected a CacheError, got \(error)", file: file, line: line)
        }
    }

    /// Asserts that two byte arrays are equal, reporting the first difference
    /// rather than dumping megabytes.
    func assertBytes(
        _ actual: [UInt8], _ expected: [UInt8], _ what: String = "",
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard actual != expected else { return }
        if actual.count != expected.count {
            XCTFail("\(what): \(actual.count) bytes, expected \(expected.count)", file: file, line: line)
            return
        }
        let first = actual.indices.first { actual[$0] != expected[$0] }!
        let differing = actual.indices.reduce(0) { $0 + (actual[$1] != expected[$1] ? 1 : 0) }
        XCTFail(
            "\(what): \(differing) bytes differ, first at \(first): \(actual[first]) != \(expected[first])",
            file: file, line: line)
    }
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchGroup()
    for i in 0..<count {
        done.enter()
        let thread = Thread {
            body(i)
            done.leave()
        }
        thread.start()
    }
    done.wait()
}

// MARK: - Engine conveniences for tests

extension Engine {
    func readBytes(_ offset: UInt64, _ count: some BinaryInteger, _ backend: some Backend) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xA5, count: Int(count))
        try out.withUnsafeMutableBytes { buffer in
            try read(into: buffer, at: offset, backend: backend)
        }
        return out
    }

    func writeBytes(_ data: [UInt8], at offset: UInt64, fua: Bool = false, _ backend: some Backend) throws {
        try data.withUnsafeBytes { buffer in
            try write(buffer, at: offset, fua: fua, backend: backend)
        }
    }

    func states(_ blocks: Range<UInt64>) -> [BlockState] {
        blocks.map { state(ofBlock: $0) }
    }

    /// The byte ranges a partial block holds (offsets within the block), nil
    /// for any other block.
    func held(_ block: UInt64) -> [Range<UInt32>]? { blocks.held(block)?.ranges }

    /// How many partial blocks the cache keeps.
    var partialBlockCount: Int { blocks.partialBlockCount }

    /// Whether a request holds `block` locked.
    func isLocked(_ block: UInt64) -> Bool { blocks.state.withLock { $0.locks.isLocked(block) } }

    /// The cache file's allocated bytes.
    var allocatedBytes: UInt64 { blocks.storage.allocatedBytes() }

    /// A new connection opens and sees the export at `size` bytes.
    func reopen(_ b: MemoryBackend, size: UInt64) throws {
        b.setSize(size)
        try setExportSize(size)
    }
}

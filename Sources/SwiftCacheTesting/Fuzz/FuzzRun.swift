// SPDX-License-Identifier: BSD-3-Clause
import SwiftCacheCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the cache got wrong.
struct FuzzFailure: Error {
    let message: String
}

/// One fuzz case: an engine (or two, for two exports that share
/// cache-max-size) over an in-memory plugin and a cache file that fails on
/// demand, driven by the requests the input decodes to, one at a time on
/// this thread (so a case always runs the same), and checked against a
/// `ReferenceModel` after every request (see fuzz/README.md).
final class FuzzRun {
    /// One nbdkit connection: its view of the plugin, and whether it wrote
    /// since its last flush (what `Engine.connectionClosing` keys on).
    private struct Client {
        let id: Int
        let backend: Connection
        let writes = ConnectionWrites()
        var unflushed = false
    }

    /// Injected failures so far: of the plugin, of cache-file reads, of other cache-file calls.
    private struct Failures {
        var plugin: Int
        var storageRead: Int
        var storageOther: Int
    }

    /// One export: its cache, plugin, cache file, model and connections.
    private final class Export {
        let name: String
        let engine: Engine
        let disk: MemoryBackend
        let storage: FaultyStorage
        var model: ReferenceModel
        var clients: [Client] = []
        /// The size a new connection sees, and the one the cache last took.
        var pluginSize: UInt64
        var cacheSize: UInt64 = 0
        /// The end of the furthest byte any request touched since the export
        /// last shrank below it: past it the cache holds nothing.
        var highWater: UInt64 = 0

        init(
            name: String, config: FuzzConfig, cacheConfig: CacheConfig, directory: String, budget: CacheBudget,
            seed: UInt64, size: UInt64
        ) throws {
            self.name = name
            storage = try FaultyStorage(directory: directory)
            engine = try Engine(config: cacheConfig, file: storage, budget: budget)
            let bytes = config.disk(seed: seed)
            disk = MemoryBackend(
                bytes: bytes, canFlush: config.canFlush, canZero: config.canZero, fuaMode: config.fuaMode,
                minimumRequest: config.minimumRequest, maximumRequest: config.maximumRequest)
            model = ReferenceModel(bytes)
            pluginSize = size
        }
    }

    private let config: FuzzConfig
    private let exports: [Export]
    /// The export the request being decoded is for; the properties below are its.
    private var current: Export
    private var engine: Engine { current.engine }
    private var disk: MemoryBackend { current.disk }
    private var storage: FaultyStorage { current.storage }
    private var model: ReferenceModel {
        _read { yield current.model }
        _modify { yield &current.model }
    }
    private var clients: [Client] {
        _read { yield current.clients }
        _modify { yield &current.clients }
    }
    private var pluginSize: UInt64 {
        get { current.pluginSize }
        set { current.pluginSize = newValue }
    }
    private var cacheSize: UInt64 {
        get { current.cacheSize }
        set { current.cacheSize = newValue }
    }
    private var highWater: UInt64 {
        get { current.highWater }
        set { current.highWater = newValue }
    }
    private var everyConnection: [Connection] = []
    private var nextClient = 0
    private let flagPath: String
    private let onTmpfs: Bool
    private var trace: [String]?
    private var step = 0
    /// The cache files' largest allocated size (together) seen while an engine called the plugin.
    private let peak = Locked<UInt64>(0)

    private static let maxClients = 4
    private static let maxSteps = 400

    /// `tracing`: keep a line per request (for the failure message).
    init(_ config: FuzzConfig, directories: FuzzDirectories, tracing: Bool) throws {
        self.config = config
        trace = tracing ? [] : nil
        onTmpfs = config.tmpfs && directories.tmpfs != nil
        let directory = onTmpfs ? directories.tmpfs! : directories.disk
        flagPath = directory + "/cache-on-read"
        unlink(flagPath)
        var cacheConfig = config.cacheConfig
        switch config.onRead {
        case .never: cacheConfig.cacheOnRead = .never
        case .always: cacheConfig.cacheOnRead = .always
        case .whileFlagExists: cacheConfig.cacheOnRead = .whilePathExists(FilePath(flagPath))
        }
        let budget = CacheBudget()
        var exports = [
            try Export(
                name: "a", config: config, cacheConfig: cacheConfig, directory: directory, budget: budget,
                seed: config.seed, size: config.size)
        ]
        if config.twoExports {
            let align = config.minimumRequest
            exports.append(
                try Export(
                    name: "b", config: config, cacheConfig: cacheConfig, directory: directory, budget: budget,
                    seed: config.seed + 1, size: max(align, config.size / 3 * 2 / align * align)))
        }
        self.exports = exports
        current = exports[0]
        if config.maxSize != nil {
            let (storages, peak) = (exports.map(\.storage), peak)
            let sample: @Sendable (Req) -> Void = { _ in
                let now = storages.reduce(0) { $0 + $1.allocatedBytes() }
                peak.withLock { $0 = max($0, now) }
            }
            for export in exports {
                export.disk.setOnRead(sample)
                export.disk.setOnWrite(sample)
            }
        }
    }

    deinit { unlink(flagPath) }

    /// The lines traced so far.
    var steps: [String] { trace ?? [] }

    func run(_ r: inout FuzzReader) throws(FuzzFailure) {
        defer {
            for export in exports {
                export.disk.setOnRead(nil)
                export.disk.setOnWrite(nil)
            }
        }
        note("config: \(config)")
        for export in exports {
            current = export
            try open(readOnly: false)
        }
        while !r.isAtEnd && step < FuzzRun.maxSteps {
            step += 1
            // With two exports, each request says which it is for.
            current = exports.count > 1 ? exports[Int(r.byte() & 1)] : exports[0]
            try request(&r)
            try checkInvariants()
        }
        for export in exports {
            current = export
            try finish()
        }
    }

    // MARK: Requests

    private var clientFUA: Bool { Capabilities.fua(mode: config.mode, plugin: config.fuaMode) != .none }
    private var clientFlush: Bool { Capabilities.canFlush(mode: config.mode, plugin: config.canFlush) }

    private func request(_ r: inout FuzzReader) throws(FuzzFailure) {
        let op = r.byte()
        switch op {
        case 0..<150:
            // A data request, on one of the open connections.
            if clients.isEmpty { try open(readOnly: false) }
            guard !clients.isEmpty else { return }
            let i = Int(r.below(UInt64(clients.count)))
            switch op {
            case 0..<45: try read(i, &r)
            case 45..<85: try write(i, &r)
            case 85..<103: try zero(i, &r)
            case 103..<113: try trim(i, &r)
            case 113..<127: try flush(i)
            case 127..<135: try cache(i, &r)
            default: try extents(i, &r)
            }
        case 150..<170:
            let flags = r.byte()
            var size: UInt64?
            if flags & 4 != 0 {
                let align = config.minimumRequest
                size = r.below(config.capacity + 1) / align * align
            }
            guard clients.count < FuzzRun.maxClients else { return note("open: already \(clients.count) open") }
            try open(readOnly: flags & 3 == 3, resize: size)
        case 170..<180:
            guard !clients.isEmpty else { return }
            try close(Int(r.below(UInt64(clients.count))))
        case 180..<205: pluginFault(&r)
        case 205..<230: storageFault(&r)
        case 230..<245:
            note("faults off")
            disk.clearFaults()
            storage.clearFaults()
        default:
            guard case .whileFlagExists = config.onRead else { return }
            if access(flagPath, F_OK) == 0 {
                note("cache-on-read flag removed")
                unlink(flagPath)
            } else {
                note("cache-on-read flag created")
                touchFile(flagPath)
            }
        }
    }

    /// A request's range inside an export of `size` bytes, biased to the
    /// edges that matter: whole blocks, block boundaries, the export's end.
    private func range(_ r: inout FuzzReader, in size: UInt64) -> Range<UInt64>? {
        guard size > 0 else { return nil }
        let bs = engine.blockSize
        let blocks = (size + bs - 1) / bs
        var offset: UInt64, count: UInt64
        switch r.byte() % 6 {
        case 0:
            offset = r.below(blocks) * bs
            count = (1 + r.below(4)) * bs
        case 1:
            offset = r.below(size)
            count = 1 + r.below(min(size, 3 * bs))
        case 2:
            offset = r.below(blocks) * bs + r.below(bs)
            count = 1 + r.below(bs)
        case 3:
            let edge = (1 + r.below(blocks)) * bs, before = 1 + r.below(1024)
            offset = edge > before ? edge - before : 0
            count = before + r.below(1024)
        case 4:
            let back = 1 + r.below(min(size, 2 * bs))
            offset = size - back
            count = 1 + r.below(back)
        default:
            offset = 0
            count = size
        }
        offset = min(offset, size - 1)
        count = max(1, min(count, size - offset))
        let align = config.minimumRequest
        if align > 1 {
            // A client honours the plugin's minimum block size (the filter passes it on).
            let end = min(size, (offset + count + align - 1) / align * align)
            offset = offset / align * align
            count = end - offset
        }
        return offset..<offset + count
    }

    /// Bytes for a write: random, zeroes, one repeated byte, or random with
    /// whole cache blocks of zeroes (which the cache keeps as zero blocks).
    private func pattern(_ range: Range<UInt64>, _ seed: UInt64) -> [UInt8] {
        switch seed % 4 {
        case 0: return Array(repeating: 0, count: range.count)
        case 1: return randomBytes(range.count, seed: seed)
        case 2: return Array(repeating: UInt8(truncatingIfNeeded: seed >> 8) | 1, count: range.count)
        default:
            var bytes = randomBytes(range.count, seed: seed)
            let bs = engine.blockSize
            var block = range.lowerBound / bs
            while block * bs < range.upperBound {
                if (seed >> (2 + block % 8)) & 1 == 1 {
                    let zeroes = (block * bs..<(block + 1) * bs).clamped(to: range)
                    let from = Int(zeroes.lowerBound - range.lowerBound)
                    zeroFill(&bytes, from..<from + zeroes.count)
                }
                block += 1
            }
            return bytes
        }
    }

    private func read(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        note("read c\(c.id) \(range)")
        try readAndCheck(c, range)
    }

    private func readAndCheck(_ c: Client, _ range: Range<UInt64>) throws(FuzzFailure) {
        touch(range)
        var buffer = [UInt8](repeating: 0xA5, count: range.count)
        let before = failures()
        let error = attempt {
            try buffer.withUnsafeMutableBytes { try engine.read(into: $0, at: range.lowerBound, backend: c.backend) }
        }
        try expect(error, since: before, "read \(range)")
        guard error == nil else { return }
        let mismatch = buffer.withUnsafeBytes { model.serve($0, at: Int(range.lowerBound)) }
        if let at = mismatch {
            let got = buffer[at - Int(range.lowerBound)]
            throw fail("read \(range) returned \(got) at \(at), the export holds \(model.bytes[at])")
        }
    }

    private func write(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        let flags = r.byte(), seed = r.u16()
        let fua = flags & 1 != 0 && clientFUA
        guard c.backend.canWrite else { return note("write c\(c.id) \(range): refused, read-only") }
        let data = pattern(range, seed)
        note("write c\(c.id) \(range)\(fua ? " fua" : "") pattern \(seed % 4) seed \(seed)")
        touch(range)
        let before = failures()
        let error = attempt {
            try data.withUnsafeBytes { try engine.write($0, at: range.lowerBound, fua: fua, backend: c.backend) }
        }
        wrote(i)
        try expect(error, since: before, "write \(range)")
        if error == nil {
            model.set(data, at: Int(range.lowerBound))
            try checkWrittenThrough(range, fua: fua)
        } else {
            model.forget(Int(range.lowerBound)..<Int(range.upperBound))
        }
    }

    private func zero(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        let flags = r.byte()
        let fua = flags & 1 != 0 && clientFUA, mayTrim = flags & 2 != 0, fast = flags & 12 == 12
        guard c.backend.canWrite else { return note("zero c\(c.id) \(range): refused, read-only") }
        note("zero c\(c.id) \(range)\(fua ? " fua" : "")\(mayTrim ? " may-trim" : "")\(fast ? " fast" : "")")
        touch(range)
        let before = failures()
        let error = attempt {
            try engine.zero(
                count: UInt64(range.count), at: range.lowerBound, fua: fua, mayTrim: mayTrim, fastZero: fast,
                backend: c.backend)
        }
        wrote(i)
        if fast {
            // SPEC §4: FAST_ZERO fails with ENOTSUP and changes nothing.
            guard let error, error.errno == .notSupported else {
                throw fail("fast zero \(range): \(error.map { "\($0)" } ?? "succeeded"), expected ENOTSUP")
            }
            return
        }
        try expect(error, since: before, "zero \(range)")
        let bytes = Int(range.lowerBound)..<Int(range.upperBound)
        if error == nil {
            model.setZero(bytes)
            try checkWrittenThrough(range, fua: fua)
        } else {
            model.forget(bytes)
        }
    }

    private func trim(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        let fua = r.byte() & 1 != 0 && clientFUA
        guard c.backend.canWrite else { return note("trim c\(c.id) \(range): refused, read-only") }
        note("trim c\(c.id) \(range)\(fua ? " fua" : "")")
        touch(range)
        let before = failures()
        let error = attempt {
            try engine.trim(count: UInt64(range.count), at: range.lowerBound, fua: fua, backend: c.backend)
        }
        try expect(error, since: before, "trim \(range)")
        // Trimmed bytes read as anything until written again.
        model.forget(Int(range.lowerBound)..<Int(range.upperBound))
    }

    private func flush(_ i: Int) throws(FuzzFailure) {
        let c = clients[i]
        guard clientFlush else { return note("flush c\(c.id): refused, the client sees can_flush=false") }
        note("flush c\(c.id)")
        // As the filter's .flush does.
        clients[i].unflushed = false
        engine.connectionFlushing(c.writes)
        let before = failures()
        let error = attempt { try engine.flush(backend: c.backend) }
        if error != nil {
            engine.connectionWrote(c.writes)
            clients[i].unflushed = true
        }
        // A read-only connection cannot write dirty blocks back.
        try expect(error, since: before, "flush") { !c.backend.canWrite && $0.errno == .readOnlyFileSystem }
        if error == nil && config.mode != .unsafe {
            try checkPlugin(0..<c.backend.size, "after a flush through c\(c.id)")
        }
    }

    private func cache(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        note("cache c\(c.id) \(range)")
        touch(range)
        let before = failures()
        let error = attempt { try engine.cache(count: UInt64(range.count), at: range.lowerBound, backend: c.backend) }
        try expect(error, since: before, "cache \(range)")
    }

    private func extents(_ i: Int, _ r: inout FuzzReader) throws(FuzzFailure) {
        let c = clients[i]
        guard let range = range(&r, in: c.backend.size) else { return }
        let onlyOne = r.byte() & 1 != 0
        note("extents c\(c.id) \(range)\(onlyOne ? " req-one" : "")")
        try extentsAndCheck(c, range, onlyOne: onlyOne)
    }

    private func extentsAndCheck(_ c: Client, _ range: Range<UInt64>, onlyOne: Bool) throws(FuzzFailure) {
        let before = failures()
        var list: [Extent] = []
        let error = attempt {
            list = try engine.extents(
                count: UInt64(range.count), at: range.lowerBound, onlyOne: onlyOne, backend: c.backend)
        }
        try expect(error, since: before, "extents \(range)")
        guard error == nil else { return }
        // SPEC §7: at least one extent, the first at the offset asked for.
        guard let first = list.first, first.offset == range.lowerBound else {
            throw fail("extents \(range): \(list) does not start at \(range.lowerBound)")
        }
        let plugin = disk.bytes(range.lowerBound, range.count)
        var at = range.lowerBound
        for extent in list {
            guard extent.offset == at, extent.length > 0, extent.offset + extent.length <= range.upperBound else {
                throw fail("extents \(range): \(list) are not contiguous inside the request")
            }
            let bytes = Int(extent.offset)..<Int(extent.offset + extent.length)
            if extent.type & Extent.zero != 0, let bad = model.serveZeroes(bytes) {
                throw fail("extents \(range): \(extent) calls byte \(bad) zero, the export holds \(model.bytes[bad])")
            }
            // SPEC §4: never a hole where the cache holds data the plugin does not have.
            if extent.type & Extent.hole != 0,
                let bad = model.firstCacheOnlyData(plugin, from: Int(range.lowerBound), in: bytes)
            {
                throw fail("extents \(range): \(extent) calls byte \(bad) a hole, only the cache holds its data")
            }
            at += extent.length
        }
    }

    // MARK: Connections

    /// A connection opens; first the plugin's export takes `resize` bytes
    /// (a file that grew or shrank) if given.
    private func open(readOnly: Bool, resize: UInt64? = nil) throws(FuzzFailure) {
        if let size = resize {
            if size > cacheSize && highWater <= cacheSize {
                // The export grew with new bytes where the cache holds none:
                // the cache must serve them, not what it held there before.
                let fresh = randomBytes(Int(size - cacheSize), seed: UInt64(step) &* 7919 &+ config.seed)
                disk.poke(fresh, at: cacheSize)
                model.set(fresh, at: Int(cacheSize))
                note("plugin's export: \(pluginSize) -> \(size) bytes, new bytes from \(cacheSize)")
            } else {
                note("plugin's export: \(pluginSize) -> \(size) bytes")
            }
            pluginSize = size
        }
        let backend = Connection(disk, canWrite: !readOnly, size: pluginSize)
        note("open c\(nextClient) \(readOnly ? "read-only" : "read-write") size \(pluginSize)")
        let before = failures()
        let error = attempt { try engine.setExportSize(pluginSize) }
        try expect(error, since: before, "open (setExportSize \(pluginSize))") { _ in
            failures().storageOther > before.storageOther  // a cache file that cannot grow
        }
        guard error == nil else { return }
        if pluginSize < cacheSize {
            // The export shrank: the cache forgot what lay past its new end
            // (SPEC §4), where reads now get the plugin's bytes.
            let end = Int(config.capacity), start = Int(pluginSize)
            model.set(disk.bytes(pluginSize, end - start), at: start)
            highWater = min(highWater, pluginSize)
        }
        cacheSize = pluginSize
        everyConnection.append(backend)
        clients.append(Client(id: nextClient, backend: backend))
        nextClient += 1
    }

    private func close(_ i: Int) throws(FuzzFailure) {
        let c = clients.remove(at: i)
        note("close c\(c.id)")
        let lastWriter = c.unflushed && !clients.contains { $0.unflushed }
        let before = failures()
        let error = attempt { try engine.connectionClosing(c.writes, backend: c.backend) }
        try expect(error, since: before, "close")
        // SPEC §8: the last connection with unflushed writes writes every dirty block back as it goes.
        if error == nil && lastWriter && config.mode == .writeback && c.backend.canWrite {
            try checkPlugin(0..<c.backend.size, "after the last writer c\(c.id) closed")
        }
    }

    /// A write or zero request ended on connection `i` (the filter marks it whatever the outcome).
    private func wrote(_ i: Int) {
        engine.connectionWrote(clients[i].writes)
        clients[i].unflushed = true
    }

    // MARK: Faults

    private func pluginFault(_ r: inout FuzzReader) {
        let kind = r.byte() % 6, n = 1 + Int(r.below(3))
        let errno = r.pick([Errno.ioError, .noSpace])
        switch kind {
        case 0:
            note("plugin: the next \(n) reads fail with \(errno)")
            disk.failNextReads(n, errno)
        case 1:
            note("plugin: the next \(n) writes, zeroes or trims fail with \(errno)")
            disk.failNextWrites(n, errno)
        case 2:
            note("plugin: the next \(n) flushes fail with \(errno)")
            disk.failNextFlushes(n, errno)
        case 3:
            let range = range(&r, in: config.capacity) ?? 0..<1
            note("plugin: writes touching \(range) fail with \(errno)")
            disk.failWrites(in: range, errno)
        case 4:
            note("plugin: failing writes tear (store their first half)")
            disk.setFaults { $0.tornWrites = true }
        default:
            note("plugin: faults off")
            disk.clearFaults()
        }
    }

    private func storageFault(_ r: inout FuzzReader) {
        let kind = r.pick(StorageCall.allCases)
        let trigger: FaultTrigger
        switch r.byte() % 4 {
        case 0: trigger = .next(1 + Int(r.below(3)), after: Int(r.below(4)))
        case 1: trigger = .always
        case 2: trigger = .every(2 + Int(r.below(4)))
        default: trigger = .overlapping(range(&r, in: config.capacity) ?? 0..<1)
        }
        let errno = r.pick([Errno.noSpace, .diskQuotaExceeded, .ioError])
        let torn = r.byte() & 1 != 0
        note("cache file: \(kind) calls, \(trigger), fail with \(errno)\(torn ? ", torn" : "")")
        storage.fail(kind, trigger, with: errno, torn: torn)
    }

    private func failures() -> Failures {
        Failures(
            plugin: disk.failedCalls, storageRead: storage.failures(.read),
            storageOther: storage.failures(.write) + storage.failures(.zero) + storage.failures(.discard)
                + storage.failures(.resize))
    }

    // MARK: Checks

    private func attempt(_ body: () throws -> Void) -> CacheError? {
        do {
            try body()
            return nil
        } catch let error as CacheError {
            return error
        } catch {
            return CacheError(.ioError, "not a CacheError: \(error)")
        }
    }

    /// A request may fail only when the plugin failed, or a cache-file read
    /// did (the data only the cache held is out of reach): SPEC §6 and §8,
    /// the client sees an error only when the plugin fails, never for a full
    /// cache directory. `excused` allows other errors.
    private func expect(
        _ error: CacheError?, since before: Failures, _ what: String,
        excused: (CacheError) -> Bool = { _ in false }
    ) throws(FuzzFailure) {
        guard let error else { return }
        note("  -> \(error)")
        guard error.errno.rawValue != 0 else { throw fail("\(what) failed with errno 0: \(error)") }
        let now = failures()
        if now.plugin > before.plugin || now.storageRead > before.storageRead || excused(error) { return }
        let cause =
            now.storageOther > before.storageOther
            ? "only cache-file writes failed, which the client must not see" : "nothing failed"
        throw fail("\(what) failed (\(error)), but \(cause)")
    }

    /// writethrough, and FUA outside unsafe: the plugin has the bytes once the request succeeds.
    private func checkWrittenThrough(_ range: Range<UInt64>, fua: Bool) throws(FuzzFailure) {
        guard config.mode == .writethrough || (fua && config.mode != .unsafe) else { return }
        try checkPlugin(range, "after a \(fua ? "FUA" : "writethrough") request")
    }

    /// The plugin holds what the export reads as in `range` (its known bytes).
    private func checkPlugin(_ range: Range<UInt64>, _ when: String) throws(FuzzFailure) {
        guard !range.isEmpty else { return }
        let plugin = disk.bytes(range.lowerBound, range.count)
        let bytes = Int(range.lowerBound)..<Int(range.upperBound)
        if let at = model.firstMismatch(plugin, from: bytes.lowerBound, in: bytes) {
            throw fail(
                "\(when): the plugin holds \(plugin[at - bytes.lowerBound]) at \(at), the export \(model.bytes[at])")
        }
    }

    private func checkInvariants() throws(FuzzFailure) {
        if let maxSize = config.maxSize {
            // SPEC §4: the allocated size (and the engine's own count of the
            // room blocks take, `cachedBytes`) never passes the high threshold
            // (at least one block) by more than one block per request in
            // flight, every export's cache together (§8). Exact on tmpfs (a
            // disk file system may allocate metadata too); a hole a failing
            // cache file could not punch stays.
            let high = max(engine.blockSize, maxSize * config.highThreshold / 100)
            let limit = high + engine.blockSize
            let failed = exports.contains { $0.storage.totalFailures > 0 }
            if onTmpfs && !failed {
                let now = exports.reduce(0) { $0 + $1.storage.allocatedBytes() }
                let allocated = max(peak.withLock { $0 }, now)
                if allocated > limit {
                    throw fail("the cache files' allocated size reached \(allocated), over \(limit)")
                }
            }
            let counted = exports.reduce(0) { $0 + $1.engine.cachedBytes }
            if counted > limit {
                throw fail("cachedBytes reached \(counted), over \(limit)")
            }
            peak.withLock { $0 = 0 }
        }
        if let violation = exports.lazy.compactMap({ $0.disk.violations.first }).first
            ?? everyConnection.lazy.compactMap({ $0.violations.withLock { $0.first } }).first
        {
            throw fail("a request nbdkit would refuse: \(violation)")
        }
    }

    /// Faults off, every connection closes, and one connection that sees the
    /// whole disk reads it all, flushes and checks the plugin has every byte.
    private func finish() throws(FuzzFailure) {
        note("finish: faults off, every connection closes")
        disk.clearFaults()
        storage.clearFaults()
        while !clients.isEmpty { try close(0) }
        let before = clients.count
        try open(readOnly: false, resize: config.capacity)
        guard clients.count > before else { throw fail("the last connection could not open") }
        let c = clients[clients.count - 1]
        let all = 0..<config.capacity
        note("read c\(c.id) \(all)")
        try readAndCheck(c, all)
        note("extents c\(c.id) \(all)")
        try extentsAndCheck(c, all, onlyOne: false)
        if config.mode != .unsafe {
            note("flush c\(c.id)")
            if let error = attempt({ try engine.flush(backend: c.backend) }) {
                throw fail("the last flush, with no faults, failed: \(error)")
            }
            if engine.dirtyBlockCount != 0 || engine.unwritten.blocks != 0 {
                throw fail("\(engine.dirtyBlockCount) blocks still dirty after the last flush")
            }
            try checkPlugin(all, "after the last flush")
        }
        try close(clients.count - 1)
        try checkInvariants()
    }

    private func touch(_ range: Range<UInt64>) { highWater = max(highWater, range.upperBound) }

    private func note(_ line: @autoclosure () -> String) {
        guard trace != nil else { return }
        let export = exports.count > 1 ? "\(current.name): " : ""
        trace!.append(step == 0 ? export + line() : "#\(step) \(export)\(line())")
    }

    private func fail(_ message: String) -> FuzzFailure {
        note("FAILED: \(message)")
        return FuzzFailure(message: message)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

@testable import SwiftCacheCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One request as the backend received it.
struct Req: Hashable, Comparable, CustomStringConvertible {
    var offset: UInt64
    var length: UInt64
    var fua: Bool

    init(_ offset: UInt64, _ length: UInt64, fua: Bool = false) {
        self.offset = offset
        self.length = length
        self.fua = fua
    }

    static func < (a: Req, b: Req) -> Bool {
        (a.offset, a.length, a.fua ? 1 : 0) < (b.offset, b.length, b.fua ? 1 : 0)
    }

    var description: String { "(\(offset), \(length)\(fua ? ", fua" : ""))" }
}

/// What reached the backend. Only successful requests are counted in
/// `reads`/`writes`/... and logged; failed (injected) ones are counted apart.
struct BackendStats: Equatable {
    var reads = 0, readBytes: UInt64 = 0
    var writes = 0, writeBytes: UInt64 = 0
    var zeros = 0, zeroBytes: UInt64 = 0
    /// Zero requests that allowed the plugin to punch a hole (MAY_TRIM).
    var zeroesMayTrim = 0
    var trims = 0, trimBytes: UInt64 = 0
    var flushes = 0
    var extentsCalls = 0
    var failedReads = 0, failedWrites = 0, failedFlushes = 0
    var readLog: [Req] = []
    var writeLog: [Req] = []
    var zeroLog: [Req] = []
    var trimLog: [Req] = []
}

/// Error injection.
struct Faults {
    var failReads = 0
    var readError: Errno = .ioError
    var failWrites = 0
    var writeError: Errno = .ioError
    var failFlushes = 0
    var flushError: Errno = .ioError
    /// Writes (and zeroes and trims) touching this byte range fail and change nothing.
    var failWriteRange: Range<UInt64>?
    var writeRangeError: Errno = .ioError
    /// A failing write first stores its first half (a plugin may fail part way).
    var tornWrites = false
}

/// An in-memory disk standing in for the plugin (nbdkit's `next`).
///
/// Thread-safe. Besides data it keeps request counters and logs, injects
/// errors, and records *violations*: calls that nbdkit would refuse or that
/// break the rules of SPEC §7 (out-of-range requests, writes when it cannot
/// write, FUA when it has none, zero when it cannot zero, flush when it cannot
/// flush, requests over 64 MiB). Every test checks that there are none.
final class MemoryBackend: Backend, Sendable {
    let canWrite: Bool
    let canFlush: Bool
    let canZero: Bool
    let fuaMode: FUAMode
    /// Writes must be aligned to this (nbdkit's block size minimum).
    let minimumRequest: UInt64

    private struct State {
        var disk: [UInt8]
        /// The export's size as this connection sees it (the disk may be larger).
        var size: UInt64
        var stats = BackendStats()
        var faults = Faults()
        var violations: [String] = []
        var readDelayMicroseconds: UInt32 = 0
        var afterExtentsComputed: (@Sendable () -> Void)?
        var onRead: (@Sendable (Req) -> Void)?
        var onWrite: (@Sendable (Req) -> Void)?
        var extentsAnswer: (@Sendable (_ count: UInt64, _ offset: UInt64, _ onlyOne: Bool) -> [Extent])?
    }

    // The core's pthread lock rather than Synchronization.Mutex, whose
    // futex the thread sanitizer cannot see.
    private let state: Lock<State>

    init(
        bytes: [UInt8], canWrite: Bool = true, canFlush: Bool = true, canZero: Bool = true,
        fuaMode: FUAMode = .native, minimumRequest: UInt64 = 1
    ) {
        self.minimumRequest = minimumRequest
        self.canWrite = canWrite
        self.canFlush = canFlush
        self.canZero = canZero
        self.fuaMode = fuaMode
        state = Lock(State(disk: bytes, size: UInt64(bytes.count)))
    }

    /// A disk of `size` pseudo-random bytes.
    convenience init(
        size: UInt64, seed: UInt64, canWrite: Bool = true, canFlush: Bool = true,
        canZero: Bool = true, fuaMode: FUAMode = .native, minimumRequest: UInt64 = 1
    ) {
        self.init(
            bytes: randomBytes(Int(size), seed: seed), canWrite: canWrite, canFlush: canFlush,
            canZero: canZero, fuaMode: fuaMode, minimumRequest: minimumRequest)
    }

    // MARK: Inspection and control

    var stats: BackendStats { state.withLock { $0.stats } }
    /// The export's size as this connection sees it.
    var size: UInt64 { state.withLock { $0.size } }
    /// The plugin's export now has `size` bytes, as a new connection sees it
    /// (the disk keeps its bytes; reads past its end are violations).
    func setSize(_ size: UInt64) { state.withLock { $0.size = size } }
    var violations: [String] { state.withLock { $0.violations } }
    var allBytes: [UInt8] { state.withLock { $0.disk } }

    func bytes(_ offset: UInt64, _ count: some BinaryInteger) -> [UInt8] {
        let count = Int(count)
        return state.withLock { Array($0.disk[Int(offset)..<Int(offset) + count]) }
    }

    func resetStats() { state.withLock { $0.stats = BackendStats() } }

    func setFaults(_ change: (inout Faults) -> Void) { state.withLock { change(&$0.faults) } }
    func clearFaults() { state.withLock { $0.faults = Faults() } }
    func failNextReads(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failReads = n
            $0.readError = error
        }
    }
    func failNextWrites(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failWrites = n
            $0.writeError = error
        }
    }
    func failNextFlushes(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failFlushes = n
            $0.flushError = error
        }
    }
    func failWrites(in range: Range<UInt64>, _ error: Errno = .ioError) {
        setFaults {
            $0.failWriteRange = range
            $0.writeRangeError = error
        }
    }

    /// Each successful read sleeps this long (outside the lock) before returning.
    func setReadDelay(microseconds: UInt32) { state.withLock { $0.readDelayMicroseconds = microseconds } }

    /// Runs after `extents` has computed its answer and before it returns it
    /// (to stand for another connection acting meanwhile).
    func setAfterExtentsComputed(_ hook: (@Sendable () -> Void)?) { state.withLock { $0.afterExtentsComputed = hook } }

    /// Runs at the start of every read, outside the lock.
    func setOnRead(_ hook: (@Sendable (Req) -> Void)?) { state.withLock { $0.onRead = hook } }

    /// Replaces the extents answer (for plugins that answer oddly).
    func setExtentsAnswer(_ answer: (@Sendable (_ count: UInt64, _ offset: UInt64, _ onlyOne: Bool) -> [Extent])?) {
        state.withLock { $0.extentsAnswer = answer }
    }

    /// Runs at the start of every write (and zero), outside the lock.
    func setOnWrite(_ hook: (@Sendable (Req) -> Void)?) { state.withLock { $0.onWrite = hook } }

    /// Changes the disk behind the cache's back (for tests of what the cache serves).
    func poke(_ bytes: [UInt8], at offset: UInt64) {
        state.withLock { $0.disk.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes) }
    }

    // MARK: Backend

    private static let maxRequest: UInt64 = 64 << 20

    /// Records a violation if the request is malformed; returns whether it is
    /// usable. nbdkit limits reads and writes to 64 MiB, other requests to 32 bits.
    private func check(_ s: inout State, _ what: String, _ offset: UInt64, _ count: UInt64) -> Bool {
        if count == 0 || offset > s.size || count > s.size - offset {
            s.violations.append("\(what) of \(count) bytes at \(offset) outside the export of \(s.size)")
            return false
        }
        let limit = what == "read" || what == "write" ? MemoryBackend.maxRequest : UInt64(UInt32.max)
        if count > limit {
            s.violations.append("\(what) of \(count) bytes is over nbdkit's limit of \(limit)")
        }
        return true
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        let req = Req(offset, UInt64(buffer.count))
        let hook = state.withLock { $0.onRead }
        hook?(req)
        let delay: UInt32 = try state.withLock { (s: inout State) throws(Errno) -> UInt32 in
            guard check(&s, "read", offset, UInt64(buffer.count)) else { throw Errno.invalidArgument }
            if s.faults.failReads > 0 {
                s.faults.failReads -= 1
                s.stats.failedReads += 1
                throw s.faults.readError
            }
            s.disk.withUnsafeBytes { disk in
                buffer.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: disk[Int(offset)..<Int(offset) + buffer.count]))
            }
            s.stats.reads += 1
            s.stats.readBytes += UInt64(buffer.count)
            s.stats.readLog.append(req)
            return s.readDelayMicroseconds
        }
        if delay > 0 { usleep(delay) }
    }

    /// Checks write faults; throws the injected error if this write must fail,
    /// after calling `tear` with the half to store first if writes tear.
    private func writeFault(
        _ s: inout State, _ offset: UInt64, _ count: UInt64,
        tear: (inout State, Int) -> Void = { _, _ in }
    ) throws(Errno) {
        var error: Errno?
        if s.faults.failWrites > 0 {
            s.faults.failWrites -= 1
            error = s.faults.writeError
        } else if let bad = s.faults.failWriteRange, bad.overlaps(offset..<offset + count) {
            error = s.faults.writeRangeError
        }
        guard let error else { return }
        s.stats.failedWrites += 1
        if s.faults.tornWrites { tear(&s, Int(count / 2)) }
        throw error
    }

    private func checkFUA(_ s: inout State, _ what: String, _ fua: Bool) {
        if fua && fuaMode == .none { s.violations.append("\(what) with FUA but the plugin has no FUA") }
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        let hook = state.withLock { $0.onWrite }
        hook?(Req(offset, UInt64(buffer.count), fua: fua))
        try state.withLock { (s: inout State) throws(Errno) in
            guard check(&s, "write", offset, UInt64(buffer.count)) else { throw Errno.invalidArgument }
            let end = offset + UInt64(buffer.count)
            if offset % minimumRequest != 0 || (end % minimumRequest != 0 && end != s.size) {
                s.violations.append(
                    "write of \(buffer.count) bytes at \(offset) not aligned to the minimum "
                        + "\(minimumRequest)")
            }
            if !canWrite { s.violations.append("write at \(offset) but the plugin cannot write") }
            checkFUA(&s, "write", fua)
            try writeFault(&s, offset, UInt64(buffer.count)) { s, n in
                s.disk.withUnsafeMutableBytes { disk in
                    UnsafeMutableRawBufferPointer(rebasing: disk[Int(offset)..<Int(offset) + n])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[..<n]))
                }
            }
            s.disk.withUnsafeMutableBytes { disk in
                UnsafeMutableRawBufferPointer(rebasing: disk[Int(offset)..<Int(offset) + buffer.count])
                    .copyMemory(from: buffer)
            }
            s.stats.writes += 1
            s.stats.writeBytes += UInt64(buffer.count)
            s.stats.writeLog.append(Req(offset, UInt64(buffer.count), fua: fua))
        }
    }

    func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        let hook = state.withLock { $0.onWrite }
        hook?(Req(offset, count, fua: fua))
        try state.withLock { (s: inout State) throws(Errno) in
            guard check(&s, "zero", offset, count) else { throw Errno.invalidArgument }
            if !canWrite { s.violations.append("zero at \(offset) but the plugin cannot write") }
            if !canZero { s.violations.append("zero at \(offset) but the plugin cannot zero") }
            checkFUA(&s, "zero", fua)
            try writeFault(&s, offset, count) { s, n in
                for i in Int(offset)..<Int(offset) + n { s.disk[i] = 0 }
            }
            for i in Int(offset)..<Int(offset + count) { s.disk[i] = 0 }
            s.stats.zeros += 1
            s.stats.zeroBytes += count
            s.stats.zeroLog.append(Req(offset, count, fua: fua))
            if mayTrim { s.stats.zeroesMayTrim += 1 }
        }
    }

    /// Like the memory plugin: trimmed bytes read as zeroes.
    func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        try state.withLock { (s: inout State) throws(Errno) in
            guard check(&s, "trim", offset, count) else { throw Errno.invalidArgument }
            checkFUA(&s, "trim", fua)
            try writeFault(&s, offset, count)
            for i in Int(offset)..<Int(offset + count) { s.disk[i] = 0 }
            s.stats.trims += 1
            s.stats.trimBytes += count
            s.stats.trimLog.append(Req(offset, count, fua: fua))
        }
    }

    func flush() throws(Errno) {
        try state.withLock { (s: inout State) throws(Errno) in
            if !canFlush { s.violations.append("flush but the plugin cannot flush") }
            if s.faults.failFlushes > 0 {
                s.faults.failFlushes -= 1
                s.stats.failedFlushes += 1
                throw s.faults.flushError
            }
            s.stats.flushes += 1
        }
    }

    /// Like the memory plugin: each 64K-aligned region that is all zeroes is
    /// hole|zero, any other is data; runs of one type are merged. The answer
    /// starts at `offset` (as nbdkit clips it for a filter).
    func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
        let (result, hook) = try state.withLock {
            (s: inout State) throws(Errno) -> ([Extent], (@Sendable () -> Void)?) in
            guard check(&s, "extents", offset, count) else { throw Errno.invalidArgument }
            s.stats.extentsCalls += 1
            if let answer = s.extentsAnswer { return (answer(count, offset, onlyOne), s.afterExtentsComputed) }
            return (
                MemoryBackend.extents(of: s.disk, count: count, at: offset, onlyOne: onlyOne),
                s.afterExtentsComputed
            )
        }
        hook?()
        return result
    }

    static let extentRegion: UInt64 = 65536

    static func extents(of disk: [UInt8], count: UInt64, at offset: UInt64, onlyOne: Bool) -> [Extent] {
        let end = offset + count
        var result: [Extent] = []
        var region = offset & ~(extentRegion - 1)
        while region < end {
            let regionEnd = min(region + extentRegion, UInt64(disk.count))
            let allZero = disk[Int(region)..<Int(regionEnd)].allSatisfy { $0 == 0 }
            let type: UInt32 = allZero ? (Extent.hole | Extent.zero) : 0
            let from = max(region, offset), to = min(regionEnd, end)
            if let last = result.last, last.type == type {
                result[result.count - 1].length += to - from
            } else {
                result.append(Extent(offset: from, length: to - from, type: type))
            }
            region += extentRegion
        }
        if onlyOne { return Array(result.prefix(1)) }
        return result
    }
}

// MARK: - Other helpers

/// A value behind a lock, shareable between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock: Lock<Value>
    init(_ value: Value) { lock = Lock(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { lock.withLock(body) }
}

/// SplitMix64: small, fast, deterministic.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        var word = rng.next()
        for _ in 0..<8 where i < count {
            bytes[i] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            i += 1
        }
    }
    return bytes
}

/// A fresh directory under /tmp (mkdtemp), for one test's cache file.
func makeTemporaryDirectory(in parent: String = "/tmp") throws -> String {
    var template = Array("\(parent)/swiftcache-test.XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard made != nil else { throw Errno(rawValue: errno) }
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Removes a directory made by `makeTemporaryDirectory` and what is in it
/// (the cache file is unlinked at once; tests may leave flag files).
func removeDirectory(_ path: String) {
    if let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { unlink("\(path)/\(name)") }
        }
        closedir(dir)
    }
    rmdir(path)
}

func touchFile(_ path: String) {
    let fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
    if fd >= 0 { close(fd) }
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

/// Another nbdkit connection to the same plugin: the same disk, its own
/// `canWrite` (a read-only connection, `nbdkit -r` or a client asking for
/// read-only). Any write, zero or trim through a read-only connection is a
/// violation (nbdkit refuses them).
struct Connection: Backend {
    let disk: MemoryBackend
    let canWrite: Bool
    /// The export's size as this connection saw it when it opened.
    let size: UInt64
    let violations = Locked<[String]>([])

    init(_ disk: MemoryBackend, canWrite: Bool = true, size: UInt64? = nil) {
        self.disk = disk
        self.canWrite = canWrite
        self.size = size ?? disk.size
    }

    var canFlush: Bool { disk.canFlush }
    var canZero: Bool { disk.canZero }
    var fuaMode: FUAMode { disk.fuaMode }
    var minimumRequest: UInt64 { disk.minimumRequest }

    private func checkWritable(_ what: String, _ offset: UInt64) {
        if !canWrite { violations.withLock { $0.append("\(what) at \(offset) through a read-only connection") } }
    }

    private func checkRange(_ what: String, _ offset: UInt64, _ count: UInt64) {
        if offset + count > size {
            let message = "\(what) of \(count) bytes at \(offset) past this connection's end \(size)"
            violations.withLock { $0.append(message) }
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        checkRange("read", offset, UInt64(buffer.count))
        try disk.read(into: buffer, at: offset)
    }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        checkWritable("write", offset)
        checkRange("write", offset, UInt64(buffer.count))
        try disk.write(buffer, at: offset, fua: fua)
    }
    func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        checkWritable("zero", offset)
        checkRange("zero", offset, count)
        try disk.zero(count: count, at: offset, fua: fua, mayTrim: mayTrim)
    }
    func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        checkWritable("trim", offset)
        checkRange("trim", offset, count)
        try disk.trim(count: count, at: offset, fua: fua)
    }
    func flush() throws(Errno) { try disk.flush() }
    func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
        try disk.extents(count: count, at: offset, onlyOne: onlyOne)
    }
}

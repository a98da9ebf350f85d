// SPDX-License-Identifier: BSD-3-Clause
import SwiftCacheCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One request as the backend received it.
public struct Req: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var offset: UInt64
    public var length: UInt64
    public var fua: Bool

    public init(_ offset: UInt64, _ length: UInt64, fua: Bool = false) {
        self.offset = offset
        self.length = length
        self.fua = fua
    }

    public static func < (a: Req, b: Req) -> Bool {
        (a.offset, a.length, a.fua ? 1 : 0) < (b.offset, b.length, b.fua ? 1 : 0)
    }

    public var description: String { "(\(offset), \(length)\(fua ? ", fua" : ""))" }
}

/// What reached the backend. Only successful requests are counted in
/// `reads`/`writes`/... and logged; failed (injected) ones are counted apart.
public struct BackendStats: Equatable, Sendable {
    public var reads = 0, readBytes: UInt64 = 0
    public var writes = 0, writeBytes: UInt64 = 0
    public var zeros = 0, zeroBytes: UInt64 = 0
    /// Zero requests that allowed the plugin to punch a hole (MAY_TRIM).
    public var zeroesMayTrim = 0
    public var trims = 0, trimBytes: UInt64 = 0
    public var flushes = 0
    public var extentsCalls = 0
    public var failedReads = 0, failedWrites = 0, failedFlushes = 0
    public var readLog: [Req] = []
    public var writeLog: [Req] = []
    public var zeroLog: [Req] = []
    public var trimLog: [Req] = []

    public init() {}
}

/// Error injection.
public struct Faults: Sendable {
    public var failReads = 0
    public var readError: Errno = .ioError
    public var failWrites = 0
    public var writeError: Errno = .ioError
    public var failFlushes = 0
    public var flushError: Errno = .ioError
    /// Writes (and zeroes and trims) touching this byte range fail and change nothing.
    public var failWriteRange: Range<UInt64>?
    public var writeRangeError: Errno = .ioError
    /// A failing write first stores its first half (a plugin may fail part way).
    public var tornWrites = false

    public init() {}
}

/// An in-memory disk standing in for the plugin (nbdkit's `next`).
///
/// Thread-safe. Besides data it keeps request counters and logs, injects
/// errors, and records *violations*: calls that nbdkit would refuse or that
/// break the rules of SPEC §7 (out-of-range requests, writes when it cannot
/// write, FUA when it has none, zero when it cannot zero, flush when it cannot
/// flush, requests over 64 MiB or the plugin's maximum). Every test checks
/// that there are none.
public final class MemoryBackend: Backend, Sendable {
    public let canWrite: Bool
    public let canFlush: Bool
    public let canZero: Bool
    public let fuaMode: FUAMode
    /// Writes must be aligned to this (nbdkit's block size minimum).
    public let minimumRequest: UInt64
    /// Reads and writes must be at most this long (nbdkit's block size maximum).
    public let maximumRequest: UInt64

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

    // A pthread lock rather than Synchronization.Mutex, whose futex the
    // thread sanitizer cannot see.
    private let state: PthreadLock<State>

    public init(
        bytes: [UInt8], canWrite: Bool = true, canFlush: Bool = true, canZero: Bool = true,
        fuaMode: FUAMode = .native, minimumRequest: UInt64 = 1, maximumRequest: UInt64 = Engine.maxTransfer
    ) {
        self.minimumRequest = minimumRequest
        self.maximumRequest = maximumRequest
        self.canWrite = canWrite
        self.canFlush = canFlush
        self.canZero = canZero
        self.fuaMode = fuaMode
        state = PthreadLock(State(disk: bytes, size: UInt64(bytes.count)))
    }

    /// A disk of `size` pseudo-random bytes.
    public convenience init(
        size: UInt64, seed: UInt64, canWrite: Bool = true, canFlush: Bool = true,
        canZero: Bool = true, fuaMode: FUAMode = .native, minimumRequest: UInt64 = 1,
        maximumRequest: UInt64 = Engine.maxTransfer
    ) {
        self.init(
            bytes: randomBytes(Int(size), seed: seed), canWrite: canWrite, canFlush: canFlush,
            canZero: canZero, fuaMode: fuaMode, minimumRequest: minimumRequest, maximumRequest: maximumRequest)
    }

    // MARK: Inspection and control

    public var stats: BackendStats { state.withLock { $0.stats } }
    /// Requests that failed by injection (`failedReads`, `failedWrites` and
    /// `failedFlushes` together), without copying the logs.
    public var failedCalls: Int {
        state.withLock { $0.stats.failedReads + $0.stats.failedWrites + $0.stats.failedFlushes }
    }
    /// The export's size as this connection sees it.
    public var size: UInt64 { state.withLock { $0.size } }
    /// The plugin's export now has `size` bytes, as a new connection sees it
    /// (the disk keeps its bytes; reads past its end are violations).
    public func setSize(_ size: UInt64) { state.withLock { $0.size = size } }
    public var violations: [String] { state.withLock { $0.violations } }
    public var allBytes: [UInt8] { state.withLock { $0.disk } }

    public func bytes(_ offset: UInt64, _ count: some BinaryInteger) -> [UInt8] {
        let count = Int(count)
        return state.withLock { Array($0.disk[Int(offset)..<Int(offset) + count]) }
    }

    public func resetStats() { state.withLock { $0.stats = BackendStats() } }

    public func setFaults(_ change: (inout Faults) -> Void) { state.withLock { change(&$0.faults) } }
    public func clearFaults() { state.withLock { $0.faults = Faults() } }
    public func failNextReads(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failReads = n
            $0.readError = error
        }
    }
    public func failNextWrites(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failWrites = n
            $0.writeError = error
        }
    }
    public func failNextFlushes(_ n: Int, _ error: Errno = .ioError) {
        setFaults {
            $0.failFlushes = n
            $0.flushError = error
        }
    }
    public func failWrites(in range: Range<UInt64>, _ error: Errno = .ioError) {
        setFaults {
            $0.failWriteRange = range
            $0.writeRangeError = error
        }
    }

    /// Each successful read sleeps this long (outside the lock) before returning.
    public func setReadDelay(microseconds: UInt32) { state.withLock { $0.readDelayMicroseconds = microseconds } }

    /// Runs after `extents` has computed its answer and before it returns it
    /// (to stand for another connection acting meanwhile).
    public func setAfterExtentsComputed(_ hook: (@Sendable () -> Void)?) {
        state.withLock { $0.afterExtentsComputed = hook }
    }

    /// Runs at the start of every read, outside the lock.
    public func setOnRead(_ hook: (@Sendable (Req) -> Void)?) { state.withLock { $0.onRead = hook } }

    /// Replaces the extents answer (for plugins that answer oddly).
    public func setExtentsAnswer(
        _ answer: (@Sendable (_ count: UInt64, _ offset: UInt64, _ onlyOne: Bool) -> [Extent])?
    ) {
        state.withLock { $0.extentsAnswer = answer }
    }

    /// Runs at the start of every write (and zero), outside the lock.
    public func setOnWrite(_ hook: (@Sendable (Req) -> Void)?) { state.withLock { $0.onWrite = hook } }

    /// Changes the disk behind the cache's back (for tests of what the cache serves).
    public func poke(_ bytes: [UInt8], at offset: UInt64) {
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
        } else if (what == "read" || what == "write") && count > maximumRequest {
            s.violations.append("\(what) of \(count) bytes is over the plugin's maximum of \(maximumRequest)")
        }
        return true
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
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

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
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

    public func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        let hook = state.withLock { $0.onWrite }
        hook?(Req(offset, count, fua: fua))
        try state.withLock { (s: inout State) throws(Errno) in
            guard check(&s, "zero", offset, count) else { throw Errno.invalidArgument }
            if !canWrite { s.violations.append("zero at \(offset) but the plugin cannot write") }
            if !canZero { s.violations.append("zero at \(offset) but the plugin cannot zero") }
            checkFUA(&s, "zero", fua)
            try writeFault(&s, offset, count) { s, n in
                zeroFill(&s.disk, Int(offset)..<Int(offset) + n)
            }
            zeroFill(&s.disk, Int(offset)..<Int(offset + count))
            s.stats.zeros += 1
            s.stats.zeroBytes += count
            s.stats.zeroLog.append(Req(offset, count, fua: fua))
            if mayTrim { s.stats.zeroesMayTrim += 1 }
        }
    }

    /// Like the memory plugin: trimmed bytes read as zeroes.
    public func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        try state.withLock { (s: inout State) throws(Errno) in
            guard check(&s, "trim", offset, count) else { throw Errno.invalidArgument }
            checkFUA(&s, "trim", fua)
            try writeFault(&s, offset, count)
            zeroFill(&s.disk, Int(offset)..<Int(offset + count))
            s.stats.trims += 1
            s.stats.trimBytes += count
            s.stats.trimLog.append(Req(offset, count, fua: fua))
        }
    }

    public func flush() throws(Errno) {
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
    public func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
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

    public static let extentRegion: UInt64 = 65536

    public static func extents(of disk: [UInt8], count: UInt64, at offset: UInt64, onlyOne: Bool) -> [Extent] {
        let end = offset + count
        var result: [Extent] = []
        var region = offset & ~(extentRegion - 1)
        while region < end {
            let regionEnd = min(region + extentRegion, UInt64(disk.count))
            let allZero = isAllZero(disk, Int(region)..<Int(regionEnd))
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

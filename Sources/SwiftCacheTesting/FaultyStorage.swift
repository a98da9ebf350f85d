// SPDX-License-Identifier: BSD-3-Clause
import SwiftCacheCore
import SystemPackage

/// The kinds of call the block layer makes to its cache file (`CacheStorage`).
public enum StorageCall: CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case read, write, zero, discard, resize

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .zero: "zero"
        case .discard: "discard"
        case .resize: "resize"
        }
    }
}

/// Which calls of one kind fail.
public enum FaultTrigger: Equatable, Sendable, CustomStringConvertible {
    /// The next `count` calls, once `skip` calls have gone through.
    case next(Int, after: Int = 0)
    /// Every call.
    case always
    /// Every `n`th call (the `n`th, the `2n`th, ...), counted from when it is armed.
    case every(Int)
    /// Calls whose byte range overlaps this one (a resize covers 0..<its size).
    case overlapping(Range<UInt64>)

    public var description: String {
        switch self {
        case .next(let count, let skip): skip == 0 ? "the next \(count)" : "the next \(count) after \(skip)"
        case .always: "every call"
        case .every(let n): "every \(n)th call"
        case .overlapping(let range): "calls touching \(range)"
        }
    }
}

/// A fault armed for one kind of call.
public struct StorageFault: Sendable, CustomStringConvertible {
    public var trigger: FaultTrigger
    public var errno: Errno
    /// A failing write, zero or discard first does the first half of its job
    /// (a short write, then the error); a failing read first fills the buffer
    /// with half the file's bytes and garbage. A resize cannot tear.
    public var torn: Bool

    public var description: String { "\(trigger) fail with \(errno)\(torn ? ", torn" : "")" }
}

/// A `CacheStorage` over a real `CacheFile` that fails calls on demand, per
/// kind of call, and counts them. Thread-safe: a pthread lock, which the
/// thread sanitizer sees (it cannot see `Synchronization.Mutex`).
public final class FaultyStorage: CacheStorage {
    public let file: CacheFile
    private let state = PthreadLock<State>(State())

    private struct State {
        var faults: [StorageCall: StorageFault] = [:]
        /// Calls made, failed ones included.
        var calls: [StorageCall: Int] = [:]
        var failures: [StorageCall: Int] = [:]
        /// Calls seen since the fault of that kind was armed (for `.every`).
        var seen: [StorageCall: Int] = [:]
    }

    /// A cache file in `directory` (the test's temporary directory).
    public init(directory: String) throws {
        file = try CacheFile(directory: FilePath(directory))
    }

    // MARK: Control and counts

    /// Arms a fault for each of `kinds`, replacing what was armed for them.
    public func fail(
        _ kinds: [StorageCall], _ trigger: FaultTrigger = .next(1), with errno: Errno = .noSpace,
        torn: Bool = false
    ) {
        state.withLock { s in
            for kind in kinds {
                s.faults[kind] = StorageFault(trigger: trigger, errno: errno, torn: torn)
                s.seen[kind] = 0
            }
        }
    }

    public func fail(
        _ kind: StorageCall, _ trigger: FaultTrigger = .next(1), with errno: Errno = .noSpace,
        torn: Bool = false
    ) {
        fail([kind], trigger, with: errno, torn: torn)
    }

    /// Disarms every fault (counts stay).
    public func clearFaults() { state.withLock { $0.faults = [:] } }

    /// Calls of `kind` made so far, failed ones included.
    public func calls(_ kind: StorageCall) -> Int { state.withLock { $0.calls[kind, default: 0] } }

    /// Calls of `kind` that failed.
    public func failures(_ kind: StorageCall) -> Int { state.withLock { $0.failures[kind, default: 0] } }

    public var totalFailures: Int { state.withLock { $0.failures.values.reduce(0, +) } }

    public func resetCounts() {
        state.withLock { s in
            s.calls = [:]
            s.failures = [:]
        }
    }

    /// Counts a call and says whether (and how) it fails.
    private func fault(_ kind: StorageCall, _ range: Range<UInt64>) -> StorageFault? {
        state.withLock { s in
            s.calls[kind, default: 0] += 1
            guard let fault = s.faults[kind] else { return nil }
            s.seen[kind, default: 0] += 1
            switch fault.trigger {
            case .always:
                break
            case .every(let n):
                guard n > 0, s.seen[kind, default: 0] % n == 0 else { return nil }
            case .overlapping(let bad):
                guard bad.overlaps(range) else { return nil }
            case .next(let count, let skip):
                guard count > 0 else { return nil }
                if skip > 0 {
                    s.faults[kind]?.trigger = .next(count, after: skip - 1)
                    return nil
                }
                s.faults[kind]?.trigger = .next(count - 1)
            }
            s.failures[kind, default: 0] += 1
            return fault
        }
    }

    private func injected(_ fault: StorageFault, _ kind: StorageCall, _ range: Range<UInt64>) -> CacheError {
        CacheError(fault.errno, "injected cache file \(kind) fault at \(range)")
    }

    // MARK: CacheStorage

    public var fileSystemBlockSize: UInt64 { file.fileSystemBlockSize }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        let range = offset..<offset + UInt64(buffer.count)
        guard let fault = fault(.read, range) else { return try file.read(into: buffer, at: offset) }
        if fault.torn {
            let half = buffer.count / 2
            try? file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<half]), at: offset)
            UnsafeMutableRawBufferPointer(rebasing: buffer[half...]).initializeMemory(as: UInt8.self, repeating: 0xEE)
        }
        throw injected(fault, .read, range)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(CacheError) {
        let range = offset..<offset + UInt64(buffer.count)
        guard let fault = fault(.write, range) else { return try file.write(buffer, at: offset) }
        let half = buffer.count / 2
        if fault.torn && half > 0 { try? file.write(UnsafeRawBufferPointer(rebasing: buffer[..<half]), at: offset) }
        throw injected(fault, .write, range)
    }

    public func zero(at offset: UInt64, length: UInt64) throws(CacheError) {
        let range = offset..<offset + length
        guard let fault = fault(.zero, range) else { return try file.zero(at: offset, length: length) }
        if fault.torn && length / 2 > 0 { try? file.zero(at: offset, length: length / 2) }
        throw injected(fault, .zero, range)
    }

    public func discard(at offset: UInt64, length: UInt64) throws(CacheError) {
        let range = offset..<offset + length
        guard let fault = fault(.discard, range) else { return try file.discard(at: offset, length: length) }
        if fault.torn && length / 2 > 0 { try? file.discard(at: offset, length: length / 2) }
        throw injected(fault, .discard, range)
    }

    public func resize(to size: UInt64) throws(CacheError) {
        guard let fault = fault(.resize, 0..<size) else { return try file.resize(to: size) }
        throw injected(fault, .resize, 0..<size)
    }

    public func allocatedBytes() -> UInt64 { file.allocatedBytes() }
}

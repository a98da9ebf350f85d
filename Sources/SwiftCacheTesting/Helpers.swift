// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pthread mutex guarding a value (the core's lock is internal to it).
/// Not `Synchronization.Mutex`, whose futex the thread sanitizer cannot see.
final class PthreadLock<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// A value behind a lock, shareable between threads.
public final class Locked<Value>: @unchecked Sendable {
    private let lock: PthreadLock<Value>
    public init(_ value: Value) { lock = PthreadLock(value) }
    public func withLock<R>(_ body: (inout Value) -> R) -> R { lock.withLock(body) }
}

/// SplitMix64: small, fast, deterministic.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `count` bytes from SplitMix64(seed), eight (little-endian) to a number.
public func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= count {
            raw.storeBytes(of: rng.next().littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        var word = rng.next()
        while i < count {
            raw[i] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            i += 1
        }
    }
    return bytes
}

/// A fresh directory under /tmp (mkdtemp), for one test's cache file.
public func makeTemporaryDirectory(in parent: String = "/tmp", prefix: String = "swiftcache-test") throws -> String {
    var template = Array("\(parent)/\(prefix).XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard made != nil else { throw Errno(rawValue: errno) }
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Removes a directory made by `makeTemporaryDirectory` and what is in it
/// (the cache file is unlinked at once; tests may leave flag files).
public func removeDirectory(_ path: String) {
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

public func touchFile(_ path: String) {
    let fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
    if fd >= 0 { close(fd) }
}

// Byte loops in Swift cost the fuzzer an instrumented comparison a byte:
// these use memset and memcmp.

/// Zeroes `range` of `bytes`.
func zeroFill(_ bytes: inout [UInt8], _ range: Range<Int>) {
    guard !range.isEmpty else { return }
    bytes.withUnsafeMutableBytes { _ = memset($0.baseAddress! + range.lowerBound, 0, range.count) }
}

/// Whether `range` of `bytes` is all zeroes.
func isAllZero(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
    bytes.withUnsafeBytes { raw in
        var at = range.lowerBound
        while at < range.upperBound {
            let n = min(range.upperBound - at, zeroPageSize)
            if memcmp(raw.baseAddress! + at, zeroPage, n) != 0 { return false }
            at += n
        }
        return true
    }
}

let zeroPageSize = 65536
/// `zeroPageSize` zero bytes, never written.
nonisolated(unsafe) let zeroPage = UnsafeRawPointer(calloc(1, zeroPageSize)!)

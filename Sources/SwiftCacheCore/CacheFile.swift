#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import SystemPackage

/// The sparse file holding cached blocks, shared by every connection.
///
/// It is unlinked as soon as it is created, so it vanishes with the process.
/// Block N of the export lives at the same offset in the file, which keeps
/// runs of blocks contiguous: one syscall serves a run.
public final class CacheFile: Sendable {
    let fd: FileDescriptor
    /// The file system's preferred block size (`st_blksize`).
    public let fileSystemBlockSize: UInt64
    /// On tmpfs, reads copy from a read-only shared mapping of the file: a
    /// third of the cost of `pread` for warm data. Elsewhere a mapped read of
    /// a failing disk would be SIGBUS instead of EIO, so they use `pread`.
    private let mapsReads: Bool
    private let mappings = ConditionLock(Mappings())

    /// Creates and unlinks the cache file in `directory`.
    public init(directory: String) throws(CacheError) {
        let path: String
        do {
            (fd, path) = try FileDescriptor.makeTemporary(in: directory, prefix: "swiftcache.")
        } catch {
            throw CacheError(error, "cannot create the cache file in \(directory) (set TMPDIR to a writable directory)")
        }
        unlink(path)
        var info = stat()
        fileSystemBlockSize = fstat(fd.rawValue, &info) == 0 ? UInt64(max(info.st_blksize, 512)) : 4096
        mapsReads = swiftcache_is_tmpfs(fd.rawValue) == 1
    }

    deinit {
        mappings.withLock { $0.unmapAll() }
        try? fd.close()
    }

    /// Reads this large first ask the file where its data starts (plugin
    /// zeroes are cached as holes): a leading hole is zero-filled, which
    /// costs half a copy and, on tmpfs, pages nothing in through the mapping.
    /// Only SEEK_DATA: it answers at once where data is, while SEEK_HOLE from
    /// data walks every page up to the next hole (3× the cost of the copy
    /// on a 1 MiB read of a file full of data). Smaller reads copy at once.
    static let holeAwareReadMinimum = 128 << 10

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        guard buffer.count >= Self.holeAwareReadMinimum else { return try copy(into: buffer, at: offset) }
        let end = offset + UInt64(buffer.count)
        // No hole map (an odd file system) counts as data.
        let dataStart: UInt64
        do { dataStart = try fd.nextData(from: offset) ?? end } catch { dataStart = offset }
        let zeroes = Int(min(max(dataStart, offset), end) - offset)
        UnsafeMutableRawBufferPointer(rebasing: buffer[..<zeroes]).initializeMemory(as: UInt8.self, repeating: 0)
        if zeroes < buffer.count {
            try copy(into: UnsafeMutableRawBufferPointer(rebasing: buffer[zeroes...]), at: offset + UInt64(zeroes))
        }
    }

    private func copy(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        if let base = mappings.withLock({ $0.current(covering: offset + UInt64(buffer.count)) }) {
            buffer.copyMemory(from: UnsafeRawBufferPointer(start: base + Int(offset), count: buffer.count))
            return
        }
        do { try fd.readAll(into: buffer, at: offset) } catch {
            throw CacheError(error, "cache file read of \(buffer.count) bytes at \(offset)")
        }
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(CacheError) {
        do { try fd.writeAll(buffer, at: offset) } catch {
            throw CacheError(error, "cache file write of \(buffer.count) bytes at \(offset)")
        }
    }

    /// Makes a range read as zeroes: a hole where the file system can punch
    /// one, written zeroes where it cannot.
    func zero(at offset: UInt64, length: UInt64) throws(CacheError) {
        do {
            try fd.punchHole(at: offset, length: length)
            return
        } catch where error == .notSupported || error == .notSupportedOnSocket {
            // Fall through to writing zeroes.
        } catch {
            throw CacheError(error, "cache file punch hole of \(length) bytes at \(offset)")
        }
        let chunk = UInt64(1 << 20)
        let zeroes: Buffer
        do { zeroes = try Buffer(count: Int(min(length, chunk))) } catch {
            throw CacheError(error, "allocating a zero buffer")
        }
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(length - done, chunk))
            try write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Drops a block's storage (reclaim, trim).
    func discard(at offset: UInt64, length: UInt64) throws(CacheError) {
        do { try fd.punchHole(at: offset, length: length) } catch {
            throw CacheError(error, "cache file punch hole of \(length) bytes at \(offset)")
        }
    }

    /// Grows the file (it never shrinks: blocks past a smaller size stay).
    func resize(to size: UInt64) throws(CacheError) {
        guard let length = Int64(exactly: size) else {
            throw CacheError(.fileTooLarge, "cache file resize to \(size)")
        }
        do { try fd.resize(to: length) } catch {
            throw CacheError(error as? Errno ?? .ioError, "cache file resize to \(size)")
        }
        guard mapsReads, size > 0 else { return }
        // Reads in flight may still use the old mapping, so it stays until
        // the file is closed; the file only grows, and rarely.
        if let base = mmap(nil, Int(size), PROT_READ, MAP_SHARED, fd.rawValue, 0), base != MAP_FAILED {
            mappings.withLock { $0.add(UnsafeRawPointer(base), length: size) }
        }
    }

    /// Bytes the file system has allocated to the file (`st_blocks`).
    public func allocatedBytes() -> UInt64 {
        var info = stat()
        return fstat(fd.rawValue, &info) == 0 ? UInt64(info.st_blocks) * 512 : 0
    }
}

/// Read-only mappings of the cache file, newest last.
private struct Mappings: @unchecked Sendable {
    private var all: [(base: UnsafeRawPointer, length: UInt64)] = []

    func current(covering end: UInt64) -> UnsafeRawPointer? {
        guard let newest = all.last, end <= newest.length else { return nil }
        return newest.base
    }

    mutating func add(_ base: UnsafeRawPointer, length: UInt64) {
        all.append((base, length))
    }

    mutating func unmapAll() {
        for mapping in all { munmap(UnsafeMutableRawPointer(mutating: mapping.base), Int(mapping.length)) }
        all = []
    }
}


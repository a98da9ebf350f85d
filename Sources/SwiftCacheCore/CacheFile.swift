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
    /// On tmpfs, reads copy from read-only shared mappings of the file: a
    /// third of the cost of `pread` for warm data. Elsewhere a mapped read of
    /// a failing disk would be SIGBUS instead of EIO, so they use `pread`.
    private let mapsReads: Bool
    private let windows = ConditionLock(MappedWindows())

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
        windows.withLock { $0.unmapAll() }
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
        var done = 0
        while mapsReads && done < buffer.count {
            let position = offset + UInt64(done)
            let within = Int(position & (MappedWindows.size - 1))
            let n = min(buffer.count - done, Int(MappedWindows.size) - within)
            guard let base = windows.withLock({ $0.base(of: position >> MappedWindows.shift, fd: fd) }) else { break }
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                .copyMemory(from: UnsafeRawBufferPointer(start: base + within, count: n))
            done += n
        }
        guard done < buffer.count else { return }
        let position = offset + UInt64(done)
        do { try fd.readAll(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: position) } catch {
            throw CacheError(error, "cache file read of \(buffer.count - done) bytes at \(position)")
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
    }

    /// Bytes the file system has allocated to the file (`st_blocks`).
    public func allocatedBytes() -> UInt64 {
        var info = stat()
        return fstat(fd.rawValue, &info) == 0 ? UInt64(info.st_blocks) * 512 : 0
    }
}

/// Read-only mappings of the cache file on tmpfs, one per 64 MiB window of
/// the file, made when a read first lands in it: address space follows what
/// is read, not the export size (one mapping of a 1 TiB export would be
/// 1 TiB of VmSize). A window may reach past the end of the file: reads stay
/// inside the file, which only grows, so a window never needs remapping.
/// At most 1024 windows (64 GiB), far from the kernel's limit on mappings
/// per process; past that, reads use `pread`.
private struct MappedWindows: @unchecked Sendable {
    static let shift: UInt64 = 26
    static let size: UInt64 = 1 << shift
    static let limit = 1024
    private var bases: [UInt64: UnsafeRawPointer] = [:]

    /// The mapping of window `index`, made now if need be; nil if it cannot be.
    mutating func base(of index: UInt64, fd: FileDescriptor) -> UnsafeRawPointer? {
        if let base = bases[index] { return base }
        guard bases.count < Self.limit,
              let base = mmap(nil, Int(Self.size), PROT_READ, MAP_SHARED, fd.rawValue,
                              off_t(truncatingIfNeeded: index << Self.shift)),
              base != MAP_FAILED else { return nil }
        bases[index] = UnsafeRawPointer(base)
        return UnsafeRawPointer(base)
    }

    mutating func unmapAll() {
        for base in bases.values { munmap(UnsafeMutableRawPointer(mutating: base), Int(Self.size)) }
        bases = [:]
    }
}

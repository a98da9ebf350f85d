// SPDX-License-Identifier: BSD-3-Clause
import CLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The sparse file holding cached blocks, shared by every connection.
///
/// It is unlinked as soon as it is created, so it vanishes with the process.
/// Block N of the export lives at the same offset in the file, which keeps
/// runs of blocks contiguous: one syscall serves a run.
public final class CacheFile: CacheStorage {
    let fd: FileDescriptor
    /// The file system's preferred block size (`st_blksize`).
    public let fileSystemBlockSize: UInt64
    /// Whether large reads may copy from mappings (see `read`): on tmpfs only.
    private let mapsReads: Bool
    private let windows = Lock<MappedWindows>(MappedWindows())

    /// Creates and unlinks the cache file in `directory`.
    public init(directory: FilePath) throws(CacheError) {
        let path: FilePath
        do {
            (fd, path) = try FileDescriptor.makeTemporary(in: directory, prefix: "swiftcache.")
        } catch {
            throw CacheError(error, "cannot create the cache file in \(directory) (set TMPDIR to a writable directory)")
        }
        _ = path.withPlatformString { unlink($0) }
        var info = stat()
        fileSystemBlockSize = fstat(fd.rawValue, &info) == 0 ? UInt64(max(info.st_blksize, 512)) : 4096
        mapsReads = swiftcache_is_tmpfs(fd.rawValue) == 1
    }

    deinit {
        windows.withLock { $0.unmapAll() }
        try? fd.close()
    }

    /// On tmpfs, reads of at least this many bytes copy the pages the file
    /// holds from read-only shared mappings of it: for 1 MiB reads that is
    /// a third less CPU than `pread`, whose per-page work dominates there
    /// (for 4 KiB reads the two measured the same, and `pread` is simpler). Which
    /// pages the file holds, `mincore` says first: touching a hole (plugin
    /// zeroes, zeroed or trimmed blocks) through a mapping would allocate it,
    /// and on a full tmpfs that is SIGBUS, which would kill nbdkit. Holes
    /// are zero-filled, pages out on swap read with `pread`. Blocks being
    /// read are locked, so no hole can be punched in between. Elsewhere
    /// reads use `pread` only: a mapped read of a failing disk would be
    /// SIGBUS instead of EIO.
    static let mappedReadMinimum = 64 << 10

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        guard mapsReads, buffer.count >= Self.mappedReadMinimum else { return try pread(into: buffer, at: offset) }
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let within = Int(position & (MappedWindows.size - 1))
            let piece = UnsafeMutableRawBufferPointer(
                rebasing: buffer[done..<done + min(buffer.count - done, Int(MappedWindows.size) - within)])
            if let window = windows.withLock({ $0.base(of: position >> MappedWindows.shift, fd: fd) }) {
                try copyHeldPages(into: piece, from: window, within: within, at: position)
            } else {
                try pread(into: piece, at: position)
            }
            done += piece.count
        }
    }

    /// Fills `buffer` with the bytes at `within` of the window mapped at
    /// `window` (file offset `position`): pages the file holds from the
    /// mapping, runs of other pages with `pread`.
    private func copyHeldPages(
        into buffer: UnsafeMutableRawBufferPointer, from window: UnsafeRawPointer,
        within: Int, at position: UInt64
    ) throws(CacheError) {
        let page = Self.pageSize, end = within + buffer.count
        var firstPage = within / page
        // mincore's answer, 256 pages (1 MiB) at a time, on the stack.
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { (held) throws(CacheError) in
            while firstPage * page < end {
                let pages = min(held.count, (end - firstPage * page + page - 1) / page)
                let answered =
                    mincore(
                        UnsafeMutableRawPointer(mutating: window + firstPage * page), pages * page,
                        held.baseAddress) == 0
                func isHeld(_ i: Int) -> Bool { answered && held[i] & 1 != 0 }
                var run = 0
                while run < pages {
                    var runEnd = run + 1
                    while runEnd < pages && isHeld(runEnd) == isHeld(run) { runEnd += 1 }
                    let from = max((firstPage + run) * page, within), to = min((firstPage + runEnd) * page, end)
                    let part = UnsafeMutableRawBufferPointer(rebasing: buffer[from - within..<to - within])
                    let partOffset = position + UInt64(from - within)
                    if isHeld(run) {
                        part.copyMemory(from: UnsafeRawBufferPointer(start: window + from, count: part.count))
                    } else if isHole(partOffset..<partOffset + UInt64(part.count)) {
                        part.initializeMemory(as: UInt8.self, repeating: 0)
                    } else {
                        try pread(into: part, at: partOffset)
                    }
                    run = runEnd
                }
                firstPage += pages
            }
        }
    }

    /// Whether the file holds no data in `range` (tmpfs answers SEEK_DATA
    /// from its own page index; a page out on swap counts as data).
    private func isHole(_ range: Range<UInt64>) -> Bool {
        do {
            guard let data = try fd.nextData(from: range.lowerBound) else { return true }
            return data >= range.upperBound
        } catch {
            return false  // no answer: read it
        }
    }

    private static let pageSize = max(Int(sysconf(Int32(_SC_PAGESIZE))), 4096)

    private func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        do { try fd.readAll(into: buffer, at: offset) } catch {
            throw CacheError(error, "cache file read of \(buffer.count) bytes at \(offset)")
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(CacheError) {
        do { try fd.writeAll(buffer, at: offset) } catch {
            throw CacheError(error, "cache file write of \(buffer.count) bytes at \(offset)")
        }
    }

    /// Makes a range read as zeroes: a hole where the file system can punch
    /// one, written zeroes where it cannot.
    public func zero(at offset: UInt64, length: UInt64) throws(CacheError) {
        // swift-format 6.3 writes `catch  where` with two spaces (swiftlang/swift-format#1076).
        // swift-format-ignore
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
    public func discard(at offset: UInt64, length: UInt64) throws(CacheError) {
        do { try fd.punchHole(at: offset, length: length) } catch {
            throw CacheError(error, "cache file punch hole of \(length) bytes at \(offset)")
        }
    }

    /// Grows the file (it never shrinks: blocks past a smaller size stay).
    public func resize(to size: UInt64) throws(CacheError) {
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
/// per process; past that, or if `mmap` fails once, reads use `pread`.
private struct MappedWindows: @unchecked Sendable {
    static let shift: UInt64 = 26
    static let size: UInt64 = 1 << shift
    static let limit = 1024
    private var bases: [UInt64: UnsafeRawPointer] = [:]
    private var mmapFailed = false

    /// The mapping of window `index`, made now if need be; nil if it cannot be.
    mutating func base(of index: UInt64, fd: FileDescriptor) -> UnsafeRawPointer? {
        if let base = bases[index] { return base }
        guard !mmapFailed, bases.count < Self.limit else { return nil }
        guard
            let base = mmap(
                nil, Int(Self.size), PROT_READ, MAP_SHARED, fd.rawValue,
                off_t(truncatingIfNeeded: index << Self.shift)), base != MAP_FAILED
        else {
            mmapFailed = true
            return nil
        }
        bases[index] = UnsafeRawPointer(base)
        return UnsafeRawPointer(base)
    }

    mutating func unmapAll() {
        for base in bases.values { munmap(UnsafeMutableRawPointer(mutating: base), Int(Self.size)) }
        bases = [:]
    }
}

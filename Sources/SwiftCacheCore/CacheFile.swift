#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
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
    }

    deinit { try? fd.close() }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
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

    func resize(to size: UInt64) throws(CacheError) {
        do { try fd.resize(to: Int64(size)) } catch {
            throw CacheError(error as? Errno ?? .ioError, "cache file resize to \(size)")
        }
    }

    /// Bytes the file system has allocated to the file (`st_blocks`).
    public func allocatedBytes() -> UInt64 {
        var info = stat()
        return fstat(fd.rawValue, &info) == 0 ? UInt64(info.st_blocks) * 512 : 0
    }
}

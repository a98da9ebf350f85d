// SPDX-License-Identifier: BSD-3-Clause
// Thin, typed wrappers over the few C calls swift-system does not cover.
// Errors come back as `Errno`; EINTR is retried here and nowhere else.

import CLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs a C call returning -1/errno until it does not fail with EINTR.
@inline(__always)
func retryingOnInterrupt<T: FixedWidthInteger>(_ call: () -> T) throws(Errno) -> T {
    while true {
        let result = call()
        if result != -1 { return result }
        let code = Errno(rawValue: errno)
        if code != .interrupted { throw code }
    }
}

extension FileDescriptor {
    /// Creates a file named `prefix` and six random characters in
    /// `directory` with `mkostemp(O_CLOEXEC)`, and returns its descriptor and path.
    public static func makeTemporary(in directory: FilePath, prefix: String) throws(Errno) -> (FileDescriptor, FilePath)
    {
        var template = directory.appending(prefix + "XXXXXX").withPlatformString {
            Array(
                UnsafeBufferPointer(
                    start: $0, count: strlen($0) + 1))
        }
        let fd = try retryingOnInterrupt {
            template.withUnsafeMutableBufferPointer { swiftcache_mkostemp_cloexec($0.baseAddress!) }
        }
        return (
            FileDescriptor(rawValue: fd), template.withUnsafeBufferPointer { FilePath(platformString: $0.baseAddress!) }
        )
    }

    /// Frees the storage of a byte range, which then reads as zeroes.
    func punchHole(at offset: UInt64, length: UInt64) throws(Errno) {
        _ = try retryingOnInterrupt {
            swiftcache_punch_hole(rawValue, Int64(truncatingIfNeeded: offset), Int64(truncatingIfNeeded: length))
        }
    }

    /// Where the first byte of data at or after `offset` is; nil when only a
    /// hole follows (ENXIO).
    func nextData(from offset: UInt64) throws(Errno) -> UInt64? {
        do {
            let data = try retryingOnInterrupt { swiftcache_seek_data(rawValue, Int64(truncatingIfNeeded: offset)) }
            return UInt64(clamping: data)
        } catch .noSuchAddressOrDevice {
            return nil
        }
    }

    /// `pread` until the buffer is full; bytes past end of file read as zeroes.
    func readAll(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        var done = 0
        while done < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            let n: Int
            do {
                n = try read(fromAbsoluteOffset: Int64(offset) + Int64(done), into: rest)
            } catch {
                throw error as? Errno ?? .ioError
            }
            if n == 0 {
                rest.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            done += n
        }
    }

    /// `pwrite` until every byte is written.
    func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(Errno) {
        do {
            _ = try writeAll(toAbsoluteOffset: Int64(offset), buffer)
        } catch {
            throw error as? Errno ?? .ioError
        }
    }
}

/// Whether a file exists (for `cache-on-read=/PATH`, checked per request).
func fileExists(_ path: FilePath) -> Bool {
    path.withPlatformString { access($0, F_OK) } == 0
}

/// Bytes of physical memory (0 if unknown).
func physicalMemory() -> UInt64 {
    let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
    return pages > 0 && pageSize > 0 ? UInt64(pages) * UInt64(pageSize) : 0
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A heap buffer whose allocation failure is an error (ENOMEM), not a trap:
/// block sizes come from the command line and requests from clients.
final class Buffer {
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int) throws(Errno) {
        guard let memory = malloc(Swift.max(count, 1)) else { throw .noMemory }
        bytes = UnsafeMutableRawBufferPointer(start: memory, count: count)
    }

    static func allocate(_ count: Int) throws(CacheError) -> Buffer {
        do { return try Buffer(count: count) } catch {
            throw CacheError(error, "allocating \(count) bytes")
        }
    }

    deinit { free(bytes.baseAddress) }
}

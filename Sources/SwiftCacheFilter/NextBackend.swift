// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit
import SwiftCacheCore
import SystemPackage

/// What the plugin can do, read once per connection in `.prepare` (nbdkit
/// caches these; reading them early means requests never fail on them).
struct PluginCapabilities {
    /// The export's size as this connection sees it.
    var size: UInt64 = 0
    var canWrite = false
    var canFlush = false
    var canZero = false
    var fuaMode = FUAMode.none
    /// The plugin's block size maximum (0: none).
    var maximumRequest: UInt32 = 0
    /// The plugin's block size minimum (0: none).
    var minimumRequest: UInt32 = 0
}

/// The core's `Backend` over nbdkit's `next` for one request. `next` is only
/// valid during the callback that passed it, so this is never stored. It
/// may be used from write-back threads, which end before the callback does.
struct NextBackend: Backend, @unchecked Sendable {
    let next: UnsafeMutablePointer<nbdkit_next_ops>
    let capabilities: PluginCapabilities

    var size: UInt64 { capabilities.size }
    var canWrite: Bool { capabilities.canWrite }
    var canFlush: Bool { capabilities.canFlush }
    var canZero: Bool { capabilities.canZero }
    var fuaMode: FUAMode { capabilities.fuaMode }
    var maximumRequest: UInt64 {
        capabilities.maximumRequest == 0 ? Engine.maxTransfer : UInt64(capabilities.maximumRequest)
    }
    var minimumRequest: UInt64 { UInt64(max(capabilities.minimumRequest, 1)) }

    private func call(_ body: (UnsafeMutablePointer<Int32>) -> Int32) throws(Errno) {
        var err: Int32 = 0
        if body(&err) == -1 { throw Errno(rawValue: err == 0 ? EIO : err) }
    }

    private func flags(fua: Bool) -> UInt32 { fua ? UInt32(NBDKIT_FLAG_FUA) : 0 }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        try call { next.pointee.pread(next, buffer.baseAddress, UInt32(buffer.count), offset, 0, $0) }
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        try call { next.pointee.pwrite(next, buffer.baseAddress, UInt32(buffer.count), offset, flags(fua: fua), $0) }
    }

    func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        let trim = mayTrim ? UInt32(NBDKIT_FLAG_MAY_TRIM) : 0
        try call { next.pointee.zero(next, UInt32(count), offset, flags(fua: fua) | trim, $0) }
    }

    func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        try call { next.pointee.trim(next, UInt32(count), offset, flags(fua: fua), $0) }
    }

    func flush() throws(Errno) {
        try call { next.pointee.flush(next, 0, $0) }
    }

    func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
        let size = next.pointee.get_size(next)
        guard size >= 0, let list = nbdkit_extents_new(offset, UInt64(size)) else { throw .noMemory }
        defer { nbdkit_extents_free(list) }
        let flags = onlyOne ? UInt32(NBDKIT_FLAG_REQ_ONE) : 0
        try call { next.pointee.extents(next, UInt32(count), offset, flags, list, $0) }
        return (0..<nbdkit_extents_count(list)).map { i in
            let e = nbdkit_get_extent(list, i)
            return Extent(offset: e.offset, length: e.length, type: e.type)
        }
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SwiftCacheCore
import SystemPackage

/// Another nbdkit connection to the same plugin: the same disk, its own
/// `canWrite` (a read-only connection, `nbdkit -r` or a client asking for
/// read-only). Any write, zero or trim through a read-only connection is a
/// violation (nbdkit refuses them).
public struct Connection: Backend {
    public let disk: MemoryBackend
    public let canWrite: Bool
    /// The export's size as this connection saw it when it opened.
    public let size: UInt64
    public let violations = Locked<[String]>([])

    public init(_ disk: MemoryBackend, canWrite: Bool = true, size: UInt64? = nil) {
        self.disk = disk
        self.canWrite = canWrite
        self.size = size ?? disk.size
    }

    public var canFlush: Bool { disk.canFlush }
    public var canZero: Bool { disk.canZero }
    public var fuaMode: FUAMode { disk.fuaMode }
    public var minimumRequest: UInt64 { disk.minimumRequest }
    public var maximumRequest: UInt64 { disk.maximumRequest }

    private func checkWritable(_ what: String, _ offset: UInt64) {
        if !canWrite { violations.withLock { $0.append("\(what) at \(offset) through a read-only connection") } }
    }

    private func checkRange(_ what: String, _ offset: UInt64, _ count: UInt64) {
        if offset + count > size {
            let message = "\(what) of \(count) bytes at \(offset) past this connection's end \(size)"
            violations.withLock { $0.append(message) }
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno) {
        checkRange("read", offset, UInt64(buffer.count))
        try disk.read(into: buffer, at: offset)
    }
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        checkWritable("write", offset)
        checkRange("write", offset, UInt64(buffer.count))
        try disk.write(buffer, at: offset, fua: fua)
    }
    public func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno) {
        checkWritable("zero", offset)
        checkRange("zero", offset, count)
        try disk.zero(count: count, at: offset, fua: fua, mayTrim: mayTrim)
    }
    public func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno) {
        checkWritable("trim", offset)
        checkRange("trim", offset, count)
        try disk.trim(count: count, at: offset, fua: fua)
    }
    public func flush() throws(Errno) { try disk.flush() }
    public func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent] {
        try disk.extents(count: count, at: offset, onlyOne: onlyOne)
    }
}

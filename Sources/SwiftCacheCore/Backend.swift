// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// How the plugin below handles Forced Unit Access.
public enum FUAMode: Sendable, CaseIterable {
    case none, emulate, native
}

/// One extent of block status, as the plugin reports it.
public struct Extent: Equatable, Sendable {
    public static let hole: UInt32 = 1
    public static let zero: UInt32 = 2

    public var offset: UInt64
    public var length: UInt64
    /// `hole` | `zero` bits, as in NBD block status.
    public var type: UInt32

    public init(offset: UInt64, length: UInt64, type: UInt32) {
        self.offset = offset
        self.length = length
        self.type = type
    }
}

/// What the cache needs of the layer below it (nbdkit's `next`, or an
/// in-memory disk in the tests). Every call is for one connection; a
/// backend may be used from several threads at once.
public protocol Backend: Sendable {
    /// The export's size as this connection sees it: the cache never asks
    /// for a byte past it.
    var size: UInt64 { get }
    var canWrite: Bool { get }
    var canFlush: Bool { get }
    var canZero: Bool { get }
    var fuaMode: FUAMode { get }
    /// The plugin's largest request (its block size maximum), if it has one.
    var maximumRequest: UInt64 { get }
    /// The plugin's block size minimum (1 if it has none): write-back keeps
    /// its requests aligned to it.
    var minimumRequest: UInt64 { get }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Errno)
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno)
    /// `mayTrim`: the client allows a hole (no NBD_CMD_FLAG_NO_HOLE); the
    /// cache passes it on as it came and never adds it.
    func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool) throws(Errno)
    func trim(count: UInt64, at offset: UInt64, fua: Bool) throws(Errno)
    func flush() throws(Errno)
    /// Block status from `offset` on, covering at least one byte.
    func extents(count: UInt64, at offset: UInt64, onlyOne: Bool) throws(Errno) -> [Extent]
}

extension Backend {
    public var maximumRequest: UInt64 { Engine.maxTransfer }
    public var minimumRequest: UInt64 { 1 }

    /// The largest request the cache sends the plugin.
    var transferLimit: UInt64 { min(Engine.maxTransfer, maximumRequest) }

    /// A plugin read of any length, in requests nbdkit accepts.
    func readAll(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError) {
        var done = 0
        while done < buffer.count {
            let n = min(buffer.count - done, Int(transferLimit))
            do {
                try read(
                    into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n]),
                    at: offset + UInt64(done))
            } catch {
                throw CacheError(error, "plugin read of \(n) bytes at \(offset + UInt64(done))")
            }
            done += n
        }
    }

    /// A plugin write of any length, in requests the plugin accepts.
    func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(Errno) {
        var done = 0
        while done < bytes.count {
            let n = min(bytes.count - done, Int(transferLimit))
            try write(UnsafeRawBufferPointer(rebasing: bytes[done..<done + n]), at: offset + UInt64(done), fua: fua)
            done += n
        }
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import Synchronization
import SystemPackage

/// flush: every block dirty when the flush starts is written back to the
/// plugin (see `BlockStore.writeBackAll`), then the plugin is flushed. A
/// block that fails to write back stays dirty; the flush reports the first
/// error.
extension Engine {
    public func flush(backend: some Backend) throws(CacheError) {
        try writeBackAndFlush(backend: counting(.flush, backend))
    }

    /// The flush itself, also run after a write whose FUA becomes a flush.
    func writeBackAndFlush(backend: some Backend) throws(CacheError) {
        guard config.mode != .unsafe else { return }
        var firstError = blocks.writeBackAll(backend: backend)
        if backend.canFlush {
            do { try backend.flush() } catch {
                firstError = firstError ?? CacheError(error, "plugin flush")
            }
        }
        if let firstError { throw firstError }
    }

    /// A connection is closing: in writeback mode, when it is the last one
    /// open with writes no flush has covered, every dirty block goes to the
    /// plugin now (without a plugin flush, which the client never asked
    /// for), so a client that never flushes, or a plugin that cannot flush,
    /// does not strand acknowledged writes in the cache. A connection that
    /// wrote nothing since its last flush strands nothing by closing, and
    /// while another writer is open, that writer's flush or close writes
    /// everything back (so a reader's close, or the first of several
    /// writers to finish, costs the others no write-back midway). unsafe
    /// keeps dirty blocks; a read-only connection cannot write them.
    public func connectionClosing(_ writes: ConnectionWrites, backend: some Backend) throws(CacheError) {
        guard writes.settle(), openWriters.subtract(1, ordering: .acquiringAndReleasing).newValue == 0,
            config.mode == .writeback, backend.canWrite, blocks.dirtyBlockCount > 0
        else { return }
        if let error = blocks.writeBackAll(backend: CountedBackend(plugin: backend, statistics: statistics)) {
            throw error
        }
    }

    /// A write or zero request of this connection has ended (its blocks
    /// stored in the cache, or some of them if it failed).
    public func connectionWrote(_ writes: ConnectionWrites) {
        if writes.mark() { openWriters.add(1, ordering: .acquiringAndReleasing) }
    }

    /// The connection is about to flush: the flush writes back every block
    /// dirty when it starts, so a write that ended before now is covered
    /// (one that ends after marks the connection again). A flush that
    /// fails calls `connectionWrote` again.
    public func connectionFlushing(_ writes: ConnectionWrites) {
        if writes.settle() { openWriters.subtract(1, ordering: .acquiringAndReleasing) }
    }

    /// Dirty blocks never written back, and the bytes they hold: what is
    /// lost if the cache goes now.
    public var unwritten: (blocks: UInt64, bytes: UInt64) { blocks.dirtyAccount }
}

/// Whether one connection has written since its last flush (see
/// `Engine.connectionClosing`).
public final class ConnectionWrites: Sendable {
    private let unflushed = Atomic(false)

    public init() {}

    /// Sets the mark; whether it was clear.
    fileprivate func mark() -> Bool {
        !unflushed.load(ordering: .relaxed)
            && unflushed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    /// Clears the mark; whether it was set.
    fileprivate func settle() -> Bool {
        unflushed.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged
    }
}

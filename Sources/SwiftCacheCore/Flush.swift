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

    /// A connection is closing: in writeback mode every dirty block goes to
    /// the plugin now (without a plugin flush, which the client never asked
    /// for), so a client that never flushes, or a plugin that cannot flush,
    /// does not strand acknowledged writes in the cache. unsafe keeps them;
    /// a read-only connection cannot write them. The caller skips this
    /// for a connection that wrote nothing since its last flush: its close
    /// strands nothing (the writers' own closes write theirs back).
    public func connectionClosing(backend: some Backend) throws(CacheError) {
        guard config.mode == .writeback, backend.canWrite, blocks.dirtyBlockCount > 0 else { return }
        if let error = blocks.writeBackAll(backend: CountedBackend(plugin: backend, statistics: statistics)) {
            throw error
        }
    }

    /// Dirty blocks never written back, and the bytes they hold: what is
    /// lost if the cache goes now.
    public var unwritten: (blocks: UInt64, bytes: UInt64) { blocks.dirtyAccount }
}

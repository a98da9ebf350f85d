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
}

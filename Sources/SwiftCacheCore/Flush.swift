import SystemPackage

/// flush: every block dirty when the flush starts is written back to the
/// plugin, one plugin request per run of dirty blocks, then the plugin is
/// flushed. A block that fails to write back stays dirty; the flush reports
/// the first error.
extension Engine {
    public func flush(backend: some Backend) throws(CacheError) {
        guard config.mode != .unsafe else { return }
        var firstError = writeBackAll(backend: backend)
        if backend.canFlush {
            do { try backend.flush() } catch {
                firstError = firstError ?? CacheError(error, "plugin flush")
            }
        }
        if let firstError { throw firstError }
    }

    private func writeBackAll(backend: some Backend) -> CacheError? {
        // nbdkit forbids writing to the plugin through a read-only context.
        guard backend.canWrite else {
            return dirtyBlockCount == 0 ? nil : CacheError(.readOnlyFileSystem, "cannot write back dirty blocks through a read-only connection")
        }
        let runLimit = max(1, Engine.maxTransfer >> blockShift)
        var firstError: CacheError?
        var staging: Buffer?
        var cursor: UInt64 = 0
        while let run = state.withLock({ $0.blocks.nextDirtyRun(from: cursor, limit: runLimit) }) {
            // Shared: readers may go on; writers and reclaim wait for us.
            lock(run, exclusive: false)
            let (dirtyRuns, exportSize) = state.withLock { s in
                // Only inside `run`: blocks beyond it are not ours to write back.
                (s.blocks.dirtyRuns(in: run), s.exportSize)
            }
            for sub in dirtyRuns {
                do {
                    if staging == nil {
                        staging = try allocate(Int(min(runLimit << blockShift, exportSize)))
                    }
                    try writeBack(sub, exportSize: exportSize, staging: staging!, backend: backend)
                    state.withLock { $0.blocks.set(sub, to: .clean) }
                } catch {
                    debug("write back of blocks \(sub) failed: \(error)")
                    firstError = firstError ?? error
                }
            }
            unlock(run, exclusive: false)
            cursor = run.upperBound
        }
        return firstError
    }

    /// Copies dirty `blocks` (held by the caller) from the cache file to the plugin.
    func writeBack(_ blocks: Range<UInt64>, exportSize: UInt64, staging: Buffer, backend: some Backend) throws(CacheError) {
        let span = bytes(of: blocks, exportSize: exportSize)
        let data = UnsafeMutableRawBufferPointer(rebasing: staging.bytes[..<span.count])
        debug.blocks("write back", blocks)
        try file.read(into: data, at: span.lowerBound)
        do {
            try writeInPieces(UnsafeRawBufferPointer(data), to: backend, at: span.lowerBound, fua: false, maxTransfer: Engine.maxTransfer)
        } catch {
            throw CacheError(error, "plugin write of \(span.count) bytes at \(span.lowerBound) (write back)")
        }
    }
}

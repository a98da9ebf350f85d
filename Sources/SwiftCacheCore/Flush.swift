import SystemPackage

/// flush: every block dirty when the flush starts is written back to the
/// plugin, then the plugin is flushed (and the cache brought back under
/// cache-max-size, if failed write-backs kept it over). Write-back sends
/// one plugin request per run of dirty blocks, and several runs at once
/// when nbdkit's thread model allows. A block that fails to write back
/// stays dirty; the flush reports the first error.
extension Engine {
    public func flush(backend: some Backend) throws(CacheError) {
        guard config.mode != .unsafe else { return }
        var firstError = writeBackAll(backend: backend)
        // Blocks that could not be written back before may have kept the
        // cache over cache-max-size: now clean, they can go.
        reclaimIfNeeded(owned: 0..<0, backend: backend)
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
        let runLimit = max(1, backend.transferLimit >> blockShift)
        let firstError = ConditionLock<CacheError?>(nil)
        var cursor: UInt64 = 0
        while true {
            // Runs in batches, so memory stays small however scattered the dirty blocks.
            let batch: [Range<UInt64>] = state.withLock { s in
                var runs: [Range<UInt64>] = []
                while runs.count < 1024, let run = s.blocks.nextDirtyRun(from: cursor, limit: runLimit) {
                    runs.append(run)
                    cursor = run.upperBound
                }
                return runs
            }
            guard !batch.isEmpty else { break }
            concurrently(batch.count, threads: writeBackThreads) { i in
                self.lock(batch[i], exclusive: true)
                if let error = self.writeBackHeld(batch[i], backend: backend) {
                    firstError.withLock { $0 = $0 ?? error }
                }
                self.unlock(batch[i], exclusive: true)
            }
        }
        return firstError.withLock { $0 }
    }

    /// Writes back the dirty and partial blocks of `blocks` (held
    /// exclusively). A partial block holding one range writes just that and
    /// leaves the cache; one holding more, or a range not aligned to the
    /// plugin's block size minimum, is completed from the plugin first (one
    /// read, then it joins the run) — whichever costs fewer requests.
    func writeBackHeld(_ blocks: Range<UInt64>, backend: some Backend) -> CacheError? {
        var firstError: CacheError?
        let (exportSize, partials) = state.withLock { s in
            (s.exportSize, blocks.compactMap { block in s.blocks.held(block).map { (block, $0) } })
        }
        for (block, held) in partials {
            do throws(CacheError) {
                let start = block << blockShift, minimum = backend.minimumRequest
                // Clamped: the export may have shrunk since.
                let single = held.ranges.count == 1 ? held.ranges[0] : nil
                let span = single.map { (start + UInt64($0.lowerBound)..<start + UInt64($0.upperBound)).clamped(to: 0..<exportSize) }
                if let span, span.lowerBound % minimum == 0, span.upperBound % minimum == 0 || span.upperBound == exportSize {
                    try writeBack(span, backend: backend)
                    drop([block])
                } else {
                    try complete(block, exportSize: exportSize, backend: backend)
                }
            } catch {
                firstError = firstError ?? error
            }
        }
        for run in state.withLock({ $0.blocks.wholeDirtyRuns(in: blocks) }) {
            do throws(CacheError) {
                try writeBack(bytes(of: run, exportSize: exportSize), backend: backend)
                debug.blocks("written back:", run)
                state.withLock { $0.blocks.set(run, to: .clean) }
            } catch {
                firstError = firstError ?? error
            }
        }
        return firstError
    }

    /// Copies bytes `span` from the cache file to the plugin.
    private func writeBack(_ span: Range<UInt64>, backend: some Backend) throws(CacheError) {
        let staging = try allocate(span.count)
        try file.read(into: staging.bytes, at: span.lowerBound)
        do {
            try writeInPieces(UnsafeRawBufferPointer(staging.bytes), to: backend, at: span.lowerBound, fua: false)
        } catch {
            throw CacheError(error, "plugin write of \(span.count) bytes at \(span.lowerBound) (write back)")
        }
    }
}

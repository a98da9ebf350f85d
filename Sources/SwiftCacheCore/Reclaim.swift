import SystemPackage

/// cache-max-size: once the cached bytes pass the high threshold, least
/// recently used blocks are dropped until they are under the low threshold.
/// A dirty block is written back to the plugin before it is dropped, so the
/// limit never costs data.
extension Engine {
    /// Called after a request adds blocks. `owned` are blocks the calling
    /// request holds exclusively and has finished with: they may go too.
    /// Blocks other requests hold are skipped, never waited for.
    func reclaimIfNeeded(owned: Range<UInt64>, backend: some Backend) {
        guard let high = highThresholdBytes, let low = lowThresholdBytes else { return }
        let start = state.withLock { s in
            guard !s.reclaiming, s.blocks.occupiedCount << blockShift > high else { return false }
            s.reclaiming = true
            return true
        }
        guard start else { return }
        defer { state.update { $0.reclaiming = false } }

        while true {
            let pick: (block: UInt64, state: BlockState)? = state.withLock { s in
                guard s.blocks.occupiedCount << blockShift > low else { return nil }
                let locks = s.locks
                let canWrite = backend.canWrite
                let dirty = s.blocks.dirty
                guard let block = s.lru.victim(s.blocks, isEvictable: { block in
                    (owned.contains(block) || !locks.isLocked(block)) && (canWrite || !dirty[block])
                }) else { return nil }
                if !owned.contains(block) { s.locks.acquire(block..<block + 1, exclusive: true) }
                return (block, s.blocks[block])
            }
            guard let pick else { return }
            let victim = pick.block..<pick.block + 1
            var written = true
            if pick.state == .dirty || pick.state == .partial, let error = writeBackHeld(victim, backend: backend) {
                debug("reclaim: keeping dirty block \(pick.block): \(error)")
                written = false
            }
            // Write-back may already have dropped a partial block.
            if written && state.withLock({ $0.blocks[pick.block] != .notCached }) {
                debug("reclaim block \(pick.block)")
                drop([pick.block])
            }
            if !owned.contains(pick.block) { unlock(victim, exclusive: true) }
            // A block that cannot be written back ends this round rather than
            // being picked again and again.
            if !written { return }
        }
    }
}

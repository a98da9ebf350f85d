// SPDX-License-Identifier: BSD-3-Clause
/// cache-max-size: room in the cache is reserved before blocks are stored,
/// so the limit holds at every moment, whatever the number and size of the
/// requests in flight. When there is not enough, the least recently used
/// blocks are dropped until the cache is under the low threshold; dirty ones
/// are written back first, coalesced into runs as a flush does, so the
/// limit never costs data. A full disk under the cache file (ENOSPC,
/// EDQUOT) makes room the same way (`makeRoom`), limit or not.
extension BlockStore {
    /// Room for the blocks of `blocks` that are not cached: the reservation's
    /// `chunk` is the longest prefix of `blocks` it covers (all of it when
    /// there is no limit; empty when even reclaim finds no room). Blocks of
    /// the caller's own are never reclaimed.
    func reserve(_ blocks: Range<UInt64>, backend: some Backend) -> Reservation {
        reserve(blocks, reclaimable: 0..<0, backend: backend)
    }

    /// Like `reserve(_:backend:)`, but `owned`, blocks the caller holds and
    /// has finished with, may be reclaimed too.
    func reserve(
        _ blocks: Range<UInt64>, reclaimable owned: Range<UInt64>, in held: borrowing HeldBlocks<Exclusive>,
        backend: some Backend
    ) -> Reservation {
        reserve(blocks, reclaimable: owned, backend: backend)
    }

    private func reserve(
        _ blocks: Range<UInt64>, reclaimable owned: Range<UInt64>,
        backend: some Backend
    ) -> Reservation {
        guard let limit else { return Reservation(blocks: 0, chunk: blocks, store: nil) }
        let wanted = unoccupiedCount(in: blocks)
        var attempt = 0
        while true {
            // Every export's cache counts: cache-max-size limits them together.
            let step: ReserveStep = budget.withTotal { total in
                state.withLock { s in
                    let room = total < limit.high ? limit.high - total : 0
                    // Take what there is; reclaim only when there is none, and
                    // after a reclaim (ours or another's), take what it left.
                    if room > 0 || wanted == 0 || attempt == 2 {
                        let granted = min(room, wanted)
                        s.reserved += granted
                        return .granted(granted)
                    }
                    if s.reclaiming { return .wait }
                    s.reclaiming = true
                    // Down to the low threshold once the wanted blocks are in (or empty).
                    return .reclaim(total - (limit.low - min(wanted, limit.low)))
                }
            }
            switch step {
            case .granted(let granted):
                return Reservation(blocks: granted, chunk: prefix(of: blocks, unoccupiedAtMost: granted), store: self)
            case .reclaim(let excess):
                // Other exports' caches give their clean blocks first (the
                // blocks of one being used now are likely the more recent;
                // only their own connections can write their dirty ones
                // back); this one gives the rest.
                let dropped = budget.dropClean(excess, except: self)
                reclaim(excess - dropped, owned: owned, backend: backend)
                state.withLock(signalling: .reclaimEnded) { $0.reclaiming = false }
                attempt = 2
            case .wait:
                state.withLock(waitingFor: .reclaimEnded, until: { !$0.reclaiming }) { _ in }
                attempt += 1
            }
        }
    }

    /// The cache file's disk is full: frees a quarter of the cache's blocks
    /// (at least twice `wanted`) as reclaim does, unless another thread is
    /// reclaiming already (then it waits for that instead). Blocks of the
    /// caller's own are kept, except `owned`, which it has finished with.
    func makeRoom(
        for wanted: UInt64, reclaimable owned: Range<UInt64>, in held: borrowing HeldBlocks<Exclusive>,
        backend: some Backend
    ) {
        let count: UInt64? = state.withLock { s in
            guard !s.reclaiming else { return nil }
            s.reclaiming = true
            let occupied = s.map.occupiedCount
            return min(occupied, max(2 * wanted, occupied / 4))
        }
        guard let count else {
            state.withLock(waitingFor: .reclaimEnded, until: { !$0.reclaiming }) { _ in }
            return
        }
        reclaim(count, owned: owned, backend: backend)
        state.withLock(signalling: .reclaimEnded) { $0.reclaiming = false }
    }

    /// Drops `count` blocks of this cache, least recently used first when
    /// cache-max-size keeps that order: victims other requests hold are
    /// skipped, never waited for; dirty ones this connection cannot write
    /// back (read-only, or past its end) are skipped too. Ends early when a
    /// round frees nothing or a write-back fails. Returns how many it freed.
    @discardableResult
    private func reclaim(_ count: UInt64, owned: Range<UInt64>, backend: some Backend) -> UInt64 {
        let runLimit = max(1, backend.transferLimit >> geometry.shift)
        var left = count
        defer { debug("reclaim: freed \(count - left) of \(count) blocks") }
        while left > 0 {
            let victims: [UInt64] = state.withLock { s in
                let canWrite = backend.canWrite
                let reach = geometry.reach(connectionSize: backend.size)
                let locks = s.locks, map = s.map
                return takeVictims(left, in: &s, holding: owned) { block in
                    (owned.contains(block) || !locks.isLocked(block))
                        && (!map[block].isDirty || canWrite && reach.contains(block))
                }
            }
            guard !victims.isEmpty else { return count - left }
            let runs = runs(of: victims, limit: runLimit)
            let dirtyRuns = state.withLock { s in runs.filter { run in run.contains { s.map[$0].isDirty } } }
            let failure = writeBack(dirtyRuns, backend: backend, lockingEach: false)
            if let failure { debug("reclaim: keeping dirty blocks: \(failure)") }
            // Write-back dropped partial blocks already; failed ones stay dirty.
            let (clean, stillDirty) = state.withLock { s in
                (victims.filter { s.map[$0] == .clean }, victims.filter { s.map[$0].isDirty }.count)
            }
            debug.blocks("reclaim:", clean)
            dropUnchecked(clean)
            statistics.reclaimed(blocks: victims.count - stillDirty)
            state.withLock(signalling: .blocksReleased) { s in
                for block in victims where !owned.contains(block) {
                    s.locks.release(block..<block + 1, exclusive: true)
                }
            }
            left -= min(left, UInt64(victims.count - stillDirty))
            // A round that freed nothing would only pick the same blocks again.
            if failure != nil || stillDirty == victims.count { return count - left }
        }
        return count
    }

    /// Drops up to `count` clean blocks no request holds, least recently
    /// used first, for another export's cache that needs room under the
    /// cache-max-size they share; dirty blocks stay (only a connection to
    /// this export can write them back). Returns how many it dropped.
    func dropClean(_ count: UInt64) -> UInt64 {
        let victims: [UInt64] = state.withLock { s in
            let locks = s.locks, map = s.map
            return takeVictims(count, in: &s, holding: 0..<0) { !locks.isLocked($0) && !map[$0].isDirty }
        }
        debug.blocks("reclaim for another export:", victims)
        dropUnchecked(victims)
        statistics.reclaimed(blocks: victims.count)
        state.withLock(signalling: .blocksReleased) { s in
            for block in victims { s.locks.release(block..<block + 1, exclusive: true) }
        }
        return UInt64(victims.count)
    }

    /// Up to `count` blocks with storage that `isEvictable` accepts, least
    /// recently used first when cache-max-size keeps that order (else one
    /// lap of the map from where the last search stopped), locked for the
    /// caller except those it holds already (`held`).
    private func takeVictims(
        _ count: UInt64, in s: inout State, holding held: Range<UInt64>,
        isEvictable: (UInt64) -> Bool
    ) -> [UInt64] {
        let map = s.map
        let chosen =
            limit != nil
            ? s.lru.victims(count, in: map, isEvictable: isEvictable)
            : map.victims(count, hand: &s.reclaimHand, isEvictable: isEvictable)
        for block in chosen where !held.contains(block) { s.locks.acquire(block..<block + 1, exclusive: true) }
        return chosen
    }
}

/// What a request looking for room does next.
private enum ReserveStep {
    case granted(UInt64)
    /// Reclaim this many blocks (the caches' total is that far above the target).
    case reclaim(UInt64)
    case wait
}

import SystemPackage

/// pwrite, zero and trim.
///
/// writeback and unsafe keep written blocks as dirty; writethrough (and a
/// FUA write in writeback) send the client's bytes to the plugin first and
/// keep clean copies. Either way, state only changes once the bytes are where
/// the state says: a failed call never leaves new data marked clean.
extension Engine {
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool, backend: some Backend) throws(CacheError) {
        try store(.data(data), at: offset, fua: fua, backend: backend)
    }

    /// Like a write of zeroes. FAST_ZERO fails with ENOTSUP before anything
    /// changes: the cache cannot promise it is faster than writing.
    public func zero(count: UInt64, at offset: UInt64, fua: Bool, fastZero: Bool, backend: some Backend) throws(CacheError) {
        if fastZero { throw CacheError(.notSupported, "fast zero is not supported by the cache") }
        try store(.zeroes(count: count), at: offset, fua: fua, backend: backend)
    }

    private func store(_ payload: Payload, at offset: UInt64, fua requestedFUA: Bool, backend: some Backend) throws(CacheError) {
        let count = payload.count
        guard count > 0 else { return }
        let exportSize = try checkBounds(offset: offset, count: count)
        // FUA that the plugin only emulates, or that unsafe ignores, becomes
        // a flush after the write (one flush instead of one per block).
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        let fua = requestedFUA && !flushAfter
        let locked = blocks(covering: offset, count: count)
        lock(locked, exclusive: true)
        do {
            if config.mode == .writethrough || fua {
                try storeThrough(payload, at: offset, locked: locked, fua: fua, exportSize: exportSize, backend: backend)
            } else {
                try storeBack(payload, at: offset, locked: locked, exportSize: exportSize, backend: backend)
            }
        } catch {
            unlock(locked, exclusive: true)
            throw error
        }
        unlock(locked, exclusive: true)
        if flushAfter { try flush(backend: backend) }
    }

    /// Whether `block` is only partly inside `request`.
    private func isPartial(_ block: UInt64, _ request: Range<UInt64>, exportSize: UInt64) -> Bool {
        bytes(of: block..<block + 1, exportSize: exportSize).clamped(to: request) != bytes(of: block..<block + 1, exportSize: exportSize)
    }

    /// writeback/unsafe: the blocks become dirty in the cache. A partial block
    /// the cache does not hold is first read from the plugin.
    private func storeBack(_ payload: Payload, at offset: UInt64, locked: Range<UInt64>,
                           exportSize: UInt64, backend: some Backend) throws(CacheError) {
        let request = offset..<offset + payload.count
        let edges = Set([locked.lowerBound, locked.upperBound - 1].filter { isPartial($0, request, exportSize: exportSize) })
        var next = locked.lowerBound
        while next < locked.upperBound {
            let chunk = next..<next + headroom(upTo: locked.upperBound - next)
            let before = state.withLock { s in chunk.map { s.blocks[$0] } }
            for edge in edges where chunk.contains(edge) && before[Int(edge - chunk.lowerBound)] == .notCached {
                debug.blocks("read-modify-write:", [edge])
                let span = bytes(of: edge..<edge + 1, exportSize: exportSize)
                let staging = try allocate(span.count)
                try readPlugin(into: staging.bytes, at: span.lowerBound, backend: backend)
                try file.write(UnsafeRawBufferPointer(staging.bytes), at: span.lowerBound)
            }
            let span = bytes(of: chunk, exportSize: exportSize).clamped(to: request)
            do {
                try payload.store((span.lowerBound - offset)..<(span.upperBound - offset), in: file, at: span.lowerBound)
            } catch {
                // Clean copies may now hold some new bytes: they no longer match the plugin.
                drop(chunk.filter { before[Int($0 - chunk.lowerBound)] == .clean })
                throw error
            }
            debug.blocks("write to the cache (dirty):", chunk)
            mark(chunk, .dirty)
            next = chunk.upperBound
            reclaimIfNeeded(owned: locked.lowerBound..<next, backend: backend)
        }
    }

    /// writethrough, or FUA: the plugin gets the client's bytes as they are,
    /// then cached copies are brought up to date. Wholly written blocks become
    /// clean copies; a partly written block is updated only if already cached
    /// (no plugin read is needed for it).
    private func storeThrough(_ payload: Payload, at offset: UInt64, locked: Range<UInt64>, fua: Bool,
                              exportSize: UInt64, backend: some Backend) throws(CacheError) {
        let request = offset..<offset + payload.count
        debug.blocks("write through to the plugin:", locked)
        do {
            try payload.send(to: backend, at: offset, fua: fua, maxTransfer: Engine.maxTransfer)
        } catch {
            // The plugin may hold part of the new bytes: clean copies are suspect.
            let suspect = state.withLock { s in locked.filter { s.blocks[$0] == .clean } }
            drop(suspect)
            throw CacheError(error, "plugin write of \(payload.count) bytes at \(offset)")
        }
        var first = locked.lowerBound, end = locked.upperBound
        let held = state.withLock { s in (s.blocks.cached[first], s.blocks.cached[end - 1]) }
        if isPartial(first, request, exportSize: exportSize) && !held.0 { first += 1 }
        if end > first && isPartial(end - 1, request, exportSize: exportSize) && !held.1 { end -= 1 }
        var next = first
        while next < end {
            let chunk = next..<next + headroom(upTo: end - next)
            let span = bytes(of: chunk, exportSize: exportSize).clamped(to: request)
            do {
                try payload.store((span.lowerBound - offset)..<(span.upperBound - offset), in: file, at: span.lowerBound)
            } catch {
                // Keep only dirty blocks the write covered in part: their other
                // bytes exist nowhere else. Everything else reads from the plugin.
                let stale = state.withLock { s in
                    chunk.filter { s.blocks[$0] != .dirty || !isPartial($0, request, exportSize: exportSize) }
                }
                drop(stale)
                throw error
            }
            state.withLock { s in
                for block in chunk where !isPartial(block, request, exportSize: exportSize) { s.blocks[block] = .clean }
                if config.maxSize != nil { s.lru.touch(chunk) }
            }
            next = chunk.upperBound
            reclaimIfNeeded(owned: locked.lowerBound..<next, backend: backend)
        }
    }

    /// Trim goes to the plugin; blocks it wholly covers are dropped from the
    /// cache, and so are clean blocks it covers in part (the plugin's copy may
    /// have changed under them). Partly covered dirty blocks stay dirty.
    public func trim(count: UInt64, at offset: UInt64, fua requestedFUA: Bool, backend: some Backend) throws(CacheError) {
        guard count > 0 else { return }
        let exportSize = try checkBounds(offset: offset, count: count)
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        let request = offset..<offset + count
        let locked = blocks(covering: offset, count: count)
        lock(locked, exclusive: true)
        var failure: CacheError?
        do {
            try backend.trim(count: count, at: offset, fua: requestedFUA && !flushAfter)
        } catch {
            failure = CacheError(error, "plugin trim of \(count) bytes at \(offset)")
        }
        let stale = state.withLock { s in
            locked.filter { block in
                let st = s.blocks[block]
                return st == .clean || (st == .dirty && failure == nil && !isPartial(block, request, exportSize: exportSize))
            }
        }
        debug.blocks("trim: drop", stale)
        drop(stale)
        unlock(locked, exclusive: true)
        if let failure { throw failure }
        if flushAfter { try flush(backend: backend) }
    }
}

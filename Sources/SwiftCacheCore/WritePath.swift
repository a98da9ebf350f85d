import SystemPackage

/// pwrite, zero and trim.
///
/// writeback and unsafe keep written blocks as dirty, and a write never
/// reads the plugin: a block written in part is kept as a partial block.
/// writethrough (and a FUA write in writeback) also send the client's bytes
/// to the plugin, and the copies become clean once it has them. Either way a
/// block is only marked clean when the plugin holds its bytes: a failed call
/// never leaves new data marked clean.
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
        let write = BlockWrite(engine: self, request: offset..<offset + count, exportSize: exportSize)
        lock(write.locked, exclusive: true)
        do {
            if config.mode == .writethrough || fua {
                try storeThrough(payload, write, fua: fua, backend: backend)
            } else {
                try storeBack(payload, write, backend: backend)
            }
        } catch {
            unlock(write.locked, exclusive: true)
            throw error
        }
        unlock(write.locked, exclusive: true)
        if flushAfter { try flush(backend: backend) }
    }

    /// writeback/unsafe: `blocks` (all the write's blocks unless said) become
    /// dirty in the cache; a block the write covers only in part and the
    /// cache does not hold whole becomes (or stays) partial, unless that would
    /// pass the partial limits, in which case it is completed from the plugin first.
    private func storeBack(_ payload: Payload, _ write: BlockWrite, blocks: Range<UInt64>? = nil,
                           backend: some Backend) throws(CacheError) {
        let blocks = blocks ?? write.locked
        var next = blocks.lowerBound
        while next < blocks.upperBound {
            let chunk = next..<next + headroom(upTo: blocks.upperBound - next)
            let before = state.withLock { s in chunk.map { s.blocks[$0] } }
            let edges = write.edges.filter { edge in
                chunk.contains(edge) && [.notCached, .partial].contains(before[Int(edge - chunk.lowerBound)])
            }
            // Both edges are checked in one step, so that together they keep to the limits.
            let partial = state.withLock { s in s.blocks.holdable(edges.map { ($0, write.part(of: $0)) }) }
            for edge in edges where !partial.contains(edge) {
                try complete(edge, exportSize: write.exportSize, backend: backend)
            }
            let span = write.bytes(of: chunk)
            do {
                try payload.store(write.payloadRange(span), in: file, at: span.lowerBound)
            } catch {
                // Clean copies may now hold some new bytes: they no longer match the plugin.
                drop(chunk.filter { before[Int($0 - chunk.lowerBound)] == .clean })
                throw error
            }
            debug.blocks("write to the cache (dirty):", chunk)
            state.withLock { s in
                for block in chunk {
                    if partial.contains(block) {
                        s.blocks.hold(write.part(of: block), in: block, length: write.length(of: block))
                    } else {
                        s.blocks[block] = .dirty
                    }
                }
                if config.maxSize != nil { s.lru.touch(chunk) }
            }
            next = chunk.upperBound
            reclaimIfNeeded(owned: write.locked.lowerBound..<next, backend: backend)
        }
    }

    /// writethrough, or FUA: the plugin gets the client's bytes as they are,
    /// one request per client request. Meanwhile the cache stores them as a
    /// writeback write would, as dirty. A partly written block the cache
    /// does not hold at all is read from the plugin first in writethrough
    /// (read-modify-write, so the cache keeps what was written), and left
    /// out of the cache for a FUA write in writeback (which never reads the
    /// plugin) or when that read fails. Once the plugin has the bytes, the
    /// blocks it matches again are clean; if it or the cache file fails, the
    /// blocks that were not newer than it already are dropped.
    private func storeThrough(_ payload: Payload, _ write: BlockWrite, fua: Bool, backend: some Backend) throws(CacheError) {
        debug.blocks("write through to the plugin:", write.locked)
        let before = state.withLock { s in write.locked.map { s.blocks[$0] } }
        func stateBefore(_ block: UInt64) -> BlockState { before[Int(block - write.locked.lowerBound)] }
        let unheldEdges = write.edges.filter { stateBefore($0) == .notCached }
        // Read-modify-write first, as the C filter does. Keeping the block is
        // optional: if the read fails the block is left out of the cache and
        // the write goes on (a rewrite of a bad sector must still work).
        var completed: [UInt64] = []
        if config.mode == .writethrough {
            for edge in unheldEdges {
                do throws(CacheError) {
                    try complete(edge, exportSize: write.exportSize, backend: backend)
                    completed.append(edge)
                } catch {
                    debug("write through: block \(edge) left out of the cache: \(error)")
                }
            }
        }
        var blocks = write.locked
        let leftOut = unheldEdges.filter { !completed.contains($0) }
        if leftOut.contains(blocks.lowerBound) { blocks = blocks.dropFirst() }
        if let last = blocks.last, leftOut.contains(last) { blocks = blocks.dropLast() }
        let stored = blocks

        // A large write copies into the cache on a thread of our own while the
        // plugin takes it: nbdkit allows this under its parallel thread model,
        // and the thread ends before we return. Below the threshold the copy
        // costs less than starting a thread.
        let pluginError = ConditionLock<Errno?>(nil), cacheError = ConditionLock<CacheError?>(nil)
        nonisolated(unsafe) let bytes = payload
        let threads = writeBackThreads > 1 && payload.count >= Engine.overlapThreshold ? 2 : 1
        concurrently(2, threads: threads) { task in
            if task == 0 {
                do throws(Errno) {
                    try bytes.send(to: backend, at: write.request.lowerBound, fua: fua)
                } catch {
                    pluginError.withLock { $0 = error }
                }
            } else if !stored.isEmpty {
                do throws(CacheError) { try self.storeBack(bytes, write, blocks: stored, backend: backend) } catch {
                    cacheError.withLock { $0 = error }
                }
            }
        }
        // Either failure may leave old bytes in blocks the cache had as
        // clean: only blocks that were already newer than the plugin keep
        // what the cache has; the rest read from the plugin again.
        let failure: CacheError? = pluginError.withLock { $0 }.map {
            CacheError($0, "plugin write of \(payload.count) bytes at \(write.request.lowerBound)")
        } ?? cacheError.withLock { $0 }
        if let failure {
            drop(stored.filter { [.clean, .notCached].contains(stateBefore($0)) })
            throw failure
        }
        state.withLock { s in
            for block in stored where s.blocks[block] == .dirty
                && (!write.edges.contains(block) || stateBefore(block) == .clean || completed.contains(block)) {
                s.blocks[block] = .clean
            }
        }
    }

    /// Trim goes to the plugin; blocks it wholly covers are dropped from the
    /// cache, and so are clean blocks it covers in part (the plugin's copy may
    /// have changed under them). Partly covered dirty blocks stay dirty.
    public func trim(count: UInt64, at offset: UInt64, fua requestedFUA: Bool, backend: some Backend) throws(CacheError) {
        guard count > 0 else { return }
        let exportSize = try checkBounds(offset: offset, count: count)
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        let write = BlockWrite(engine: self, request: offset..<offset + count, exportSize: exportSize)
        lock(write.locked, exclusive: true)
        var failure: CacheError?
        do {
            try backend.trim(count: count, at: offset, fua: requestedFUA && !flushAfter)
        } catch {
            failure = CacheError(error, "plugin trim of \(count) bytes at \(offset)")
        }
        let stale = state.withLock { s in
            write.locked.filter { block in
                switch s.blocks[block] {
                case .clean: true
                case .dirty, .partial: failure == nil && !write.edges.contains(block)
                case .notCached: false
                }
            }
        }
        debug.blocks("trim: drop", stale)
        drop(stale)
        unlock(write.locked, exclusive: true)
        if let failure { throw failure }
        if flushAfter { try flush(backend: backend) }
    }

    /// Reads the parts of a partial or uncached block (held exclusively)
    /// that the cache lacks from the plugin; the block becomes dirty if it
    /// held anything, else clean.
    func complete(_ block: UInt64, exportSize: UInt64, backend: some Backend) throws(CacheError) {
        let span = bytes(of: block..<block + 1, exportSize: exportSize)
        let (held, wasPartial) = state.withLock { s in (s.blocks.held(block), s.blocks[block] == .partial) }
        let staging = try allocate(span.count)
        debug.blocks("complete from the plugin:", [block])
        try readPlugin(into: staging.bytes, at: span.lowerBound, backend: backend)
        for gap in held?.gaps(UInt32(span.count)) ?? [0..<UInt32(span.count)] {
            try file.write(UnsafeRawBufferPointer(rebasing: staging.bytes[Int(gap.lowerBound)..<Int(gap.upperBound)]),
                           at: span.lowerBound + UInt64(gap.lowerBound))
        }
        mark(block..<block + 1, wasPartial ? .dirty : .clean)
    }
}

/// The blocks of one write-like request and how it covers them.
struct BlockWrite {
    let request: Range<UInt64>
    let exportSize: UInt64
    let locked: Range<UInt64>
    /// First and last blocks when the request covers them only in part.
    let edges: [UInt64]
    private let blockShift: UInt64

    init(engine: Engine, request: Range<UInt64>, exportSize: UInt64) {
        self.request = request
        self.exportSize = exportSize
        blockShift = engine.blockShift
        locked = engine.blocks(covering: request.lowerBound, count: UInt64(request.count))
        let candidates = Set([locked.lowerBound, locked.upperBound - 1])
        let shift = blockShift
        edges = candidates.sorted().filter { block in
            let whole = (block << shift)..<min((block + 1) << shift, exportSize)
            return whole.clamped(to: request) != whole
        }
    }

    /// Bytes of `blocks` that the request writes.
    func bytes(of blocks: Range<UInt64>) -> Range<UInt64> {
        let start = blocks.lowerBound << blockShift
        let whole = start..<max(start, min(blocks.upperBound << blockShift, exportSize))
        return whole.clamped(to: request)
    }

    /// Those bytes relative to the start of the request (the payload).
    func payloadRange(_ span: Range<UInt64>) -> Range<UInt64> {
        (span.lowerBound - request.lowerBound)..<(span.upperBound - request.lowerBound)
    }

    /// The part of `block` the request writes, relative to the block.
    func part(of block: UInt64) -> Range<UInt32> {
        let span = bytes(of: block..<block + 1)
        let start = block << blockShift
        return UInt32(span.lowerBound - start)..<UInt32(span.upperBound - start)
    }

    /// The block's length (the last block of the export may be short).
    func length(of block: UInt64) -> UInt32 {
        let start = block << blockShift
        return UInt32(min((block + 1) << blockShift, exportSize) - start)
    }
}

import SystemPackage

/// pwrite, zero and trim.
///
/// writeback and unsafe keep written blocks as dirty, and a write never
/// reads the plugin: a block written in part is kept as a partial block.
/// writethrough (and a FUA write in writeback) also send the client's bytes
/// to the plugin, and the copies become clean once it has them. Either way a
/// block is only marked clean when the plugin holds its bytes: a failed call
/// never leaves new data marked clean. Blocks that find no room in the cache,
/// even after reclaim, are not cached: their bytes go straight to the plugin.
extension Engine {
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool,
                      backend: some Backend) throws(CacheError) {
        let backend = counting(.write, backend)
        try store(.data(data), at: offset, fua: fua, backend: backend)
    }

    /// Like a write of zeroes; `mayTrim` is false when the client forbade a
    /// hole (NO_HOLE), and reaches the plugin as it came. FAST_ZERO fails
    /// with ENOTSUP before anything changes: the cache cannot promise it is
    /// faster than writing.
    public func zero(count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool, fastZero: Bool,
                     backend: some Backend) throws(CacheError) {
        let backend = counting(.zero, backend)
        if fastZero { throw CacheError(.notSupported, "fast zero is not supported by the cache") }
        try store(.zeroes(count: count, mayTrim: mayTrim), at: offset, fua: fua, backend: backend)
    }

    private func store(_ payload: Payload, at offset: UInt64, fua requestedFUA: Bool,
                       backend: some Backend) throws(CacheError) {
        let count = payload.count
        guard count > 0 else { return }
        try checkBounds(offset: offset, count: count, backend: backend)
        // FUA that the plugin only emulates, or that unsafe ignores, becomes
        // a flush after the write (one flush instead of one per block).
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        let fua = requestedFUA && !flushAfter
        do {
            let held = blocks.lock(geometry.blocks(covering: offset, count: count))
            // Sized once the blocks are held: a growth changes a short last block only while holding it.
            let write = BlockWrite(geometry: geometry, request: offset..<offset + count,
                                   size: blocks.size(seenBy: backend.size))
            if config.mode == .writethrough || fua {
                try storeThrough(payload, write, fua: fua, backend: backend, in: held)
            } else {
                try storeBack(payload, write, write.locked, through: false, backend: backend, in: held)
            }
        }
        if flushAfter { try writeBackAndFlush(backend: backend) }
    }

    /// Stores the write's bytes in `range` of its blocks as dirty, in chunks
    /// the cache has room for. A block the write covers only in part and the
    /// cache does not hold whole becomes (or stays) partial, unless that would
    /// pass the partial limits: then it is completed from the plugin first.
    /// `through`: the plugin gets the whole write anyway, so blocks without
    /// room are simply not cached, and none of the write's own blocks is
    /// reclaimed (it would be written back, a second copy to the plugin);
    /// otherwise blocks without room go straight to the plugin, and blocks
    /// the write has finished with may be reclaimed.
    private func storeBack(_ payload: Payload, _ write: BlockWrite, _ range: Range<UInt64>, through: Bool,
                           backend: some Backend, in held: borrowing HeldBlocks<Exclusive>) throws(CacheError) {
        var next = range.lowerBound
        while next < range.upperBound {
            let rest = next..<range.upperBound
            var reservation = through ? blocks.reserve(rest, backend: backend)
                : blocks.reserve(rest, reclaimable: range.lowerBound..<next, in: held, backend: backend)
            let chunk = reservation.chunk
            guard !chunk.isEmpty else {
                let runLimit = max(1, backend.transferLimit >> geometry.shift)
                let bypass = blocks.uncachedRun(from: next, to: min(range.upperBound, next + runLimit))
                if !through {
                    let span = write.bytes(of: bypass)
                    debug.blocks("no room in the cache, write to the plugin:", bypass)
                    do {
                        try payload.send(write.payloadRange(span), to: backend, at: span.lowerBound, fua: false)
                    } catch {
                        throw CacheError(error, "plugin write of \(span.count) bytes at \(span.lowerBound)")
                    }
                }
                next = bypass.upperBound
                continue
            }
            let edges = write.edges.filter { edge in
                chunk.contains(edge) && [.notCached, .partial].contains(blocks.state(of: edge))
            }
            // Both edges are checked in one step, so that together they keep to the limits.
            let partial = blocks.holdable(edges.map { ($0, write.part(of: $0)) })
            for edge in edges where !partial.contains(edge) {
                guard blocks.reach(connectionSize: backend.size).contains(edge) else {
                    throw CacheError(.ioError, "block \(edge) reaches past the end of this connection's export "
                                     + "and holds too many written ranges to keep another")
                }
                let bytes = try Buffer.allocate(Int(write.length(of: edge)))
                try blocks.assemble(edge, into: bytes.bytes, size: write.size, backend: backend, in: held)
                try blocks.keepAssembled(UnsafeRawBufferPointer(bytes.bytes), as: edge, in: held, using: &reservation)
            }
            let span = write.bytes(of: chunk)
            var parts: [UInt64: (part: Range<UInt32>, length: UInt32)] = [:]
            for edge in partial { parts[edge] = (write.part(of: edge), write.length(of: edge)) }
            try blocks.keepWritten(payload, write.payloadRange(span), at: span, as: chunk, parts: parts, in: held,
                                   using: &reservation)
            next = chunk.upperBound
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
    private func storeThrough(_ payload: Payload, _ write: BlockWrite, fua: Bool, backend: some Backend,
                              in held: borrowing HeldBlocks<Exclusive>) throws(CacheError) {
        debug.blocks("write through to the plugin:", write.locked)
        let before = blocks.states(write.locked)
        func stateBefore(_ block: UInt64) -> BlockState { before[Int(block - write.locked.lowerBound)] }
        let unheldEdges = write.edges.filter { stateBefore($0) == .notCached }
        // Read-modify-write first, as the C filter does. Keeping the block is
        // optional: if the read fails or there is no room, the block is left
        // out of the cache and the write goes on (a rewrite of a bad sector
        // must still work).
        var completed: [UInt64] = []
        if config.mode == .writethrough {
            for edge in unheldEdges where blocks.reach(connectionSize: backend.size).contains(edge) {
                var reservation = blocks.reserve(edge..<edge + 1, backend: backend)
                guard !reservation.chunk.isEmpty else { continue }
                do throws(CacheError) {
                    let bytes = try Buffer.allocate(Int(write.length(of: edge)))
                    try blocks.assemble(edge, into: bytes.bytes, size: write.size, backend: backend, in: held)
                    try blocks.keepAssembled(UnsafeRawBufferPointer(bytes.bytes), as: edge, in: held,
                                             using: &reservation)
                    completed.append(edge)
                } catch {
                    debug("write through: block \(edge) left out of the cache: \(error)")
                }
            }
        }
        var stored = write.locked
        let leftOut = unheldEdges.filter { !completed.contains($0) }
        if leftOut.contains(stored.lowerBound) { stored = stored.dropFirst() }
        if let last = stored.last, leftOut.contains(last) { stored = stored.dropLast() }

        // A large write goes to the plugin on a thread of our own while this
        // one copies it into the cache: nbdkit allows this under its parallel
        // thread model, and the thread ends before we return. Below the
        // threshold the copy costs less than starting a thread.
        let pluginError = Lock<Errno?>(nil)
        var cacheError: CacheError?
        nonisolated(unsafe) let bytes = payload
        let threads = blocks.writeBackThreads > 1 && payload.count >= Engine.overlapThreshold ? 2 : 1
        alongside(threads: threads, {
            do throws(Errno) {
                try bytes.send(0..<bytes.count, to: backend, at: write.request.lowerBound, fua: fua)
            } catch {
                pluginError.withLock { $0 = error }
            }
        }, {
            guard !stored.isEmpty else { return }
            do throws(CacheError) {
                try storeBack(bytes, write, stored, through: true, backend: backend, in: held)
            } catch {
                cacheError = error
            }
        })
        // Either failure may leave old bytes in blocks the cache had as
        // clean: only blocks that were already newer than the plugin keep
        // what the cache has; the rest read from the plugin again.
        let failure: CacheError? = pluginError.withLock { $0 }.map {
            CacheError($0, "plugin write of \(payload.count) bytes at \(write.request.lowerBound)")
        } ?? cacheError
        if let failure {
            blocks.drop(stored.filter { [.clean, .notCached].contains(stateBefore($0)) }, in: held)
            throw failure
        }
        blocks.markClean(stored.filter { block in
            !write.edges.contains(block) || stateBefore(block) == .clean || completed.contains(block)
        }, in: held)
    }

    /// Trim goes to the plugin; blocks it wholly covers are dropped from the
    /// cache, and so are clean blocks it covers in part (the plugin's copy may
    /// have changed under them). Partly covered dirty blocks stay dirty.
    public func trim(count: UInt64, at offset: UInt64, fua requestedFUA: Bool,
                     backend: some Backend) throws(CacheError) {
        let backend = counting(.trim, backend)
        guard count > 0 else { return }
        try checkBounds(offset: offset, count: count, backend: backend)
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        var failure: CacheError?
        do {
            let held = blocks.lock(geometry.blocks(covering: offset, count: count))
            let write = BlockWrite(geometry: geometry, request: offset..<offset + count,
                                   size: blocks.size(seenBy: backend.size))
            do {
                try backend.trim(count: count, at: offset, fua: requestedFUA && !flushAfter)
            } catch {
                failure = CacheError(error, "plugin trim of \(count) bytes at \(offset)")
            }
            let states = blocks.states(write.locked)
            let stale = write.locked.filter { block in
                switch states[Int(block - write.locked.lowerBound)] {
                case .clean: true
                case .dirty, .partial: failure == nil && !write.edges.contains(block)
                case .notCached: false
                }
            }
            debug.blocks("trim: drop", stale)
            blocks.drop(stale, in: held)
        }
        if let failure { throw failure }
        if flushAfter { try writeBackAndFlush(backend: backend) }
    }
}

/// The blocks of one write-like request and how it covers them.
struct BlockWrite {
    let request: Range<UInt64>
    /// The export's size as the block map sees it from this connection.
    let size: UInt64
    let locked: Range<UInt64>
    /// First and last blocks when the request covers them only in part.
    let edges: [UInt64]
    private let geometry: BlockGeometry

    init(geometry: BlockGeometry, request: Range<UInt64>, size: UInt64) {
        self.request = request
        self.size = size
        self.geometry = geometry
        locked = geometry.blocks(covering: request.lowerBound, count: UInt64(request.count))
        edges = Set([locked.lowerBound, locked.upperBound - 1]).sorted().filter { block in
            let whole = geometry.bytes(of: block..<block + 1, size: size)
            return whole.clamped(to: request) != whole
        }
    }

    /// Bytes of `blocks` that the request writes.
    func bytes(of blocks: Range<UInt64>) -> Range<UInt64> {
        geometry.bytes(of: blocks, size: size).clamped(to: request)
    }

    /// Those bytes relative to the start of the request (the payload).
    func payloadRange(_ span: Range<UInt64>) -> Range<UInt64> {
        (span.lowerBound - request.lowerBound)..<(span.upperBound - request.lowerBound)
    }

    /// The part of `block` the request writes, relative to the block.
    func part(of block: UInt64) -> Range<UInt32> {
        let span = bytes(of: block..<block + 1)
        let start = geometry.start(of: block)
        return UInt32(span.lowerBound - start)..<UInt32(span.upperBound - start)
    }

    /// The block's length (the last block of the export may be short).
    func length(of block: UInt64) -> UInt32 {
        UInt32(geometry.bytes(of: block..<block + 1, size: size).count)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
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
    public func write(
        _ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool,
        backend: some Backend
    ) throws(CacheError) {
        let backend = counting(.write, backend)
        try store(.data(data), at: offset, fua: fua, backend: backend)
    }

    /// Like a write of zeroes; `mayTrim` is false when the client forbade a
    /// hole (NO_HOLE), and reaches the plugin as it came. FAST_ZERO fails
    /// with ENOTSUP before anything changes: the cache cannot promise it is
    /// faster than writing.
    public func zero(
        count: UInt64, at offset: UInt64, fua: Bool, mayTrim: Bool, fastZero: Bool,
        backend: some Backend
    ) throws(CacheError) {
        let backend = counting(.zero, backend)
        if fastZero { throw CacheError(.notSupported, "fast zero is not supported by the cache") }
        try store(.zeroes(count: count, mayTrim: mayTrim), at: offset, fua: fua, backend: backend)
    }

    private func store(
        _ payload: Payload, at offset: UInt64, fua requestedFUA: Bool,
        backend: some Backend
    ) throws(CacheError) {
        let count = payload.count
        guard count > 0 else { return }
        try checkBounds(offset: offset, count: count, backend: backend)
        // FUA that the plugin only emulates, or that unsafe ignores, becomes
        // a flush after the write (one flush instead of one per block).
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        let fua = requestedFUA && !flushAfter
        do {
            let held = blocks.lock(geometry.blocks(covering: offset, count: count))
            let write = BlockWrite(geometry: geometry, request: offset..<offset + count)
            let through = config.mode == .writethrough || fua
            blocks.prepareCleanParts(write.locked, through: through, in: held)
            if through {
                try storeThrough(payload, write, fua: fua, backend: backend, in: held)
            } else {
                try storeBack(payload, write, write.locked, through: false, backend: backend, in: held)
            }
        }
        if flushAfter { try writeBackAndFlush(backend: backend) }
    }

    /// Stores the write's bytes in `range` of its blocks as dirty: whole
    /// blocks of zeroes as dirty zeroes (no data, no room needed), the rest
    /// as data (`storeData`). Zeroes over a block already known to read as
    /// zeroes change nothing.
    private func storeBack(
        _ payload: Payload, _ write: BlockWrite, _ range: Range<UInt64>, through: Bool,
        backend: some Backend, in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        let zeroEdges = payload.isZeroes ? write.edges.filter { blocks.state(of: $0).isZero } : []
        func kind(of block: UInt64) -> StoreKind {
            if write.edges.contains(block) { return zeroEdges.contains(block) ? .unchanged : .data }
            switch payload {
            case .zeroes(_, let mayTrim): return .zeroes(mayTrim: mayTrim)
            case .data(let bytes):
                let span = write.payloadRange(write.bytes(of: block..<block + 1))
                let blockBytes = UnsafeRawBufferPointer(rebasing: bytes[Int(span.lowerBound)..<Int(span.upperBound)])
                return blockBytes.isAllZero ? .zeroes(mayTrim: false) : .data
            }
        }
        var next = range.lowerBound
        while next < range.upperBound {
            let runKind = kind(of: next)
            var end = next + 1
            while end < range.upperBound && kind(of: end) == runKind { end += 1 }
            let run = next..<end
            switch runKind {
            case .unchanged:
                break
            case .zeroes(let mayTrim):
                do throws(CacheError) {
                    try blocks.keepZeroes(run, mayTrim: mayTrim, in: held)
                } catch {
                    debug("write: the cache file failed (\(error)), zeroes go to the plugin")
                    try handOver(payload, write, run, through: through, backend: backend, in: held)
                }
            case .data:
                try storeData(payload, write, run, through: through, backend: backend, in: held)
            }
            next = end
        }
    }

    /// Stores the write's bytes in `range` of its blocks as dirty, in chunks
    /// the cache has room for. A block the write covers only in part and the
    /// cache does not hold whole becomes (or stays) partial, unless that would
    /// pass the partial limits: then it is completed first (from the plugin,
    /// or with zeroes if it is known to read as zeroes).
    /// `through`: the plugin gets the whole write anyway, so blocks without
    /// room are simply not cached, and none of the write's own blocks is
    /// reclaimed (it would be written back, a second copy to the plugin);
    /// a failure of the cache file is the caller's to handle. Otherwise
    /// blocks without room go straight to the plugin, and blocks the write
    /// has finished with may be reclaimed; when the cache file fails, a full
    /// one (ENOSPC, EDQUOT) is given room and the chunk tried again, and
    /// what it still cannot take goes straight to the plugin.
    private func storeData(
        _ payload: Payload, _ write: BlockWrite, _ range: Range<UInt64>, through: Bool,
        backend: some Backend, in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        var next = range.lowerBound
        var retried = false
        while next < range.upperBound {
            let rest = next..<range.upperBound
            var reservation =
                through
                ? blocks.reserve(rest, backend: backend)
                : blocks.reserve(rest, reclaimable: range.lowerBound..<next, in: held, backend: backend)
            let chunk = reservation.chunk
            guard !chunk.isEmpty else {
                let runLimit = max(1, backend.transferLimit >> geometry.shift)
                let bypass = blocks.unoccupiedRun(from: next, to: min(range.upperBound, next + runLimit))
                debug.blocks("no room in the cache, write to the plugin:", bypass)
                try handOver(payload, write, bypass, through: through, backend: backend, in: held)
                next = bypass.upperBound
                continue
            }
            do throws(ChunkFailure) {
                try storeChunk(payload, write, chunk, backend: backend, in: held, using: &reservation)
            } catch {
                guard case .cache(let error) = error, !through else { throw error.cacheError }
                _ = consume reservation
                if [.noSpace, .diskQuotaExceeded].contains(error.errno) && !retried {
                    debug("write: the cache file is full (\(error)): making room")
                    blocks.makeRoom(
                        for: UInt64(chunk.count), reclaimable: range.lowerBound..<next, in: held,
                        backend: backend)
                    retried = true
                    continue
                }
                debug("write: the cache file failed (\(error)), blocks \(chunk) go to the plugin")
                try handOver(payload, write, chunk, through: false, backend: backend, in: held)
            }
            retried = false
            next = chunk.upperBound
        }
    }

    /// Stores one chunk the cache has room for (see `storeData`).
    private func storeChunk(
        _ payload: Payload, _ write: BlockWrite, _ chunk: Range<UInt64>, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>,
        using reservation: inout Reservation
    ) throws(ChunkFailure) {
        let edgeStates = write.edges.filter { chunk.contains($0) }.map { ($0, blocks.state(of: $0)) }
        let holdable = edgeStates.filter { [.notCached, .partial].contains($0.1) }.map(\.0)
        // Both edges are checked in one step, so that together they keep to the limits.
        let partial = blocks.holdable(holdable.map { ($0, write.part(of: $0)) })
        for (edge, state) in edgeStates where !partial.contains(edge) && ![.clean, .dirty].contains(state) {
            guard state.isZero || geometry.reach(connectionSize: backend.size).contains(edge) else {
                throw .cache(
                    CacheError(
                        .ioError,
                        "block \(edge) reaches past the end of this connection's export "
                            + "and holds too many written ranges to keep another"))
            }
            let bytes: Buffer
            do throws(CacheError) {
                bytes = try Buffer.allocate(Int(geometry.blockSize))
                try blocks.assemble(edge, into: bytes.bytes, backend: backend, in: held)
            } catch {
                throw .plugin(error)
            }
            do throws(CacheError) {
                try blocks.keepAssembled(UnsafeRawBufferPointer(bytes.bytes), as: edge, in: held, using: &reservation)
            } catch {
                throw .cache(error)
            }
        }
        let span = write.bytes(of: chunk)
        var parts: [UInt64: Range<UInt32>] = [:]
        for edge in partial { parts[edge] = write.part(of: edge) }
        do {
            try blocks.keepWritten(
                payload, write.payloadRange(span), at: span, as: chunk, parts: parts, in: held,
                using: &reservation)
        } catch {
            throw .cache(error)
        }
    }

    /// The write's bytes for `run` go straight to the plugin (unless it gets
    /// the whole write anyway: `through`); the cache forgets what it held of
    /// them first (`BlockStore.release`).
    private func handOver(
        _ payload: Payload, _ write: BlockWrite, _ run: Range<UInt64>, through: Bool,
        backend: some Backend, in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        let span = write.bytes(of: run)
        try blocks.release(span, of: run, backend: backend, in: held)
        guard !through else { return }
        do {
            try payload.send(write.payloadRange(span), to: backend, at: span.lowerBound, fua: false)
        } catch {
            throw CacheError(error, "plugin \(payload.request) of \(span.count) bytes at \(span.lowerBound)")
        }
    }

    /// writethrough, or FUA: the plugin gets the client's bytes as they are,
    /// one request per client request (after the blocks of dirty zeroes it
    /// covers in part are written back, so it lands over them). Meanwhile the cache stores them as a
    /// writeback write would, as dirty. A partly written block the cache
    /// does not hold at all is read from the plugin first in writethrough
    /// (read-modify-write, so the cache keeps what was written), and left
    /// out of the cache for a FUA write in writeback (which never reads the
    /// plugin) or when that read fails. Once the plugin has the bytes, the
    /// blocks it matches again are clean; if it fails, the blocks that were
    /// not newer than it already are dropped, and if the cache file fails,
    /// the cache forgets the written bytes (the plugin has them).
    private func storeThrough(
        _ payload: Payload, _ write: BlockWrite, fua: Bool, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        debug.blocks("write through to the plugin:", write.locked)
        if !payload.isZeroes { try blocks.writeBackDirtyZeroes(write.edges, backend: backend, in: held) }
        let before = blocks.states(write.locked)
        func stateBefore(_ block: UInt64) -> BlockState { before[Int(block - write.locked.lowerBound)] }
        let unheldEdges = write.edges.filter { stateBefore($0) == .notCached }
        // Read-modify-write first, as the C filter does. Keeping the block is
        // optional: if the read fails or there is no room, the block is left
        // out of the cache and the write goes on (a rewrite of a bad sector
        // must still work).
        var completed: [UInt64] = []
        if config.mode == .writethrough {
            for edge in unheldEdges where geometry.reach(connectionSize: backend.size).contains(edge) {
                var reservation = blocks.reserve(edge..<edge + 1, backend: backend)
                guard !reservation.chunk.isEmpty else { continue }
                do throws(CacheError) {
                    let bytes = try Buffer.allocate(Int(geometry.blockSize))
                    try blocks.assemble(edge, into: bytes.bytes, backend: backend, in: held)
                    try blocks.keepAssembled(
                        UnsafeRawBufferPointer(bytes.bytes), as: edge, in: held,
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
        alongside(
            threads: threads,
            {
                do throws(Errno) {
                    try bytes.send(0..<bytes.count, to: backend, at: write.request.lowerBound, fua: fua)
                } catch {
                    pluginError.withLock { $0 = error }
                }
            },
            {
                guard !stored.isEmpty else { return }
                do throws(CacheError) {
                    try storeBack(bytes, write, stored, through: true, backend: backend, in: held)
                } catch {
                    cacheError = error
                }
            })
        // A failed plugin write may leave old bytes in blocks the cache had
        // as clean: only blocks that were already newer than the plugin keep
        // what the cache has; the rest read from the plugin again.
        if let error = pluginError.withLock({ $0 }) {
            blocks.drop(stored.filter { [.clean, .notCached, .zero].contains(stateBefore($0)) }, in: held)
            let request = "plugin \(payload.request) of \(payload.count) bytes at \(write.request.lowerBound)"
            throw CacheError(error, request)
        }
        // A failed cache file is not the client's problem: the plugin has the
        // write, and the cache forgets what it held of those bytes.
        if let cacheError {
            debug("write through: the cache file failed (\(cacheError)), the plugin has the bytes")
            try blocks.release(write.request, of: stored, backend: backend, in: held)
            return
        }
        blocks.markClean(
            stored.filter { block in
                !write.edges.contains(block) || [.clean, .zero].contains(stateBefore(block))
                    || completed.contains(block)
            }, in: held)
    }

    /// Trim goes to the plugin; blocks it wholly covers are dropped from the
    /// cache, and so are clean blocks and known zeroes it covers in part (the
    /// plugin's copy may have changed under them). Partly covered dirty
    /// blocks stay dirty.
    public func trim(
        count: UInt64, at offset: UInt64, fua requestedFUA: Bool,
        backend: some Backend
    ) throws(CacheError) {
        let backend = counting(.trim, backend)
        guard count > 0 else { return }
        try checkBounds(offset: offset, count: count, backend: backend)
        let flushAfter = requestedFUA && (config.mode == .unsafe || backend.fuaMode != .native)
        var failure: CacheError?
        do {
            let held = blocks.lock(geometry.blocks(covering: offset, count: count))
            let write = BlockWrite(geometry: geometry, request: offset..<offset + count)
            do {
                try backend.trim(count: count, at: offset, fua: requestedFUA && !flushAfter)
            } catch {
                failure = CacheError(error, "plugin trim of \(count) bytes at \(offset)")
            }
            let states = blocks.states(write.locked)
            let stale = write.locked.filter { block in
                switch states[Int(block - write.locked.lowerBound)] {
                case .clean, .zero: true
                case .dirty, .partial, .dirtyZero: failure == nil && !write.edges.contains(block)
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

/// Why a chunk of a write could not be stored: the plugin failed (the
/// client's error), or the cache cannot take it (its file failed, or a
/// block it cannot complete): the plugin can take the bytes.
private enum ChunkFailure: Error {
    case plugin(CacheError)
    case cache(CacheError)

    var cacheError: CacheError {
        switch self {
        case .plugin(let error), .cache(let error): error
        }
    }
}

/// How `storeBack` stores a run of a write's blocks.
private enum StoreKind: Equatable {
    /// Zeroes over blocks that already read as zeroes.
    case unchanged
    /// Whole blocks of zeroes.
    case zeroes(mayTrim: Bool)
    case data
}

/// The blocks of one write-like request and how it covers them.
struct BlockWrite {
    let request: Range<UInt64>
    let locked: Range<UInt64>
    /// First and last blocks when the request covers them only in part: all
    /// of a block's bytes count, also past the end of the connection's
    /// export (see `BlockStore`, "Whole blocks").
    let edges: [UInt64]
    private let geometry: BlockGeometry

    init(geometry: BlockGeometry, request: Range<UInt64>) {
        self.request = request
        self.geometry = geometry
        locked = geometry.blocks(covering: request.lowerBound, count: UInt64(request.count))
        edges = Set([locked.lowerBound, locked.upperBound - 1]).sorted().filter { block in
            let whole = geometry.bytes(of: block..<block + 1, size: .max)
            return whole.clamped(to: request) != whole
        }
    }

    /// Bytes of `blocks` that the request writes.
    func bytes(of blocks: Range<UInt64>) -> Range<UInt64> {
        geometry.bytes(of: blocks, size: .max).clamped(to: request)
    }

    /// Those bytes relative to the start of the request (the payload).
    func payloadRange(_ span: Range<UInt64>) -> Range<UInt64> {
        (span.lowerBound - request.lowerBound)..<(span.upperBound - request.lowerBound)
    }

    /// The part of `block` the request writes, relative to the block.
    func part(of block: UInt64) -> Range<UInt32> { geometry.part(of: block, in: request) }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// pread and NBD_CMD_CACHE: cached runs come from the cache file, the rest
/// from the plugin, kept as clean blocks when cache-on-read (or CACHE) asks
/// and there is room.
extension Engine {
    public func read(
        into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64,
        backend: some Backend
    ) throws(CacheError) {
        let backend = counting(.read, backend)
        try load(
            offset: offset, count: UInt64(buffer.count), into: buffer, keep: config.cacheOnRead.isOn,
            backend: backend)
    }

    /// NBD_CMD_CACHE: brings the range into the cache, whatever cache-on-read says.
    public func cache(count: UInt64, at offset: UInt64, backend: some Backend) throws(CacheError) {
        let backend = counting(.cache, backend)
        try load(offset: offset, count: count, into: nil, keep: true, backend: backend)
    }

    private func load(
        offset: UInt64, count: UInt64, into buffer: UnsafeMutableRawBufferPointer?,
        keep: Bool, backend: some Backend
    ) throws(CacheError) {
        guard count > 0 else { return }
        try checkBounds(offset: offset, count: count, backend: backend)
        let locked = geometry.blocks(covering: offset, count: count)
        let read = BlockRead(request: offset..<offset + count, buffer: buffer, size: backend.size, locked: locked)
        // Readers share blocks; filling a block from the plugin, or reading
        // a partial one, needs it alone.
        switch blocks.lockForRead(
            locked,
            exclusiveIf: { map in
                map.firstPartial(in: locked) != nil
                    || (keep && map.firstNotCached(in: locked) != nil)
                    || (keep && blocks.firstCleanInPart(map, in: locked, connectionSize: backend.size) != nil)
            })
        {
        case .shared(let held):
            try copy(read, in: held) { run throws(CacheError) in try readPlugin(run, read, backend: backend) }
        case .exclusive(let held):
            let served = try readPartials(read, backend: backend, in: held)
            try copy(read, in: held) { run throws(CacheError) in
                // Partial blocks the cache could not complete were served already.
                var from = run.lowerBound
                for block in served where run.contains(block) {
                    try uncached(from..<block, read, keep: keep, backend: backend, in: held)
                    from = block + 1
                }
                try uncached(from..<run.upperBound, read, keep: keep, backend: backend, in: held)
            }
        }
    }

    /// Copies cached runs of the request's blocks to the buffer, fills runs
    /// of known zeroes, and hands the runs that are not cached whole to `uncached`.
    private func copy<Access>(
        _ read: BlockRead, in held: borrowing HeldBlocks<Access>,
        uncached: (Range<UInt64>) throws(CacheError) -> Void
    ) throws(CacheError) {
        var cursor = read.locked.lowerBound
        while cursor < read.locked.upperBound {
            let (kind, end) = blocks.readRun(from: cursor, to: read.locked.upperBound, connectionSize: read.size)
            let run = cursor..<end
            let span = geometry.bytes(of: run, size: read.size).clamped(to: read.request)
            if read.buffer != nil {
                statistics.served(blocks: run.count, bytes: span.count, fromCache: kind != .uncached)
            }
            switch kind {
            case .uncached:
                try uncached(run)
            case .cached:
                guard let buffer = read.buffer else { break }
                debug.blocks("read from the cache:", run)
                try blocks.readCached(into: slice(buffer, span, of: read.request), at: span.lowerBound, in: held)
            case .zeroes:
                guard let buffer = read.buffer else { break }
                debug.blocks("read known zeroes:", run)
                slice(buffer, span, of: read.request).initializeMemory(as: UInt8.self, repeating: 0)
            }
            cursor = end
        }
    }

    /// A partial block's held bytes are newer than the plugin's: it is
    /// assembled in memory from both and served, then kept (dirty) if the
    /// cache file takes it: whole, or as far as this connection sees a block
    /// it sees in part (still partial). Returns the blocks served that are
    /// still partial: they are not to be read again.
    private func readPartials(
        _ read: BlockRead, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) -> [UInt64] {
        var served: [UInt64] = []
        var from = read.locked.lowerBound
        while let block = blocks.firstPartial(in: from..<read.locked.upperBound) {
            from = block + 1
            let blockSpan = geometry.bytes(of: block..<block + 1, size: read.size)
            let bytes = try Buffer.allocate(blockSpan.count)
            try blocks.assemble(block, into: bytes.bytes, backend: backend, in: held)
            if let buffer = read.buffer {
                let span = blockSpan.clamped(to: read.request)
                let start = Int(span.lowerBound - blockSpan.lowerBound)
                slice(buffer, span, of: read.request).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: bytes.bytes[start..<start + span.count]))
            }
            var noRoomNeeded = Reservation(blocks: 0, chunk: block..<block + 1, store: nil)
            do throws(CacheError) {
                try blocks.keepAssembled(UnsafeRawBufferPointer(bytes.bytes), as: block, in: held, using: &noRoomNeeded)
            } catch {
                // Served all the same: keeping it is optional for a read.
                debug("read: partial block \(block) left partial: \(error)")
            }
            if blocks.state(of: block) == .partial { served.append(block) }
        }
        return served
    }

    /// Blocks the cache lacks: read from the plugin, and kept as clean blocks
    /// (or known zeroes) when asked and there is room (in chunks the room
    /// allows; blocks of this request already done may be reclaimed to make it).
    private func uncached(
        _ run: Range<UInt64>, _ read: BlockRead, keep: Bool, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        guard keep else { return try readPlugin(run, read, backend: backend) }
        var next = run.lowerBound
        while next < run.upperBound {
            let limit = max(1, backend.transferLimit >> geometry.shift)
            let wanted = next..<min(run.upperBound, next + limit)
            var reservation = blocks.reserve(
                wanted, reclaimable: read.locked.lowerBound..<next, in: held, backend: backend)
            let chunk = reservation.chunk
            guard !chunk.isEmpty else {
                // No room even after reclaim: served from the plugin, not kept.
                try readPlugin(wanted, read, backend: backend)
                next = wanted.upperBound
                continue
            }
            let span = geometry.bytes(of: chunk, size: read.size)
            debug.blocks("cache from the plugin:", chunk)
            // Keeping them is optional: a cache file that fails (or is full)
            // leaves them uncached, and the read is served all the same.
            func keep(_ data: UnsafeRawBufferPointer) {
                do throws(CacheError) { try blocks.keepClean(data, as: chunk, in: held, using: &reservation) } catch {
                    debug("read: blocks \(chunk) not kept: \(error)")
                }
            }
            if let buffer = read.buffer, span.clamped(to: read.request) == span {
                // Whole blocks inside the request go straight into the client's buffer.
                let target = slice(buffer, span, of: read.request)
                try backend.readAll(into: target, at: span.lowerBound)
                keep(UnsafeRawBufferPointer(target))
            } else {
                let staging = try Buffer.allocate(span.count)
                try backend.readAll(into: staging.bytes, at: span.lowerBound)
                keep(UnsafeRawBufferPointer(staging.bytes))
                if let buffer = read.buffer {
                    let wantedBytes = span.clamped(to: read.request)
                    let from = Int(wantedBytes.lowerBound - span.lowerBound)
                    slice(buffer, wantedBytes, of: read.request).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: staging.bytes[from..<from + wantedBytes.count]))
                }
            }
            next = chunk.upperBound
        }
    }

    /// Reads the request's part of `run` from the plugin, keeping nothing.
    private func readPlugin(_ run: Range<UInt64>, _ read: BlockRead, backend: some Backend) throws(CacheError) {
        guard let buffer = read.buffer, !run.isEmpty else { return }
        debug.blocks("read from the plugin:", run)
        let span = geometry.bytes(of: run, size: read.size).clamped(to: read.request)
        try backend.readAll(into: slice(buffer, span, of: read.request), at: span.lowerBound)
    }
}

/// One read-like request and the blocks it locks.
private struct BlockRead {
    let request: Range<UInt64>
    let buffer: UnsafeMutableRawBufferPointer?
    /// The export's size as this connection sees it.
    let size: UInt64
    let locked: Range<UInt64>
}

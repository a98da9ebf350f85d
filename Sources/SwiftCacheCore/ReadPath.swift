import SystemPackage

/// pread and NBD_CMD_CACHE: cached runs come from the cache file, the rest
/// from the plugin, kept as clean blocks when cache-on-read (or CACHE) asks.
extension Engine {
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, backend: some Backend) throws(CacheError) {
        try load(offset: offset, count: UInt64(buffer.count), into: buffer, keep: config.cacheOnRead.isOn, backend: backend)
    }

    /// NBD_CMD_CACHE: brings the range into the cache, whatever cache-on-read says.
    public func cache(count: UInt64, at offset: UInt64, backend: some Backend) throws(CacheError) {
        try load(offset: offset, count: count, into: nil, keep: true, backend: backend)
    }

    private func load(offset: UInt64, count: UInt64, into buffer: UnsafeMutableRawBufferPointer?,
                      keep: Bool, backend: some Backend) throws(CacheError) {
        guard count > 0 else { return }
        let exportSize = try checkBounds(offset: offset, count: count)
        let locked = blocks(covering: offset, count: count)
        let request = offset..<offset + count
        // Readers share blocks; filling a block from the plugin, or completing
        // a partial one, needs it alone.
        let exclusive = lock(locked, exclusiveIf: { s in
            s.blocks.firstPartial(in: locked) != nil
                || (keep && s.blocks.cached.firstClear(from: locked.lowerBound, to: locked.upperBound) < locked.upperBound)
        })
        defer { unlock(locked, exclusive: exclusive) }
        // A partial block's held bytes are newer than the plugin's: read the
        // rest once, and the block is whole (and dirty) from then on.
        if exclusive {
            while let block = state.withLock({ $0.blocks.firstPartial(in: locked) }) {
                try complete(block, exportSize: exportSize, backend: backend)
            }
        }

        // While the blocks are held, whether each is cached cannot change.
        var cursor = locked.lowerBound
        while cursor < locked.upperBound {
            let (isCached, runEnd) = state.withLock { s in
                guard s.blocks.cached[cursor] else {
                    return (false, s.blocks.cached.firstSet(from: cursor, to: locked.upperBound) ?? locked.upperBound)
                }
                let end = s.blocks.cached.firstClear(from: cursor, to: locked.upperBound)
                // Only blocks the cache holds age; a fill marks its own.
                if config.maxSize != nil { s.lru.touch(cursor..<end) }
                return (true, end)
            }
            let run = cursor..<runEnd
            let span = bytes(of: run, exportSize: exportSize).clamped(to: request)
            if isCached {
                debug.blocks("read from the cache:", run)
                if let buffer {
                    try file.read(into: slice(buffer, span, of: request), at: span.lowerBound)
                }
            } else if keep {
                try fill(run, into: buffer, request: request, done: locked.lowerBound, exportSize: exportSize, backend: backend)
            } else if let buffer {
                debug.blocks("read from the plugin:", run)
                try readPlugin(into: slice(buffer, span, of: request), at: span.lowerBound, backend: backend)
            }
            cursor = runEnd
        }
    }

    /// Reads uncached `run` (held exclusively) from the plugin into the cache
    /// as clean blocks, copying the requested part to `buffer`. Reclaims as it
    /// goes, counting blocks from `done` up as finished with.
    private func fill(_ run: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer?, request: Range<UInt64>,
                      done: UInt64, exportSize: UInt64, backend: some Backend) throws(CacheError) {
        var next = run.lowerBound
        while next < run.upperBound {
            let wanted = min(run.upperBound - next, max(1, backend.transferLimit >> blockShift))
            let chunk = next..<next + headroom(upTo: wanted)
            let span = bytes(of: chunk, exportSize: exportSize)
            debug.blocks("cache from the plugin:", chunk)
            // Whole blocks inside the request go straight into the client's buffer.
            if let buffer, span.clamped(to: request) == span {
                let target = slice(buffer, span, of: request)
                try readPlugin(into: target, at: span.lowerBound, backend: backend)
                try store(UnsafeRawBufferPointer(target), at: span.lowerBound)
            } else {
                let staging = try allocate(span.count)
                try readPlugin(into: staging.bytes, at: span.lowerBound, backend: backend)
                try store(UnsafeRawBufferPointer(staging.bytes), at: span.lowerBound)
                if let buffer {
                    let wantedBytes = span.clamped(to: request)
                    let from = Int(wantedBytes.lowerBound - span.lowerBound)
                    slice(buffer, wantedBytes, of: request).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: staging.bytes[from..<from + wantedBytes.count]))
                }
            }
            mark(chunk, .clean)
            next = chunk.upperBound
            reclaimIfNeeded(owned: done..<next, backend: backend)
        }
    }

    /// Keeps plugin data in the cache file; all-zero data as a hole. It is
    /// punched, not assumed: an uncached block may still hold old bytes (a
    /// short last block uncached when the export grew, a drop whose punch
    /// failed).
    private func store(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(CacheError) {
        if data.isAllZero {
            debug("cache from the plugin: \(data.count) bytes of zeroes at \(offset) kept as a hole")
            try file.zero(at: offset, length: UInt64(data.count))
        } else {
            try file.write(data, at: offset)
        }
    }

    /// A plugin read of any length, in requests nbdkit accepts.
    func readPlugin(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, backend: some Backend) throws(CacheError) {
        var done = 0
        while done < buffer.count {
            let n = min(buffer.count - done, Int(backend.transferLimit))
            do {
                try backend.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n]), at: offset + UInt64(done))
            } catch {
                throw CacheError(error, "plugin read of \(n) bytes at \(offset + UInt64(done))")
            }
            done += n
        }
    }

    func allocate(_ count: Int) throws(CacheError) -> Buffer {
        do { return try Buffer(count: count) } catch {
            throw CacheError(error, "allocating \(count) bytes")
        }
    }
}

/// The part of a request's buffer that holds bytes `span` of the export.
func slice(_ buffer: UnsafeMutableRawBufferPointer, _ span: Range<UInt64>, of request: Range<UInt64>) -> UnsafeMutableRawBufferPointer {
    let from = Int(span.lowerBound - request.lowerBound)
    return UnsafeMutableRawBufferPointer(rebasing: buffer[from..<from + span.count])
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// Write-back, for flush and reclaim alike: one plugin request per run of
/// dirty blocks (up to the transfer limit), up to `writeBackThreads` runs at
/// once; a run of dirty zeroes is one plugin zero request (writes of zeroes
/// if the plugin cannot zero). It never needs room in the cache file: a partial block is sent as
/// the one range it holds, or assembled in memory with the plugin's bytes,
/// and then leaves the cache. It never sends a byte past the end of the
/// connection it writes through: blocks beyond it stay dirty until a
/// connection that sees them writes them back.
extension BlockStore {
    /// Writes back every block dirty when it starts; returns the first error
    /// (a block that failed stays dirty).
    func writeBackAll(backend: some Backend) -> CacheError? {
        // nbdkit forbids writing to the plugin through a read-only context.
        guard backend.canWrite else {
            return dirtyBlockCount == 0
                ? nil
                : CacheError(.readOnlyFileSystem, "cannot write back dirty blocks through a read-only connection")
        }
        let runLimit = max(1, backend.transferLimit >> geometry.shift)
        var cursor: UInt64 = 0
        var firstError: CacheError?
        while true {
            // Runs in batches, so memory stays small however scattered the dirty blocks.
            let batch: [Range<UInt64>] = state.withLock { s in
                var runs: [Range<UInt64>] = []
                while runs.count < 1024, let run = s.map.nextDirtyRun(from: cursor, limit: runLimit) {
                    runs.append(run)
                    cursor = run.upperBound
                }
                return runs
            }
            guard !batch.isEmpty else { return firstError }
            let error = writeBack(batch, backend: backend, lockingEach: true)
            firstError = firstError ?? error
        }
    }

    /// Writes back `runs`, locking each first unless this layer already
    /// holds them (reclaim); returns the first error.
    func writeBack(_ runs: [Range<UInt64>], backend: some Backend, lockingEach: Bool) -> CacheError? {
        let firstError = Lock<CacheError?>(nil)
        concurrently(runs.count, threads: writeBackThreads) { i in
            let error: CacheError?
            if lockingEach {
                let held = self.lock(runs[i])
                error = self.writeBackHeld(held.blocks, backend: backend)
            } else {
                error = self.writeBackHeld(runs[i], backend: backend)
            }
            if let error { firstError.withLock { $0 = $0 ?? error } }
        }
        return firstError.withLock { $0 }
    }

    /// Writes back the dirty and partial blocks of `blocks` (held exclusively).
    /// A partial block holding one range that keeps to the plugin's minimum
    /// block size is sent as that range alone and leaves the cache; any other
    /// is assembled in memory and joins its run, and is kept whole (dirty,
    /// then clean) if the cache file takes its missing bytes, else leaves
    /// the cache once written.
    private func writeBackHeld(_ blocks: Range<UInt64>, backend: some Backend) -> CacheError? {
        var firstError: CacheError?
        let reach = geometry.reach(connectionSize: backend.size)
        let (pieces, partials) = state.withLock { s in
            (
                s.map.dirtyRuns(in: blocks).flatMap { s.map.writeBackPieces(of: $0) },
                Dictionary(uniqueKeysWithValues: blocks.compactMap { block in s.map.held(block).map { (block, $0) } })
            )
        }
        func note(_ error: CacheError?) { firstError = firstError ?? error }
        for (run, zeroes) in pieces {
            if let zeroes {
                note(writeBackZeroes(run, zeroes, backend: backend))
                continue
            }
            // Blocks past this connection's end wait for a connection that sees them.
            let reached = run.clamped(to: reach)
            var start = reached.lowerBound
            for block in reached {
                guard let held = partials[block], let span = alone(block, held, backend: backend) else {
                    continue
                }
                note(writeBackRun(start..<block, partials: partials, backend: backend))
                do throws(CacheError) {
                    try copyToPlugin(span, backend: backend)
                    debug.blocks("written back:", [block])
                    dropUnchecked([block])
                } catch {
                    note(error)
                }
                start = block + 1
            }
            note(writeBackRun(start..<reached.upperBound, partials: partials, backend: backend))
            let seenInPart = reach.upperBound
            if run.contains(seenInPart) && geometry.start(of: seenInPart) < backend.size {
                note(writeBackVisiblePart(seenInPart, holding: partials[seenInPart], backend: backend))
            }
        }
        return firstError
    }

    /// Sends a run of dirty zero blocks as plugin zero requests, as far as
    /// this connection reaches (and the part of its own last block it sees).
    private func writeBackZeroes(
        _ run: Range<UInt64>, _ zeroes: ZeroWriteBack, backend: some Backend
    ) -> CacheError? {
        let reach = geometry.reach(connectionSize: backend.size)
        let reached = run.clamped(to: reach)
        var span = geometry.bytes(of: reached, size: backend.size)
        let seenInPart = reach.upperBound
        if run.contains(seenInPart) && geometry.start(of: seenInPart) < backend.size {
            span = (reached.isEmpty ? geometry.start(of: seenInPart) : span.lowerBound)..<backend.size
        }
        guard !span.isEmpty else { return nil }
        do throws(CacheError) { try sendZeroes(span, mayTrim: zeroes == .mayTrim, backend: backend) } catch {
            return error
        }
        debug.blocks("written back as zeroes:", reached)
        state.withLock { s in
            for block in reached where s.map[block].isZero { s.map[block] = .zero }
        }
        return nil
    }

    /// A write takes bytes `part` of a block of dirty zeroes straight to
    /// the plugin (it found no room): the block's other bytes go to the
    /// plugin first, as zeroes, so that the block can leave the cache rather
    /// than stay as a partial block, which takes room no one set aside.
    /// Returns whether they did; they cannot when the connection sees only
    /// some of them (the block then stays partial). If the plugin fails,
    /// the block stays as it was and the write must fail.
    func writeBackZeroes(
        around part: Range<UInt32>, of block: UInt64, backend: some Backend
    ) throws(CacheError) -> Bool {
        guard case .dirtyZero(let mayTrim) = state(of: block) else { return false }
        let start = geometry.start(of: block)
        guard let rest = HeldRanges(0..<UInt32(geometry.blockSize)).removing(part)?.ranges,
            let last = rest.last, start + UInt64(last.upperBound) <= backend.size
        else { return false }
        for range in rest {
            let span = start + UInt64(range.lowerBound)..<start + UInt64(range.upperBound)
            try sendZeroes(span, mayTrim: mayTrim, backend: backend)
        }
        debug.blocks("written back as zeroes, around what the plugin takes:", [block])
        return true
    }

    /// A write through to the plugin (writethrough, FUA) is about to cover
    /// part of these blocks: those of dirty zeroes are written back first,
    /// so the write lands over them and no block needs to keep zeroes
    /// around what the plugin has. Throws what the plugin said.
    func writeBackDirtyZeroes(
        _ blocks: [UInt64], backend: some Backend, in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        let zeroes = state.withLock { s in blocks.filter { s.map[$0].isZero && s.map[$0].isDirty } }
        guard !zeroes.isEmpty else { return }
        if let error = writeBack(runs(of: zeroes), backend: backend, lockingEach: false) { throw error }
    }

    /// Sends zeroes over `span` to the plugin, in requests it accepts.
    private func sendZeroes(_ span: Range<UInt64>, mayTrim: Bool, backend: some Backend) throws(CacheError) {
        let payload = Payload.zeroes(count: UInt64(span.count), mayTrim: mayTrim)
        var done: UInt64 = 0
        while done < UInt64(span.count) {
            let piece = done..<min(UInt64(span.count), done + backend.transferLimit)
            do { try payload.send(piece, to: backend, at: span.lowerBound + piece.lowerBound, fua: false) } catch {
                throw CacheError(
                    error,
                    "plugin zero of \(piece.count) bytes at \(span.lowerBound + piece.lowerBound) (write back)")
            }
            done = piece.upperBound
        }
        statistics.wroteBack(span, in: geometry)
    }

    /// The block holding the connection's end, which it sees only in part:
    /// what the block holds up to that end goes to the plugin now (so its
    /// flush keeps its promise), and no more than that. A partial block
    /// holding nothing past that end is then clean: kept as a clean block
    /// holding its first bytes when the cache has them all (or takes the
    /// missing ones), else it leaves the cache. Any other stays dirty for a
    /// connection that sees more of it.
    private func writeBackVisiblePart(
        _ block: UInt64, holding held: HeldRanges?, backend: some Backend
    ) -> CacheError? {
        let start = geometry.start(of: block), visible = backend.size - start
        do throws(CacheError) {
            guard let held else {
                try copyToPlugin(start..<backend.size, backend: backend)
                debug("written back: the first \(visible) bytes of block \(block), up to this connection's end")
                return nil
            }
            let heldEnd = UInt64(held.ranges.last?.upperBound ?? 0)
            // How many of the block's first bytes the cache holds once they are sent.
            var kept: UInt64?
            if let span = alone(block, held, backend: backend) {
                try copyToPlugin(span, backend: backend)
                if held.covers(UInt32(heldEnd)) { kept = heldEnd }
            } else {
                // From the block's start to the end of what it holds (whole
                // requests of the plugin's minimum size), or the connection's end.
                let minimum = backend.minimumRequest
                let length = min(visible, (heldEnd + minimum - 1) / minimum * minimum)
                let staging = try Buffer.allocate(Int(length))
                try assembleHeld(block, into: staging.bytes, backend: backend)
                try send(UnsafeRawBufferPointer(staging.bytes), at: start, backend: backend)
                if heldEnd <= visible {
                    do throws(CacheError) {
                        try writeGaps(UnsafeRawBufferPointer(staging.bytes), of: block)
                        kept = length
                    } catch {
                        debug("write back: block \(block) not kept: \(error)")
                    }
                }
            }
            debug.blocks("written back:", [block])
            if heldEnd <= visible {
                if let kept {
                    state.withLock { $0.map.setClean(block, length: UInt32(kept)) }
                } else {
                    dropUnchecked([block])
                }
            }
            return nil
        } catch {
            return error
        }
    }

    /// The bytes a partial block holds, if they can go to the plugin alone:
    /// one range, inside this connection, aligned to the plugin's minimum.
    private func alone(_ block: UInt64, _ held: HeldRanges, backend: some Backend) -> Range<UInt64>? {
        guard held.ranges.count == 1 else { return nil }
        let start = geometry.start(of: block), minimum = backend.minimumRequest, range = held.ranges[0]
        let span = start + UInt64(range.lowerBound)..<start + UInt64(range.upperBound)
        guard span.upperBound <= backend.size, span.lowerBound % minimum == 0,
            span.upperBound % minimum == 0 || span.upperBound == backend.size
        else { return nil }
        return span
    }

    /// Sends a run of dirty and partial blocks as one plugin request (in
    /// pieces the plugin accepts), as far as this connection reaches.
    private func writeBackRun(
        _ run: Range<UInt64>, partials: [UInt64: HeldRanges], backend: some Backend
    ) -> CacheError? {
        let reached = run.clamped(to: geometry.reach(connectionSize: backend.size))
        guard !reached.isEmpty else { return nil }
        let span = geometry.bytes(of: reached, size: .max)
        var unkept: [UInt64] = []
        do throws(CacheError) {
            let staging = try Buffer.allocate(span.count)
            try storage.read(into: staging.bytes, at: span.lowerBound)
            for block in reached where partials[block] != nil {
                let blockSpan = geometry.bytes(of: block..<block + 1, size: .max)
                let from = Int(blockSpan.lowerBound - span.lowerBound)
                let target = UnsafeMutableRawBufferPointer(rebasing: staging.bytes[from..<from + blockSpan.count])
                try assembleHeld(block, into: target, backend: backend)
                do throws(CacheError) {
                    // As `keepAssembled`: not completed past the export's end.
                    guard !reachesPastExportEnd(block, length: target.count) else {
                        throw CacheError(.invalidArgument, "it reaches past the end of the export")
                    }
                    try writeGaps(UnsafeRawBufferPointer(target), of: block)
                    state.withLock { $0.map[block] = .dirty }
                } catch {
                    debug("write back: block \(block) not kept whole: \(error)")
                    unkept.append(block)
                }
            }
            try send(UnsafeRawBufferPointer(staging.bytes), at: span.lowerBound, backend: backend)
        } catch {
            return error
        }
        debug.blocks("written back:", reached)
        state.withLock { s in
            for block in reached where s.map[block] == .dirty { s.map[block] = .clean }
        }
        dropUnchecked(unkept)
        return nil
    }

    /// Copies bytes `span` from the cache file to the plugin.
    private func copyToPlugin(_ span: Range<UInt64>, backend: some Backend) throws(CacheError) {
        let staging = try Buffer.allocate(span.count)
        try storage.read(into: staging.bytes, at: span.lowerBound)
        try send(UnsafeRawBufferPointer(staging.bytes), at: span.lowerBound, backend: backend)
    }

    private func send(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, backend: some Backend) throws(CacheError) {
        do { try backend.writeAll(bytes, at: offset, fua: false) } catch {
            throw CacheError(error, "plugin write of \(bytes.count) bytes at \(offset) (write back)")
        }
        statistics.wroteBack(offset..<offset + UInt64(bytes.count), in: geometry)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// The block layer: the one owner of the block map, the LRU, the block
/// locks, the cache file, the block geometry and the cache-size accounting.
/// Every change of a block's state happens in this type (and its extensions
/// for write-back and reclaim); the request paths above it only call down.
///
/// Its lock (`state`) is held only to read or change that state, never
/// across plugin or cache-file I/O. Requests lock the blocks they touch
/// instead, and every method that changes blocks takes the token that
/// locking them exclusively returns (`HeldBlocks<Exclusive>`), so the
/// compiler checks that the caller holds them.
///
/// Whole blocks: connections opened at different times see the export at
/// different sizes, and a block one of them sees in part (the one holding its
/// end) another may see whole. So a block is cached whole (clean, dirty, known
/// zeroes) only as all of its `blockSize` bytes, through a connection that
/// sees them all (`BlockGeometry.reach`). What a connection writes of a block
/// it sees in part is kept as a partial block; what it reads of one is kept
/// as a clean block that says how many bytes it holds, which serves only
/// connections that see no more of it. So a growth leaves every block as it
/// is, and a write-back sends what a block holds as far as the connection
/// it goes through sees.
final class BlockStore: @unchecked Sendable {
    let geometry: BlockGeometry
    let storage: any CacheStorage
    /// cache-max-size's thresholds, in blocks (nil: no limit).
    let limit: SizeLimit?
    let debug: DebugLog
    /// How many write-back requests may be in flight at once.
    let writeBackThreads: Int
    /// cache-max-size's account, shared with the other exports' caches.
    let budget: CacheBudget
    let statistics: Statistics
    let state: ConditionLock<State, BlockEvent>

    struct State {
        /// The size the last connection to open saw.
        var exportSize: UInt64 = 0
        /// Each change reaches the statistics' gauges (see `BlockGauges`).
        var map = BlockMap(blocks: 0) {
            didSet { gauges.update(occupied: map.occupiedCount, dirty: map.dirtyCount, zero: map.zeroCount) }
        }
        var lru: LRU
        var locks = RangeLocks()
        /// Blocks set aside by requests about to store new blocks.
        var reserved: UInt64 = 0
        /// One thread reclaims at a time.
        var reclaiming = false
        /// Where the last reclaim without an LRU order stopped.
        var reclaimHand: UInt64 = 0
        /// What the statistics' gauges last heard of `map`.
        var gauges: BlockGauges

        var occupiedOrReserved: UInt64 { map.occupiedCount + reserved }
    }

    /// cache-max-size in blocks: reclaim starts above `high` and stops at `low`.
    struct SizeLimit {
        let high: UInt64
        let low: UInt64
    }

    init(
        config: CacheConfig, storage: any CacheStorage, debug: DebugLog, writeBackThreads: Int,
        budget: CacheBudget, statistics: Statistics
    ) {
        geometry = BlockGeometry(blockSize: max(config.minBlockSize, storage.fileSystemBlockSize))
        self.storage = storage
        self.debug = debug
        self.writeBackThreads = max(1, writeBackThreads)
        self.statistics = statistics
        let shift = geometry.shift
        limit = config.maxSize.map { maxSize in
            let high = max(1, percent(config.highThreshold, of: maxSize) >> shift)
            return SizeLimit(high: high, low: min(percent(config.lowThreshold, of: maxSize) >> shift, high - 1))
        }
        // A generation is half of what the cache may hold: "recent" then means
        // roughly the newer half of the cache.
        let capacity = config.maxSize.map { $0 >> shift } ?? 0
        state = ConditionLock(
            State(
                lru: LRU(blocks: 0, generationSize: capacity / 2),
                gauges: BlockGauges(statistics: statistics, blockShift: shift)))
        self.budget = budget
        budget.add(self)
    }

    // MARK: Locking blocks

    /// Locks `blocks` exclusively, waiting until no one else holds any of them.
    func lock(_ blocks: Range<UInt64>) -> HeldBlocks<Exclusive> {
        state.withLock(waitingFor: .blocksReleased, until: { $0.locks.canAcquire(blocks, exclusive: true) }) {
            $0.locks.acquire(blocks, exclusive: true)
        }
        return HeldBlocks(blocks: blocks, store: self)
    }

    /// Locks `blocks` for a read: exclusively when `exclusive` says so of the
    /// block map at the moment they are free, else shared.
    func lockForRead(_ blocks: Range<UInt64>, exclusiveIf exclusive: (BlockMap) -> Bool) -> ReadLock {
        var wantExclusive = false
        state.withLock(
            waitingFor: .blocksReleased,
            until: { s in
                wantExclusive = exclusive(s.map)
                return s.locks.canAcquire(blocks, exclusive: wantExclusive)
            }
        ) { s in
            s.locks.acquire(blocks, exclusive: wantExclusive)
        }
        return wantExclusive
            ? .exclusive(HeldBlocks(blocks: blocks, store: self))
            : .shared(HeldBlocks(blocks: blocks, store: self))
    }

    /// Only `HeldBlocks` calls this, when it goes.
    fileprivate func unlock(_ blocks: Range<UInt64>, exclusive: Bool) {
        state.withLock(signalling: .blocksReleased) { $0.locks.release(blocks, exclusive: exclusive) }
    }

    // MARK: Reading the state

    var exportSize: UInt64 { state.withLock { $0.exportSize } }

    func state(of block: UInt64) -> BlockState { state.withLock { $0.map[block] } }

    func states(_ blocks: Range<UInt64>) -> [BlockState] { state.withLock { s in blocks.map { s.map[$0] } } }

    func held(_ block: UInt64) -> HeldRanges? { state.withLock { $0.map.held(block) } }

    var occupiedBlocks: UInt64 { state.withLock { $0.map.occupiedCount } }
    var occupiedOrReserved: UInt64 { state.withLock { $0.occupiedOrReserved } }
    var dirtyBlockCount: UInt64 { state.withLock { $0.map.dirtyCount } }

    /// Blocks not yet written back, and the bytes they hold (a partial block only its ranges).
    var dirtyAccount: (blocks: UInt64, bytes: UInt64) {
        state.withLock { s in
            let partialBytes = s.map.partials.values.reduce(UInt64(0)) { sum, held in
                sum + held.ranges.reduce(0) { $0 + UInt64($1.count) }
            }
            let wholeBlocks = s.map.dirtyCount - UInt64(s.map.partials.count)
            return (s.map.dirtyCount, wholeBlocks << geometry.shift + partialBytes)
        }
    }
    var partialBlockCount: Int { state.withLock { $0.map.partials.count } }

    /// The runs of blocks whose block status is the cache's (see `BlockMap.statusRuns`).
    func statusRuns(in blocks: Range<UInt64>) -> [(blocks: Range<UInt64>, state: BlockState)] {
        state.withLock { $0.map.statusRuns(in: blocks) }
    }

    func firstPartial(in blocks: Range<UInt64>) -> UInt64? { state.withLock { $0.map.firstPartial(in: blocks) } }

    /// What a read through a connection of `connectionSize` bytes finds
    /// from block `from` on, and where the run of blocks like it ends (before
    /// `end`). A cached run counts as used (LRU).
    func readRun(from: UInt64, to end: UInt64, connectionSize: UInt64) -> (kind: ReadRun, end: UInt64) {
        state.withLock { s in
            var run = s.map.readRun(from: from, to: end)
            if run.kind == .cached,
                let short = firstCleanInPart(s.map, in: from..<run.end, connectionSize: connectionSize)
            {
                run = short == from ? (.uncached, from + 1) : (.cached, short)
            }
            if run.kind == .cached, limit != nil { s.lru.touch(from..<run.end) }
            return run
        }
    }

    /// The first clean block in `blocks` holding fewer bytes than a
    /// connection of `connectionSize` bytes sees of it (`BlockMap.setClean`).
    func firstCleanInPart(_ map: BlockMap, in blocks: Range<UInt64>, connectionSize: UInt64) -> UInt64? {
        map.firstCleanInPart(in: blocks) { block in
            let start = geometry.start(of: block)
            return connectionSize > start ? min(geometry.blockSize, connectionSize - start) : 0
        }
    }

    /// How many of `blocks` have no storage (storing data in them needs room).
    func unoccupiedCount(in blocks: Range<UInt64>) -> UInt64 {
        state.withLock { s in blocks.reduce(0) { $0 + (s.map[$1].occupiesStorage ? 0 : 1) } }
    }

    /// The run of blocks without storage from `from` on (before `end`).
    func unoccupiedRun(from: UInt64, to end: UInt64) -> Range<UInt64> {
        state.withLock { s in from..<max(from, min(end, s.map.occupied(from: from) ?? end)) }
    }

    /// Which of these not-cached or partial blocks may also hold the given
    /// range without passing the partial-block limits (see `BlockMap.holdable`).
    func holdable(_ candidates: [(block: UInt64, range: Range<UInt32>)]) -> [UInt64] {
        state.withLock { $0.map.holdable(candidates) }
    }

    /// The longest prefix of `blocks` holding at most `count` blocks without storage.
    func prefix(of blocks: Range<UInt64>, unoccupiedAtMost count: UInt64) -> Range<UInt64> {
        state.withLock { s in
            var seen: UInt64 = 0
            for block in blocks where !s.map[block].occupiesStorage {
                if seen == count { return blocks.lowerBound..<block }
                seen += 1
            }
            return blocks
        }
    }

    // MARK: The export's size

    /// Sizes the cache for an export of `size` bytes, as a connection opening
    /// now sees it. Shrinking forgets what lies past the new end, so a later
    /// growth reads the plugin's new bytes; a dirty block there is lost with
    /// the end of the disk, and logged. Growing keeps every block but clean
    /// copies of bytes past the old end (read through a connection that saw
    /// the export larger, before it shrank): the plugin's bytes there may be
    /// new. Dirty blocks there (written through such a connection) stay.
    func resize(to size: UInt64) throws(CacheError) {
        let old = exportSize
        guard size != old else { return }
        if size > old {
            try grow(from: old, to: size)
        } else {
            shrink(from: old, to: size)
        }
    }

    private func grow(from old: UInt64, to size: UInt64) throws(CacheError) {
        let blocks = geometry.blockCount(of: size)
        // Block states (and LRU) cost 3 (5) bits a block: refuse an export
        // whose map would not fit in half of the machine's memory.
        let mapBytes = blocks / 8 * (limit == nil ? 3 : 5)
        let memory = physicalMemory()
        guard memory == 0 || mapBytes <= memory / 2 else {
            throw CacheError(
                .noMemory,
                "an export of \(size) bytes needs \(mapBytes) bytes of cache metadata "
                    + "with \(geometry.blockSize)-byte blocks (raise cache-min-block-size)")
        }
        try state.withLock { (s: inout State) throws(CacheError) in
            if blocks > s.map.blockCount {
                try storage.resize(to: blocks << geometry.shift)
                // Both or neither: the LRU must cover every block of the map.
                var (map, lru) = (s.map, s.lru)
                try map.grow(to: blocks)
                if limit != nil { try lru.grow(to: blocks) }
                (s.map, s.lru) = (map, lru)
            }
            s.exportSize = max(s.exportSize, size)
        }
        let candidates = state.withLock { s in usedOrKnown(from: old >> geometry.shift, in: s) }
        for run in runs(of: candidates) {
            let held = lock(run)
            let stale = state.withLock { s in
                run.filter { block in
                    let length = UInt64(s.map.cleanLengths[block] ?? UInt32(geometry.blockSize))
                    switch s.map[block] {
                    case .zero: return true
                    case .clean: return geometry.start(of: block) + length > old
                    case .notCached, .dirty, .partial, .dirtyZero: return false
                    }
                }
            }
            debug.blocks("the export grew: clean copies past its old end dropped:", stale)
            drop(stale, in: held)
        }
    }

    private func shrink(from old: UInt64, to size: UInt64) {
        let first = geometry.blockCount(of: size)
        // Blocks past the new end that hold data, or that requests of older
        // connections are using (a fill in flight): each run is taken
        // (waiting for those requests), punched and forgotten.
        let past: [UInt64] = state.withLock { s in
            s.exportSize = size
            return usedOrKnown(from: first, in: s)
        }
        // The new last block, if the new end cuts it: its bytes past the end are gone.
        if size % geometry.blockSize != 0 {
            let block = size >> geometry.shift
            let held = lock(block..<block + 1)
            let clean = state.withLock { s in
                s.map.cut(block, at: UInt32(size - geometry.start(of: block)))
                return [.clean, .zero].contains(s.map[block])
            }
            if clean { drop([block], in: held) }
        }
        for run in runs(of: past) {
            let held = lock(run)
            let (taken, dirty) = state.withLock { s in
                (run.filter { s.map[$0] != .notCached }, run.filter { s.map[$0].isDirty }.count)
            }
            if dirty > 0 {
                debug.warn(
                    "the export shrank from \(old) to \(size) bytes: \(dirty) dirty blocks in \(run) lay "
                        + "past its new end and are dropped")
            }
            drop(taken, in: held)
        }
    }

    /// Blocks from `first` on that requests hold (a fill may be in flight)
    /// or that are in any state but not cached.
    private func usedOrKnown(from first: UInt64, in s: State) -> [UInt64] {
        var blocks = Set(s.locks.lockedBlocks(from: first))
        var from = first
        while let block = s.map.known(from: from) {
            blocks.insert(block)
            from = block + 1
        }
        return Array(blocks)
    }

    // MARK: Changing blocks (the caller holds them)

    /// Keeps `data`, read from the plugin, as blocks `chunk`: clean, or
    /// known zeroes (no data stored) where a whole block is zeroes. The hole
    /// is punched, not assumed: an uncached block may still hold old bytes.
    /// `data` may end inside the last block (the end of the connection's
    /// export): that block is kept clean, holding what `data` has of it.
    func keepClean(
        _ data: UnsafeRawBufferPointer, as chunk: Range<UInt64>, in held: borrowing HeldBlocks<Exclusive>,
        using reservation: inout Reservation
    ) throws(CacheError) {
        let start = geometry.start(of: chunk.lowerBound)
        func bytes(_ run: Range<UInt64>) -> UnsafeRawBufferPointer {
            let from = Int(geometry.start(of: run.lowerBound) - start)
            return UnsafeRawBufferPointer(rebasing: data[from..<min(data.count, from + run.count << geometry.shift)])
        }
        let lastLength = UInt64(data.count) - UInt64(chunk.count - 1) << geometry.shift
        let short = lastLength < geometry.blockSize ? chunk.last : nil
        var zeroes: [UInt64] = []
        for block in chunk where block != short && bytes(block..<block + 1).isAllZero { zeroes.append(block) }
        var next = chunk.lowerBound
        for run in runs(of: zeroes) + [chunk.upperBound..<chunk.upperBound] {
            if next < run.lowerBound { try storage.write(bytes(next..<run.lowerBound), at: geometry.start(of: next)) }
            if !run.isEmpty {
                debug.blocks("cache from the plugin, known zeroes:", run)
                let span = bytes(run)
                try storage.zero(at: geometry.start(of: run.lowerBound), length: UInt64(span.count))
            }
            next = run.upperBound
        }
        let known = Set(zeroes)
        state.withLock { s in
            let newlyStored = chunk.filter { !known.contains($0) && !s.map[$0].occupiesStorage }.count
            reservation.use(UInt64(newlyStored), from: &s)
            for block in chunk {
                if known.contains(block), limit != nil, s.map[block].occupiesStorage { s.lru.forget(block) }
                if known.contains(block) {
                    s.map[block] = .zero
                } else {
                    s.map.setClean(block, length: block == short ? UInt32(lastLength) : nil)
                }
                if limit != nil, !known.contains(block) { s.lru.touch(block..<block + 1) }
            }
        }
    }

    /// Records whole blocks `blocks` as dirty zeroes (a zero request, or a
    /// write of whole blocks of zeroes): their storage is punched, so the
    /// cache file reads zeroes there, and they take no room.
    func keepZeroes(
        _ blocks: Range<UInt64>, mayTrim: Bool,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        let bytes = geometry.bytes(of: blocks, size: .max)
        try storage.zero(at: bytes.lowerBound, length: UInt64(bytes.count))
        debug.blocks("write to the cache (zeroes):", blocks)
        state.withLock { s in
            for block in blocks {
                if limit != nil, s.map[block].occupiesStorage { s.lru.forget(block) }
                s.map[block] = .dirtyZero(mayTrim: mayTrim)
            }
        }
    }

    /// The plugin takes bytes `span` of `blocks` straight (no room in the
    /// cache, or the cache file failed): what the blocks held there is
    /// forgotten (see `BlockMap.release`), and blocks left with nothing
    /// lose their storage. A block of dirty zeroes that `span` covers in
    /// part writes its other zeroes back first (`writeBackZeroes(around:)`);
    /// if the plugin fails that, nothing changes and this throws.
    func release(
        _ span: Range<UInt64>, of blocks: Range<UInt64>, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        guard !blocks.isEmpty else { return }
        // Only the first and the last block can be covered in part.
        var zeroesSent: [UInt64] = []
        for block in Set([blocks.lowerBound, blocks.upperBound - 1])
        where try writeBackZeroes(around: geometry.part(of: block, in: span), of: block, backend: backend) {
            zeroesSent.append(block)
        }
        let emptied: [UInt64] = state.withLock { s in
            blocks.filter { block in
                guard s.map[block] != .notCached else { return false }
                if zeroesSent.contains(block) { return true }
                let released = geometry.part(of: block, in: span)
                return !s.map.release(released, in: block, length: UInt32(geometry.blockSize))
            }
        }
        debug.blocks("handed to the plugin, dropped:", emptied)
        dropUnchecked(emptied)
    }

    /// Stores bytes `range` of a write's payload at `span`, which covers
    /// blocks `chunk`: they become dirty, except the blocks in `parts`,
    /// which hold the given range of their bytes (partial).
    /// If the cache file fails, clean copies it may have changed are dropped.
    func keepWritten(
        _ payload: Payload, _ range: Range<UInt64>, at span: Range<UInt64>, as chunk: Range<UInt64>,
        parts: [UInt64: Range<UInt32>], in held: borrowing HeldBlocks<Exclusive>,
        using reservation: inout Reservation
    ) throws(CacheError) {
        let before = states(chunk)
        do {
            try payload.store(range, in: storage, at: span.lowerBound)
        } catch {
            drop(chunk.filter { [.clean, .zero].contains(before[Int($0 - chunk.lowerBound)]) }, in: held)
            throw error
        }
        debug.blocks("write to the cache (dirty):", chunk)
        state.withLock { s in
            reservation.use(before.reduce(0) { $0 + ($1.occupiesStorage ? 0 : 1) }, from: &s)
            for block in chunk {
                if let part = parts[block] {
                    s.map.hold(part, in: block, length: UInt32(geometry.blockSize))
                } else {
                    s.map[block] = .dirty
                }
            }
            if limit != nil { s.lru.touch(chunk) }
        }
    }

    /// A write is about to change `blocks`. A clean block (or known zeroes)
    /// only the first bytes of which may pass for the export's, because it
    /// holds no more (`BlockMap.setClean`) or because it reaches past the
    /// export's end (read through a connection that saw the export larger,
    /// before it shrank), keeps only those: as a partial block holding them,
    /// so that what the write keeps joins them and the rest never passes for
    /// written bytes (`BlockMap.holdCleanPart`); known zeroes, blocks with
    /// none such bytes and, `through` (the plugin gets the write), every one
    /// of them are dropped instead.
    func prepareCleanParts(_ blocks: Range<UInt64>, through: Bool, in held: borrowing HeldBlocks<Exclusive>) {
        let dropped: [UInt64] = state.withLock { s in
            let firstPast = min(max(s.exportSize >> geometry.shift, blocks.lowerBound), blocks.upperBound)
            let pastEnd = firstPast..<blocks.upperBound
            var dropped: [UInt64] = []
            for block in Set(s.map.cleanLengths.keys.filter { blocks.contains($0) } + Array(pastEnd)) {
                let state = s.map[block]
                guard state == .clean || state == .zero else { continue }
                let start = geometry.start(of: block)
                let inExport = s.exportSize > start ? min(geometry.blockSize, s.exportSize - start) : 0
                let length = min(UInt64(s.map.cleanLengths[block] ?? UInt32(geometry.blockSize)), inExport)
                guard length < geometry.blockSize else { continue }
                if through || state == .zero || length == 0 {
                    dropped.append(block)
                } else {
                    s.map.holdCleanPart(block, length: UInt32(length))
                }
            }
            return dropped
        }
        drop(dropped, in: held)
    }

    /// Marks dirty blocks clean once the plugin holds what they hold.
    func markClean(_ blocks: [UInt64], in held: borrowing HeldBlocks<Exclusive>) {
        state.withLock { s in
            for block in blocks {
                switch s.map[block] {
                case .dirty: s.map[block] = .clean
                case .dirtyZero: s.map[block] = .zero
                case .notCached, .clean, .partial, .zero: break
                }
            }
        }
    }

    /// Forgets cached copies: their storage is freed, one hole per run of
    /// blocks, and they read from the plugin again.
    func drop(_ blocks: [UInt64], in held: borrowing HeldBlocks<Exclusive>) {
        dropUnchecked(blocks)
    }

    /// `drop` for blocks this layer holds on its callers' behalf.
    func dropUnchecked(_ blocks: [UInt64]) {
        guard !blocks.isEmpty else { return }
        for run in runs(of: blocks) {
            let bytes = geometry.bytes(of: run, size: .max)
            do { try storage.discard(at: bytes.lowerBound, length: UInt64(bytes.count)) } catch {
                debug("drop blocks \(run): \(error)")
            }
        }
        state.withLock { s in
            for block in blocks { forget(block, in: &s) }
        }
    }

    private func forget(_ block: UInt64, in s: inout State) {
        s.map[block] = .notCached
        if limit != nil { s.lru.forget(block) }
    }

    /// A block's bytes, assembled in memory into `target` (the block's
    /// length): the plugin's, with the ranges a partial block holds read from
    /// the cache file over them; known zeroes need no plugin read. Needs no
    /// room in the cache file (a full one must never strand written bytes).
    /// Bytes past the end of the connection's export are not read: zeroes.
    /// The plugin is not read when the block holds all the bytes wanted.
    func assemble(
        _ block: UInt64, into target: UnsafeMutableRawBufferPointer, backend: some Backend,
        in held: borrowing HeldBlocks<Exclusive>
    ) throws(CacheError) {
        try assembleHeld(block, into: target, backend: backend)
    }

    /// `assemble` for a block this layer holds on its caller's behalf.
    func assembleHeld(
        _ block: UInt64, into target: UnsafeMutableRawBufferPointer, backend: some Backend
    ) throws(CacheError) {
        if state(of: block).isZero {
            target.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let start = geometry.start(of: block)
        let readable = Int(min(UInt64(target.count), backend.size > start ? backend.size - start : 0))
        let heldRanges = held(block)
        if heldRanges?.covers(UInt32(readable)) != true {
            debug.blocks("read from the plugin to complete:", [block])
            try backend.readAll(into: UnsafeMutableRawBufferPointer(rebasing: target[..<readable]), at: start)
        }
        UnsafeMutableRawBufferPointer(rebasing: target[readable...]).initializeMemory(as: UInt8.self, repeating: 0)
        for range in heldRanges?.ranges ?? [] where Int(range.lowerBound) < target.count {
            let upper = min(Int(range.upperBound), target.count)
            try storage.read(
                into: UnsafeMutableRawBufferPointer(rebasing: target[Int(range.lowerBound)..<upper]),
                at: start + UInt64(range.lowerBound))
        }
    }

    /// Keeps a block assembled (`assemble`): a partial block's gaps are
    /// written and it becomes dirty; a block without storage is written
    /// (this needs room) and becomes dirty if it held dirty zeroes, else
    /// clean. `bytes` may be the first bytes only, of the block holding the
    /// end of the connection's export: a partial block then holds them all,
    /// a clean one says it holds only them (see "Whole blocks"). A partial
    /// block is not completed past the export's end (a connection that saw
    /// it larger, before it shrank): the plugin's bytes there are not the
    /// export's, and would pass for written ones.
    func keepAssembled(
        _ bytes: UnsafeRawBufferPointer, as block: UInt64, in held: borrowing HeldBlocks<Exclusive>,
        using reservation: inout Reservation
    ) throws(CacheError) {
        let before = state(of: block)
        guard before != .partial || !reachesPastExportEnd(block, length: bytes.count) else {
            throw CacheError(.invalidArgument, "block \(block) reaches past the end of the export: kept partial")
        }
        try writeGaps(bytes, of: block)
        let length = UInt32(bytes.count), whole = UInt64(bytes.count) == geometry.blockSize
        state.withLock { s in
            if !before.occupiesStorage { reservation.use(1, from: &s) }
            switch (before.isDirty, whole) {
            case (true, true): s.map[block] = .dirty
            case (true, false): s.map.hold(0..<length, in: block, length: UInt32(geometry.blockSize))
            case (false, _): s.map.setClean(block, length: whole ? nil : length)
            }
            if limit != nil { s.lru.touch(block..<block + 1) }
        }
    }

    /// Whether the first `length` bytes of `block` reach past the end of the
    /// export as the last connection to open saw it.
    func reachesPastExportEnd(_ block: UInt64, length: Int) -> Bool {
        geometry.start(of: block) + UInt64(length) > exportSize
    }

    /// Writes the bytes of an assembled block that the cache lacks (all of
    /// them if it is not partial).
    func writeGaps(_ bytes: UnsafeRawBufferPointer, of block: UInt64) throws(CacheError) {
        let start = geometry.start(of: block)
        let ranges = held(block)
        for gap in ranges?.gaps(UInt32(bytes.count)) ?? [0..<UInt32(bytes.count)] {
            try storage.write(
                UnsafeRawBufferPointer(rebasing: bytes[Int(gap.lowerBound)..<Int(gap.upperBound)]),
                at: start + UInt64(gap.lowerBound))
        }
    }

    /// Reads cached bytes (the caller holds their blocks, shared or not).
    func readCached<Access>(
        into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64,
        in held: borrowing HeldBlocks<Access>
    ) throws(CacheError) {
        try storage.read(into: buffer, at: offset)
    }

    /// Blocks in runs of adjacent blocks, sorted.
    func runs(of blocks: [UInt64], limit: UInt64 = .max) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        for block in blocks.sorted() {
            if let last = runs.last, last.upperBound == block, UInt64(last.count) < limit {
                runs[runs.count - 1] = last.lowerBound..<block + 1
            } else {
                runs.append(block..<block + 1)
            }
        }
        return runs
    }
}

/// What wakes a thread waiting on the block layer's lock.
enum BlockEvent: CaseIterable {
    /// Blocks were unlocked: a request waiting to lock them looks again.
    case blocksReleased
    /// A reclaim ended: a request waiting for room looks again.
    case reclaimEnded
}

/// How blocks are held: shared (reading cached bytes) or exclusive (changing them).
protocol BlockAccess { static var isExclusive: Bool { get } }
enum Shared: BlockAccess { static let isExclusive = false }
enum Exclusive: BlockAccess { static let isExclusive = true }

// The initializer is written out so that it stays fileprivate whatever the
// properties' access.
// swift-format-ignore: UseSynthesizedInitializer
/// Proof that the caller holds `blocks`; they are unlocked when it goes.
/// Only the block layer makes one, by locking the blocks.
struct HeldBlocks<Access: BlockAccess>: ~Copyable {
    let blocks: Range<UInt64>
    fileprivate let store: BlockStore

    fileprivate init(blocks: Range<UInt64>, store: BlockStore) {
        self.blocks = blocks
        self.store = store
    }

    deinit { store.unlock(blocks, exclusive: Access.isExclusive) }
}

/// Blocks locked for a read: shared, or exclusive when the read must change them.
enum ReadLock: ~Copyable {
    case shared(HeldBlocks<Shared>)
    case exclusive(HeldBlocks<Exclusive>)
}

/// Room in the cache for `blocks` more blocks, set aside by
/// `BlockStore.reserve` so that concurrent requests cannot all count the
/// same room: `chunk` is the part of the request it covers. Storing a new
/// block uses one; what is left is given back when the reservation goes.
struct Reservation: ~Copyable {
    private(set) var blocks: UInt64
    let chunk: Range<UInt64>
    /// nil when there is no limit to account for.
    private let store: BlockStore?

    init(blocks: UInt64, chunk: Range<UInt64>, store: BlockStore?) {
        self.blocks = blocks
        self.chunk = chunk
        self.store = store
    }

    /// Turns `count` reserved blocks into stored ones (under the state lock).
    mutating func use(_ count: UInt64, from s: inout BlockStore.State) {
        guard store != nil else { return }
        let used = min(count, blocks)
        blocks -= used
        s.reserved -= used
    }

    deinit {
        if let store, blocks > 0 {
            let left = blocks
            store.state.withLock { $0.reserved -= left }
        }
    }
}

/// `p`% of `size`, saturating (thresholds are any unsigned int).
private func percent(_ p: UInt64, of size: UInt64) -> UInt64 {
    let (whole, overflow) = (size / 100).multipliedReportingOverflow(by: p)
    let (sum, overflow2) = whole.addingReportingOverflow(size % 100 * p / 100)
    return overflow || overflow2 ? .max : sum
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// Block status: the plugin's answer, except where the cache knows better.
///
/// Dirty blocks hold bytes the plugin has not seen, so the plugin's "hole"
/// or "zero" is wrong for them; a client trusting it (nbdcopy, qemu-img)
/// would skip the data: they are data. Dirty zeroes are zero (and a hole
/// where the client allowed one); known zeroes the plugin also has are zero,
/// with the plugin's hole bit. Clean blocks match the plugin, whose answer
/// stands. A block whose state changes while the plugin answers gets the
/// answer true of both states (data, if they disagree on zeroes).
extension Engine {
    public func extents(
        count: UInt64, at offset: UInt64, onlyOne: Bool,
        backend: some Backend
    ) throws(CacheError) -> [Extent] {
        let backend = counting(.extents, backend)
        guard count > 0 else { return [] }
        try checkBounds(offset: offset, count: count, backend: backend)
        let covered = geometry.blocks(covering: offset, count: count)
        let before = blocks.statusRuns(in: covered)
        let plugin: [Extent]
        do { plugin = try backend.extents(count: count, at: offset, onlyOne: onlyOne) } catch {
            throw CacheError(error, "plugin extents of \(count) bytes at \(offset)")
        }
        let overrides = statusOverrides(before, blocks.statusRuns(in: covered))
        let request = offset..<offset + count
        var result: [Extent] = []
        func append(_ range: Range<UInt64>, _ type: UInt32) {
            guard !range.isEmpty else { return }
            if let last = result.last, last.type == type, last.offset + last.length == range.lowerBound {
                result[result.count - 1].length += UInt64(range.count)
            } else {
                result.append(Extent(offset: range.lowerBound, length: UInt64(range.count), type: type))
            }
        }
        var next = overrides.startIndex
        for extent in plugin {
            let range = (extent.offset..<extent.offset + extent.length).clamped(to: request)
            guard !range.isEmpty else { continue }
            var cursor = range.lowerBound
            while next < overrides.endIndex && overrides[next].bytes.upperBound <= cursor { next += 1 }
            var i = next
            while i < overrides.endIndex, overrides[i].bytes.lowerBound < range.upperBound {
                let known = overrides[i].bytes.clamped(to: cursor..<range.upperBound)
                append(cursor..<max(cursor, known.lowerBound), extent.type)
                append(known, overrides[i].status.type(plugin: extent.type))
                cursor = max(cursor, known.upperBound)
                i += 1
            }
            append(cursor..<range.upperBound, extent.type)
        }
        if result.first?.offset != offset {
            // The plugin must describe `offset`; if it did not, claim data (always safe).
            let length = (result.first?.offset ?? offset + count) - offset
            result.insert(Extent(offset: offset, length: length, type: 0), at: 0)
        }
        return result
    }

    /// The byte ranges whose status is the cache's, from the runs of block
    /// states before and after the plugin answered (sorted, disjoint).
    private func statusOverrides(
        _ before: [(blocks: Range<UInt64>, state: BlockState)],
        _ after: [(blocks: Range<UInt64>, state: BlockState)]
    ) -> [(bytes: Range<UInt64>, status: KnownStatus)] {
        // Every place a run starts or ends, before or after: between two of
        // them each side is one state (or the plugin's answer).
        let edges = Set((before + after).flatMap { [$0.blocks.lowerBound, $0.blocks.upperBound] }).sorted()
        func known(
            _ runs: [(blocks: Range<UInt64>, state: BlockState)], _ next: inout Int,
            at block: UInt64
        ) -> KnownStatus? {
            while next < runs.count && runs[next].blocks.upperBound <= block { next += 1 }
            return next < runs.count && runs[next].blocks.contains(block) ? KnownStatus(runs[next].state) : nil
        }
        var overrides: [(bytes: Range<UInt64>, status: KnownStatus)] = []
        var nextBefore = 0, nextAfter = 0
        for (start, end) in zip(edges, edges.dropFirst()) {
            guard
                let status = KnownStatus.both(
                    known(before, &nextBefore, at: start),
                    known(after, &nextAfter, at: start))
            else { continue }
            let bytes = geometry.bytes(of: start..<end, size: .max)
            if let last = overrides.last, last.status == status, last.bytes.upperBound == bytes.lowerBound {
                overrides[overrides.count - 1].bytes = last.bytes.lowerBound..<bytes.upperBound
            } else {
                overrides.append((bytes, status))
            }
        }
        return overrides
    }
}

/// What the cache knows of a block's status better than the plugin.
private enum KnownStatus: Equatable {
    /// Bytes the plugin has not seen.
    case data
    /// Zeroes the plugin has not seen; a hole if the client allowed one.
    case zeroes(hole: Bool)
    /// Zeroes the plugin has too: its hole bit stands.
    case pluginZeroes

    init?(_ state: BlockState) {
        switch state {
        case .dirty, .partial: self = .data
        case .dirtyZero(let mayTrim): self = .zeroes(hole: mayTrim)
        case .zero: self = .pluginZeroes
        case .notCached, .clean: return nil
        }
    }

    /// The status true of a block in either state (nil: the plugin's answer).
    static func both(_ a: KnownStatus?, _ b: KnownStatus?) -> KnownStatus? {
        switch (a, b) {
        case (nil, nil): nil
        case (let a?, let b?) where a == b: a
        case (.data, _), (_, .data), (nil, _), (_, nil): .data
        default: .zeroes(hole: false)
        }
    }

    func type(plugin: UInt32) -> UInt32 {
        switch self {
        case .data: 0
        case .zeroes(let hole): hole ? Extent.hole | Extent.zero : Extent.zero
        case .pluginZeroes: (plugin & Extent.hole) | Extent.zero
        }
    }
}

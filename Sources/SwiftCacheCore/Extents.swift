import SystemPackage

/// Block status: the plugin's answer, except that dirty blocks are data.
///
/// Dirty blocks hold bytes the plugin has not seen, so the plugin's "hole"
/// or "zero" is wrong for them; a client trusting it (nbdcopy, qemu-img)
/// would skip the data. Clean blocks match the plugin, whose answer stands.
/// A block dirty before or after the plugin call counts as dirty: a flush
/// or reclaim may write it back while the plugin is answering.
extension Engine {
    public func extents(count: UInt64, at offset: UInt64, onlyOne: Bool,
                        backend: some Backend) throws(CacheError) -> [Extent] {
        let backend = counting(.extents, backend)
        guard count > 0 else { return [] }
        try checkBounds(offset: offset, count: count, backend: backend)
        let covered = geometry.blocks(covering: offset, count: count)
        let dirtyBefore = blocks.dirtyRuns(in: covered)
        let plugin: [Extent]
        do { plugin = try backend.extents(count: count, at: offset, onlyOne: onlyOne) } catch {
            throw CacheError(error, "plugin extents of \(count) bytes at \(offset)")
        }
        let dirty = union(dirtyBefore, blocks.dirtyRuns(in: covered))
            .map { geometry.bytes(of: $0, size: .max) }
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
        var next = dirty.startIndex
        for extent in plugin {
            let range = (extent.offset..<extent.offset + extent.length).clamped(to: request)
            guard !range.isEmpty else { continue }
            var cursor = range.lowerBound
            while next < dirty.endIndex && dirty[next].upperBound <= cursor { next += 1 }
            var i = next
            while extent.type != 0, i < dirty.endIndex, dirty[i].lowerBound < range.upperBound {
                let data = dirty[i].clamped(to: cursor..<range.upperBound)
                append(cursor..<max(cursor, data.lowerBound), extent.type)
                append(data, 0)
                cursor = max(cursor, data.upperBound)
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
}

/// The union of two sorted lists of disjoint ranges, sorted.
private func union(_ a: [Range<UInt64>], _ b: [Range<UInt64>]) -> [Range<UInt64>] {
    var merged: [Range<UInt64>] = []
    for range in (a + b).sorted(by: { $0.lowerBound < $1.lowerBound }) {
        if let last = merged.last, range.lowerBound <= last.upperBound {
            merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
        } else {
            merged.append(range)
        }
    }
    return merged
}

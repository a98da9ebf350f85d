import SystemPackage

/// Block status: the plugin's answer, except that dirty blocks are data.
///
/// Dirty blocks hold bytes the plugin has not seen, so the plugin's "hole"
/// or "zero" is wrong for them; a client trusting it (nbdcopy, qemu-img)
/// would skip the data. Clean blocks match the plugin, whose answer stands.
extension Engine {
    public func extents(count: UInt64, at offset: UInt64, onlyOne: Bool, backend: some Backend) throws(CacheError) -> [Extent] {
        guard count > 0 else { return [] }
        _ = try checkBounds(offset: offset, count: count)
        let plugin: [Extent]
        do { plugin = try backend.extents(count: count, at: offset, onlyOne: onlyOne) } catch {
            throw CacheError(error, "plugin extents of \(count) bytes at \(offset)")
        }
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
        state.withLock { s in
            for extent in plugin {
                let range = (extent.offset..<extent.offset + extent.length).clamped(to: request)
                guard !range.isEmpty else { continue }
                guard extent.type != 0, s.blocks.dirtyCount > 0 else {
                    append(range, extent.type)
                    continue
                }
                var cursor = range.lowerBound
                let lastBlock = blocks(covering: range.lowerBound, count: UInt64(range.count)).upperBound
                while cursor < range.upperBound {
                    let block = cursor >> blockShift
                    let dirtyStart = s.blocks.dirty.firstSet(from: block, to: lastBlock).map { max($0 << blockShift, cursor) } ?? range.upperBound
                    append(cursor..<min(dirtyStart, range.upperBound), extent.type)
                    guard dirtyStart < range.upperBound else { break }
                    let dirtyEnd = s.blocks.dirty.firstClear(from: dirtyStart >> blockShift, to: lastBlock) << blockShift
                    append(dirtyStart..<min(dirtyEnd, range.upperBound), 0)
                    cursor = min(dirtyEnd, range.upperBound)
                }
            }
        }
        if result.first?.offset != offset {
            // The plugin must describe `offset`; if it did not, claim data (always safe).
            result.insert(Extent(offset: offset, length: (result.first?.offset ?? offset + count) - offset, type: 0), at: 0)
        }
        return result
    }
}

// SPDX-License-Identifier: BSD-3-Clause
/// Per-block shared/exclusive locks, so that requests on different blocks
/// never wait for each other, even while one waits for the plugin.
///
/// Readers of cached blocks share; anything that changes a block's bytes or
/// state (a write, a fill from the plugin, an eviction) is exclusive. A
/// request takes all its blocks at once or none, so there is no lock order
/// to get wrong. Only held blocks have an entry.
struct RangeLocks {
    /// > 0: that many shared holders; -1: one exclusive holder.
    private var holders: [UInt64: Int32] = [:]

    func isLocked(_ block: UInt64) -> Bool { holders[block] != nil }

    /// The held blocks at or after `first`.
    func lockedBlocks(from first: UInt64) -> [UInt64] { holders.keys.filter { $0 >= first } }

    func canAcquire(_ blocks: Range<UInt64>, exclusive: Bool) -> Bool {
        for block in blocks {
            if let held = holders[block], exclusive || held < 0 { return false }
        }
        return true
    }

    mutating func acquire(_ blocks: Range<UInt64>, exclusive: Bool) {
        for block in blocks {
            holders[block, default: 0] += exclusive ? -1 : 1
        }
    }

    mutating func release(_ blocks: Range<UInt64>, exclusive: Bool) {
        for block in blocks {
            let left = holders[block, default: 0] + (exclusive ? 1 : -1)
            holders[block] = left == 0 ? nil : left
        }
    }
}

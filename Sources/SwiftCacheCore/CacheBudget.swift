// SPDX-License-Identifier: BSD-3-Clause
/// What cache-max-size limits: the blocks every export's cache holds or has
/// reserved, together. Each export has a cache of its own (`Engine`, its
/// `BlockStore` and cache file); they share one budget, which lets one
/// reservation at a time count them all.
public final class CacheBudget: @unchecked Sendable {
    /// Weak: a cache that goes leaves the budget (and closes its file).
    private struct Member {
        weak var store: BlockStore?
    }

    private let members = Lock<[Member]>([])

    public init() {}

    func add(_ store: BlockStore) { members.withLock { $0.append(Member(store: store)) } }

    /// Drops up to `count` clean blocks of the caches other than `store`
    /// (see `BlockStore.dropClean`); returns how many it dropped.
    @discardableResult
    func dropClean(_ count: UInt64, except store: BlockStore) -> UInt64 {
        let others = members.withLock { $0.compactMap(\.store).filter { $0 !== store } }
        var left = count
        for other in others where left > 0 { left -= min(left, other.dropClean(left)) }
        return count - left
    }

    /// Runs `body` with the blocks all the caches hold or have reserved;
    /// no other reservation is made meanwhile. The caller holds no store's
    /// lock (this takes each in turn).
    func withTotal<T>(_ body: (UInt64) -> T) -> T {
        members.withLock { members in
            members.removeAll { $0.store == nil }
            return body(members.reduce(0) { $0 + ($1.store?.occupiedOrReserved ?? 0) })
        }
    }
}

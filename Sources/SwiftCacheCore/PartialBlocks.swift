// SPDX-License-Identifier: BSD-3-Clause
/// The byte ranges a partly written block holds (offsets within the block).
///
/// A write that covers only part of an uncached block is kept as such a
/// block rather than read from the plugin first: only a read of the block,
/// or its write-back, costs a plugin request, and only when it needs one.
struct HeldRanges: Equatable {
    /// Sorted, disjoint and not touching.
    private(set) var ranges: [Range<UInt32>] = []

    /// More ranges than this and the block is read from the plugin and
    /// completed instead: the list stays short and write-back cheap.
    static let limit = 16

    init(_ range: Range<UInt32>) { ranges = [range] }

    /// Adds `range`, merging it with the ranges it overlaps or touches.
    mutating func insert(_ range: Range<UInt32>) {
        var merged = range
        var kept: [Range<UInt32>] = []
        kept.reserveCapacity(ranges.count + 1)
        for existing in ranges {
            if existing.upperBound < merged.lowerBound || merged.upperBound < existing.lowerBound {
                kept.append(existing)
            } else {
                merged = min(existing.lowerBound, merged.lowerBound)..<max(existing.upperBound, merged.upperBound)
            }
        }
        let at = kept.firstIndex { $0.lowerBound > merged.lowerBound } ?? kept.count
        kept.insert(merged, at: at)
        ranges = kept
    }

    func inserting(_ range: Range<UInt32>) -> HeldRanges {
        var copy = self
        copy.insert(range)
        return copy
    }

    /// The ranges below `length`, if any.
    func below(_ length: UInt32) -> HeldRanges? {
        var kept = self
        kept.ranges = ranges.compactMap { $0.lowerBound < length ? $0.lowerBound..<min($0.upperBound, length) : nil }
        return kept.ranges.isEmpty ? nil : kept
    }

    /// The ranges outside `range`, if any.
    func removing(_ range: Range<UInt32>) -> HeldRanges? {
        var kept = self
        kept.ranges = ranges.flatMap { held -> [Range<UInt32>] in
            let cut = range.clamped(to: held)
            guard !cut.isEmpty else { return [held] }
            return [held.lowerBound..<cut.lowerBound, cut.upperBound..<held.upperBound].filter { !$0.isEmpty }
        }
        return kept.ranges.isEmpty ? nil : kept
    }

    /// Whether the block's first `length` bytes are all held.
    func covers(_ length: UInt32) -> Bool {
        ranges.count == 1 && ranges[0].lowerBound == 0 && ranges[0].upperBound >= length
    }

    /// The parts of the block's first `length` bytes that are not held.
    func gaps(_ length: UInt32) -> [Range<UInt32>] {
        var gaps: [Range<UInt32>] = []
        var cursor: UInt32 = 0
        for range in ranges where range.lowerBound < length {
            if range.lowerBound > cursor { gaps.append(cursor..<range.lowerBound) }
            cursor = max(cursor, range.upperBound)
        }
        if cursor < length { gaps.append(cursor..<length) }
        return gaps
    }
}

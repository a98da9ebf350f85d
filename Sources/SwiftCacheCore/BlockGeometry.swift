// SPDX-License-Identifier: BSD-3-Clause
/// Block arithmetic: the one copy of the cache block size.
struct BlockGeometry: Sendable {
    /// max(cache-min-block-size, the cache file system's block size): a power of 2.
    let blockSize: UInt64
    let shift: UInt64

    init(blockSize: UInt64) {
        self.blockSize = blockSize
        shift = UInt64(blockSize.trailingZeroBitCount)
    }

    /// The blocks that bytes `offset..<offset+count` touch (count > 0).
    func blocks(covering offset: UInt64, count: UInt64) -> Range<UInt64> {
        (offset >> shift)..<(((offset + count - 1) >> shift) + 1)
    }

    /// How many blocks an export of `size` bytes has.
    func blockCount(of size: UInt64) -> UInt64 { (size >> shift) + (size & (blockSize - 1) == 0 ? 0 : 1) }

    func start(of block: UInt64) -> UInt64 { block << shift }

    /// The bytes of `blocks`, the last one cut at the end of an export of `size`.
    func bytes(of blocks: Range<UInt64>, size: UInt64) -> Range<UInt64> {
        let start = blocks.lowerBound << shift
        return start..<max(start, min(blocks.upperBound << shift, size))
    }

    /// The bytes of `span` that lie in `block`, relative to the block.
    func part(of block: UInt64, in span: Range<UInt64>) -> Range<UInt32> {
        let start = start(of: block)
        let part = span.clamped(to: start..<start + blockSize)
        return UInt32(part.lowerBound - start)..<UInt32(part.upperBound - start)
    }

    /// The blocks a connection of `connectionSize` bytes sees whole: the
    /// only ones it may read or write whole (see `BlockStore`, "Whole blocks").
    func reach(connectionSize: UInt64) -> Range<UInt64> { 0..<(connectionSize >> shift) }
}

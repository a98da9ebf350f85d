// SPDX-License-Identifier: BSD-3-Clause
/// What the block layer needs of the file that holds cached blocks: the seam
/// where tests inject ENOSPC, EIO and torn writes into every cache-file call.
/// `CacheFile` is the real one. Block N lives at offset N × block size.
public protocol CacheStorage: Sendable {
    /// The file system's preferred block size (`st_blksize`).
    var fileSystemBlockSize: UInt64 { get }
    /// Reads bytes; what the file does not hold reads as zeroes.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(CacheError)
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(CacheError)
    /// Makes a range read as zeroes, freeing its storage where it can.
    func zero(at offset: UInt64, length: UInt64) throws(CacheError)
    /// Frees a range's storage (it then reads as zeroes).
    func discard(at offset: UInt64, length: UInt64) throws(CacheError)
    /// Grows the file to `size` bytes (it never shrinks).
    func resize(to size: UInt64) throws(CacheError)
    /// Bytes the file system has allocated to the file.
    func allocatedBytes() -> UInt64
}

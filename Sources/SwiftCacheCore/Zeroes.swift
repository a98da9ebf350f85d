// SPDX-License-Identifier: BSD-3-Clause
/// Whether bytes are all zero, so that plugin data which is only zeroes can
/// be kept as a hole in the cache file rather than written: unallocated
/// parts of disk images are the bulk of most cold reads, and a hole costs
/// neither cache space nor the kernel's page allocation and copy.
extension UnsafeRawBufferPointer {
    var isAllZero: Bool {
        guard let base = baseAddress else { return true }
        // 256 bytes per step, OR-ed together so the loop vectorises; non-zero
        // data usually fails in the first step, so the scan costs nothing there.
        let step = 256
        var offset = 0
        while offset + step <= count {
            var any = SIMD8<UInt64>()
            for lane in stride(from: 0, to: step, by: 64) {
                any |= (base + offset + lane).loadUnaligned(as: SIMD8<UInt64>.self)
            }
            if any != SIMD8() { return false }
            offset += step
        }
        while offset < count {
            if base.load(fromByteOffset: offset, as: UInt8.self) != 0 { return false }
            offset += 1
        }
        return true
    }
}

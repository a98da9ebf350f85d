// SPDX-License-Identifier: BSD-3-Clause
import SwiftCacheCore

/// The configuration a fuzz input starts with (its first bytes): the cache's
/// parameters, what the plugin can do, and the export.
struct FuzzConfig: CustomStringConvertible {
    enum OnRead { case never, always, whileFlagExists }
    enum Content { case random, zeroes, mixed }

    var mode: CacheMode
    var minBlockSize: UInt64
    var maxSize: UInt64?
    var highThreshold: UInt64
    var lowThreshold: UInt64
    var onRead: OnRead
    /// The cache file on tmpfs (reads of 64 KiB or more copy from mappings) or on a disk.
    var tmpfs: Bool
    var canZero: Bool
    var canFlush: Bool
    var fuaMode: FUAMode
    var minimumRequest: UInt64
    var maximumRequest: UInt64
    /// The export's size when the first connection opens.
    var size: UInt64
    /// The plugin's disk: the export never grows past it.
    var capacity: UInt64
    var content: Content
    var seed: UInt64
    /// A second export (its own plugin, 2/3 the size), sharing cache-max-size.
    var twoExports: Bool

    init(_ r: inout FuzzReader) {
        let b = r.byte()
        mode = [CacheMode.writeback, .writethrough, .unsafe][Int(b % 3)]
        onRead = [OnRead.never, .always, .whileFlagExists][Int(b / 3 % 3)]
        tmpfs = b / 9 % 2 == 1
        content = [Content.random, .zeroes, .mixed][Int(b / 18 % 3)]
        twoExports = b / 54 % 2 == 1
        minBlockSize = 4096 << r.below(9)  // 4K ... 1M
        let m = r.byte()
        maxSize = [nil, nil, 1 << 20, 2 << 20][Int(m % 4)]
        (highThreshold, lowThreshold) = [(95, 80), (60, 30), (100, 99), (10, 5)][Int(m / 4 % 4)]
        let p = r.byte()
        canZero = p & 1 == 0
        canFlush = p & 2 == 0
        fuaMode = [FUAMode.native, .emulate, .none][Int((p >> 2) % 3)]
        minimumRequest = [1, 512, 4096][Int((p >> 4) % 3)]
        maximumRequest = [Engine.maxTransfer, 65536, 12288][Int((p >> 6) % 3)]
        let sizes: [UInt64] = [8192, 300_000, 300_000, 2_500_000]
        let align = minimumRequest
        capacity = sizes[Int(r.byte() % 4)] / align * align
        size = max(align, (1 + r.below(capacity)) / align * align)
        seed = r.u16()
    }

    var cacheConfig: CacheConfig {
        var config = CacheConfig()
        config.mode = mode
        config.minBlockSize = minBlockSize
        config.maxSize = maxSize
        config.highThreshold = highThreshold
        config.lowThreshold = lowThreshold
        return config
    }

    /// The plugin's bytes at the start.
    func disk(seed: UInt64) -> [UInt8] {
        switch content {
        case .random: return randomBytes(Int(capacity), seed: seed)
        case .zeroes: return Array(repeating: 0, count: Int(capacity))
        case .mixed:
            // Runs of zeroes among data: some whole cache blocks, some not.
            var bytes = randomBytes(Int(capacity), seed: seed)
            var rng = SplitMix64(seed: seed)
            var at = 0
            while at < bytes.count {
                let length = Int(rng.next() % (2 * minBlockSize)) + 1
                if rng.next() % 2 == 0 {
                    zeroFill(&bytes, at..<min(bytes.count, at + length))
                }
                at += length
            }
            return bytes
        }
    }

    var description: String {
        let max = maxSize.map { "cache-max-size=\($0) (\(highThreshold)%/\(lowThreshold)%)" } ?? "no max size"
        return "cache=\(mode) block=\(minBlockSize) \(max) cache-on-read=\(onRead) "
            + "\(tmpfs ? "tmpfs" : "disk") | plugin zero=\(canZero) flush=\(canFlush) fua=\(fuaMode) "
            + "min=\(minimumRequest) max=\(maximumRequest) | size=\(size) of \(capacity), \(content) seed \(seed)"
            + (twoExports ? " | two exports" : "")
    }
}

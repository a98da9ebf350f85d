// SPDX-License-Identifier: BSD-3-Clause
/// What the client sees (SPEC §3), as pure functions of the mode and what
/// the plugin can do: the C ABI layer only calls these.
public enum Capabilities {
    /// unsafe ignores flushes, so it can always take one.
    public static func canFlush(mode: CacheMode, plugin: Bool) -> Bool {
        mode == .unsafe ? true : plugin
    }

    /// unsafe takes FUA natively (and ignores it); otherwise the plugin's.
    public static func fua(mode: CacheMode, plugin: FUAMode) -> FUAMode {
        mode == .unsafe ? .native : plugin
    }

    /// One cache serves every connection and a flush writes back every dirty
    /// block whoever wrote it, so multi-conn holds unless writes go straight
    /// to the plugin (writethrough), where only the plugin can promise it.
    public static func canMultiConn(mode: CacheMode, plugin: Bool) -> Bool {
        mode == .writethrough ? plugin : true
    }

    /// The plugin's block size constraints (0 minimum: it sets none), with
    /// whole cache blocks preferred where its maximum allows.
    public static func blockSize(plugin: BlockSizes, cacheBlock: UInt64) -> BlockSizes {
        let block = UInt32(clamping: cacheBlock)
        if plugin.minimum == 0 {
            return BlockSizes(minimum: 1, preferred: block, maximum: 0xffff_ffff)
        }
        var sizes = plugin
        if sizes.maximum >= block { sizes.preferred = max(sizes.preferred, block) }
        return sizes
    }
}

/// NBD block size constraints.
public struct BlockSizes: Equatable, Sendable {
    public var minimum: UInt32
    public var preferred: UInt32
    public var maximum: UInt32

    public init(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// What the client sees (SPEC §3), checked against the table written out by
/// hand, and the configuration checks of SPEC §2 that the core enforces.
final class CapabilityTests: EngineTestCase {
    // MARK: SPEC §3, written out

    /// can_flush: writeback and writethrough: the plugin's; unsafe: always yes.
    private static let canFlushTable: [CacheMode: [Bool: Bool]] = [
        .writeback: [false: false, true: true],
        .writethrough: [false: false, true: true],
        .unsafe: [false: true, true: true],
    ]

    /// can_fua: writeback and writethrough: the plugin's; unsafe: native.
    private static let fuaTable: [CacheMode: [FUAMode: FUAMode]] = [
        .writeback: [.none: .none, .emulate: .emulate, .native: .native],
        .writethrough: [.none: .none, .emulate: .emulate, .native: .native],
        .unsafe: [.none: .native, .emulate: .native, .native: .native],
    ]

    /// can_multi_conn: writeback and unsafe: always yes; writethrough: the plugin's.
    private static let multiConnTable: [CacheMode: [Bool: Bool]] = [
        .writeback: [false: true, true: true],
        .writethrough: [false: false, true: true],
        .unsafe: [false: true, true: true],
    ]

    /// can_flush matches SPEC §3 for every mode and plugin answer.
    func testCanFlushOverEveryModeAndPluginAnswer() {
        var checked = 0
        for mode in CacheMode.allCases {
            for plugin in [false, true] {
                let expected = Self.canFlushTable[mode]?[plugin]
                XCTAssertNotNil(expected, "no row for \(mode), \(plugin)")
                XCTAssertEqual(
                    Capabilities.canFlush(mode: mode, plugin: plugin), expected,
                    "can_flush, cache=\(mode), plugin \(plugin)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 6)
    }

    /// can_fua matches SPEC §3 for every mode and every plugin FUA mode.
    func testFUAOverEveryModeAndPluginAnswer() {
        var checked = 0
        for mode in CacheMode.allCases {
            for plugin in FUAMode.allCases {
                let expected = Self.fuaTable[mode]?[plugin]
                XCTAssertNotNil(expected, "no row for \(mode), \(plugin)")
                XCTAssertEqual(
                    Capabilities.fua(mode: mode, plugin: plugin), expected,
                    "can_fua, cache=\(mode), plugin \(plugin)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 9)
    }

    /// can_multi_conn matches SPEC §3 for every mode and plugin answer.
    func testCanMultiConnOverEveryModeAndPluginAnswer() {
        var checked = 0
        for mode in CacheMode.allCases {
            for plugin in [false, true] {
                let expected = Self.multiConnTable[mode]?[plugin]
                XCTAssertNotNil(expected, "no row for \(mode), \(plugin)")
                XCTAssertEqual(
                    Capabilities.canMultiConn(mode: mode, plugin: plugin), expected,
                    "can_multi_conn, cache=\(mode), plugin \(plugin)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 6)
    }

    // MARK: block_size

    private func sizes(_ minimum: UInt32, _ preferred: UInt32, _ maximum: UInt32) -> BlockSizes {
        BlockSizes(minimum: minimum, preferred: preferred, maximum: maximum)
    }

    /// A plugin with no constraints gets minimum 1, preferred = the cache block, maximum 0xffffffff.
    func testBlockSizeWhenThePluginSetsNone() {
        for block: UInt64 in [4096, 65536, 1 << 20] {
            XCTAssertEqual(
                Capabilities.blockSize(plugin: sizes(0, 0, 0), cacheBlock: block),
                sizes(1, UInt32(block), 0xffff_ffff), "cache block \(block)")
        }
    }

    /// A plugin maximum below the cache block keeps the plugin's preferred size.
    func testBlockSizeWithAPluginMaximumBelowTheCacheBlock() {
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(512, 4096, 32768), cacheBlock: 65536),
            sizes(512, 4096, 32768))
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(1, 512, 65535), cacheBlock: 65536),
            sizes(1, 512, 65535))
    }

    /// A plugin maximum at or above the cache block raises the preferred size to the cache block.
    func testBlockSizeWithAPluginMaximumAboveTheCacheBlock() {
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(512, 4096, 1 << 20), cacheBlock: 65536),
            sizes(512, 65536, 1 << 20))
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(1, 512, 65536), cacheBlock: 65536),
            sizes(1, 65536, 65536))
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(4096, 4096, 0xffff_ffff), cacheBlock: 1 << 20),
            sizes(4096, 1 << 20, 0xffff_ffff))
    }

    /// A plugin preferred size already larger than the cache block is kept.
    func testBlockSizeWithAPluginPreferredLargerThanTheCacheBlock() {
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(512, 1 << 20, 32 << 20), cacheBlock: 65536),
            sizes(512, 1 << 20, 32 << 20))
        XCTAssertEqual(
            Capabilities.blockSize(plugin: sizes(131072, 131072, 1 << 20), cacheBlock: 65536),
            sizes(131072, 131072, 1 << 20))
    }

    // MARK: CacheConfig.validate and Engine.init

    private func config(_ change: (inout CacheConfig) -> Void) -> CacheConfig {
        var config = CacheConfig()
        change(&config)
        return config
    }

    // badConfigs and goodConfigs: one configuration a line, as a table
    // (swift-format would spread each closure that changes two or three
    // settings over four or five lines).
    // swift-format-ignore
    /// Configurations SPEC §2 refuses, each with what it breaks.
    private var badConfigs: [(String, CacheConfig)] {
        [
            ("min block size not a power of 2", config { $0.minBlockSize = 65536 + 4096 }),
            ("min block size 3 × 4096", config { $0.minBlockSize = 3 * 4096 }),
            ("min block size < 4096", config { $0.minBlockSize = 2048 }),
            ("min block size 0", config { $0.minBlockSize = 0 }),
            ("min block size 4G", config { $0.minBlockSize = 1 << 32 }),
            ("min block size 8G", config { $0.minBlockSize = 1 << 33 }),
            ("high threshold 0", config { $0.highThreshold = 0 }),
            ("low threshold 0", config { $0.lowThreshold = 0 }),
            ("high threshold 0 with a max size", config { $0.highThreshold = 0; $0.maxSize = MiB }),
            ("low threshold 0 with a max size", config { $0.lowThreshold = 0; $0.maxSize = MiB }),
            ("low > high with a max size", config { $0.lowThreshold = 95; $0.highThreshold = 80; $0.maxSize = MiB }),
            ("low == high with a max size", config { $0.lowThreshold = 90; $0.highThreshold = 90; $0.maxSize = MiB }),
            ("max size 1M - 1", config { $0.maxSize = MiB - 1 }),
            ("max size 0", config { $0.maxSize = 0 }),
        ]
    }

    // swift-format-ignore
    /// Configurations SPEC §2 accepts, at the edges of the checks.
    private var goodConfigs: [(String, CacheConfig)] {
        [
            ("the defaults", CacheConfig()),
            ("min block size 4096", config { $0.minBlockSize = 4096 }),
            ("min block size 2G", config { $0.minBlockSize = 1 << 31 }),
            ("low > high without a max size", config { $0.lowThreshold = 95; $0.highThreshold = 80 }),
            ("low == high without a max size", config { $0.lowThreshold = 90; $0.highThreshold = 90 }),
            ("max size 1M", config { $0.maxSize = MiB }),
            ("thresholds 1 and 2 with a max size",
             config { $0.lowThreshold = 1; $0.highThreshold = 2; $0.maxSize = MiB }),
            ("thresholds over 100", config { $0.lowThreshold = 150; $0.highThreshold = 200; $0.maxSize = MiB }),
        ]
    }

    /// validate() refuses each bad configuration with EINVAL.
    func testValidateRefusesBadConfigurations() {
        for (what, config) in badConfigs {
            do {
                try config.validate()
                XCTFail("\(what): accepted")
            } catch {
                XCTAssertEqual(error.errno, .invalidArgument, "\(what): \(error)")
            }
        }
    }

    /// validate() accepts configurations at the edges of the checks.
    func testValidateAcceptsConfigurationsAtTheEdges() {
        for (what, config) in goodConfigs {
            XCTAssertNoThrow(try config.validate(), what)
        }
    }

    /// Engine.init refuses each bad configuration with EINVAL, before it uses the cache file.
    func testEngineInitThrowsForBadConfigurations() throws {
        for (what, config) in badConfigs {
            let file = try CacheFile(directory: FilePath(directory))
            do {
                _ = try Engine(config: config, file: file)
                XCTFail("\(what): Engine.init accepted it")
            } catch {
                XCTAssertEqual(error.errno, .invalidArgument, "\(what): \(error)")
            }
        }
    }

    /// Engine.init accepts configurations at the edges of the checks.
    func testEngineInitAcceptsConfigurationsAtTheEdges() throws {
        for (what, config) in goodConfigs where config.minBlockSize <= 1 << 20 {
            let file = try CacheFile(directory: FilePath(directory))
            XCTAssertNoThrow(try Engine(config: config, file: file), what)
        }
    }
}

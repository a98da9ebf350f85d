// swift-tools-version:6.0
// SPDX-License-Identifier: BSD-3-Clause
import PackageDescription

let package = Package(
    name: "swiftcache",
    products: [
        // libswiftcache.so: the filter that nbdkit loads.
        .library(name: "swiftcache", type: .dynamic, targets: ["SwiftCacheFilter"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1")
    ],
    targets: [
        // The installed <nbdkit-filter.h>, imported as-is so the filter table
        // always matches the nbdkit that loads us.
        .systemLibrary(name: "CNBDKit", pkgConfig: "nbdkit"),
        // `int swiftcache_debug_verbose` and `swiftcache_debug_stats`, found by
        // nbdkit with dlsym for `-D swiftcache.verbose=1` and `-D swiftcache.stats=1`
        // (Swift cannot export a C variable).
        .target(name: "CSwiftCacheDebug"),
        // mkostemp and fallocate, which need _GNU_SOURCE.
        .target(name: "CLinux"),
        // The cache itself: block map, LRU, cache file, request engine.
        // Knows nothing of nbdkit.
        .target(
            name: "SwiftCacheCore",
            dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The C ABI: nbdkit callbacks, parameters and `next` adapted to the core.
        // Linked with swiftcache.syms: the library exports only what nbdkit looks up.
        .target(
            name: "SwiftCacheFilter",
            dependencies: [
                "CNBDKit", "CSwiftCacheDebug", "CLinux", "SwiftCacheCore",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            linkerSettings: [
                // lld, not gold: gold leaves symbols the version script made local in
                // .dynsym. -z now: every symbol bound at load (hardening, as Debian builds).
                .unsafeFlags([
                    "-use-ld=lld", "-Xlinker", "--version-script=\(Context.packageDirectory)/swiftcache.syms",
                    "-Xlinker", "-z", "-Xlinker", "now",
                ])
            ]
        ),
        // What the unit tests and the fuzzer drive the core with: an in-memory
        // plugin, a cache file that fails on demand, and the fuzzer's decoder and
        // reference model (fuzz/README.md). Not part of the filter.
        .target(
            name: "SwiftCacheTesting",
            dependencies: ["SwiftCacheCore", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // libFuzzer's entry point, in C so that libFuzzer's main is the program's
        // (`make fuzz` builds it with -sanitize=fuzzer); built otherwise, it
        // replays the inputs named on its command line.
        .executableTarget(name: "SwiftCacheFuzz", dependencies: ["SwiftCacheTesting"]),
        .testTarget(
            name: "SwiftCacheCoreTests",
            dependencies: [
                "SwiftCacheCore", "SwiftCacheTesting", .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
    ]
)

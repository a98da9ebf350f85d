// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit
import SwiftCacheCore

#if canImport(Glibc)
import Glibc
#endif

/// The filter's parameters: names, defaults and checks as nbdkit's cache
/// filter has them, parsed with nbdkit's own rules.
enum Parameters {
    /// `--help`: nbdkit's column layout, the C cache filter's order, then ours.
    static let help: StaticString = """
        cache=MODE                Set cache MODE, one of writeback (default),
                                  writethrough, or unsafe.
        cache-on-read=BOOL|/PATH  Set to true to cache on reads, or to an
                                  absolute /PATH to cache on reads while that
                                  file exists (default false).
        cache-max-size=SIZE       Set maximum space used by cache (>= 1M,
                                  default: no limit).
        cache-high-threshold=PCT  Percentage of max size where reclaim begins
                                  (default 95).
        cache-low-threshold=PCT   Percentage of max size where reclaim ends
                                  (default 80).
        cache-min-block-size=SIZE Minimum size of a cache block: a power of 2,
                                  >= 4096 (default 64K, or the file system's
                                  block size if larger).
        cache-stats=FILE          Keep a report of the cache's statistics in
                                  FILE, updated at most once a second.
        TMPDIR (environment)      Directory of the cache files (default
                                  /var/tmp).
        -D swiftcache.verbose=1   Debug messages about cache decisions.
        -D swiftcache.stats=1     Log the statistics report at exit.
        Always on, beyond nbdkit's cache filter: known-zero blocks (zeroes
        take no room and are written back as zero requests); one cache
        per export; writeback writes dirty blocks back when a connection
        closes; a full cache directory sends requests to the plugin, not
        errors.
        See nbdkit-swiftcache-filter(1).
        """

    enum Outcome { case handled, notOurs, failed }

    /// What the parameters set: the cache's configuration and the filter's own.
    struct Settings {
        var cache = CacheConfig()
        /// `cache-stats=FILE`, made absolute.
        var statsPath: String?
    }

    /// Applies one `key=value`; keys that are not ours go to the plugin.
    static func apply(key: String, value: String, to settings: inout Settings) -> Outcome {
        switch key {
        case "cache":
            guard let mode = CacheMode(rawValue: value) else {
                return fail("cache=\(value): must be writeback, writethrough or unsafe")
            }
            settings.cache.mode = mode
        case "cache-min-block-size":
            let size = nbdkit_parse_size(value)
            guard size != -1 else { return .failed }  // nbdkit_parse_size said why
            guard size >= 4096, size <= Int64(UInt32.max), size.nonzeroBitCount == 1 else {
                return fail("cache-min-block-size=\(value): must be a power of 2, at least 4096 and at most 4G-1")
            }
            settings.cache.minBlockSize = UInt64(size)
        case "cache-max-size":
            let size = nbdkit_parse_size(value)
            guard size != -1 else { return .failed }  // nbdkit_parse_size said why
            guard size >= 1 << 20 else { return fail("cache-max-size=\(value): too small, must be at least 1M") }
            settings.cache.maxSize = UInt64(size)
        case "cache-high-threshold", "cache-low-threshold":
            var percent: UInt32 = 0
            guard nbdkit_parse_unsigned(key, value, &percent) != -1 else { return .failed }  // it said why
            guard percent > 0 else { return fail("\(key)=\(value): must be greater than zero") }
            if key == "cache-high-threshold" {
                settings.cache.highThreshold = UInt64(percent)
            } else {
                settings.cache.lowThreshold = UInt64(percent)
            }
        case "cache-on-read":
            if value.hasPrefix("/") {
                settings.cache.cacheOnRead = .whilePathExists(value)
            } else {
                let on = nbdkit_parse_bool(value)
                guard on != -1 else { return .failed }  // nbdkit_parse_bool said why
                settings.cache.cacheOnRead = on == 1 ? .always : .never
            }
        case "cache-stats":
            // Absolute: nbdkit changes directory when it forks into the background.
            guard !value.isEmpty, let absolute = nbdkit_absolute_path(value) else {
                return fail("cache-stats=\(value): must name a file")
            }
            settings.statsPath = String(cString: absolute)
            free(absolute)
        default:
            return .notOurs
        }
        return .handled
    }

    /// Checks that need every parameter (the core's own, see `CacheConfig.validate`).
    static func check(_ config: CacheConfig) -> Bool {
        do {
            try config.validate()
            return true
        } catch {
            Log.error("swiftcache: \(error.context)")
            return false
        }
    }

    private static func fail(_ message: String) -> Outcome {
        Log.error("swiftcache: \(message)")
        return .failed
    }
}

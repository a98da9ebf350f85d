// SPDX-License-Identifier: BSD-3-Clause
import CLinux
import CNBDKit
import SwiftCacheCore
import SystemPackage

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
        var statsPath: FilePath?
    }

    /// Applies one `key=value`; keys that are not ours go to the plugin.
    /// nbdkit's parsers and paths get `raw`, the bytes as given; `value`, the
    /// same as a `String` (bytes that are not UTF-8 replaced), is for messages.
    static func apply(key: String, value raw: UnsafePointer<CChar>, to settings: inout Settings) -> Outcome {
        let value = String(cString: raw)
        switch key {
        case "cache":
            guard let mode = CacheMode(rawValue: value) else {
                return fail("cache=\(value): must be writeback, writethrough or unsafe")
            }
            settings.cache.mode = mode
        case "cache-min-block-size":
            guard let size = parse(key, value, { nbdkit_parse_size(raw) }) else { return .failed }
            guard size >= 4096, size <= Int64(UInt32.max), size.nonzeroBitCount == 1 else {
                return fail("cache-min-block-size=\(value): must be a power of 2, at least 4096 and at most 4G-1")
            }
            settings.cache.minBlockSize = UInt64(size)
        case "cache-max-size":
            guard let size = parse(key, value, { nbdkit_parse_size(raw) }) else { return .failed }
            guard size >= 1 << 20 else { return fail("cache-max-size=\(value): too small, must be at least 1M") }
            settings.cache.maxSize = UInt64(size)
        case "cache-high-threshold", "cache-low-threshold":
            var percent: UInt32 = 0
            guard parse(key, value, { nbdkit_parse_unsigned(key, raw, &percent) }) != nil else { return .failed }
            guard percent > 0 else { return fail("\(key)=\(value): must be greater than zero") }
            if key == "cache-high-threshold" {
                settings.cache.highThreshold = UInt64(percent)
            } else {
                settings.cache.lowThreshold = UInt64(percent)
            }
        case "cache-on-read":
            if value.hasPrefix("/") {
                settings.cache.cacheOnRead = .whilePathExists(FilePath(platformString: raw))
            } else {
                guard let on = parse(key, value, { nbdkit_parse_bool(raw) }) else { return .failed }
                settings.cache.cacheOnRead = on == 1 ? .always : .never
            }
        case "cache-stats":
            // Absolute: nbdkit changes directory when it forks into the background.
            guard !value.isEmpty, let absolute = nbdkit_absolute_path(raw) else {
                return fail("cache-stats=\(value): must name a file")
            }
            settings.statsPath = FilePath(platformString: absolute)
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

    /// Runs one of nbdkit's parsers (`nbdkit_parse_size`, `_bool`, `_unsigned`:
    /// -1 means rejected) with what it writes to stderr caught, so a rejected
    /// value gives one error line that names the parameter as well as why:
    /// `swiftcache: cache-max-size=abc: could not parse size string (abc)`.
    /// nbdkit configures filters on its one thread, before any other exists.
    private static func parse<Result: BinaryInteger>(
        _ key: String, _ value: String,
        _ parser: () -> Result
    ) -> Result? {
        let (result, said) = catchingStderr(parser)
        guard result == -1 else {
            if !said.isEmpty { _ = write(STDERR_FILENO, said, said.utf8.count) }  // not an error: as it was
            return result
        }
        // "nbdkit: error: could not parse size string (abc)": "could not parse size string (abc)". By hand:
        // the standard library's split on a string separator links in _StringProcessing (1.4 MB).
        let line = said.prefix { $0 != "\n" }
        var why = after("error: ", in: line) ?? line
        why = after("\(key): ", in: why, atStart: true) ?? why  // nbdkit_parse_unsigned names it
        Log.error("swiftcache: \(key)=\(value): \(why.isEmpty ? "not a valid value" : why)")
        return nil
    }

    /// What follows the first `marker` in `text` (only at its start if `atStart`), or nil.
    private static func after(_ marker: String, in text: Substring, atStart: Bool = false) -> Substring? {
        var start = text.startIndex
        while start < text.endIndex {
            if text[start...].hasPrefix(marker) { return text[text.index(start, offsetBy: marker.count)...] }
            if atStart { return nil }
            start = text.index(after: start)
        }
        return nil
    }

    /// Calls `body` with file descriptor 2 pointed at a file in memory, and
    /// returns what it wrote there. A file, not a pipe: a pipe would block a
    /// message longer than its buffer (a value can be 128 KiB). If the file
    /// cannot be made, `body` writes to stderr as usual.
    private static func catchingStderr<Result>(_ body: () -> Result) -> (Result, String) {
        let file = swiftcache_memfd("swiftcache-stderr")
        guard file >= 0 else { return (body(), "") }
        defer { close(file) }
        let saved = dup(STDERR_FILENO)
        guard saved >= 0 else { return (body(), "") }
        fflush(nil)
        dup2(file, STDERR_FILENO)
        let result = body()
        fflush(nil)
        dup2(saved, STDERR_FILENO)
        close(saved)
        var said: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var offset: off_t = 0
        while true {
            let count = pread(file, &chunk, chunk.count, offset)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            said += chunk[..<count]
            offset += off_t(count)
        }
        return (result, String(decoding: said, as: UTF8.self))
    }

    private static func fail(_ message: String) -> Outcome {
        Log.error("swiftcache: \(message)")
        return .failed
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// `cache=`: when writes reach the plugin.
public enum CacheMode: String, Sendable, CaseIterable {
    /// Writes stay in the cache until a flush (the default).
    case writeback
    /// Writes go to the plugin at once.
    case writethrough
    /// Flushes are ignored; the plugin sees writes only on reclaim.
    case unsafe
}

/// `cache-on-read=`: whether blocks read from the plugin are kept.
public enum CacheOnRead: Sendable, Equatable {
    case never
    case always
    /// On while this file exists, checked per request. A `FilePath`: the
    /// bytes the user gave, whatever they are (a `String` would replace
    /// bytes that are not UTF-8 and name another file).
    case whilePathExists(FilePath)

    var isOn: Bool {
        switch self {
        case .never: false
        case .always: true
        case .whilePathExists(let path): fileExists(path)
        }
    }
}

/// The filter's parameters, already parsed and checked.
public struct CacheConfig: Sendable {
    public var mode: CacheMode = .writeback
    public var minBlockSize: UInt64 = 65536
    /// `cache-max-size`: limit on the cache file's allocated bytes.
    public var maxSize: UInt64?
    public var highThreshold: UInt64 = 95
    public var lowThreshold: UInt64 = 80
    public var cacheOnRead: CacheOnRead = .never

    public init() {}

    /// The checks that need every parameter: the core is never built on a
    /// configuration that breaks them.
    public func validate() throws(CacheError) {
        guard minBlockSize >= 4096, minBlockSize <= UInt64(UInt32.max), minBlockSize.nonzeroBitCount == 1 else {
            throw CacheError(
                .invalidArgument,
                "cache-min-block-size (\(minBlockSize)) must be a power of 2, "
                    + "at least 4096 and at most 4G-1")
        }
        guard highThreshold > 0, lowThreshold > 0 else {
            throw CacheError(.invalidArgument, "cache-high-threshold and cache-low-threshold must be greater than zero")
        }
        if let maxSize {
            guard maxSize >= 1 << 20 else {
                throw CacheError(.invalidArgument, "cache-max-size (\(maxSize)) must be at least 1M")
            }
            guard lowThreshold < highThreshold else {
                throw CacheError(
                    .invalidArgument,
                    "cache-low-threshold (\(lowThreshold)) must be less than "
                        + "cache-high-threshold (\(highThreshold)) when cache-max-size is set")
            }
        }
    }
}

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
    /// On while this file exists, checked per request.
    case whilePathExists(String)

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
}

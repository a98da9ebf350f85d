import CNBDKit
import Synchronization
import SwiftCacheCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The one filter instance, created when nbdkit loads us: the parameters
/// while nbdkit configures, then the cache shared by every connection.
final class SwiftCacheFilter: Sendable {
    static let shared = SwiftCacheFilter()

    private let parameters = Mutex(Parameters.Settings())
    private let engine = Mutex<Engine?>(nil)
    /// What every engine does, from start-up to exit.
    private let statistics = Statistics()
    /// `cache-stats=FILE`, once nbdkit is ready.
    private let statsFile = Mutex<StatsFile?>(nil)

    func configure(key: String, value: String) -> Parameters.Outcome {
        parameters.withLock { Parameters.apply(key: key, value: value, to: &$0) }
    }

    var settings: Parameters.Settings { parameters.withLock { $0 } }

    /// Write-back requests in flight at once under the parallel thread model
    /// (nbdkit's default number of threads per connection).
    static let writeBackThreads = 16

    /// Creates the cache file in $TMPDIR (default /var/tmp) and the
    /// cache-stats file before nbdkit serves anything, so a bad TMPDIR or
    /// cache-stats path stops start-up. Write-back uses threads of its own
    /// only if nbdkit's final thread model is parallel.
    func getReady(parallel: Bool) -> Bool {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/var/tmp"
        let settings = settings
        do {
            let file = try CacheFile(directory: directory)
            let created = try Engine(config: settings.cache, file: file, debug: Log.verbose,
                                     writeBackThreads: parallel ? Self.writeBackThreads : 1, statistics: statistics)
            let stats = try settings.statsPath.map { path throws(CacheError) in
                try StatsFile(path: path, statistics: statistics)
            }
            let threads = parallel ? Self.writeBackThreads : 1
            Log.debug("swiftcache: mode \(created.config.mode.rawValue), block size \(created.blockSize), "
                      + "cache file in \(directory), up to \(threads) write-back requests at once"
                      + (stats.map { ", statistics in \($0.path)" } ?? ""))
            engine.withLock { $0 = created }
            statsFile.withLock { $0 = stats }
            return true
        } catch {
            Log.error("swiftcache: \(error)")
            return false
        }
    }

    /// Starts the cache-stats writer: nbdkit may have forked into the
    /// background since `getReady`, and threads do not survive a fork.
    func afterFork() -> Bool {
        guard let file = statsFile.withLock({ $0 }) else { return true }
        do {
            try file.start()
            return true
        } catch {
            Log.error("swiftcache: \(error)")
            return false
        }
    }

    var currentEngine: Engine? { engine.withLock { $0 } }

    /// The last statistics report goes to the cache-stats file and, with
    /// `-D swiftcache.stats=1`, to the log; then the cache goes.
    func unload() {
        let file = statsFile.withLock { $0.take() }
        file?.stop()
        if currentEngine != nil {
            let final = statistics.snapshot()
            file?.write(final)
            Log.statistics(final.report)
        }
        engine.withLock { $0 = nil }
    }
}

/// Per-connection handle: the shared cache and what this connection's
/// plugin context can do.
final class Connection: @unchecked Sendable {
    let engine: Engine
    /// Set once in `.prepare`, before any request on the connection.
    var capabilities = PluginCapabilities()

    init(engine: Engine) { self.engine = engine }

    static func from(_ handle: UnsafeMutableRawPointer?) -> Connection {
        Unmanaged<Connection>.fromOpaque(handle!).takeUnretainedValue()
    }

    func backend(_ next: UnsafeMutablePointer<nbdkit_next_ops>?) -> NextBackend {
        NextBackend(next: next!, capabilities: capabilities)
    }
}

// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit
import SwiftCacheCore
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The one filter instance, created when nbdkit loads us: the parameters
/// while nbdkit configures, then one cache per export (SPEC §8), each
/// shared by every connection to that export, and cache-max-size's budget
/// shared by them all.
final class SwiftCacheFilter: Sendable {
    static let shared = SwiftCacheFilter()

    private let parameters = Mutex(Parameters.Settings())
    private let caches = Mutex<Caches?>(nil)
    /// What every export's cache does, from start-up to exit.
    private let statistics = Statistics()
    /// `cache-stats=FILE`, once nbdkit is ready.
    private let statsFile = Mutex<StatsFile?>(nil)

    /// What `getReady` settles, and the caches made since, by export name.
    private struct Caches {
        let directory: FilePath
        let writeBackThreads: Int
        let budget = CacheBudget()
        var byExport: [String: ExportCache] = [:]
        /// Counts connections opened, to tell which idle cache was used last.
        var opened: UInt64 = 0
    }

    /// An export's cache and the connections open on it.
    private struct ExportCache {
        let engine: Engine
        var connections = 0
        var lastOpened: UInt64 = 0
    }

    /// Caches at most this many exports at once. Every export name a client
    /// asks for gets a cache (a cache file, a block map), so a client trying
    /// names would otherwise use up the server's file descriptors and memory.
    /// Past it, a new export takes the place of the idle one (no connection,
    /// nothing dirty) used least recently; with none idle, its open fails.
    static let maxExportCaches = 64

    func configure(key: String, value: UnsafePointer<CChar>) -> Parameters.Outcome {
        parameters.withLock { Parameters.apply(key: key, value: value, to: &$0) }
    }

    var settings: Parameters.Settings { parameters.withLock { $0 } }

    /// Write-back requests in flight at once under the parallel thread model
    /// (nbdkit's default number of threads per connection).
    static let writeBackThreads = 16

    /// Creates the default export's cache file in $TMPDIR (default
    /// /var/tmp), and the cache-stats file, before nbdkit serves anything,
    /// so a bad TMPDIR or cache-stats path stops start-up; other exports'
    /// cache files are made there when they are first opened. Write-back
    /// uses threads of its own only if nbdkit's final thread model is parallel.
    func getReady(parallel: Bool) -> Bool {
        // Empty is unset, as for mkstemp(3) users generally; the bytes as given, UTF-8 or not.
        let directory = getenv("TMPDIR").flatMap { $0.pointee == 0 ? nil : FilePath(platformString: $0) } ?? "/var/tmp"
        let settings = settings
        let threads = parallel ? Self.writeBackThreads : 1
        do {
            let defaultExport = try caches.withLock { (caches: inout Caches?) throws(CacheError) -> Engine in
                var ready = Caches(directory: directory, writeBackThreads: threads)
                let cache = try newCache(forExport: "", in: &ready)
                ready.byExport[""] = cache
                caches = ready
                return cache.engine
            }
            let stats = try settings.statsPath.map { path throws(CacheError) in
                try StatsFile(path: path, statistics: statistics)
            }
            Log.debug("swiftcache: \(Version.description)")
            Log.debug(
                "swiftcache: mode \(settings.cache.mode.rawValue), block size \(defaultExport.blockSize), "
                    + "cache files in \(directory), up to \(threads) write-back requests at once"
                    + (stats.map { ", statistics in \($0.path)" } ?? ""))
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

    /// A connection opens on export `name`: its cache, made when first opened.
    func openCache(forExport name: String) throws(CacheError) -> Engine {
        try caches.withLock { (caches: inout Caches?) throws(CacheError) -> Engine in
            guard var ready = caches else { throw CacheError(.ioError, "the cache is not ready") }
            var cache: ExportCache
            if let known = ready.byExport[name] {
                cache = known
            } else {
                cache = try newCache(forExport: name, in: &ready)
            }
            ready.opened += 1
            cache.connections += 1
            cache.lastOpened = ready.opened
            ready.byExport[name] = cache
            caches = ready
            return cache.engine
        }
    }

    /// A connection on export `name` has closed.
    func closeCache(forExport name: String) {
        caches.withLock { caches in caches?.byExport[name]?.connections -= 1 }
    }

    /// Makes export `name`'s cache, in place of an idle one when there are
    /// `maxExportCaches` already. Called with `caches` locked.
    private func newCache(forExport name: String, in ready: inout Caches) throws(CacheError) -> ExportCache {
        if ready.byExport.count >= Self.maxExportCaches {
            let idle = ready.byExport.filter { $0.value.connections == 0 && $0.value.engine.unwritten.blocks == 0 }
            guard let oldest = idle.min(by: { $0.value.lastOpened < $1.value.lastOpened }) else {
                throw CacheError(
                    .tooManyOpenFiles,
                    "no cache for export \"\(name)\": the caches of \(Self.maxExportCaches) exports are all in use "
                        + "or hold dirty blocks")
            }
            ready.byExport[oldest.key] = nil  // its cache file closes with it
            Log.debug("swiftcache: dropped the cache of idle export \"\(oldest.key)\" for export \"\(name)\"")
        }
        let engine = try Engine(
            config: settings.cache, file: try CacheFile(directory: ready.directory),
            debug: Log.verbose, writeBackThreads: ready.writeBackThreads,
            budget: ready.budget, statistics: statistics)
        Log.debug("swiftcache: a cache for export \"\(name)\"")
        return ExportCache(engine: engine)
    }

    /// nbdkit is exiting: dirty blocks still in a cache are lost with it,
    /// and said so (cache=unsafe, or write-backs that failed); the last
    /// statistics report goes to the cache-stats file and, with
    /// `-D swiftcache.stats=1`, to the log.
    func unload() {
        let file = statsFile.withLock { $0.take() }
        file?.stop()
        guard let caches = caches.withLock({ $0.take() }) else { return }
        for (name, cache) in caches.byExport.sorted(by: { $0.key < $1.key }) {
            let unwritten = cache.engine.unwritten
            if unwritten.blocks > 0 {
                Log.error(
                    "swiftcache: exiting with \(unwritten.blocks) dirty blocks (\(unwritten.bytes) bytes) of "
                        + "export \"\(name)\" never written back to the plugin: they are lost")
            }
        }
        let final = statistics.snapshot()
        file?.write(final)
        Log.statistics(final.report)
    }
}

/// Per-connection handle: its export's cache and what this connection's
/// plugin context can do.
final class Connection: @unchecked Sendable {
    let export: String
    let engine: Engine
    /// Set once in `.prepare`, before any request on the connection.
    var capabilities = PluginCapabilities()
    /// Whether it has written since its last flush (see `Engine.connectionClosing`).
    let writes = ConnectionWrites()

    init(export: String, engine: Engine) {
        self.export = export
        self.engine = engine
    }

    static func from(_ handle: UnsafeMutableRawPointer?) -> Connection {
        Unmanaged<Connection>.fromOpaque(handle!).takeUnretainedValue()
    }

    func backend(_ next: UnsafeMutablePointer<nbdkit_next_ops>?) -> NextBackend {
        NextBackend(next: next!, capabilities: capabilities)
    }
}

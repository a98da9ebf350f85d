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

    private let config = Mutex(CacheConfig())
    private let engine = Mutex<Engine?>(nil)

    func configure(key: String, value: String) -> Parameters.Outcome {
        config.withLock { Parameters.apply(key: key, value: value, to: &$0) }
    }

    var settings: CacheConfig { config.withLock { $0 } }

    /// Write-back requests in flight at once under the parallel thread model
    /// (nbdkit's default number of threads per connection).
    static let writeBackThreads = 16

    /// Creates the cache file in $TMPDIR (default /var/tmp) before nbdkit
    /// serves anything, so a bad TMPDIR stops start-up. Write-back uses
    /// threads of its own only if nbdkit's final thread model is parallel.
    func getReady(parallel: Bool) -> Bool {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/var/tmp"
        do {
            let file = try CacheFile(directory: directory)
            let created = try Engine(config: settings, file: file, debug: Log.verbose,
                                 writeBackThreads: parallel ? Self.writeBackThreads : 1)
            let threads = parallel ? Self.writeBackThreads : 1
            Log.debug("swiftcache: mode \(created.config.mode.rawValue), block size \(created.blockSize), "
                      + "cache file in \(directory), up to \(threads) write-back requests at once")
            engine.withLock { $0 = created }
            return true
        } catch {
            Log.error("swiftcache: \(error)")
            return false
        }
    }

    var currentEngine: Engine? { engine.withLock { $0 } }

    /// nbdkit is exiting: dirty blocks still in the cache are lost with it,
    /// and said so (cache=unsafe, or write-backs that failed).
    func unload() {
        guard let engine = engine.withLock({ $0.take() }) else { return }
        let unwritten = engine.unwritten
        if unwritten.blocks > 0 {
            Log.error("swiftcache: exiting with \(unwritten.blocks) dirty blocks (\(unwritten.bytes) bytes) never "
                      + "written back to the plugin: they are lost")
        }
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

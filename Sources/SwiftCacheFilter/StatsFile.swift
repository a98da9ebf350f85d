// SPDX-License-Identifier: BSD-3-Clause
import CLinux
import SwiftCacheCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cache-stats=FILE`: the statistics report (`Statistics.Snapshot.report`)
/// kept in FILE, so that `watch cat FILE` follows a running server.
///
/// It is written when nbdkit gets ready (a path that cannot be written stops
/// start-up), then by a thread of its own at most once a second while the
/// numbers change, and a last time at exit. Each write replaces the file
/// whole: a new file in the same directory, renamed over it, so a reader
/// sees one report or the next, never a mix of them.
final class StatsFile: @unchecked Sendable {
    let path: FilePath
    private let statistics: Statistics
    /// Guards `stopping`; the writer thread waits on `wake` between writes.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var stopping = false
    /// The writer thread, from `start` to `stop` (nbdkit calls them one after
    /// the other, on one thread).
    private var thread: pthread_t?
    /// What the file holds, and whether the last write failed (logged once,
    /// until a write works again). Only the writer thread uses them while it
    /// runs; `init` before and `write` after it.
    private var written: Statistics.Snapshot
    private var failing = false

    /// Writes the first report; fails if FILE cannot be written.
    init(path: FilePath, statistics: Statistics) throws(CacheError) {
        self.path = path
        self.statistics = statistics
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(wake, &attributes)
        pthread_condattr_destroy(&attributes)
        written = statistics.snapshot()
        try replace(with: written.report)
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(mutex)
        wake.deallocate()
        mutex.deallocate()
    }

    /// Starts the writer thread (from nbdkit's .after_fork: threads do not
    /// survive the fork into the background).
    func start() throws(CacheError) {
        var created = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(
            &created, nil,
            { context in
                if let context { Unmanaged<StatsFile>.fromOpaque(context).takeRetainedValue().run() }
                return nil
            }, context)
        guard result == 0 else {
            Unmanaged<StatsFile>.fromOpaque(context).release()
            throw CacheError(Errno(rawValue: result), "cache-stats=\(path): cannot start the thread that writes it")
        }
        thread = created
    }

    /// Stops the writer thread, if it runs, and waits for it.
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_signal(wake)
        pthread_mutex_unlock(mutex)
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    /// Writes `snapshot`'s report; a failure is logged, and the next write tries again.
    func write(_ snapshot: Statistics.Snapshot) {
        do {
            try replace(with: snapshot.report)
            written = snapshot
            failing = false
        } catch {
            if !failing { Log.error("swiftcache: \(error)") }
            failing = true
        }
    }

    private func run() {
        while waitOneSecond() {
            let now = statistics.snapshot()
            if now != written { write(now) }
        }
    }

    /// Waits a second, or until `stop`; false once stopping.
    private func waitOneSecond() -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        deadline.tv_sec += 1
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !stopping, pthread_cond_timedwait(wake, mutex, &deadline) != ETIMEDOUT {}
        return !stopping
    }

    /// Replaces the file with `text`: written to a new hidden file next to
    /// it (mode 0644), then renamed over it. The new file's name is short and
    /// fixed in length, so any name FILE may have, it may have too.
    private func replace(with text: String) throws(CacheError) {
        let directory = path.removingLastComponent()
        let file: FileDescriptor, temporary: FilePath
        do {
            (file, temporary) = try FileDescriptor.makeTemporary(in: directory, prefix: ".swiftcache-stats.")
        } catch {
            throw CacheError(error, "cache-stats=\(path): cannot create a file in \(directory)")
        }
        do {
            try file.closeAfter {
                _ = try file.writeAll(text.utf8)
                if fchmod(file.rawValue, 0o644) != 0 { throw Errno(rawValue: errno) }
            }
            let renamed = path.withPlatformString { target in
                temporary.withPlatformString { rename($0, target) }
            }
            if renamed != 0 { throw Errno(rawValue: errno) }
        } catch {
            _ = temporary.withPlatformString { unlink($0) }
            throw CacheError(error as? Errno ?? .ioError, "cache-stats=\(path): cannot write it")
        }
    }
}

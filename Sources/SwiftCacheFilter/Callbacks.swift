// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit
import SwiftCacheCore
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// nbdkit's callbacks, each adapting C arguments to one call on the core.
enum Callbacks {
    typealias Next = UnsafeMutablePointer<nbdkit_next_ops>?
    typealias Handle = UnsafeMutableRawPointer?

    // MARK: Configuration

    static let config:
        @convention(c) (
            (@convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32)?,
            OpaquePointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?
        ) -> Int32 = { next, backend, key, value in
            guard let key, let value else { return -1 }
            switch SwiftCacheFilter.shared.configure(key: String(cString: key), value: value) {
            case .handled: return 0
            case .failed: return -1
            case .notOurs: return next?(backend, key, value) ?? -1
            }
        }

    static let configComplete:
        @convention(c) (
            (@convention(c) (OpaquePointer?) -> Int32)?, OpaquePointer?
        ) -> Int32 = { next, backend in
            guard Parameters.check(SwiftCacheFilter.shared.settings.cache) else { return -1 }
            return next?(backend) ?? -1
        }

    static let getReady: @convention(c) (Int32) -> Int32 = { threadModel in
        SwiftCacheFilter.shared.getReady(parallel: threadModel == NBDKIT_THREAD_MODEL_PARALLEL) ? 0 : -1
    }

    static let afterFork: @convention(c) (OpaquePointer?) -> Int32 = { _ in
        SwiftCacheFilter.shared.afterFork() ? 0 : -1
    }

    static let unload: @convention(c) () -> Void = {
        SwiftCacheFilter.shared.unload()
    }

    // MARK: Connections

    static let open:
        @convention(c) (
            (@convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?) -> Int32)?,
            OpaquePointer?, Int32, UnsafePointer<CChar>?, Int32
        ) -> UnsafeMutableRawPointer? = { next, context, readonly, exportName, _ in
            guard let next, next(context, readonly, exportName) != -1 else { return nil }
            do {
                let export = exportName.map { String(cString: $0) } ?? ""
                let engine = try SwiftCacheFilter.shared.openCache(forExport: export)
                return Unmanaged.passRetained(Connection(export: export, engine: engine)).toOpaque()
            } catch {
                Log.error("swiftcache: \(error)")
                return nil
            }
        }

    static let close: @convention(c) (Handle) -> Void = { handle in
        guard let handle else { return }
        SwiftCacheFilter.shared.closeCache(forExport: Connection.from(handle).export)
        Unmanaged<Connection>.fromOpaque(handle).release()
    }

    /// Reads the plugin's size and capabilities once, before any request.
    static let prepare: @convention(c) (Next, Handle, Int32) -> Int32 = { next, handle, readonly in
        guard let next else { return -1 }
        let connection = Connection.from(handle)
        let size = next.pointee.get_size(next)
        guard size >= 0 else { return -1 }
        do { try connection.engine.setExportSize(UInt64(size)) } catch {
            Log.error("swiftcache: \(error)")
            return -1
        }
        var capabilities = PluginCapabilities()
        let canWrite = next.pointee.can_write(next)
        let canFlush = next.pointee.can_flush(next)
        let canZero = next.pointee.can_zero(next)
        let canFUA = next.pointee.can_fua(next)
        guard canWrite >= 0, canFlush >= 0, canZero >= 0, canFUA >= 0 else { return -1 }
        capabilities.size = UInt64(size)
        capabilities.canWrite = canWrite == 1
        capabilities.canFlush = canFlush == 1
        capabilities.canZero = canZero != NBDKIT_ZERO_NONE
        capabilities.fuaMode = FUAMode(canFUA)
        var minimum: UInt32 = 0, preferred: UInt32 = 0, maximum: UInt32 = 0
        guard next.pointee.block_size(next, &minimum, &preferred, &maximum) != -1 else { return -1 }
        capabilities.maximumRequest = maximum
        capabilities.minimumRequest = minimum
        connection.capabilities = capabilities
        return 0
    }

    /// The connection is closing: dirty blocks go to the plugin (SPEC §8).
    static let finalize: @convention(c) (Next, Handle) -> Int32 = { next, handle in
        let connection = Connection.from(handle)
        // On a thread of our own, which belongs to no connection: nbdkit 1.32
        // aborts every nbdkit_nanosleep on a connection's thread once its client
        // has gone (ESHUTDOWN), so a delay or rate filter under ours would fail
        // the write-back and the data would be lost at exit.
        // The thread ends before this callback returns, as nbdkit requires of
        // a filter calling `next` from threads of its own.
        nonisolated(unsafe) let backend = connection.backend(next)
        let status = Atomic<Int32>(-1)
        alongside(
            threads: 2,
            {
                do {
                    try connection.engine.connectionClosing(connection.writes, backend: backend)
                    status.store(0, ordering: .relaxed)
                } catch {
                    Log.error("swiftcache: writing back dirty blocks as the connection closes: \(error)")
                }
            }, {})
        return status.load(ordering: .relaxed)
    }

    // MARK: What the client sees

    static let blockSize:
        @convention(c) (
            Next, Handle, UnsafeMutablePointer<UInt32>?, UnsafeMutablePointer<UInt32>?, UnsafeMutablePointer<UInt32>?
        ) -> Int32 = { next, handle, minimum, preferred, maximum in
            guard let next, let minimum, let preferred, let maximum,
                next.pointee.block_size(next, minimum, preferred, maximum) != -1
            else { return -1 }
            let sizes = Capabilities.blockSize(
                plugin: BlockSizes(minimum: minimum.pointee, preferred: preferred.pointee, maximum: maximum.pointee),
                cacheBlock: Connection.from(handle).engine.blockSize)
            minimum.pointee = sizes.minimum
            preferred.pointee = sizes.preferred
            maximum.pointee = sizes.maximum
            return 0
        }

    static let canFlush: @convention(c) (Next, Handle) -> Int32 = { next, handle in
        let plugin = next!.pointee.can_flush(next)
        guard plugin >= 0 else { return -1 }
        return Capabilities.canFlush(mode: Connection.from(handle).engine.config.mode, plugin: plugin == 1) ? 1 : 0
    }

    static let canFUA: @convention(c) (Next, Handle) -> Int32 = { next, handle in
        let plugin = next!.pointee.can_fua(next)
        guard plugin >= 0 else { return -1 }
        switch Capabilities.fua(mode: Connection.from(handle).engine.config.mode, plugin: FUAMode(plugin)) {
        case .none: return NBDKIT_FUA_NONE
        case .emulate: return NBDKIT_FUA_EMULATE
        case .native: return NBDKIT_FUA_NATIVE
        }
    }

    static let canMultiConn: @convention(c) (Next, Handle) -> Int32 = { next, handle in
        let plugin = next!.pointee.can_multi_conn(next)
        guard plugin >= 0 else { return -1 }
        return Capabilities.canMultiConn(mode: Connection.from(handle).engine.config.mode, plugin: plugin == 1) ? 1 : 0
    }

    /// Zeroes are handled by the cache, whatever the plugin does.
    static let canZero: @convention(c) (Next, Handle) -> Int32 = { _, _ in NBDKIT_ZERO_NATIVE }
    /// FAST_ZERO always fails at once, which is a valid fast answer.
    static let canFastZero: @convention(c) (Next, Handle) -> Int32 = { _, _ in 1 }
    static let canCache: @convention(c) (Next, Handle) -> Int32 = { _, _ in NBDKIT_CACHE_NATIVE }

    // MARK: Data

    /// Runs a data request: on failure, logs it and hands nbdkit the errno.
    private static func serve(_ err: UnsafeMutablePointer<Int32>?, _ body: () throws(CacheError) -> Void) -> Int32 {
        do {
            try body()
            return 0
        } catch {
            if error.errno == .notSupported {
                Log.debug("swiftcache: \(error)")
            } else {
                Log.error("swiftcache: \(error)")
            }
            // `.cache` may come with no err pointer (the readahead filter).
            err?.pointee = error.errno.rawValue == 0 ? EIO : error.errno.rawValue
            return -1
        }
    }

    static let pread:
        @convention(c) (
            Next, Handle, UnsafeMutableRawPointer?, UInt32, UInt64, UInt32, UnsafeMutablePointer<Int32>?
        ) -> Int32 = { next, handle, buffer, count, offset, _, err in
            let connection = Connection.from(handle)
            return serve(err) { () throws(CacheError) in
                try connection.engine.read(
                    into: UnsafeMutableRawBufferPointer(start: buffer, count: Int(count)),
                    at: offset, backend: connection.backend(next))
            }
        }

    static let pwrite:
        @convention(c) (
            Next, Handle, UnsafeRawPointer?, UInt32, UInt64, UInt32, UnsafeMutablePointer<Int32>?
        ) -> Int32 = { next, handle, buffer, count, offset, flags, err in
            let connection = Connection.from(handle)
            return serve(err) { () throws(CacheError) in
                defer { connection.engine.connectionWrote(connection.writes) }
                try connection.engine.write(
                    UnsafeRawBufferPointer(start: buffer, count: Int(count)), at: offset,
                    fua: flags & UInt32(NBDKIT_FLAG_FUA) != 0, backend: connection.backend(next))
            }
        }

    static let zero: @convention(c) (Next, Handle, UInt32, UInt64, UInt32, UnsafeMutablePointer<Int32>?) -> Int32 = {
        next, handle, count, offset, flags, err in
        let connection = Connection.from(handle)
        let fastZero = flags & UInt32(NBDKIT_FLAG_FAST_ZERO) != 0
        return serve(err) { () throws(CacheError) in
            defer { connection.engine.connectionWrote(connection.writes) }
            do throws(CacheError) {
                try connection.engine.zero(
                    count: UInt64(count), at: offset, fua: flags & UInt32(NBDKIT_FLAG_FUA) != 0,
                    mayTrim: flags & UInt32(NBDKIT_FLAG_MAY_TRIM) != 0, fastZero: fastZero,
                    backend: connection.backend(next))
            } catch {
                // nbdkit only allows ENOTSUP from .zero for FAST_ZERO.
                let unsupported = error.errno == .notSupported || error.errno == .notSupportedOnSocket
                throw fastZero || !unsupported ? error : CacheError(.ioError, error.description)
            }
        }
    }

    static let trim: @convention(c) (Next, Handle, UInt32, UInt64, UInt32, UnsafeMutablePointer<Int32>?) -> Int32 = {
        next, handle, count, offset, flags, err in
        let connection = Connection.from(handle)
        return serve(err) { () throws(CacheError) in
            try connection.engine.trim(
                count: UInt64(count), at: offset, fua: flags & UInt32(NBDKIT_FLAG_FUA) != 0,
                backend: connection.backend(next))
        }
    }

    static let flush: @convention(c) (Next, Handle, UInt32, UnsafeMutablePointer<Int32>?) -> Int32 = {
        next, handle, _, err in
        let connection = Connection.from(handle)
        return serve(err) { () throws(CacheError) in
            connection.engine.connectionFlushing(connection.writes)
            do throws(CacheError) { try connection.engine.flush(backend: connection.backend(next)) } catch {
                connection.engine.connectionWrote(connection.writes)
                throw error
            }
        }
    }

    static let extents:
        @convention(c) (
            Next, Handle, UInt32, UInt64, UInt32, OpaquePointer?, UnsafeMutablePointer<Int32>?
        ) -> Int32 = {
            next, handle, count, offset, flags, list, err in
            let connection = Connection.from(handle)
            return serve(err) { () throws(CacheError) in
                let extents = try connection.engine.extents(
                    count: UInt64(count), at: offset,
                    onlyOne: flags & UInt32(NBDKIT_FLAG_REQ_ONE) != 0,
                    backend: connection.backend(next))
                for extent in extents where nbdkit_add_extent(list, extent.offset, extent.length, extent.type) == -1 {
                    throw CacheError(Errno(rawValue: errno), "adding an extent")
                }
            }
        }

    /// NBD_CMD_CACHE. The readahead filter calls this from its own thread
    /// with no `err`; nbdkit then cannot take a failure (it would read
    /// `*err`), so one is only logged: the request is advisory anyway.
    static let cache: @convention(c) (Next, Handle, UInt32, UInt64, UInt32, UnsafeMutablePointer<Int32>?) -> Int32 = {
        next, handle, count, offset, _, err in
        let connection = Connection.from(handle)
        let result = serve(err) { () throws(CacheError) in
            try connection.engine.cache(count: UInt64(count), at: offset, backend: connection.backend(next))
        }
        return err == nil ? 0 : result
    }
}

extension FUAMode {
    /// nbdkit's NBDKIT_FUA_* answer.
    init(_ answer: Int32) {
        self = answer == NBDKIT_FUA_NATIVE ? .native : answer == NBDKIT_FUA_EMULATE ? .emulate : .none
    }
}

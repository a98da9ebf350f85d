// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit

#if canImport(Glibc)
import Glibc
#endif

/// The filter table: the table of contents of the whole filter. Everything
/// not listed here (get_size, can_write, can_trim, can_extents, ...) is the
/// plugin's own.
enum FilterTable {
    // The assignments below are the filter's table of contents, their
    // comments aligned in one column, which swift-format would not keep.
    // swift-format-ignore
    nonisolated(unsafe) static let table: UnsafeMutablePointer<nbdkit_filter> = {
        var filter = nbdkit_filter()
        filter._api_version = NBDKIT_FILTER_API_VERSION
        filter._version = swiftcache_nbdkit_version()
        filter.name = cString("swiftcache")
        filter.longname = UnsafePointer(strdup(Version.longname))  // lives as long as the table
        filter.description = cString("""
            Caches the plugin's blocks in a local sparse file, like nbdkit's cache
            filter, without losing dirty data to reclaim and with block status
            that never hides cached data.
            """)
        filter.config_help = cString(Parameters.help)

        filter.unload = Callbacks.unload                  // Filter.swift: last statistics report
        filter.config = Callbacks.config                  // Parameters.swift
        filter.config_complete = Callbacks.configComplete
        filter.get_ready = Callbacks.getReady             // creates the cache file and the cache-stats file
        filter.after_fork = Callbacks.afterFork           // starts the cache-stats writer (StatsFile.swift)

        filter.open = Callbacks.open                      // per-connection handle
        filter.close = Callbacks.close
        filter.prepare = Callbacks.prepare                // export size, plugin capabilities
        filter.finalize = Callbacks.finalize              // writes back what the connection left dirty

        filter.block_size = Callbacks.blockSize           // capabilities: SPEC §3
        filter.can_flush = Callbacks.canFlush
        filter.can_fua = Callbacks.canFUA
        filter.can_multi_conn = Callbacks.canMultiConn
        filter.can_zero = Callbacks.canZero
        filter.can_fast_zero = Callbacks.canFastZero
        filter.can_cache = Callbacks.canCache

        filter.pread = Callbacks.pread                    // ReadPath.swift
        filter.cache = Callbacks.cache
        filter.pwrite = Callbacks.pwrite                  // WritePath.swift
        filter.zero = Callbacks.zero
        filter.trim = Callbacks.trim
        filter.flush = Callbacks.flush                    // Flush.swift
        filter.extents = Callbacks.extents                // Extents.swift

        let table = UnsafeMutablePointer<nbdkit_filter>.allocate(capacity: 1)
        table.initialize(to: filter)
        return table
    }()

    private static func cString(_ text: StaticString) -> UnsafePointer<CChar> {
        UnsafeRawPointer(text.utf8Start).assumingMemoryBound(to: CChar.self)
    }
}

/// nbdkit's entry point: the filter table, built against the installed
/// <nbdkit-filter.h> so the API and version always match.
@_cdecl("filter_init")
public func filterInit() -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer(FilterTable.table)
}

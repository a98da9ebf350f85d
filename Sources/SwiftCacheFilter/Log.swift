// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit
import CSwiftCacheDebug
import SwiftCacheCore

/// nbdkit's logging is variadic, so we call its va_list forms with "%s".
enum Log {
    static func error(_ message: String) {
        message.withCString { text in withVaList([text]) { nbdkit_verror("%s", $0) } }
    }

    static func debug(_ message: String) {
        message.withCString { text in withVaList([text]) { nbdkit_vdebug("%s", $0) } }
    }

    /// The statistics report at exit, a message a line, on with `-D swiftcache.stats=1`.
    static func statistics(_ report: String) {
        guard swiftcache_stats() != 0 else { return }
        for line in report.split(separator: "\n") { debug("swiftcache: stats: \(line)") }
    }

    /// Per-block messages, on with `-D swiftcache.verbose=1`.
    static let verbose = DebugLog(
        isOn: { swiftcache_verbose() != 0 }, emit: { debug("swiftcache: \($0)") },
        warn: { error("swiftcache: \($0)") })
}

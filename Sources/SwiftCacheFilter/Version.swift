// SPDX-License-Identifier: BSD-3-Clause
import CNBDKit

/// swiftcache's version: the one place it is written. The Makefile reads it
/// from here for `make deb`, and debian/changelog must agree (debian/rules checks).
enum Version {
    static let number = "0.4.0"
    /// The nbdkit whose <nbdkit-filter.h> we were built against: the only one that loads us.
    static let nbdkit = String(cString: swiftcache_nbdkit_version())
    /// The first debug line: `swiftcache 0.4.0 (built for nbdkit 1.32.5)`.
    static let description = "swiftcache \(number) (built for nbdkit \(nbdkit))"
    /// What `--help` shows as `filter: swiftcache (...)`.
    static let longname = "swiftcache \(number), a block cache written in Swift, built for nbdkit \(nbdkit)"
}

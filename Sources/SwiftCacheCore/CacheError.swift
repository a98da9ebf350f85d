// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

/// A failed request: the errno the client receives and a message for the log.
public struct CacheError: Error, CustomStringConvertible {
    public let errno: Errno
    public let context: String

    public init(_ errno: Errno, _ context: String) {
        self.errno = errno
        self.context = context
    }

    public var description: String { "\(context): \(errno.description)" }
}

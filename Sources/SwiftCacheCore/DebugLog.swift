// SPDX-License-Identifier: BSD-3-Clause
/// Where the core's messages go: per-block debug messages
/// (`-D swiftcache.verbose=1` in nbdkit), built only when that is on, and
/// warnings, which always reach the log.
public struct DebugLog: Sendable {
    let isOn: @Sendable () -> Bool
    let emit: @Sendable (String) -> Void
    /// Something the user must hear of, such as data that could not be kept.
    let warn: @Sendable (String) -> Void

    public init(
        isOn: @escaping @Sendable () -> Bool, emit: @escaping @Sendable (String) -> Void,
        warn: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.isOn = isOn
        self.emit = emit
        self.warn = warn
    }

    public static let off = DebugLog(isOn: { false }, emit: { _ in })

    func callAsFunction(_ message: @autoclosure () -> String) {
        if isOn() { emit(message()) }
    }

    /// One message per block: "<what> block N".
    func blocks(_ what: String, _ blocks: some Sequence<UInt64>) {
        guard isOn() else { return }
        for block in blocks { emit("\(what) block \(block)") }
    }
}

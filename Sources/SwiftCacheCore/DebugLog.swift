/// Where per-block debug messages go (`-D swiftcache.verbose=1` in nbdkit).
/// The message is only built when the flag is on.
public struct DebugLog: Sendable {
    let isOn: @Sendable () -> Bool
    let emit: @Sendable (String) -> Void

    public init(isOn: @escaping @Sendable () -> Bool, emit: @escaping @Sendable (String) -> Void) {
        self.isOn = isOn
        self.emit = emit
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

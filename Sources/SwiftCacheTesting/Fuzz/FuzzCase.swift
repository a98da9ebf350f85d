// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where fuzz cases make their cache files (each is unlinked at once): a
/// directory on a disk and one on tmpfs, where the cache file reads
/// through mappings.
public struct FuzzDirectories: Sendable {
    public let disk: String
    public let tmpfs: String?

    /// Fresh directories under /tmp and /dev/shm (none on tmpfs if /dev/shm is missing).
    public static func make() throws -> FuzzDirectories {
        FuzzDirectories(
            disk: try makeTemporaryDirectory(prefix: "swiftcache-fuzz"),
            tmpfs: try? makeTemporaryDirectory(in: "/dev/shm", prefix: "swiftcache-fuzz"))
    }

    public func remove() {
        removeDirectory(disk)
        if let tmpfs { removeDirectory(tmpfs) }
    }
}

/// A fuzz input decoded and run against the reference model (fuzz/README.md).
public enum FuzzCase {
    /// Runs `input`: nil if the cache did all it must, else what went wrong,
    /// with the configuration and the requests that led there. A trap in
    /// the engine is a crash, as it would be in nbdkit.
    public static func run(_ input: [UInt8], in directories: FuzzDirectories) -> String? {
        guard let failure = run(input, directories, tracing: false).failure else { return nil }
        // A case runs the same every time: again, keeping the requests.
        let traced = run(input, directories, tracing: true)
        return report(traced.failure ?? failure, traced.steps)
    }

    /// Runs `input` and returns every request it made and what failed, if anything.
    public static func trace(_ input: [UInt8], in directories: FuzzDirectories) -> (failure: String?, steps: [String]) {
        run(input, directories, tracing: true)
    }

    private static func run(
        _ input: [UInt8], _ directories: FuzzDirectories, tracing: Bool
    ) -> (failure: String?, steps: [String]) {
        var reader = FuzzReader(input)
        let config = FuzzConfig(&reader)
        let run: FuzzRun
        do { run = try FuzzRun(config, directories: directories, tracing: tracing) } catch {
            return ("cannot set up \(config): \(error)", [])
        }
        do throws(FuzzFailure) {
            try run.run(&reader)
            return (nil, run.steps)
        } catch {
            return (error.message, run.steps)
        }
    }

    private static func report(_ failure: String, _ steps: [String]) -> String {
        let shown = 60
        let tail = steps.count > shown ? ["... \(steps.count - shown) requests before"] + steps.suffix(shown) : steps
        return (["swiftcache fuzz case failed: \(failure)"] + tail.map { "  " + $0 }).joined(separator: "\n")
    }
}

/// The directories of this process's fuzz cases, made on first use and
/// removed at exit.
nonisolated(unsafe) private var processDirectories: FuzzDirectories?

/// libFuzzer's `LLVMFuzzerTestOneInput` (Sources/SwiftCacheFuzz/fuzz.c):
/// runs one input and traps if the cache gets it wrong, so that libFuzzer
/// keeps the input. With SWIFTCACHE_FUZZ_TRACE set, prints every request.
@_cdecl("swiftcache_fuzz_one")
public func swiftcacheFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if processDirectories == nil {
        do { processDirectories = try FuzzDirectories.make() } catch {
            fatalError("swiftcache fuzz: cannot make a directory for cache files: \(error)")
        }
        atexit { processDirectories?.remove() }
    }
    let directories = processDirectories!
    if getenv("SWIFTCACHE_FUZZ_TRACE") != nil {
        let (failure, steps) = FuzzCase.trace(input, in: directories)
        for line in steps { print(line) }
        fflush(nil)
        if let failure {
            directories.remove()  // a trap skips atexit
            fatalError("swiftcache fuzz case failed: \(failure)")
        }
        return 0
    }
    if let failure = FuzzCase.run(input, in: directories) {
        directories.remove()
        fatalError(failure)
    }
    return 0
}

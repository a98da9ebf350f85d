// SPDX-License-Identifier: BSD-3-Clause
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a thread of the filter's own and waits for it; on this
/// thread if no thread can be started.
///
/// For work on the plugin after the client has gone (`.finalize`): nbdkit
/// 1.32 aborts every `nbdkit_nanosleep` on a connection's thread once its
/// client has disconnected (ESHUTDOWN, "aborting sleep because of connection
/// close or error"), so a delay or rate filter under ours would fail the
/// write-back. A thread of our own belongs to no connection: its sleeps run.
func onThreadOfOurOwn(_ body: @escaping () -> Int32) -> Int32 {
    let work = Work(body)
    var thread = pthread_t()
    let context = Unmanaged.passRetained(work).toOpaque()
    let started = pthread_create(
        &thread, nil,
        { context in
            Unmanaged<Work>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
    if started == 0 {
        pthread_join(thread, nil)
    } else {
        Unmanaged<Work>.fromOpaque(context).release()
        work.run()
    }
    return work.result
}

/// `body` and what it returned, handed to the worker and back; the waiting
/// thread reads `result` only after joining the worker.
private final class Work: @unchecked Sendable {
    let body: () -> Int32
    var result: Int32 = -1
    init(_ body: @escaping () -> Int32) { self.body = body }
    func run() { result = body() }
}

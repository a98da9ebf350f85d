// SPDX-License-Identifier: BSD-3-Clause
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs `body(i)` for every i in 0..<count on up to `threads` threads, the
/// calling thread among them, and returns when all are done.
///
/// Used for write-back, whose plugin requests need not wait for each other.
/// nbdkit allows a filter to call the plugin from its own threads under the
/// parallel thread model, provided they end before the request that started
/// them returns: they do, we join them here.
func concurrently(_ count: Int, threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let job = Job(count: count, body: body)
    var started: [pthread_t] = []
    for _ in 1..<max(1, min(threads, count)) {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(job).toOpaque()
        let created = pthread_create(
            &thread, nil,
            { context in
                Unmanaged<Job>.fromOpaque(context!).takeRetainedValue().work()
                return nil
            }, context)
        if created == 0 {
            started.append(thread)
        } else {
            // No thread: fewer workers, same work.
            Unmanaged<Job>.fromOpaque(context).release()
        }
    }
    job.work()
    for thread in started { pthread_join(thread, nil) }
}

/// Runs `background` on a thread of its own (when `threads` > 1 and one can
/// be started; else first, on this thread) while this thread runs
/// `foreground`, and returns when both are done.
public func alongside(threads: Int, _ background: @escaping @Sendable () -> Void, _ foreground: () -> Void) {
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Box(background)).toOpaque()
    let started =
        threads > 1
        && pthread_create(
            &thread, nil,
            { context in
                Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
                return nil
            }, context) == 0
    if !started {
        Unmanaged<Box>.fromOpaque(context).release()
        background()
    }
    foreground()
    if started { pthread_join(thread, nil) }
}

private final class Box: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

private final class Job: Sendable {
    let count: Int
    let body: @Sendable (Int) -> Void
    let next = Atomic<Int>(0)

    init(count: Int, body: @escaping @Sendable (Int) -> Void) {
        self.count = count
        self.body = body
    }

    func work() {
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard i < count else { return }
            body(i)
        }
    }
}

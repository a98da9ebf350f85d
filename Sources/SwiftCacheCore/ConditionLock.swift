// SPDX-License-Identifier: BSD-3-Clause
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A mutex guarding a value, with one condition variable per `Event`: a
/// thread waits for a named event, and whoever changes the value says which
/// event it signals, so no release can forget to wake its waiters.
///
/// `Synchronization.Mutex` has no way to wait for a condition (and the thread
/// sanitizer cannot see its futex), so this wraps pthread objects, which live
/// on the heap and never move.
final class ConditionLock<Value, Event: CaseIterable & Equatable>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let events = Array(Event.allCases)
    private let conditions: UnsafeMutablePointer<pthread_cond_t>
    private var waiters: [Int]
    private var value: Value

    init(_ value: Value) {
        self.value = value
        conditions = .allocate(capacity: max(events.count, 1))
        waiters = Array(repeating: 0, count: events.count)
        pthread_mutex_init(mutex, nil)
        for i in events.indices { pthread_cond_init(conditions + i, nil) }
    }

    deinit {
        for i in events.indices { pthread_cond_destroy(conditions + i) }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        conditions.deallocate()
    }

    /// Reads or changes the value; wakes no one.
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Changes the value and wakes the threads waiting for `event`, which
    /// check their condition again.
    func withLock<R>(signalling event: Event, _ body: (inout Value) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let result = body(&value)
        let i = index(of: event)
        if waiters[i] > 0 { pthread_cond_broadcast(conditions + i) }
        return result
    }

    /// Waits, holding the lock, for `event` until `ready` is true, then runs `body`.
    func withLock<R>(waitingFor event: Event, until ready: (Value) -> Bool, _ body: (inout Value) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let i = index(of: event)
        while !ready(value) {
            waiters[i] += 1
            pthread_cond_wait(conditions + i, mutex)
            waiters[i] -= 1
        }
        return body(&value)
    }

    private func index(of event: Event) -> Int { events.firstIndex(of: event) ?? 0 }
}

/// For a lock no one waits on.
enum NoEvent: CaseIterable, Equatable {}

/// A value behind a lock that no thread waits on.
typealias Lock<Value> = ConditionLock<Value, NoEvent>

#if ThreadSanitizerLocks
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
#else
import Synchronization
#endif

/// A value guarded by a lock, with `Synchronization.Mutex`'s API: the one lock type of the package.
///
/// It is a `Mutex`, unless the package is built with the `ThreadSanitizerLocks` trait
/// (`swift build --traits ThreadSanitizerLocks`, as `scripts/sanitizers.sh tsan` does): then it is a
/// `pthread_mutex_t`. ThreadSanitizer cannot see the futex a contended `Mutex` waits on on Linux, so it
/// reports the accesses the mutex orders as races; it understands pthread mutexes.
package struct Lock<Value: ~Copyable>: ~Copyable {
    #if ThreadSanitizerLocks
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let value: UnsafeMutablePointer<Value>

    package init(_ initialValue: consuming sending Value) {
        self.mutex = .allocate(capacity: 1)
        self.mutex.initialize(to: pthread_mutex_t())
        precondition(pthread_mutex_init(self.mutex, nil) == 0, "pthread_mutex_init failed")
        self.value = .allocate(capacity: 1)
        self.value.initialize(to: initialValue)
    }

    deinit {
        self.value.deinitialize(count: 1)
        self.value.deallocate()
        pthread_mutex_destroy(self.mutex)
        self.mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return try body(&self.value.pointee)
    }
    #else
    private let mutex: Mutex<Value>

    package init(_ initialValue: consuming sending Value) {
        self.mutex = Mutex(initialValue)
    }

    /// Runs `body` with exclusive access to the value.
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try self.mutex.withLock(body)
    }
    #endif
}

// Safe because the value is reached only inside withLock, under the lock, and moves in and out as
// `sending`, as with Mutex.
extension Lock: @unchecked Sendable where Value: ~Copyable {}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Wakes its owner when anything changes in a directory (Linux inotify): a file written in place, a
/// new file renamed over the old one, a Kubernetes `..data` symlink swapped. Events are only triggers;
/// the owner re-reads the file. Where inotify is missing, `changes` never fires and the owner's poll
/// timer is what notices changes.
final class DirectoryWatcher: Sendable {
    let changes: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    #if os(Linux)
    /// This watcher's hold on the inotify instance; `nil` once stopped (or when there is none).
    private let instance: Lock<InotifyInstance?>
    #endif

    init(directory: String) {
        (self.changes, self.continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        #if os(Linux)
        let instance = InotifyInstance(watching: directory)
        if let instance, ReaderContext.start(instance: instance, continuation: self.continuation) {
            self.instance = Lock(instance)
        } else {
            // Without a reader nobody else holds the instance: it closes when `instance` goes here.
            self.instance = Lock(nil)
            self.continuation.finish()
        }
        #else
        self.continuation.finish()
        #endif
    }

    /// Stops watching; the reader thread ends, and the descriptor closes once neither needs it.
    func stop() {
        #if os(Linux)
        if let instance = self.instance.withLock({ $0.take() }) {
            instance.removeWatch()
        }
        #endif
        self.continuation.finish()
    }

    deinit {
        self.stop()
    }
}

#if os(Linux)
/// One inotify descriptor with one watch, shared by the watcher and its reader thread and closed in
/// `deinit`, when the last of them lets go. Closing it any earlier would free its number for reuse while
/// the other side may still call `inotify_rm_watch` or `read` with it.
private final class InotifyInstance: Sendable {
    let descriptor: Int32
    private let watch: Int32
    /// Whether the watch is gone: removed by `stop()`, or by the kernel (`IN_IGNORED`, the directory
    /// was deleted or its file system unmounted).
    private let watchRemoved = Atomic<Bool>(false)

    /// `nil` when inotify is unavailable or the directory cannot be watched (nothing stays open then).
    init?(watching directory: String) {
        let descriptor = inotify_init1(Int32(IN_CLOEXEC))
        guard descriptor >= 0 else { return nil }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
        let watch = inotify_add_watch(descriptor, directory, mask)
        guard watch >= 0 else {
            close(descriptor)
            return nil
        }
        self.descriptor = descriptor
        self.watch = watch
    }

    /// Removes the watch unless it is already gone; the kernel then queues `IN_IGNORED`, which ends the
    /// reader.
    func removeWatch() {
        guard !self.watchRemoved.exchange(true, ordering: .relaxed) else { return }
        inotify_rm_watch(self.descriptor, self.watch)
    }

    /// The reader saw `IN_IGNORED`: the watch number is no longer ours to remove.
    func watchWasRemoved() {
        self.watchRemoved.store(true, ordering: .relaxed)
    }

    deinit {
        close(self.descriptor)
    }
}

/// What the reader thread needs: its own hold on the instance, and where to report changes.
private final class ReaderContext: Sendable {
    let instance: InotifyInstance
    let continuation: AsyncStream<Void>.Continuation

    private init(instance: InotifyInstance, continuation: AsyncStream<Void>.Continuation) {
        self.instance = instance
        self.continuation = continuation
    }

    /// Starts the one blocking reader thread; `false` when no thread could be created.
    static func start(instance: InotifyInstance, continuation: AsyncStream<Void>.Continuation) -> Bool {
        let context = Unmanaged.passRetained(ReaderContext(instance: instance, continuation: continuation))
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<ReaderContext>.fromOpaque(raw!).takeRetainedValue()
            context.run()
            return nil
        }, context.toOpaque())
        guard status == 0 else {
            context.release()
            return false
        }
        pthread_detach(thread)
        return true
    }

    /// Reads events until the watch is gone (`IN_IGNORED`) or reading fails.
    private func run() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var watching = true
        while watching {
            let count = buffer.withUnsafeMutableBytes { read(self.instance.descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            var offset = 0
            var changed = false
            while offset + MemoryLayout<inotify_event>.size <= count {
                let event = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: inotify_event.self) }
                if event.mask & UInt32(IN_IGNORED) != 0 {
                    self.instance.watchWasRemoved()
                    watching = false
                } else {
                    changed = true
                }
                offset += MemoryLayout<inotify_event>.size + Int(event.len)
            }
            // A deleted directory is a change too (IN_DELETE_SELF comes before IN_IGNORED); after
            // stop() the stream is already finished and this does nothing.
            if changed { self.continuation.yield() }
        }
        self.continuation.finish()
    }
}
#endif

/// Runs `body` with a stream of reasons to re-read watched files: any change in one of `directories`,
/// an explicit reload, a poll every `pollInterval` (the safety net for file systems without inotify
/// events), and one at the start. Bursts collapse into one pending trigger.
func withChangeTriggers(
    directories: [String],
    reloads: AsyncStream<Void>,
    pollInterval: Duration,
    _ body: (AsyncStream<Void>) async -> Void
) async {
    let watchers = Set(directories).map { DirectoryWatcher(directory: $0) }
    defer { for watcher in watchers { watcher.stop() } }
    await withTaskGroup(of: Void.self) { group in
        let (triggers, trigger) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        for watcher in watchers {
            group.addTask { for await _ in watcher.changes { trigger.yield() } }
        }
        group.addTask { for await _ in reloads { trigger.yield() } }
        group.addTask {
            while !Task.isCancelled {
                try? await Task.sleep(for: pollInterval)
                trigger.yield()
            }
        }
        trigger.yield()
        await body(triggers)
        trigger.finish()
        group.cancelAll()
    }
}

/// The directory holding `path` (what a watch must observe to see renames and symlink swaps).
func parentDirectory(of path: String) -> String {
    let parent = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    return parent.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : parent
}

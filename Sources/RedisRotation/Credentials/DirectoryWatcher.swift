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
    private let stopped = Atomic<Bool>(false)
    #if os(Linux)
    private let descriptor: Int32
    private let watch: Int32
    #endif

    init(directory: String) {
        (self.changes, self.continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        #if os(Linux)
        self.descriptor = inotify_init1(Int32(IN_CLOEXEC))
        let mask = UInt32(IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
        self.watch = self.descriptor >= 0 ? inotify_add_watch(self.descriptor, directory, mask) : -1
        if self.descriptor >= 0 && self.watch >= 0 {
            let descriptor = self.descriptor
            let continuation = self.continuation
            // One blocking reader thread; it ends when the watch is removed (IN_IGNORED) in stop().
            var thread = pthread_t()
            let box = Unmanaged.passRetained(ReaderContext(descriptor: descriptor, continuation: continuation))
            pthread_create(&thread, nil, { raw in
                let context = Unmanaged<ReaderContext>.fromOpaque(raw!).takeRetainedValue()
                context.run()
                return nil
            }, box.toOpaque())
            pthread_detach(thread)
        } else {
            self.continuation.finish()
        }
        #else
        self.continuation.finish()
        #endif
    }

    /// Stops watching; the reader thread ends and the descriptor closes.
    func stop() {
        guard !self.stopped.exchange(true, ordering: .relaxed) else { return }
        #if os(Linux)
        if self.watch >= 0 { inotify_rm_watch(self.descriptor, self.watch) } else if self.descriptor >= 0 { close(self.descriptor) }
        #endif
        self.continuation.finish()
    }

    deinit {
        self.stop()
    }
}

#if os(Linux)
/// What the reader thread needs; it owns the descriptor and closes it when the watch is gone.
private final class ReaderContext: @unchecked Sendable {
    // Safe because only the reader thread touches these after init.
    let descriptor: Int32
    let continuation: AsyncStream<Void>.Continuation

    init(descriptor: Int32, continuation: AsyncStream<Void>.Continuation) {
        self.descriptor = descriptor
        self.continuation = continuation
    }

    func run() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        reading: while true {
            let count = buffer.withUnsafeMutableBytes { read(self.descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= count {
                let event = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: inotify_event.self) }
                if event.mask & UInt32(IN_IGNORED) != 0 { break reading }
                offset += MemoryLayout<inotify_event>.size + Int(event.len)
            }
            self.continuation.yield()
        }
        close(self.descriptor)
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

import Foundation
import Testing

@testable import RedisRotation

#if os(Linux)
@Suite("Directory watcher", .timeLimit(.minutes(1)))
struct DirectoryWatcherTests {
    func makeDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("rr-watch-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    /// Whether `stream` ends within `timeout` (its elements are consumed).
    func ends(_ stream: AsyncStream<Void>, within timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in stream {}
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Whether `stream` yields an element within `timeout`, and not only ends.
    func yields(_ stream: AsyncStream<Void>, within timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in stream { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// The reader of a watcher whose directory is deleted used to close the descriptor itself, and
    /// `stop()` then removed watch 1 from whatever now had that descriptor number: typically the next
    /// watcher's inotify instance, which went deaf. Several rounds, because the descriptor number is
    /// reused only when no other thread of the test process takes it first.
    @Test("stopping a watcher whose directory was deleted leaves a newer watcher working")
    func stopAfterDirectoryDeleted() async throws {
        for round in 1...5 {
            let gone = try self.makeDirectory()
            let kept = try self.makeDirectory()
            defer { try? FileManager.default.removeItem(atPath: kept) }
            let first = DirectoryWatcher(directory: gone)
            try FileManager.default.removeItem(atPath: gone)
            #expect(await self.ends(first.changes, within: .seconds(5)), "round \(round): the watch of a deleted directory ends")

            let second = DirectoryWatcher(directory: kept)
            first.stop()
            try "x".write(toFile: kept + "/file", atomically: false, encoding: .utf8)
            #expect(await self.yields(second.changes, within: .seconds(5)), "round \(round): the newer watcher still sees changes")
            second.stop()
        }
    }

}
#endif

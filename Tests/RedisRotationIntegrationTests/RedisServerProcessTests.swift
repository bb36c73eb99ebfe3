import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("The redis-server harness", .timeLimit(.minutes(1)))
struct RedisServerProcessTests {
    /// The output file used to be opened with O_CLOEXEC, so the server started with descriptor 1
    /// closed: its own next socket or file took number 1, and anything written to standard output
    /// went there.
    @Test("the server starts with standard input on /dev/null and standard output and error in its folder")
    func standardDescriptors() async throws {
        try await RedisServerProcess.withServer { server in
            let output = server.directory.appendingPathComponent("redis.stdout").resolvingSymlinksInPath().path
            func target(_ descriptor: Int) -> String {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(server.pid)/fd/\(descriptor)")) ?? "closed"
            }
            #expect(target(0) == "/dev/null")
            #expect(target(1) == output)
            #expect(target(2) == output)
        }
    }

    /// SwiftNIO opens sockets without close-on-exec. A server started while the test process held a
    /// connection inherited its socket, and kept it open after the test closed it (a "straggler" that
    /// no longer existed on the test's side).
    @Test("a server started while the test holds a connection does not inherit its socket")
    func noInheritedSockets() async throws {
        try await RedisServerProcess.withServer { first in
            let connection = try await first.adminConnection()
            defer { Task { await connection.close() } }
            func sockets(of pid: String) -> Set<String> {
                let folder = "/proc/\(pid)/fd"
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
                return Set(entries.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "\(folder)/\($0)") }.filter { $0.hasPrefix("socket:") })
            }
            let ours = sockets(of: "self")
            #expect(!ours.isEmpty)
            try await RedisServerProcess.withServer { second in
                let inherited = sockets(of: "\(second.pid)").intersection(ours)
                #expect(inherited.isEmpty, "the second server holds \(inherited.count) of the test's sockets")
            }
            await connection.close()
        }
    }
}

import Foundation
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
}

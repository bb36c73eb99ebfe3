import Foundation
import Logging
import RedisRotation
import RedisRotationTesting

/// A random password, different in every test, so a test can search for it in logs and errors.
func makePassword() -> RedisSecret {
    RedisSecret("pw-\(UUID().uuidString)")
}

/// The password's text, for searching output.
func text(of secret: RedisSecret) -> String {
    secret.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
}

/// A server with one ACL user, `alice`, who has `password`.
func withAliceServer<Result>(
    password: RedisSecret,
    extraConfiguration: [String] = [],
    _ body: (RedisServerProcess) async throws -> Result
) async throws -> Result {
    try await RedisServerProcess.withServer(
        .init(users: [.init(name: "alice", passwords: [password])], extraConfiguration: extraConfiguration),
        body
    )
}

/// Unique key names, so tests never collide even on a shared server.
func uniqueKey(_ label: String) -> RedisKey {
    RedisKey("test:\(label):\(UUID().uuidString)")
}

extension RedisServerProcess {
    /// Waits (at most 10 seconds) until `count` clients are blocked in commands such as `BLPOP`.
    func waitForBlockedClients(_ count: Int) async throws {
        let admin = try await self.adminConnection()
        defer { Task { await admin.close() } }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while clock.now < deadline {
            let info = try await admin.send(RedisCommand("INFO", "clients"), as: String.self)
            if info.split(whereSeparator: \.isNewline).contains(where: { $0 == "blocked_clients:\(count)" }) {
                await admin.close()
                return
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw RedisError(code: .commandTimeout, message: "no \(count) blocked clients within 10 seconds")
    }
}

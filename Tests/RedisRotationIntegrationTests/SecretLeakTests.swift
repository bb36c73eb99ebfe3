import Foundation
import Logging
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("Passwords never leak", .timeLimit(.minutes(2)))
struct SecretLeakTests {
    /// Connects the right and the wrong way, and runs commands that carry the password, with trace
    /// logging captured; then searches every log line, error and rendering for the password.
    @Test("the password appears in no log line, error description or reflection", arguments: [false, true])
    func noLeak(serverWithoutHello: Bool) async throws {
        let password = makePassword()
        let wrong = makePassword()
        let store = RecordingLogHandler.Store()
        let logger = RecordingLogHandler.logger(store: store)
        // Renaming HELLO away makes the server answer it with "unknown command ... with args beginning
        // with: '2' 'AUTH' 'alice' '<password>'": the fallback path, and a server that echoes secrets.
        let extra = serverWithoutHello ? ["rename-command HELLO \"\""] : []
        var rendered: [String] = []

        try await withAliceServer(password: password, extraConfiguration: extra) { server in
            let good = server.connectionConfiguration(username: "alice", password: password, name: "leak-test")
            rendered += [String(describing: good), String(reflecting: good)]
            var dumped = ""
            dump(good, to: &dumped)
            rendered.append(dumped)

            let connection = try await RedisConnection.connect(configuration: good, logger: logger)
            #expect(try await connection.clientGetName() == "leak-test")
            if serverWithoutHello {
                #expect(connection.serverVersion == nil)
            }

            // A wrong password, at connect.
            let bad = server.connectionConfiguration(username: "alice", password: wrong)
            do {
                _ = try await RedisConnection.connect(configuration: bad, logger: logger)
                Issue.record("the wrong password was accepted")
            } catch {
                #expect((error as? RedisError)?.code == .authenticationFailed)
                rendered += ["\(error)", String(reflecting: error)]
            }

            // Commands that carry passwords and fail, echoed or not.
            let failing: [RedisCommand] = [
                RedisCommand("AUTH", "alice", .secret(wrong)),
                RedisCommand("CONFIG", "SET", "no-such-parameter", .secret(password)),
                RedisCommand("ACL", "SETUSER", "alice", .string("<\(text(of: wrong))")),
                RedisCommand("NOSUCHCOMMAND", .secret(password)),
            ]
            for command in failing {
                rendered.append(String(reflecting: command))
                do {
                    try await connection.send(command)
                    Issue.record("\(command) succeeded")
                } catch {
                    rendered += ["\(error)", String(reflecting: error)]
                }
            }
            let results = try await connection.pipeline(failing)
            for case .failure(let error) in results {
                rendered += ["\(error)", String(reflecting: error)]
            }
            await connection.close()
        }

        let lines = store.all.map(\.description)
        #expect(!lines.isEmpty, "trace logging produced no records: the test would prove nothing")
        for secret in [text(of: password), text(of: wrong)] {
            for line in lines { #expect(!line.contains(secret), "log line leaks a password: \(line)") }
            for text in rendered { #expect(!text.contains(secret), "rendering leaks a password") }
        }
    }
}

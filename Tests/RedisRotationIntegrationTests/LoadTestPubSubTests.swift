import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("loadtest --subscribers against a real redis-server", .timeLimit(.minutes(3)))
struct LoadTestPubSubTests {
    @Test("loadtest --subscribers 3 through a password rotation and a kill: nothing lost, duplicated or reordered; the kill is a gap for each subscriber")
    func subscribersThroughRotation() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let report = server.directory.appendingPathComponent("report.json").path
            let (status, stdout, stderr) = try await runTool([
                "loadtest", "--port", "\(server.port)", "--user", "alice", "--password-file", passwordFile,
                "--duration", "7", "--concurrency", "4", "--key-prefix", "ltps", "--report-json", report, "--subscribers", "3",
                "--rotate", "password@2", "--rotate", "kill@5", "--admin-user", server.adminUsername, "--admin-password-file", adminFile,
            ])
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(stdout.contains("pub/sub: "), "\(stdout)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            let pubsub = json["pubsub"] as? [String: Int] ?? [:]
            #expect(pubsub["subscribers"] == 3)
            #expect((pubsub["published"] ?? 0) > 100, "\(pubsub)")
            #expect(pubsub["lost"] == 0 && pubsub["duplicated"] == 0 && pubsub["out_of_order"] == 0, "\(pubsub)")
            #expect(pubsub["gaps"] == 3, "one gap per subscriber, for the one kill: \(pubsub)")
            // Each subscriber received every acknowledged message but those published around the kill.
            let expected = 3 * (pubsub["published"] ?? 0) - (pubsub["missed_in_gaps"] ?? 0)
            #expect((pubsub["received"] ?? 0) >= expected, "\(pubsub)")
            let events = json["events"] as? [[String: Any]] ?? []
            #expect(!events.contains { $0["kind"] as? String == "stepFailed" }, "\(events.filter { $0["kind"] as? String == "stepFailed" })")
        }
    }
}

import Foundation
import Synchronization
import Testing

@testable import RedisRotation

/// Collects what a source reports.
final class ReportCollector: Sendable {
    private let reports = Lock<[CredentialSourceReport]>([])
    func add(_ report: CredentialSourceReport) { self.reports.withLock { $0.append(report) } }
    var versions: [String] {
        self.reports.withLock { $0.compactMap { if case .credentials(let c) = $0 { return c.version } else { return nil } } }
    }
    var passwords: [RedisSecret] {
        self.reports.withLock { $0.compactMap { if case .credentials(let c) = $0 { return c.password } else { return nil } } }
    }
    var rejections: [String] {
        self.reports.withLock { $0.compactMap { if case .rejected(let reason) = $0 { return reason } else { return nil } } }
    }
}

func waitFor(_ what: String, _ condition: () -> Bool) async {
    let deadline = ContinuousClock.now + .seconds(15)
    while ContinuousClock.now < deadline {
        if condition() { return }
        try? await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("timed out waiting until \(what)")
}

@Suite("Credential sources", .timeLimit(.minutes(1)))
struct CredentialSourceTests {
    let directory: URL

    init() throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("rr-source-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    /// Runs a file source on `path` (poll interval far beyond the test, so changes must come through
    /// inotify) while `body` changes the file.
    func watching(
        _ path: String,
        pollInterval: Duration = .seconds(600),
        _ body: (ReportCollector) async throws -> Void
    ) async throws {
        let runner = CredentialSourceRunner(source: .file(path, username: "alice", pollInterval: pollInterval, debounce: .milliseconds(20)))
        let initial = try runner.initialCredentials()
        let collector = ReportCollector()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run(initial: initial) { collector.add($0) } }
            try await body(collector)
            group.cancelAll()
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    @Test("plain and keyed files parse; version and username come from the file when present")
    func parsing() throws {
        let plain = try #require(try? CredentialFile.parse(Array("s3cret\n".utf8)).get())
        #expect(plain.password == RedisSecret("s3cret") && plain.version == nil)
        let keyed = try #require(
            try? CredentialFile.parse(Array("password=p@ss=word\nusername=bob\nversion=v9\nexpires=2030-01-01T00:00:00Z\n".utf8)).get()
        )
        #expect(keyed.password == RedisSecret("p@ss=word"))
        #expect(keyed.username == "bob" && keyed.version == "v9")
        #expect(keyed.expiresAt == Date(timeIntervalSince1970: 1_893_456_000))
        for bad in ["", "\n", "password=half", "password=\n", "version=v1\n", "password=a\nversion=has space\n", "password=a\nnope=1\n", "a\nb\n"] {
            #expect(throws: CredentialFile.Rejection.self) { try CredentialFile.parse(Array(bad.utf8)).get() }
        }
        #expect(throws: CredentialFile.Rejection.self) {
            try CredentialFile.parse([UInt8](repeating: 65, count: CredentialFile.maximumSize + 1)).get()
        }
    }

    @Test(
        "expires is ISO 8601 or plain seconds; infinities, NaN and other Double spellings are refused",
        arguments: ["inf", "-inf", "nan", "infinity", "1e400", "1e3", "0x1p40", "-5", "+5", "5.", ".5", "5\0junk", "253402300800"]
    )
    func expiresSpellings(value: String) throws {
        // Found by Fuzz/FuzzCredentialFile: `expires=inf` was accepted, and `nan` gave a date whose
        // description traps (RedisCredentials.description prints it).
        #expect(throws: CredentialFile.Rejection.self) {
            try CredentialFile.parse(Array("password=a\nexpires=\(value)\n".utf8)).get()
        }
    }

    @Test(
        "an expiry before 1970 or after 9999 is refused in ISO 8601 too, so it can always be written as seconds",
        arguments: ["0-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "10000-01-01T00:00:00Z"]
    )
    func expiresISORange(value: String) throws {
        // Found by Fuzz/FuzzCredentialFile: year 0 parsed, and written back as seconds it was refused.
        #expect(throws: CredentialFile.Rejection.self) {
            try CredentialFile.parse(Array("password=a\nexpires=\(value)\n".utf8)).get()
        }
    }

    @Test("expires in seconds since 1970 keeps its fraction and goes up to the end of year 9999")
    func expiresSeconds() throws {
        let fraction = try CredentialFile.parse(Array("password=a\nexpires=1893456000.25\n".utf8)).get()
        #expect(fraction.expiresAt == Date(timeIntervalSince1970: 1_893_456_000.25))
        let last = try CredentialFile.parse(Array("password=a\nexpires=253402300799\n".utf8)).get()
        #expect(last.expiresAt == Date(timeIntervalSince1970: 253_402_300_799))
    }

    @Test("a missing or unusable file fails at creation with the reason, not later")
    func failFast() throws {
        let missing = CredentialSourceRunner(source: .file(self.path("missing"), username: "alice"))
        #expect(throws: RedisError.self) { try missing.initialCredentials() }
        try "".write(toFile: self.path("empty"), atomically: true, encoding: .utf8)
        let empty = CredentialSourceRunner(source: .file(self.path("empty"), username: "alice"))
        let error = #expect(throws: RedisError.self) { try empty.initialCredentials() }
        #expect(error?.message.contains("empty") == true)
    }

    @Test("a file replaced by atomic rename is reported")
    func atomicRename() async throws {
        let file = self.path("password")
        try "password=one\nversion=v1\n".write(toFile: file, atomically: true, encoding: .utf8)
        try await self.watching(file) { collector in
            try "password=two\nversion=v2\n".write(toFile: file + ".tmp", atomically: false, encoding: .utf8)
            #expect(rename(file + ".tmp", file) == 0)
            await waitFor("v2 reported") { collector.versions == ["v2"] }
        }
    }

    @Test("a file rewritten in place (truncate and write) is reported")
    func inPlaceRewrite() async throws {
        let file = self.path("password")
        try "password=one\nversion=v1\n".write(toFile: file, atomically: true, encoding: .utf8)
        try await self.watching(file) { collector in
            let handle = try #require(FileHandle(forWritingAtPath: file))
            try handle.truncate(atOffset: 0)
            try handle.write(contentsOf: Data("password=two\nversion=v2\n".utf8))
            try handle.close()
            await waitFor("v2 reported") { collector.versions == ["v2"] }
        }
    }

    @Test("a Kubernetes-style ..data symlink swap is reported")
    func symlinkSwap() async throws {
        let manager = FileManager.default
        for (name, content) in [("..2026_01", "password=one\nversion=v1\n"), ("..2026_02", "password=two\nversion=v2\n")] {
            try manager.createDirectory(atPath: self.path(name), withIntermediateDirectories: true)
            try content.write(toFile: self.path("\(name)/password"), atomically: true, encoding: .utf8)
        }
        try manager.createSymbolicLink(atPath: self.path("..data"), withDestinationPath: "..2026_01")
        try manager.createSymbolicLink(atPath: self.path("password"), withDestinationPath: "..data/password")
        try await self.watching(self.path("password")) { collector in
            // What the kubelet does: a new ..data link under a temporary name, renamed over the old one.
            try manager.createSymbolicLink(atPath: self.path("..data_tmp"), withDestinationPath: "..2026_02")
            #expect(rename(self.path("..data_tmp"), self.path("..data")) == 0)
            await waitFor("v2 reported") { collector.versions == ["v2"] }
        }
    }

    @Test("a half-written file is not used until it is complete; empty and oversized files are rejected")
    func partialFiles() async throws {
        let file = self.path("password")
        try "password=one\nversion=v1\n".write(toFile: file, atomically: true, encoding: .utf8)
        try await self.watching(file) { collector in
            try "password=tw".write(toFile: file, atomically: false, encoding: .utf8)
            await waitFor("the partial file rejected") { collector.rejections.count == 1 }
            #expect(collector.versions.isEmpty)
            try "".write(toFile: file, atomically: false, encoding: .utf8)
            await waitFor("the empty file rejected") { collector.rejections.count == 2 }
            try String(repeating: "x", count: CredentialFile.maximumSize + 10).write(toFile: file, atomically: false, encoding: .utf8)
            await waitFor("the oversized file rejected") { collector.rejections.count == 3 }
            #expect(collector.versions.isEmpty, "no bad content was ever used")
            #expect(collector.rejections.allSatisfy { !$0.contains("tw") && !$0.contains("xxxx") }, "rejections never quote the file")
            try "password=two\nversion=v2\n".write(toFile: file, atomically: false, encoding: .utf8)
            await waitFor("the completed file used") { collector.versions == ["v2"] }
        }
    }

    @Test("without inotify events, the poll notices a change")
    func pollSafetyNet() async throws {
        let file = self.path("password")
        try "one\n".write(toFile: file, atomically: true, encoding: .utf8)
        try await self.watching(file, pollInterval: .milliseconds(100)) { collector in
            try "two\n".write(toFile: file, atomically: true, encoding: .utf8)
            await waitFor("the change reported") { collector.passwords == [RedisSecret("two")] }
            #expect(collector.versions.first?.hasPrefix("password-") == true)
        }
    }

    /// The runner used to keep the initial content for its whole life, a copy of the password that
    /// no wipe reached. (That nothing is reported again for the unchanged file after it is taken,
    /// `pollSafetyNet` shows.)
    @Test("a file source holds the file's initial content only until it starts watching")
    func initialContentReleased() async throws {
        let file = self.path("password")
        try "one\n".write(toFile: file, atomically: true, encoding: .utf8)
        let runner = CredentialSourceRunner(source: .file(file, username: "alice", pollInterval: .seconds(600), debounce: .milliseconds(20)))
        let initial = try runner.initialCredentials()
        #expect(runner.holdsInitialFileBytes)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run(initial: initial) { _ in } }
            await waitFor("the runner let go of the initial content") { !runner.holdsInitialFileBytes }
            group.cancelAll()
        }
    }

    @Test("an environment variable is read at start and on reload")
    func environment() async throws {
        let variable = "RR_TEST_PASSWORD_\(UUID().uuidString.prefix(8).uppercased())"
        setenv(variable, "first", 1)
        let runner = CredentialSourceRunner(source: .environment(variable, username: "alice"))
        let initial = try #require(try runner.initialCredentials())
        #expect(initial.password == RedisSecret("first"))
        let collector = ReportCollector()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run(initial: initial) { collector.add($0) } }
            setenv(variable, "second", 1)
            runner.reload()
            await waitFor("the new value reported") { collector.passwords == [RedisSecret("second")] }
            unsetenv(variable)
            runner.reload()
            await waitFor("the unset variable rejected") { collector.rejections.count == 1 }
            group.cancelAll()
        }
    }

    @Test("a provider is called at start, on reload, and its failures are reported")
    func provider() async throws {
        let calls = Atomic<Int>(0)
        let runner = CredentialSourceRunner(
            source: .provider(refreshEvery: .seconds(600)) {
                let call = calls.add(1, ordering: .relaxed).newValue
                if call == 3 { throw ProviderFailure() }
                return RedisCredentials(username: "alice", password: RedisSecret("p\(min(call, 2))"), version: "v\(min(call, 2))")
            }
        )
        #expect(try runner.initialCredentials() == nil)
        let collector = ReportCollector()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run(initial: nil) { collector.add($0) } }
            await waitFor("the first fetch") { collector.versions == ["v1"] }
            runner.reload()
            await waitFor("the second fetch") { collector.versions == ["v1", "v2"] }
            runner.reload()
            await waitFor("the failure reported") { collector.rejections.count == 1 }
            group.cancelAll()
        }
    }
}

struct ProviderFailure: Error {}

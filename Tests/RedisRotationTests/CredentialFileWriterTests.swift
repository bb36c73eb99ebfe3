import Foundation
import Testing

@testable import RedisRotation

@Suite("Password file writer", .timeLimit(.minutes(1)))
struct CredentialFileWriterTests {
    let directory: URL

    init() throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("rr-writer-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    /// The names in the folder, to see that no temporary file is left.
    func entries() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: self.directory.path).sorted()
    }

    @Test("a rewrite keeps the original's mode, owner and group, and reads back as written")
    func keepsModeAndOwner() throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let path = self.path("app.password")
        try "password=old\nversion=v1\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(chmod(path, 0o640) == 0)
        // As root the test can hand the file to another owner, as a secret volume for another user would be.
        let isRoot = getuid() == 0
        if isRoot { #expect(chown(path, 1000, 1001) == 0) }

        let written = RedisCredentialFile(password: RedisSecret("new-password"), version: "v2")
        try written.write(to: path)

        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o640)
        if isRoot {
            #expect(info.st_uid == 1000 && info.st_gid == 1001)
        }
        #expect(try self.entries() == ["app.password"])
        let read = try RedisCredentialFile.read(from: path)
        #expect(read == written)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "password=new-password\nversion=v2\n")
    }

    @Test("a new file is created 0600, never readable by others")
    func newFileIsPrivate() throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let path = self.path("fresh.password")
        let previous = umask(0)
        defer { umask(previous) }
        try RedisCredentialFile(password: RedisSecret("pw"), version: "v1").write(to: path)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o600)
    }

    @Test("a failed write names the file and the step, leaves the original alone and no temporary file")
    func failureCleansUp() throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        // A directory where the file should be: the rename over it fails.
        let path = self.path("taken")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        let error = #expect(throws: RedisError.self) {
            try RedisCredentialFile(password: RedisSecret("s3cret-value"), version: "v1").write(to: path)
        }
        #expect(error?.message.contains("cannot write the password file \(path)") == true, "\(String(describing: error))")
        #expect(error?.message.contains("s3cret") == false)
        #expect(try self.entries() == ["taken"])

        let missing = self.path("no-such-folder/app.password")
        let second = #expect(throws: RedisError.self) {
            try RedisCredentialFile(password: RedisSecret("pw"), version: "v1").write(to: missing)
        }
        #expect(second?.message.contains("cannot create a temporary file") == true, "\(String(describing: second))")
        #expect(second?.message.contains("No such file or directory") == true)
    }

    @Test("a symbolic link is refused rather than replaced by a file")
    func symlinkRefused() throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let target = self.path("real.password")
        try "password=old\n".write(toFile: target, atomically: false, encoding: .utf8)
        let link = self.path("link.password")
        #expect(symlink(target, link) == 0)
        let error = #expect(throws: RedisError.self) {
            try RedisCredentialFile(password: RedisSecret("pw"), version: "v1").write(to: link)
        }
        #expect(error?.message.contains("symbolic link") == true)
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "password=old\n")
    }

    @Test("a password with a line break, or an invalid version, is refused before anything is written")
    func invalidContent() throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let path = self.path("app.password")
        #expect(throws: RedisError.self) { try RedisCredentialFile(password: RedisSecret("a\nb"), version: "v1").write(to: path) }
        #expect(throws: RedisError.self) { try RedisCredentialFile(password: RedisSecret("pw"), version: "has space").write(to: path) }
        #expect(try self.entries() == [])
    }

    @Test("a watched file that becomes unreadable is reported once; the last good credentials stay")
    func unreadableIsReported() async throws {
        let path = self.path("watched.password")
        try "password=one\nversion=v1\n".write(toFile: path, atomically: false, encoding: .utf8)
        let runner = CredentialSourceRunner(source: .file(path, username: "alice", pollInterval: .milliseconds(100), debounce: .milliseconds(20)))
        let initial = try runner.initialCredentials()
        let collector = ReportCollector()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run(initial: initial) { collector.add($0) } }
            // Root reads any file whatever its mode; a directory in its place is unreadable to anyone.
            try FileManager.default.removeItem(atPath: path)
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            await waitFor("the unreadable file reported") { collector.rejections.count == 1 }
            #expect(collector.rejections.first?.contains("cannot be read") == true, "\(collector.rejections)")
            // Several polls later it is still said only once.
            try await Task.sleep(for: .milliseconds(400))
            #expect(collector.rejections.count == 1)
            #expect(collector.versions.isEmpty)
            try FileManager.default.removeItem(atPath: path)
            try "password=two\nversion=v2\n".write(toFile: path, atomically: true, encoding: .utf8)
            await waitFor("the readable file used again") { collector.versions == ["v2"] }
            group.cancelAll()
        }
        try? FileManager.default.removeItem(at: self.directory)
    }
}

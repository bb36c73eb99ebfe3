import Foundation
import NIOCore
import Testing

@testable import RedisRotation

@Suite("Secrets and redaction")
struct RedisSecretTests {
    let password = "hunter2-\(UInt64.random(in: 1...UInt64.max))"

    @Test("a secret shows <redacted> in every rendering")
    func redacted() {
        let secret = RedisSecret(self.password)
        var dumped = ""
        dump(secret, to: &dumped)
        for text in [
            String(describing: secret), String(reflecting: secret), "\(secret)", dumped,
            String(describing: Mirror(reflecting: secret).children.map(\.value)),
        ] {
            #expect(!text.contains(self.password))
        }
        #expect(String(describing: secret) == "<redacted>")
        #expect(String(reflecting: secret) == "<redacted>")
        #expect(Mirror(reflecting: secret).children.isEmpty)
    }

    @Test("a configuration never shows its password")
    func configuration() {
        let configuration = RedisConnectionConfiguration(username: "alice", password: RedisSecret(self.password), name: "app")
        var dumped = ""
        dump(configuration, to: &dumped)
        for text in [String(describing: configuration), String(reflecting: configuration), dumped] {
            #expect(!text.contains(self.password))
            #expect(text.contains("alice"))
        }
    }

    @Test("secrets keep their bytes and compare by them")
    func bytes() {
        let secret = RedisSecret(bytes: [0, 1, 255])
        #expect(secret.withUnsafeBytes { Array($0) } == [0, 1, 255])
        #expect(secret == RedisSecret(bytes: [0, 1, 255]))
        #expect(secret != RedisSecret(bytes: [0, 1, 254]))
        #expect(secret != RedisSecret(bytes: [0, 1]))
        #expect(RedisSecret("") == RedisSecret(bytes: []))
        #expect(RedisSecret("").isEmpty)
    }

    @Test("a secret built from any sequence, or read from a file through several buffers, holds exactly its bytes")
    func building() throws {
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(RedisSecret(bytes: bytes.lazy.map { $0 }) == RedisSecret(bytes: bytes), "a sequence without contiguous storage")
        #expect(RedisSecret(bytes: bytes[10..<20]).withUnsafeBytes { Array($0) } == Array(bytes[10..<20]))

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rr-secret-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try readFile(path).withUnsafeBytes { Array($0) } == bytes)
        #expect(try readFile(path, limit: bytes.count).count == bytes.count)
        #expect(throws: FileReadError.self) { try readFile(path, limit: bytes.count - 1) }
        #expect(try readFile(path, limit: 5000, truncating: true).withUnsafeBytes { Array($0) } == Array(bytes.prefix(5001)))
        try Data().write(to: URL(fileURLWithPath: path))
        #expect(try readFile(path).isEmpty)
    }

    @Test("a command never shows its arguments; AUTH-like commands are sensitive")
    func commands() {
        let auth = RedisCommand("AUTH", "alice", .secret(RedisSecret(self.password)))
        #expect(auth.isSensitive)
        #expect(!String(describing: auth).contains(self.password))
        #expect(!String(reflecting: auth).contains(self.password))
        #expect(RedisCommand("acl", "SETUSER", "u", .string(">\(self.password)")).isSensitive)
        #expect(RedisCommand("CONFIG", "SET", "masterauth", .string(self.password)).isSensitive)
        #expect(!RedisCommand("GET", "key").isSensitive)
        #expect(RedisCommand("SET", "k", .secret("x")).isSensitive)
        #expect(String(describing: RedisCommand("GET", "user:42")) == "RedisCommand(GET, 1 argument)")
    }

    @Test("a server error to a sensitive command keeps only its prefix")
    func serverErrorOfSensitiveCommand() {
        let command = RedisCommand("CONFIG", "SET", "requirepass", .secret(RedisSecret(self.password)))
        let error = RedisConnection.serverError(
            ByteBuffer(string: "ERR unknown command 'CONFIG', with args beginning with: 'SET' 'requirepass' '\(self.password)'"),
            command: command
        )
        #expect(error.serverErrorPrefix == "ERR")
        #expect(error.serverMessage == nil)
        #expect(!error.description.contains(self.password))
        #expect(!error.debugDescription.contains(self.password))
    }
}

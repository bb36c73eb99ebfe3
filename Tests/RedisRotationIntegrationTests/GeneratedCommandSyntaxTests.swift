import Foundation
import NIOCore
@testable import RedisRotation
import RedisRotationTesting
import Testing

/// The generated encodings against a real server: every command, every option, every choice.
@Suite("Generated commands: syntax against redis-server", .timeLimit(.minutes(5)))
struct GeneratedCommandSyntaxTests {
    /// The argv of `command`, for a readable failure message.
    static func argv(_ command: RedisCommand) -> String {
        guard var buffer = try? command.encoded else { return "<unencodable>" }
        var parts: [String] = []
        _ = buffer.readLine()  // *count
        while let header = buffer.readLine() {
            guard header.hasPrefix("$"), let length = Int(header.dropFirst()) else { break }
            parts.append(buffer.readString(length: length) ?? "?")
            buffer.moveReaderIndex(forwardBy: 2)
        }
        return parts.joined(separator: " ")
    }

    /// Refusals that come from the placeholder values or from options the server does not accept
    /// together (the specification lists them as independent), not from the encoding.
    static let semanticRefusals: Set<String> = [
        "BITOP#0",  // the operation is a string in the specification; "s" is no operation
        "CLIENT LIST#0", "CLIENT LIST#1", "CLIENT LIST#2", "CLIENT LIST#3",  // TYPE and ID are exclusive on the server
        "RESTORE#0", "RESTORE-ASKING#0",  // IDLETIME and FREQ are exclusive on the server
        "ZRANGE#1",  // WITHSCORES is refused with BYLEX
    ]

    @Test("every generated command, built with its options set, passes the server's syntax check")
    func everyGeneratedCommandIsAcceptedByTheServer() async throws {
        try await RedisServerProcess.withServer { server in
            var failures: [String] = []
            var log: [String] = []
            var decodeFailures: [String] = []
            for (label, command, decode) in GeneratedCommandCorpus.all() {
                let connection = try await server.adminConnection()
                do {
                    let reply = try await connection.send(command, timeout: .seconds(5))
                    log.append("OK   \(label): \(Self.argv(command)) -> \(reply) idempotent=\(command.isIdempotent) readOnly=\(command.isReadOnly) sensitive=\(command.isSensitive) session=\(command.sessionEffect)")
                    do {
                        try decode(reply)
                    } catch {
                        decodeFailures.append("\(label): \(Self.argv(command)) -> \(reply): \(error)")
                    }
                } catch let error as RedisError {
                    let message = error.serverMessage ?? error.message
                    log.append("ERR  \(label): \(Self.argv(command)) -> \(message)")
                    let lower = message.lowercased()
                    if !Self.semanticRefusals.contains(label), lower.contains("syntax error") || lower.contains("wrong number of arguments")
                        || lower.contains("unknown subcommand") || lower.contains("unknown command") {
                        failures.append("\(label): \(Self.argv(command)) -> \(message)")
                    }
                }
                await connection.close()
            }
            if let path = ProcessInfo.processInfo.environment["GENERATED_SYNTAX_LOG"] {
                try log.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
            }
            #expect(decodeFailures.isEmpty, "\(decodeFailures.count) valid replies the typed Response cannot decode:\n\(decodeFailures.joined(separator: "\n"))")
            #expect(failures.isEmpty, "\(failures.count) generated encodings refused:\n\(failures.joined(separator: "\n"))")
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func readLine() -> String? {
        guard let view = self.readableBytesView.firstIndex(of: UInt8(ascii: "\r")) else { return nil }
        let length = view - self.readerIndex
        let line = self.readString(length: length)
        self.moveReaderIndex(forwardBy: 2)
        return line
    }
}

private import COpenSSL

/// A Lua script with its SHA-1, for `EVALSHA`: the server runs it by digest, and the source is sent
/// only when the server does not have it (after a restart, a failover or `SCRIPT FLUSH`).
public struct RedisScript: Sendable, Hashable {
    public let source: String
    /// Lower-case hex, as `SCRIPT LOAD` answers.
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        var digest = [UInt8](repeating: 0, count: Int(SHA_DIGEST_LENGTH))
        let bytes = Array(source.utf8)
        _ = bytes.withUnsafeBufferPointer { input in
            digest.withUnsafeMutableBufferPointer { output in
                SHA1(input.baseAddress, input.count, output.baseAddress)
            }
        }
        self.sha1 = digest.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
    }
}

extension RedisCommandExecutor {
    /// Runs `script` with `EVALSHA` (`EVALSHA_RO` when `readOnly`); when the server answers `NOSCRIPT`
    /// and `SCRIPT EXISTS` confirms it lacks the script, sends the source with `EVAL` (which also loads
    /// it), once.
    ///
    /// Scripts are never resent after a lost connection or a transient refusal unless `readOnly`: a
    /// script may have written before it failed.
    public func eval(
        _ script: RedisScript,
        keys: [RedisKey] = [],
        arguments: [RedisArgument] = [],
        readOnly: Bool = false,
        timeout: Duration? = nil
    ) async throws -> RESPValue {
        let tail: [RedisArgument] = [.integer(Int64(keys.count))] + keys.map(\.argument) + arguments
        do {
            return try await self.send(RedisCommand(readOnly ? "EVALSHA_RO" : "EVALSHA", arguments: [.string(script.sha1)] + tail), timeout: timeout)
        } catch let error as RedisError where error.serverErrorPrefix == "NOSCRIPT" {
            // A loaded script may itself return an error that starts with NOSCRIPT after it wrote: run
            // the source only when the server really lacks the script.
            let exists = try await self.send(RedisCommand("SCRIPT", "EXISTS", .string(script.sha1)), timeout: timeout)
            guard exists.array?.first?.int == 0 else { throw error }
            return try await self.send(RedisCommand(readOnly ? "EVAL_RO" : "EVAL", arguments: [.string(script.source)] + tail), timeout: timeout)
        }
    }

    /// Calls function `name` of a loaded library (`FCALL`, or `FCALL_RO` when `readOnly`).
    public func fcall(
        _ name: String,
        keys: [RedisKey] = [],
        arguments: [RedisArgument] = [],
        readOnly: Bool = false,
        timeout: Duration? = nil
    ) async throws -> RESPValue {
        let all: [RedisArgument] = [.string(name), .integer(Int64(keys.count))] + keys.map(\.argument) + arguments
        return try await self.send(RedisCommand(readOnly ? "FCALL_RO" : "FCALL", arguments: all), timeout: timeout)
    }
}

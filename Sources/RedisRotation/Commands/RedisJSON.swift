#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
public import NIOCore

extension ByteBuffer {
    /// The bytes decoded as JSON into `type`, as a value stored by ``RedisCommandExecutor/set(_:json:expiration:condition:encoder:)``.
    ///
    /// - Throws: ``RedisError/Code/unexpectedReply`` when the bytes are not JSON of that shape (the
    ///   message names the type and the path to the field that did not fit, never the bytes).
    public func decodeJSON<Value: Decodable>(as type: Value.Type, decoder: JSONDecoder = JSONDecoder()) throws -> Value {
        do {
            return try decoder.decode(Value.self, from: Data(self.readableBytesView))
        } catch let error as DecodingError {
            throw RedisError(code: .unexpectedReply, message: "the value is not JSON of \(Value.self): \(Self.describe(error))")
        } catch {
            throw RedisError(code: .unexpectedReply, message: "the value is not JSON of \(Value.self)")
        }
    }

    /// What went wrong and where, without the value (it may be user data).
    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return path.isEmpty ? "at the top level" : "at \(path)"
        }
        switch error {
        case .typeMismatch(let type, let context): return "expected \(type) \(path(context))"
        case .valueNotFound(let type, let context): return "no \(type) \(path(context))"
        case .keyNotFound(let key, let context): return "no field \(key.stringValue) \(path(context))"
        case .dataCorrupted(let context): return "malformed \(path(context))"
        @unknown default: return "undecodable"
        }
    }
}

extension RedisCommandExecutor {
    /// `GET`, decoded from JSON: `get("user:42", json: User.self)`; `nil` when the key does not exist.
    ///
    /// - Throws: ``RedisError/Code/unexpectedReply`` when the value is not JSON of `type`.
    public func get<Value: Decodable>(_ key: RedisKey, json type: Value.Type, decoder: JSONDecoder = JSONDecoder()) async throws -> Value? {
        try await self.get(key)?.decodeJSON(as: type, decoder: decoder)
    }

    /// `SET` of `value` encoded as JSON. Returns whether the value was written (`condition` can decline).
    @discardableResult
    public func set<Value: Encodable>(
        _ key: RedisKey,
        json value: Value,
        expiration: RedisExpiration? = nil,
        condition: RedisSetCondition = .always,
        encoder: JSONEncoder = JSONEncoder()
    ) async throws -> Bool {
        let data: Data
        do {
            data = try encoder.encode(value)
        } catch {
            throw RedisError(code: .invalidArgument, message: "\(Value.self) could not be encoded as JSON; nothing was sent")
        }
        return try await self.set(key, to: .bytes(ByteBuffer(bytes: data)), expiration: expiration, condition: condition)
    }
}

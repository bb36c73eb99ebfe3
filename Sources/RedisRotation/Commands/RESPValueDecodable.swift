public import NIOCore

/// A type that a reply converts to, as in `get("k", as: String.self)`.
public protocol RESPValueDecodable {
    /// Converts `value`, or throws ``RedisError/Code/unexpectedReply`` when its type does not fit.
    init(fromRESP value: RESPValue) throws(RedisError)
}

func unexpectedReply(_ value: RESPValue, expected: String) -> RedisError {
    RedisError(code: .unexpectedReply, message: "expected \(expected), got \(value)")
}

extension RESPValue: RESPValueDecodable {
    public init(fromRESP value: RESPValue) { self = value }
}

extension ByteBuffer: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        guard let bytes = value.bytes else { throw unexpectedReply(value, expected: "a string") }
        self = bytes
    }
}

extension String: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        switch value {
        case .simpleString(let buffer), .bulkString(let buffer): self = String(buffer: buffer)
        case .integer(let integer): self = String(integer)
        default: throw unexpectedReply(value, expected: "a string")
        }
    }
}

extension Array: RESPValueDecodable where Element: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        guard case .array(let elements) = value else { throw unexpectedReply(value, expected: "an array") }
        var result: [Element] = []
        result.reserveCapacity(elements.count)
        for element in elements { result.append(try Element(fromRESP: element)) }
        self = result
    }
}

extension Optional: RESPValueDecodable where Wrapped: RESPValueDecodable {
    /// `nil` for a null reply, else the wrapped conversion.
    public init(fromRESP value: RESPValue) throws(RedisError) {
        if case .null = value { self = .none } else { self = .some(try Wrapped(fromRESP: value)) }
    }
}

extension Int: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        guard let int = value.int else { throw unexpectedReply(value, expected: "an integer") }
        self = int
    }
}

extension Int64: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        guard let int = value.int else { throw unexpectedReply(value, expected: "an integer") }
        self = Int64(int)
    }
}

extension Double: RESPValueDecodable {
    public init(fromRESP value: RESPValue) throws(RedisError) {
        switch value {
        case .integer(let integer): self = Double(integer)
        case .simpleString(let buffer), .bulkString(let buffer):
            guard let double = Double(String(buffer: buffer)) else { throw unexpectedReply(value, expected: "a number") }
            self = double
        default: throw unexpectedReply(value, expected: "a number")
        }
    }
}

extension Bool: RESPValueDecodable {
    /// An integer reply of 1 or 0 (as from `EXPIRE` or `HSETNX`), or `OK`.
    public init(fromRESP value: RESPValue) throws(RedisError) {
        switch value {
        case .integer(let integer): self = integer != 0
        case .simpleString(let buffer) where String(buffer: buffer) == "OK": self = true
        default: throw unexpectedReply(value, expected: "an integer or OK")
        }
    }
}

public import NIOCore

/// The elements of a `SCAN`-family iteration, fetched a page at a time as the sequence is iterated.
/// Each page is one command (through the pool, on whichever connection is free: the cursor lives in
/// the command, not the connection). As with the server's `SCAN`, an element may come twice, and
/// elements added or removed during the iteration may or may not come.
public struct RedisScanSequence<Element: Sendable>: AsyncSequence, Sendable {
    let fetch: @Sendable (_ cursor: String) async throws -> (next: String, elements: [Element])

    public struct AsyncIterator: AsyncIteratorProtocol {
        let fetch: @Sendable (String) async throws -> (next: String, elements: [Element])
        var cursor = "0"
        var buffer: [Element] = []
        var index = 0
        var finished = false

        public mutating func next() async throws -> Element? {
            // Pages may be empty: fetch until one has elements or the cursor is back at 0.
            while self.index == self.buffer.count {
                if self.finished { return nil }
                try Task.checkCancellation()
                let page = try await self.fetch(self.cursor)
                self.cursor = page.next
                self.buffer = page.elements
                self.index = 0
                self.finished = page.next == "0"
            }
            defer { self.index += 1 }
            return self.buffer[self.index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(fetch: self.fetch)
    }
}

extension RedisCommandExecutor {
    /// Every key (`SCAN`), optionally only those matching `pattern` or of `type` (`string`, `hash`, ...).
    /// `count` is the server's hint of the work per page.
    public func scan(matching pattern: String? = nil, type: String? = nil, count: Int? = nil) -> RedisScanSequence<ByteBuffer> {
        RedisScanSequence { cursor in
            var arguments: [RedisArgument] = [.string(cursor)] + Self.scanOptions(pattern: pattern, count: count)
            if let type { arguments += ["TYPE", .string(type)] }
            let (next, page) = try Self.page(try await self.send(RedisCommand("SCAN", arguments: arguments), timeout: nil))
            return (next, try page.map { try ByteBuffer(fromRESP: $0) })
        }
    }

    /// Every field and value of hash `key` (`HSCAN`).
    public func hscan(_ key: RedisKey, matching pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<(field: ByteBuffer, value: ByteBuffer)> {
        RedisScanSequence { cursor in
            let arguments: [RedisArgument] = [key.argument, .string(cursor)] + Self.scanOptions(pattern: pattern, count: count)
            let (next, page) = try Self.page(try await self.send(RedisCommand("HSCAN", arguments: arguments), timeout: nil))
            return (next, try Self.pairs(page).map { (try ByteBuffer(fromRESP: $0), try ByteBuffer(fromRESP: $1)) })
        }
    }

    /// Every member of set `key` (`SSCAN`).
    public func sscan(_ key: RedisKey, matching pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<ByteBuffer> {
        RedisScanSequence { cursor in
            let arguments: [RedisArgument] = [key.argument, .string(cursor)] + Self.scanOptions(pattern: pattern, count: count)
            let (next, page) = try Self.page(try await self.send(RedisCommand("SSCAN", arguments: arguments), timeout: nil))
            return (next, try page.map { try ByteBuffer(fromRESP: $0) })
        }
    }

    /// Every member of sorted set `key` with its score (`ZSCAN`).
    public func zscan(_ key: RedisKey, matching pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<(member: ByteBuffer, score: Double)> {
        RedisScanSequence { cursor in
            let arguments: [RedisArgument] = [key.argument, .string(cursor)] + Self.scanOptions(pattern: pattern, count: count)
            let (next, page) = try Self.page(try await self.send(RedisCommand("ZSCAN", arguments: arguments), timeout: nil))
            return (next, try Self.pairs(page).map { (try ByteBuffer(fromRESP: $0), try Double(fromRESP: $1)) })
        }
    }

    private static func scanOptions(pattern: String?, count: Int?) -> [RedisArgument] {
        var options: [RedisArgument] = []
        if let pattern { options += ["MATCH", .string(pattern)] }
        if let count { options += ["COUNT", .integer(Int64(count))] }
        return options
    }

    /// The next cursor and the page of a `*SCAN` reply (`[cursor, [elements...]]`).
    private static func page(_ reply: RESPValue) throws(RedisError) -> (String, [RESPValue]) {
        guard let parts = reply.array, parts.count == 2, let cursor = parts[0].string, let elements = parts[1].array else {
            throw RedisError(code: .unexpectedReply, message: "a SCAN-family reply is a cursor and an array of elements")
        }
        return (cursor, elements)
    }

    private static func pairs(_ elements: [RESPValue]) throws(RedisError) -> [(RESPValue, RESPValue)] {
        guard elements.count % 2 == 0 else {
            throw RedisError(code: .unexpectedReply, message: "a HSCAN or ZSCAN page has an odd number of elements")
        }
        return stride(from: 0, to: elements.count, by: 2).map { (elements[$0], elements[$0 + 1]) }
    }
}

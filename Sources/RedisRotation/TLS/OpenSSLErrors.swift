private import COpenSSL

/// One entry of OpenSSL's thread-local error queue.
struct OpenSSLErrorEntry: Sendable, Hashable, CustomStringConvertible {
    let library: Int32
    let reason: Int32
    let text: String

    var description: String { self.text }
}

enum OpenSSLErrors {
    /// Empties the queue, so that what it holds afterwards comes from the next call. Usually it is empty
    /// already (every failure drains it): looking costs far less than clearing its sixteen slots.
    static func clear() {
        if ERR_peek_error() != 0 { ERR_clear_error() }
    }

    /// Takes every entry from the queue, oldest first. Call it right after the failing call, on the same
    /// thread and without suspending in between: the queue is per thread.
    static func drain() -> [OpenSSLErrorEntry] {
        var entries: [OpenSSLErrorEntry] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            entries.append(OpenSSLErrorEntry(library: ERR_GET_LIB(code), reason: ERR_GET_REASON(code), text: text))
        }
        return entries
    }

    /// The entries as one line for an error message.
    static func summary(_ entries: [OpenSSLErrorEntry]) -> String {
        entries.isEmpty ? "no detail from OpenSSL" : entries.map(\.text).joined(separator: "; ")
    }
}

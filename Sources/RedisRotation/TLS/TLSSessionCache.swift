internal import COpenSSL
import Synchronization

/// TLS sessions of one ``RedisTLSContext``, by server. With TLS 1.3 each ticket is good for one
/// resumption, so a session is taken out when a connection uses it; the server sends new ones.
final class TLSSessionCache: Sendable {
    /// Sessions kept per server; servers send two tickets per connection by default.
    private static let sessionsPerServer = 4

    private let sessions = Lock<[String: [TLSSession]]>([:])

    /// The most recent resumable session for `server`, removed from the cache.
    func take(for server: String) -> TLSSession? {
        self.sessions.withLock { sessions in
            while let session = sessions[server]?.popLast() {
                if SSL_SESSION_is_resumable(session.pointer) == 1 { return session }
            }
            return nil
        }
    }

    func store(_ session: TLSSession, for server: String) {
        self.sessions.withLock { sessions in
            var list = sessions[server, default: []]
            list.append(session)
            if list.count > Self.sessionsPerServer { list.removeFirst(list.count - Self.sessionsPerServer) }
            sessions[server] = list
        }
    }

    /// Forgets the sessions for `server` (after a failed verification, say).
    func removeAll(for server: String) {
        _ = self.sessions.withLock { $0.removeValue(forKey: server) }
    }

    var count: Int { self.sessions.withLock { $0.values.reduce(0) { $0 + $1.count } } }
}

/// Owns one `SSL_SESSION` reference.
// Safe because a session is immutable once OpenSSL hands it to the new-session callback, and its
// reference count is thread-safe.
final class TLSSession: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        SSL_SESSION_free(self.pointer)
    }
}

/// Where the new-session callback of one `SSL` puts its sessions; set as the `SSL`'s ex_data 0.
final class TLSSessionSink {
    let cache: TLSSessionCache
    let server: String

    init(cache: TLSSessionCache, server: String) {
        self.cache = cache
        self.server = server
    }
}

/// OpenSSL calls this when the server sends a session (TLS 1.3: a ticket, after the handshake).
/// Returning 1 keeps the reference OpenSSL passed.
let tlsNewSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
    guard let ssl, let session, let raw = SSL_get_ex_data(ssl, 0) else { return 0 }
    let sink = Unmanaged<TLSSessionSink>.fromOpaque(raw).takeUnretainedValue()
    sink.cache.store(TLSSession(taking: session), for: sink.server)
    return 1
}

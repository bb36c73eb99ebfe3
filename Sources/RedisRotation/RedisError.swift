/// An error thrown by RedisRotation.
///
/// Branch on ``code``; ``message`` says what happened and what to do about it, in words that are safe
/// to log: it never carries a password or any other secret. Two errors are equal when their codes are.
///
/// A reply that the server sent as an error (`-WRONGPASS ...`, `-NOAUTH ...`, `-ERR ...`) keeps the
/// server's prefix in ``serverErrorPrefix`` so that callers, and the rotation logic, can branch on it.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure this is. New codes may be added in any release: do not switch exhaustively.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case connectionFailed
            case connectionClosed
            case connectTimeout
            case handshakeTimeout
            case commandTimeout
            case protocolError
            case serverError
            case authenticationFailed
            case cancelled
            case invalidArgument
            case unexpectedReply
            case tlsHandshakeTimeout
            case tlsNotATLSEndpoint
            case tlsHandshakeFailed
            case tlsServerCertificateExpired
            case tlsServerCertificateNotYetValid
            case tlsUntrustedServerCertificate
            case tlsHostnameMismatch
            case tlsClientCertificateRequired
            case tlsClientCertificateRejected
            case tlsMalformedPEM
            case tlsKeyMismatch
            case tlsClientCertificateExpired
            case tlsClientCertificateNotYetValid
            case tlsClientCertificateMissingClientAuth
            case tlsInvalidConfiguration
            case tlsClientCertificateChainInvalid
            case outcomeUnknown
            case leaseTimeout
            case credentialsRejected
            case clientShutdown
            case transactionAborted
            case subscriptionEnded
            case slowConsumer
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The TCP connection could not be established (refused, unreachable, name not resolved).
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection closed (by us, by the server, or by a reset) before the command got its reply.
        public static let connectionClosed = Code(.connectionClosed)
        /// The TCP connection was not established within the connect timeout.
        public static let connectTimeout = Code(.connectTimeout)
        /// The connection handshake (authentication, name, database) did not finish within its deadline.
        public static let handshakeTimeout = Code(.handshakeTimeout)
        /// A command got no reply within its deadline.
        public static let commandTimeout = Code(.commandTimeout)
        /// The server sent bytes that are not valid RESP2, or a reply that exceeds a configured limit.
        /// The connection is closed.
        public static let protocolError = Code(.protocolError)
        /// The server answered the command with an error reply; see ``RedisError/serverErrorPrefix``.
        public static let serverError = Code(.serverError)
        /// The server rejected the credentials (`WRONGPASS`), or requires authentication and none was
        /// configured (`NOAUTH`).
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The caller cancelled the operation.
        public static let cancelled = Code(.cancelled)
        /// An argument or configuration value is not acceptable; nothing was sent.
        public static let invalidArgument = Code(.invalidArgument)
        /// The server's reply has a type or shape that the typed command helper did not expect.
        public static let unexpectedReply = Code(.unexpectedReply)

        /// No TLS handshake within the handshake deadline: often a TLS client pointed at a plain-text port.
        public static let tlsHandshakeTimeout = Code(.tlsHandshakeTimeout)
        /// The server answered, but not with TLS: this is probably its plain-text port.
        public static let tlsNotATLSEndpoint = Code(.tlsNotATLSEndpoint)
        /// The TLS handshake failed for another reason; the message carries OpenSSL's.
        public static let tlsHandshakeFailed = Code(.tlsHandshakeFailed)
        /// The server's certificate has expired (the message names it and its notAfter).
        public static let tlsServerCertificateExpired = Code(.tlsServerCertificateExpired)
        /// The server's certificate is not valid yet: check both clocks.
        public static let tlsServerCertificateNotYetValid = Code(.tlsServerCertificateNotYetValid)
        /// The server's certificate was issued by a CA that is not among the trust anchors.
        public static let tlsUntrustedServerCertificate = Code(.tlsUntrustedServerCertificate)
        /// The server's certificate is not for the name or IP address we connected to.
        public static let tlsHostnameMismatch = Code(.tlsHostnameMismatch)
        /// The server requires a client certificate (mutual TLS) and none is configured.
        public static let tlsClientCertificateRequired = Code(.tlsClientCertificateRequired)
        /// The server rejected our client certificate (expired, unknown CA, revoked, ...).
        public static let tlsClientCertificateRejected = Code(.tlsClientCertificateRejected)
        /// A PEM file or buffer is empty, truncated or not PEM.
        public static let tlsMalformedPEM = Code(.tlsMalformedPEM)
        /// The private key does not belong to the certificate.
        public static let tlsKeyMismatch = Code(.tlsKeyMismatch)
        /// Our client certificate has expired.
        public static let tlsClientCertificateExpired = Code(.tlsClientCertificateExpired)
        /// Our client certificate is not valid yet.
        public static let tlsClientCertificateNotYetValid = Code(.tlsClientCertificateNotYetValid)
        /// Our client certificate has an extended key usage without TLS Web Client Authentication.
        public static let tlsClientCertificateMissingClientAuth = Code(.tlsClientCertificateMissingClientAuth)
        /// The client certificate chain does not verify: a certificate in it is not signed by the next one.
        public static let tlsClientCertificateChainInvalid = Code(.tlsClientCertificateChainInvalid)
        /// The TLS configuration cannot work (an empty server name, verification off with a name check, ...).
        public static let tlsInvalidConfiguration = Code(.tlsInvalidConfiguration)

        /// The connection was lost while a command that is not idempotent was in flight: it may or may not
        /// have executed. Idempotent commands are retried instead of failing with this.
        public static let outcomeUnknown = Code(.outcomeUnknown)
        /// No pooled connection became available within the lease deadline.
        public static let leaseTimeout = Code(.leaseTimeout)
        /// Every candidate credential was rejected by the server (the message lists the versions tried).
        public static let credentialsRejected = Code(.credentialsRejected)
        /// The client was shut down (its `run()` ended) before the operation completed.
        public static let clientShutdown = Code(.clientShutdown)
        /// A transaction did not run: a watched key changed on every attempt (`EXEC` answered nil), or
        /// the server refused a queued command (`EXECABORT`; the message names it). Nothing was applied.
        public static let transactionAborted = Code(.transactionAborted)
        /// A subscription ended because its channel or pattern was unsubscribed under it: by an
        /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE` or `RESET` sent on its connection, or by the server
        /// (a shard channel's slot moved away). A new subscription to the name subscribes again.
        public static let subscriptionEnded = Code(.subscriptionEnded)
        /// A subscription on a ``RedisConnection`` ended because its reader fell behind by more than
        /// ``RedisSubscriptionBufferLimits`` allow; what it had received can still be read before the error.
        public static let slowConsumer = Code(.slowConsumer)

        public var description: String { self.base.rawValue }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A description of the failure that is safe to log (no secrets).
    public var message: String
    /// The prefix of the server's error reply (`WRONGPASS`, `NOAUTH`, `NOPERM`, `ERR`, `LOADING`, ...),
    /// when the server answered with an error.
    public var serverErrorPrefix: String?
    /// The whole error reply of the server, when the command carried no secret. The server echoes
    /// arguments in some messages (`ERR unknown command ..., with args beginning with: ...`), so for a
    /// command that carried a password this is `nil` and only the prefix is kept.
    public var serverMessage: String?
    /// The error that caused this one, if any (an I/O error, for example).
    public var underlying: (any Error)?
    /// Whether the command was never written: the connection was closed before it went out. Such a
    /// command can be sent again on another connection whatever it does.
    public var commandWasNotSent: Bool = false
    /// The connection closed because the server left an *earlier* command unanswered past its deadline
    /// (on a shared pool connection, another caller's); this command's own deadline had not passed. The
    /// pool goes on with the command's attempt elsewhere until that deadline instead of counting the
    /// close as an attempt of its own.
    var closedBySilenceOfAnother: Bool = false
    /// Where the error was created.
    public var file: String
    /// Where the error was created.
    public var line: Int

    public init(
        code: Code,
        message: String,
        serverErrorPrefix: String? = nil,
        serverMessage: String? = nil,
        underlying: (any Error)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.serverErrorPrefix = serverErrorPrefix
        self.serverMessage = serverMessage
        self.underlying = underlying
        self.file = file
        self.line = line
    }

    /// Server states in which a command is refused without being run and that pass by themselves:
    /// loading the dataset, a busy script, a replica without its primary, a cluster slot in
    /// migration or a cluster that is down.
    static let transientServerPrefixes: Set<String> = ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"]

    /// Whether the server refused the command in a passing state (``transientServerPrefixes``), so the
    /// command did not run and may be sent again.
    var isTransientServerState: Bool {
        self.code == .serverError && self.serverErrorPrefix.map(Self.transientServerPrefixes.contains) == true
    }

    public static func == (lhs: RedisError, rhs: RedisError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }

    /// The code and message; safe to log.
    public var description: String {
        if let prefix = self.serverErrorPrefix {
            return "RedisError(\(self.code), \(prefix)): \(self.message)"
        }
        return "RedisError(\(self.code)): \(self.message)"
    }

    /// The description plus the server's message, the underlying error and the source location.
    public var debugDescription: String {
        var text = self.description
        if let serverMessage = self.serverMessage { text += " [server: \(serverMessage)]" }
        if let underlying = self.underlying { text += " [underlying: \(String(reflecting: underlying))]" }
        text += " [\(self.file):\(self.line)]"
        return text
    }
}

/// Why an administrative step refused or failed.
///
/// ``message`` says what happened, what state the servers and the password file are in, and what to
/// do; it never carries a password. Branch on ``code``.
public struct RedisAdminError: Error, Sendable, CustomStringConvertible {
    /// What kind of refusal or failure this is. New codes may be added: do not switch exhaustively.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// A node (the one named, or a replica it reported) cannot be reached or logged in to.
        public static let nodeUnreachable = Code("nodeUnreachable")
        /// The user does not exist on a node (`ACL GETUSER` is nil); nothing was created.
        public static let userNotFound = Code("userNotFound")
        /// A node can persist neither with `ACL SAVE` nor with `CONFIG REWRITE`, and persisting was not waived.
        public static let cannotPersist = Code("cannotPersist")
        /// `ACL SAVE` or `CONFIG REWRITE` failed.
        public static let persistFailed = Code("persistFailed")
        /// The version label is already used (by the password file or by open connections).
        public static let versionInUse = Code("versionInUse")
        /// The new password did not log in on a fresh connection.
        public static let verificationFailed = Code("verificationFailed")
        /// Connections of the user are still on another version.
        public static let stragglers = Code("stragglers")
        /// The password file could not be read or written.
        public static let passwordFile = Code("passwordFile")
        /// The server refused a command.
        public static let serverRefused = Code("serverRefused")
        /// A certificate, key or CA file was refused before anything changed.
        public static let certificateRefused = Code("certificateRefused")
        /// The nodes found are not the ones the operator expected (`--expect-nodes`); nothing was changed.
        public static let unexpectedTopology = Code("unexpectedTopology")
        /// The setup cannot be rotated without locking someone out (a `nopass` user, the user replicas
        /// authenticate with, users in an included configuration file); nothing was changed.
        public static let unsafeSetup = Code("unsafeSetup")
        /// Another rotation of the same password file holds its lock; nothing was changed.
        public static let concurrentRotation = Code("concurrentRotation")
        /// The final state is not the one expected (for example more than one password is left).
        public static let unexpectedState = Code("unexpectedState")

        public var description: String { self.name }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened and what to do; safe to log.
    public var message: String
    /// The error that caused this one, if any.
    public var underlying: (any Error)?

    public init(code: Code, message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { "RedisAdminError(\(self.code)): \(self.message)" }
}

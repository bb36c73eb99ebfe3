#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
@testable import RedisRotation
import RedisRotationTesting
import Testing

/// The connection's socket options, as the kernel has them. The client asked for TCP_NODELAY at the
/// socket level (`.socketOption(.tcp_nodelay)`), which is SOL_SOCKET's option number 1, SO_DEBUG: only
/// a privileged process may set it, so every connect of an unprivileged process failed with
/// "Permission denied", while these tests, run as root, passed.
@Suite("Socket options against a real redis-server", .timeLimit(.minutes(1)))
struct SocketOptionTests {
    @Test("a connection's socket has TCP_NODELAY on and SO_DEBUG off")
    func noDelayAndNoDebug() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let noDelay = try await connection.channel.getOption(.tcpOption(.tcp_nodelay)).get()
            let debug = try await connection.channel.getOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_DEBUG))).get()
            #expect(noDelay != 0, "TCP_NODELAY is off: small replies wait for delayed ACKs")
            #expect(debug == 0, "SO_DEBUG is set: unprivileged processes cannot connect")
            await connection.close()
        }
    }
}

import NIOCore
import Testing

@testable import RedisRotation

/// The pool's side of the MutualTLSHotReload example's rare "command failed: outcomeUnknown": whether a
/// TLS generation roll can close a connection while a shared command is in flight on it. (It cannot:
/// the failure was the example's Ctrl-C closing every connection at once, see `GracefulShutdownTests`.)
/// Random interleavings of one or a few sequential shared users, TLS reloads with short windows,
/// health checks of idle connections, replacements opening and failing, and timers, checking that
/// every `closeConnection` names a connection with no shared user and no health check in flight, and
/// that no shared use goes to a closing connection.
@Suite("Pool state machine: TLS rolls under shared use")
struct TLSRollSharedUseTests {
    typealias Machine = PoolStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test("random TLS rolls, health checks and replacements never close a connection a shared command or a health check is using", arguments: 0..<40)
    func rollNeverClosesAConnectionInUse(seed: UInt64) {
        var random = SplitMix64(seed: seed &+ 1)
        var configuration = Machine.Configuration()
        configuration.minimumConnections = 1
        configuration.maximumConnections = 4
        configuration.maximumConnectionAge = nil
        configuration.healthCheckInterval = .milliseconds(300)
        configuration.handshakeHedgeDelay = nil
        configuration.connectBackoff = Backoff(base: .milliseconds(20), cap: .milliseconds(200))
        var pool = Machine(configuration: configuration)
        var now = self.t0
        var generation: UInt64 = 1
        var opening: [Machine.ConnectionID] = []
        var checking: Set<Machine.ConnectionID> = []
        var users: [Machine.ConnectionID] = []  // one entry per shared command in flight
        var closed: Set<Machine.ConnectionID> = []
        var closing: [Machine.ConnectionID] = []

        func apply(_ actions: [Machine.Action], _ what: String) {
            for action in actions {
                switch action {
                case .createConnection(let id): opening.append(id)
                case .closeConnection(let id):
                    #expect(!users.contains(id), "seed \(seed): \(what) closed connection \(id) with a shared command in flight")
                    #expect(!checking.contains(id), "seed \(seed): \(what) closed connection \(id) during its health check")
                    #expect(!closed.contains(id), "seed \(seed): connection \(id) closed twice")
                    closed.insert(id)
                    closing.append(id)
                case .healthCheck(let id):
                    #expect(!users.contains(id), "seed \(seed): health check of connection \(id) with a shared command in flight")
                    checking.insert(id)
                case .share(let id, _): users.append(id)
                case .lease, .restore, .failLease, .reauthenticate, .scheduleTimer: break
                }
            }
        }

        apply(pool.targetVersionChanged("v1", now: now), "start")
        for _ in 0..<400 {
            let draw = Int(random.next() % 100)
            let r = Double(random.next() % 1000) / 1000
            switch draw {
            case 0..<30 where users.count < 3:
                if let id = pool.sharedUseRequested() {
                    #expect(!closed.contains(id), "seed \(seed): a shared use went to closing connection \(id)")
                    users.append(id)
                }
            case 0..<55 where !users.isEmpty:
                let id = users.remove(at: Int(random.next() % UInt64(users.count)))
                apply(pool.sharedUseEnded(id, needsRestore: false, now: now), "the end of a shared use")
            case 55..<70 where !opening.isEmpty:
                let id = opening.removeFirst()
                if r < 0.85 {
                    apply(pool.connectionEstablished(id, version: "v1", generation: generation, now: now, random: r), "establishing \(id)")
                } else {
                    apply(pool.connectionFailed(id, now: now, random: r), "a failed connect")
                }
            case 70..<78 where !checking.isEmpty:
                let id = checking.removeFirst()
                apply(pool.connectionReleased(id, reusable: r < 0.9, now: now), "a health check's end")
            case 78..<84 where !closing.isEmpty:
                let id = closing.removeFirst()
                apply(pool.connectionClosed(id, now: now), "a close report")
            case 84..<88:
                generation += 1
                apply(pool.tlsGenerationChanged(generation, window: .milliseconds(Int64(r * 200)), now: now, random: r), "a TLS reload")
            default:
                now = now + .milliseconds(Int64(1 + random.next() % 120))
                apply(pool.timerFired(now: now), "the timer")
            }
        }
    }
}

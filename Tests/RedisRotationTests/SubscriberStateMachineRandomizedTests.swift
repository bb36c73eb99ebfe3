import Foundation
import NIOCore
import Testing

@testable import RedisRotation

/// A seeded, randomized model of the hub driving a ``SubscriberStateMachine``: numbers published on one
/// channel, connections that receive (server side) from their subscription on, handovers with and
/// without the marker, kills, abandoned handovers, reconnects; the streams of different connections
/// interleave at random, each in its own order. Checks the contract: the numbers delivered rise strictly
/// (nothing twice, in order) and every number published but not delivered lies in a signalled gap, or
/// between a connection's kill and the moment its loss was noticed (the caveat every kill has).
@Suite("Subscriber state machine: randomized interleavings against a model")
struct SubscriberStateMachineRandomizedTests {
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    enum Item {
        case number(Int)
        case marker(String)
        /// The confirmations of what the hub subscribed on the connection.
        case confirmed
        /// The reply to a `PING`; `retire` for the predecessor's in a marker-less replacement.
        case pong(retire: Bool, sentAt: Double)
        case eof
    }

    struct Connection {
        var queue: [Item] = []
        /// Subscribed and alive on the server: publishes reach it.
        var receiving = true
        var closed = false
        var killedAt: Double?
        var noticedAt: Double?
    }

    enum Phase {
        case idle
        case handover(successor: Int, token: String, confirmed: Bool, published: Bool)
        case markerless(successor: Int, predecessor: Int, stage: Int)
        case reconnecting(Int)
    }

    struct Run {
        var rng: SplitMix64
        var machine = SubscriberStateMachine(markerChannel: "__marker")
        var connections: [Int: Connection] = [:]
        var nextID = 1
        var now = 0.0
        var published: [Double] = []
        var events: [SubscriberStateMachine.Element] = []
        var trace: [String] = []
        var phase = Phase.idle
        var reconnectWanted = false
        var nextToken = 0

        init(seed: UInt64) {
            self.rng = SplitMix64(state: seed)
            _ = self.machine.subscribe(1, kind: .channel, names: ["c"])
            let id = self.open()
            self.machine.resumeStarted(id)
            _ = self.machine.resumeConfirmed(id, at: self.date)
            self.connections[id]!.queue = []
        }

        var date: Date { Date(timeIntervalSince1970: self.now) }

        mutating func open() -> Int {
            let id = self.nextID
            self.nextID += 1
            self.connections[id] = Connection(queue: [.confirmed])
            return id
        }

        mutating func perform(_ action: SubscriberStateMachine.Action) {
            self.events += action.deliveries.filter { $0.subscription == 1 }.map(\.element)
            for id in action.close {
                self.connections[id]?.closed = true
                self.connections[id]?.receiving = false
                self.connections[id]?.queue = []
            }
            if action.reconnect { self.reconnectWanted = true }
            if action.handoverCompleted || action.handoverAbandoned {
                if case .handover = self.phase { self.phase = .idle }
            }
        }

        mutating func publish() {
            let number = self.published.count
            self.published.append(self.now)
            for (id, connection) in self.connections where connection.receiving { self.connections[id]!.queue.append(.number(number)) }
        }

        mutating func publishMarker(_ token: String) {
            self.machine.markerPublished(at: self.date)
            for (id, connection) in self.connections where connection.receiving { self.connections[id]!.queue.append(.marker(token)) }
        }

        mutating func kill(_ id: Int) {
            self.connections[id]!.receiving = false
            self.connections[id]!.killedAt = self.now
            self.connections[id]!.queue.append(.eof)
            self.trace.append("\(self.now): kill \(id)")
        }

        /// Processes the head of `id`'s stream.
        mutating func deliver(_ id: Int) {
            let item = self.connections[id]!.queue.removeFirst()
            self.trace.append("\(self.now): on \(id): \(item)")
            switch item {
            case .number(let number):
                let push = PubSubStateMachine.Push.message(.channel, channel: "c", pattern: nil, payload: ByteBuffer(string: "\(number)"))
                self.perform(self.machine.pushReceived(push, on: id, at: self.date))
            case .marker(let token):
                let push = PubSubStateMachine.Push.message(.channel, channel: "__marker", pattern: nil, payload: ByteBuffer(string: token))
                self.perform(self.machine.pushReceived(push, on: id, at: self.date))
            case .confirmed:
                switch self.phase {
                case .reconnecting(let r) where r == id:
                    self.perform(self.machine.resumeConfirmed(id, at: self.date))
                    self.phase = .idle
                case .handover(let s, let token, false, let published) where s == id:
                    self.phase = .handover(successor: s, token: token, confirmed: true, published: published)
                case .markerless(let s, let p, 0) where s == id:
                    if let predecessor = self.connections[p], !predecessor.closed {
                        self.connections[p]!.queue.append(.pong(retire: true, sentAt: self.now))
                        self.phase = .markerless(successor: s, predecessor: p, stage: 1)
                    } else {
                        self.connections[s]!.queue.append(.pong(retire: false, sentAt: self.now))
                        self.phase = .markerless(successor: s, predecessor: p, stage: 2)
                    }
                default:
                    break
                }
            case .pong(let retire, let sentAt):
                if retire {
                    guard case .markerless(let s, let p, 1) = self.phase, p == id else { return }
                    self.perform(self.machine.connectionRetired(id, at: Date(timeIntervalSince1970: sentAt)))
                    self.connections[s]!.queue.append(.pong(retire: false, sentAt: self.now))
                    self.phase = .markerless(successor: s, predecessor: p, stage: 2)
                } else {
                    guard case .markerless(let s, _, 2) = self.phase, s == id else { return }
                    self.perform(self.machine.resumeConfirmed(id, at: self.date))
                    self.phase = .idle
                }
            case .eof:
                self.connections[id]!.noticedAt = self.now
                self.connections[id]!.closed = true
                self.connections[id]!.queue = []
                self.perform(self.machine.connectionLost(id, at: self.date))
                switch self.phase {
                case .reconnecting(let r) where r == id:
                    self.phase = .idle
                    self.reconnectWanted = true
                case .handover(let s, _, _, _) where s == id:
                    self.phase = .idle
                case .markerless(let s, let p, let stage) where s == id:
                    self.phase = .idle
                    _ = p
                    _ = stage
                case .markerless(let s, let p, 1) where p == id:
                    // The predecessor's PING fails: the successor is pinged next.
                    self.connections[s]!.queue.append(.pong(retire: false, sentAt: self.now))
                    self.phase = .markerless(successor: s, predecessor: p, stage: 2)
                default:
                    break
                }
            }
        }

        func live(_ id: Int) -> Bool { self.connections[id].map { !$0.closed } ?? false }

        /// One random step; `chaos` allows kills and timeouts.
        mutating func step(chaos: Bool) {
            self.now += 1
            let roll = Int.random(in: 0..<100, using: &self.rng)
            let withItems = self.connections.filter { !$0.value.closed && !$0.value.queue.isEmpty }.keys.sorted()
            switch roll {
            case 0..<30:
                self.publish()
            case 30..<70:
                if let id = withItems.randomElement(using: &self.rng) { self.deliver(id) }
            case 70..<78:
                // Hub work: a handover, a reconnect, or the marker's publish.
                switch self.phase {
                case .idle:
                    if self.reconnectWanted || self.machine.deliveringConnection == nil {
                        self.reconnectWanted = false
                        guard self.machine.deliveringConnection == nil else { return }
                        let id = self.open()
                        self.machine.resumeStarted(id)
                        self.phase = .reconnecting(id)
                        self.trace.append("\(self.now): reconnect \(id)")
                    } else if let predecessor = self.machine.deliveringConnection {
                        let id = self.open()
                        if Bool.random(using: &self.rng) {
                            self.nextToken += 1
                            let token = "T\(self.nextToken)"
                            guard self.machine.handoverStarted(to: id, token: token, at: self.date) else { return }
                            self.phase = .handover(successor: id, token: token, confirmed: false, published: false)
                            self.trace.append("\(self.now): handover to \(id) (\(token))")
                        } else {
                            self.machine.markerlessReplacementStarted(id)
                            self.phase = .markerless(successor: id, predecessor: predecessor, stage: 0)
                            self.trace.append("\(self.now): markerless handover to \(id)")
                        }
                    }
                case .handover(let s, let token, true, false):
                    self.publishMarker(token)
                    self.phase = .handover(successor: s, token: token, confirmed: true, published: true)
                    self.trace.append("\(self.now): marker \(token)")
                default:
                    break
                }
            case 78..<84:
                guard chaos, let id = self.connections.filter({ $0.value.receiving && !$0.value.closed }).keys.sorted().randomElement(using: &self.rng)
                else { return }
                self.kill(id)
            case 84..<88:
                // The handover's deadline passes.
                guard chaos, case .handover(let s, _, _, _) = self.phase else { return }
                self.trace.append("\(self.now): handover to \(s) abandoned")
                self.perform(self.machine.handoverAbandoned(s))
                self.connections[s]?.closed = true
                self.connections[s]?.receiving = false
                self.connections[s]?.queue = []
                self.phase = .idle
            default:
                if let id = withItems.randomElement(using: &self.rng) { self.deliver(id) }
            }
        }

        mutating func settle() {
            for _ in 0..<10_000 {
                if case .idle = self.phase, self.machine.deliveringConnection != nil,
                    self.connections.values.allSatisfy({ $0.closed || $0.queue.isEmpty })
                {
                    return
                }
                self.step(chaos: false)
            }
        }

        /// A description of every contract violation.
        func violations() -> [String] {
            var problems: [String] = []
            let numbers = self.events.compactMap { event -> Int? in
                if case .message(let message) = event { return Int(message.string) }
                return nil
            }
            for (a, b) in zip(numbers, numbers.dropFirst()) where a >= b { problems.append("\(b) delivered after \(a)") }
            let delivered = Set(numbers)
            let gaps = self.events.compactMap { event -> (Double, Double)? in
                if case .gap(let from, let to) = event { return (from.timeIntervalSince1970, to.timeIntervalSince1970) }
                return nil
            }
            let kills = self.connections.values.compactMap { c -> (Double, Double)? in
                guard let killed = c.killedAt else { return nil }
                return (killed, c.noticedAt ?? .infinity)
            }
            for (number, time) in self.published.enumerated() where !delivered.contains(number) {
                let inGap = gaps.contains { $0.0 <= time && time <= $0.1 }
                let beforeNotice = kills.contains { $0.0 <= time && time <= $0.1 }
                if !inGap && !beforeNotice { problems.append("\(number) (published at \(time)) missing outside any gap; gaps \(gaps)") }
            }
            return problems
        }
    }

    /// 8 batches of 25 seeds by default (a fraction of a second); `SUBSCRIBER_MODEL_SWEEP=250` or more
    /// sweeps 2,000 and up, `SUBSCRIBER_MODEL_SEED=n` replays one with its whole trace.
    @Test("random interleavings: nothing twice, in order, every missing number inside a gap", arguments: 0..<8)
    func randomized(batch: Int) {
        var seeds = UInt64(batch * 25)..<UInt64(batch * 25 + 25)
        if let sweep = ProcessInfo.processInfo.environment["SUBSCRIBER_MODEL_SWEEP"].flatMap(Int.init) {
            seeds = UInt64(batch * sweep)..<UInt64(batch * sweep + sweep)
            var kinds: [String: Int] = [:]
            for seed in seeds {
                var run = Run(seed: seed)
                for _ in 0..<400 { run.step(chaos: true) }
                run.settle()
                for problem in run.violations() {
                    let kind = problem.contains("delivered after") ? "order/duplicate" : "missing"
                    if kinds[kind, default: 0] < 2 { print("SWEEP seed \(seed): \(problem.prefix(80))") }
                    kinds[kind, default: 0] += 1
                }
            }
            print("SWEEP batch \(batch): \(kinds)")
            return
        }
        if let only = ProcessInfo.processInfo.environment["SUBSCRIBER_MODEL_SEED"].flatMap(UInt64.init) {
            guard batch == 0 else { return }
            seeds = only..<only + 1
        }
        for seed in seeds {
            var run = Run(seed: seed)
            for _ in 0..<400 { run.step(chaos: true) }
            run.settle()
            let problems = run.violations()
            if !problems.isEmpty {
                Issue.record("seed \(seed): \(problems.prefix(3))\ntrace:\n\(run.trace.suffix(seeds.count == 1 ? 1_000 : 60).joined(separator: "\n"))")
                return
            }
        }
    }
}

extension SubscriberStateMachineRandomizedTests {
    /// The shortest case the randomized test finds, scripted: the marker is published at t=3 and number 0
    /// at t=4; the predecessor reads its marker at t=5 (`markerAt`) and then number 0, which it holds
    /// back for the successor; both connections die (a server restart), the successor before reading
    /// its marker; the handover is abandoned and a reconnect signals a gap. The gap starts at the
    /// marker's *arrival* on the predecessor (t=5), but what the predecessor held back was published
    /// after the marker's *publish* (t=3): number 0, published at t=4, is missing outside every gap.
    @Test("both connections lost during a handover: what the predecessor held back after its marker lies inside the gap")
    func heldBackAfterMarkerInsideGap() {
        var run = Run(seed: 0)
        let predecessor = 1
        run.now = 1
        let successor = run.open()
        let started = run.machine.handoverStarted(to: successor, token: "T", at: run.date)
        #expect(started)
        run.phase = .handover(successor: successor, token: "T", confirmed: false, published: false)
        run.now = 2
        run.deliver(successor)  // its confirmations
        run.now = 3
        run.publishMarker("T")
        run.now = 4
        run.publish()  // number 0
        run.now = 5
        run.deliver(predecessor)  // the marker
        run.now = 6
        run.deliver(predecessor)  // number 0, held back
        run.now = 7
        run.kill(predecessor)
        run.kill(successor)
        run.now = 8
        run.deliver(predecessor)  // its loss
        run.now = 9
        // The handover's deadline: the successor never read its marker.
        run.perform(run.machine.handoverAbandoned(successor))
        run.phase = .idle
        #expect(run.reconnectWanted)
        run.now = 10
        let replacement = run.open()
        run.machine.resumeStarted(replacement)
        run.phase = .reconnecting(replacement)
        run.now = 11
        run.deliver(replacement)  // confirmed: the gap
        #expect(run.violations() == [])
    }
}

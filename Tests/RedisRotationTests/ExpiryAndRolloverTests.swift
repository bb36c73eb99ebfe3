import Foundation
import NIOCore
import RedisRotationTesting
import Synchronization
import Testing

@testable import RedisRotation

@Suite("Expiry monitor")
struct ExpiryMonitorTests {
    let now = Date(timeIntervalSince1970: 2_000_000_000)
    let day: TimeInterval = 86400

    @Test("each threshold warns once, in order, as time passes; expiry warns with a negative remainder")
    func thresholds() {
        var monitor = ExpiryMonitor()
        monitor.setItems([.init(name: "client certificate CN=app", expiresAt: self.now.addingTimeInterval(40 * self.day))], group: "client certificate")
        var (warnings, next) = monitor.evaluate(at: self.now)
        #expect(warnings.isEmpty)
        #expect(next == self.now.addingTimeInterval(10 * self.day), "next check when 30 days are left")

        var seen: [TimeInterval] = []
        var clock = self.now
        for _ in 0..<10 {
            guard let at = next else { break }
            clock = at
            (warnings, next) = monitor.evaluate(at: clock)
            seen += warnings.map(\.threshold)
            #expect(monitor.evaluate(at: clock).warnings.isEmpty, "no repeated warning")
        }
        #expect(seen == [30 * self.day, 7 * self.day, self.day, 0])
        let expired = monitor.evaluate(at: clock.addingTimeInterval(3600))
        #expect(expired.warnings.isEmpty)
        #expect(monitor.remaining(at: clock.addingTimeInterval(3600)).first!.seconds < 0)
    }

    @Test("an item first seen past thresholds warns once, for the nearest threshold crossed")
    func lateItem() {
        var monitor = ExpiryMonitor()
        monitor.setItems([.init(name: "trust anchor CN=Old", expiresAt: self.now.addingTimeInterval(3 * self.day))], group: "trust anchor")
        let (warnings, next) = monitor.evaluate(at: self.now)
        #expect(warnings.map(\.threshold) == [7 * self.day])
        #expect(next == self.now.addingTimeInterval(2 * self.day))
    }

    @Test("a renewed item (new expiry under the same name) is watched afresh; removed items stop")
    func renewal() {
        var monitor = ExpiryMonitor(thresholds: [10 * self.day])
        monitor.setItems([.init(name: "credential alice version v1", expiresAt: self.now.addingTimeInterval(5 * self.day))], group: "credential")
        #expect(monitor.evaluate(at: self.now).warnings.count == 1)
        monitor.setItems([.init(name: "credential alice version v1", expiresAt: self.now.addingTimeInterval(90 * self.day))], group: "credential")
        #expect(monitor.evaluate(at: self.now).warnings.isEmpty)
        #expect(monitor.evaluate(at: self.now.addingTimeInterval(81 * self.day)).warnings.count == 1)
        monitor.setItems([], group: "credential")
        #expect(monitor.remaining(at: self.now).isEmpty)
    }
}

@Suite("Pool roll-over onto a new TLS generation")
struct PoolRolloverTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func pool(connections: Int) -> PoolStateMachine {
        var configuration = PoolStateMachine.Configuration()
        configuration.minimumConnections = connections
        configuration.maximumConnections = connections
        configuration.maximumConcurrentHandshakes = connections
        configuration.maximumConnectionAge = nil
        configuration.healthCheckInterval = nil
        var pool = PoolStateMachine(configuration: configuration)
        _ = pool.targetVersionChanged("v1", now: self.t0)
        for id in 0..<connections {
            _ = pool.connectionEstablished(id, version: "v1", generation: 1, now: self.t0, random: 0)
        }
        return pool
    }

    @Test("old-generation connections are replaced one by one across the window, make-before-break")
    func spreadOverWindow() {
        var pool = self.pool(connections: 4)
        #expect(pool.connectionsByGeneration == [1: 4])
        let start = pool.tlsGenerationChanged(2, window: .seconds(40), now: self.t0, random: 0.5)
        #expect(!start.contains { if case .createConnection = $0 { return true } else { return false } }, "nothing moves at once")
        var closedAt: [Int: Int] = [:]
        for second in 1...40 {
            let now = self.t0 + .seconds(Int64(second))
            for action in pool.timerFired(now: now) {
                guard case .createConnection(let replacement) = action else { continue }
                // The replacement comes up on the new generation; only then does the old one close.
                for closing in pool.connectionEstablished(replacement, version: "v1", generation: 2, now: now, random: 0) {
                    if case .closeConnection(let id) = closing { closedAt[id] = second }
                }
            }
        }
        #expect(closedAt.count == 4, "every old connection replaced within the window")
        #expect(Set(closedAt.values).count == 4, "one at a time: \(closedAt)")
        for id in closedAt.keys { _ = pool.connectionClosed(id, now: self.t0 + .seconds(41)) }
        #expect(pool.connectionsByGeneration == [2: 4])
    }

    @Test("a leased old-generation connection closes only when its lease ends, after its replacement is up")
    func leasedRetiresOnRelease() {
        var pool = self.pool(connections: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(100), now: self.t0)
        // Random 0 puts its turn at the start of the window: the replacement opens at once.
        let changed = pool.tlsGenerationChanged(2, window: .seconds(10), now: self.t0, random: 0)
        #expect(self.creates(changed) == [1])
        #expect(!pool.connectionEstablished(1, version: "v1", generation: 2, now: self.t0 + .seconds(20), random: 0).contains(.closeConnection(0)))
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(21)).contains(.closeConnection(0)))
    }

    @Test("a connection whose certificate expires soon is replaced ahead of expiry")
    func replaceBeforeExpiry() {
        var configuration = PoolStateMachine.Configuration()
        configuration.minimumConnections = 1
        configuration.maximumConnectionAge = nil
        configuration.healthCheckInterval = nil
        var pool = PoolStateMachine(configuration: configuration)
        _ = pool.targetVersionChanged("v1", now: self.t0)
        let established = pool.connectionEstablished(0, version: "v1", generation: 1, replaceBy: self.t0 + .seconds(30), now: self.t0, random: 0)
        #expect(established.contains(.scheduleTimer(self.t0 + .seconds(30))))
        let due = pool.timerFired(now: self.t0 + .seconds(30))
        #expect(self.creates(due) == [1])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(30), random: 0).contains(.closeConnection(0)))
    }

    func creates(_ actions: [PoolStateMachine.Action]) -> [Int] {
        actions.compactMap { if case .createConnection(let id) = $0 { return id } else { return nil } }
    }
}

final class TLSReportCollector: Sendable {
    private let reports = Lock<[TLSMaterialReport]>([])
    func add(_ report: TLSMaterialReport) { self.reports.withLock { $0.append(report) } }
    var accepted: [RedisTLSContext] {
        self.reports.withLock { $0.compactMap { if case .accepted(let c) = $0 { return c } else { return nil } } }
    }
    var rejected: [RedisError] {
        self.reports.withLock { $0.compactMap { if case .rejected(let e) = $0 { return e } else { return nil } } }
    }
}

@Suite("TLS material watcher", .timeLimit(.minutes(1)))
struct TLSMaterialWatcherTests {
    let directory: URL
    let ca: TestCertificateAuthority

    init() throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("rr-tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        self.ca = try TestCertificateAuthority()
    }

    func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    func watch(_ body: (TLSReportCollector) async throws -> Void) async throws {
        let configuration = RedisTLSConfiguration(
            trustAnchors: [.file(self.path("ca.pem"))],
            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(self.path("client.crt")), privateKey: .file(self.path("client.key")))
        )
        let watcher = TLSMaterialWatcher(configuration: configuration, pollInterval: .seconds(600), debounce: .milliseconds(20))
        let (initial, snapshot) = try watcher.initialContext()
        #expect(initial.clientCertificateChain.count == 1)
        let collector = TLSReportCollector()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await watcher.run(initial: snapshot) { collector.add($0) } }
            try await body(collector)
            group.cancelAll()
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    func writeInitial() throws {
        try self.ca.certificate.certificatePEM.write(toFile: self.path("ca.pem"), atomically: true, encoding: .utf8)
        try self.ca.issueClient(commonName: "first").write(to: self.directory, name: "client")
    }

    @Test("a renewed pair written key first, certificate later, becomes one new generation, not a rejection")
    func keyFirst() async throws {
        try self.writeInitial()
        try await self.watch { collector in
            let renewed = try self.ca.issueClient(commonName: "renewed")
            try renewed.privateKeyPEM.write(toFile: self.path("client.key"), atomically: false, encoding: .utf8)
            try await Task.sleep(for: .milliseconds(120))
            try renewed.certificatePEM.write(toFile: self.path("client.crt"), atomically: false, encoding: .utf8)
            await waitFor("the renewed identity accepted") { collector.accepted.count == 1 }
            #expect(collector.accepted.first?.clientCertificateChain.first?.subject.contains("CN=renewed") == true)
            #expect(collector.rejected.isEmpty)
        }
    }

    /// Contexts used to be built from, and keep, a configuration holding the files' bytes, the private
    /// key among them, for as long as the client used them; the client kept the first read as well.
    @Test("contexts built from watched files keep the file-based configuration, and the client is handed digests, not PEM")
    func noKeyKept() async throws {
        try self.writeInitial()
        let configuration = RedisTLSConfiguration(
            trustAnchors: [.file(self.path("ca.pem"))],
            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(self.path("client.crt")), privateKey: .file(self.path("client.key")))
        )
        let watcher = TLSMaterialWatcher(configuration: configuration, pollInterval: .seconds(600), debounce: .milliseconds(20))
        let (initial, digests) = try watcher.initialContext()
        #expect(initial.configuration == configuration)
        #expect(digests.count == 3)
        #expect(digests.values.allSatisfy { $0.count == 32 }, "SHA-256 digests, not file contents")
        let collector = TLSReportCollector()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await watcher.run(initial: digests) { collector.add($0) } }
            _ = try self.ca.issueClient(commonName: "renewed").write(to: self.directory, name: "client")
            await waitFor("the renewed identity accepted") { collector.accepted.count == 1 }
            #expect(collector.accepted.first?.configuration == configuration)
            group.cancelAll()
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    @Test("promoting pending trust anchors builds a generation that trusts only them")
    func promotePending() async throws {
        try self.writeInitial()
        let next = try TestCertificateAuthority(name: "Next CA")
        try next.certificate.certificatePEM.write(toFile: self.path("next-ca.pem"), atomically: true, encoding: .utf8)
        let watcher = TLSMaterialWatcher(
            configuration: RedisTLSConfiguration(trustAnchors: [.file(self.path("ca.pem"))], pendingTrustAnchors: [.file(self.path("next-ca.pem"))]),
            pollInterval: .seconds(600),
            debounce: .milliseconds(20)
        )
        let (initial, snapshot) = try watcher.initialContext()
        #expect(initial.trustAnchors.count == 2)
        let collector = TLSReportCollector()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await watcher.run(initial: snapshot) { collector.add($0) } }
            watcher.promotePendingTrustAnchors()
            await waitFor("a generation with only the next CA") { collector.accepted.count == 1 }
            #expect(collector.accepted.first?.trustAnchors.map(\.subject) == ["CN=Next CA,O=RedisRotation tests"])
            group.cancelAll()
        }
    }

    @Test("bad material is rejected, each with its own code, and the last good generation stays")
    func badMaterial() async throws {
        try self.writeInitial()
        let now = Date()
        try await self.watch { collector in
            let cases: [(TestCertificate, RedisError.Code, (TestCertificate) -> (String, String))] = [
                (try self.ca.issueClient(), .tlsMalformedPEM, { ($0.certificatePEM.replacingOccurrences(of: "-----END CERTIFICATE-----", with: ""), $0.privateKeyPEM) }),
                (try self.ca.issueClient(), .tlsKeyMismatch, { ($0.certificatePEM, try! self.ca.issueClient().privateKeyPEM) }),
                (try self.ca.issueClient(notBefore: now.addingTimeInterval(-86400 * 3), notAfter: now.addingTimeInterval(-86400)), .tlsClientCertificateExpired, { ($0.certificatePEM, $0.privateKeyPEM) }),
                (try self.ca.issueClient(usage: .clientWithoutClientAuth), .tlsClientCertificateMissingClientAuth, { ($0.certificatePEM, $0.privateKeyPEM) }),
            ]
            for (index, (certificate, code, files)) in cases.enumerated() {
                let (chain, key) = files(certificate)
                try key.write(toFile: self.path("client.key"), atomically: true, encoding: .utf8)
                try chain.write(toFile: self.path("client.crt"), atomically: true, encoding: .utf8)
                await waitFor("rejection \(index + 1)") { collector.rejected.count == index + 1 }
                #expect(collector.rejected.last?.code == code)
            }
            #expect(collector.accepted.isEmpty)
        }
    }
}

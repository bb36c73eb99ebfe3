import Foundation
import NIOCore
import Testing

@testable import RedisRotation

@Suite("Subscriber state machine: exactly once and in order across handovers, gaps after losses")
struct SubscriberStateMachineTests {
    typealias Machine = SubscriberStateMachine

    let marker: PubSubName = "__marker"
    let t0 = Date(timeIntervalSince1970: 1_000)
    let t1 = Date(timeIntervalSince1970: 1_005)

    func message(_ channel: PubSubName, _ payload: String) -> PubSubStateMachine.Push {
        .message(.channel, channel: channel, pattern: nil, payload: ByteBuffer(string: payload))
    }
    func markerPush(_ token: String) -> PubSubStateMachine.Push { self.message(self.marker, token) }
    func delivered(_ subscription: UInt64, _ channel: String, _ payload: String) -> Machine.Delivery {
        Machine.Delivery(subscription: subscription, element: .message(RedisPubSubMessage(channel: channel, payload: ByteBuffer(string: payload))))
    }
    func gap(_ subscription: UInt64, _ from: Date, _ to: Date) -> Machine.Delivery {
        Machine.Delivery(subscription: subscription, element: .gap(from: from, to: to))
    }

    /// A machine with subscription 1 on channel `c`, delivering on connection 1.
    func running() -> Machine {
        var machine = Machine(markerChannel: self.marker)
        machine.resumeStarted(1)
        let r1 = machine.resumeConfirmed(1, at: self.t0)
        #expect(r1 == Machine.Action())
        let r2 = machine.subscribe(1, kind: .channel, names: ["c"])
        #expect(r2 == ["c"])
        return machine
    }

    /// Everything `actions` delivered, in order.
    func deliveries(_ actions: [Machine.Action]) -> [Machine.Delivery] { actions.flatMap(\.deliveries) }

    @Test("subscriptions are counted per name: only the first subscribes, only the last unsubscribes")
    func referenceCounting() {
        var machine = Machine(markerChannel: self.marker)
        let r3 = machine.subscribe(1, kind: .channel, names: ["a", "b", "a"])
        #expect(r3 == ["a", "b"])
        let r4 = machine.subscribe(2, kind: .channel, names: ["b", "c"])
        #expect(r4 == ["c"])
        let r5 = machine.subscribe(3, kind: .pattern, names: ["b"])
        #expect(r5 == ["b"])
        #expect(machine.wanted == [.channel: ["a", "b", "c"], .pattern: ["b"]])
        let r6 = machine.unsubscribe(1)
        #expect(r6 == [.channel: ["a"]])
        let r7 = machine.unsubscribe(2)
        #expect(r7.mapValues { $0.sorted() } == [.channel: ["b", "c"]])
        let r8 = machine.unsubscribe(2)
        #expect(r8 == [:])
        let r9 = machine.unsubscribe(3)
        #expect(r9 == [.pattern: ["b"]])
        #expect(!machine.hasSubscriptions)
    }

    @Test("a message reaches every subscription of its channel, or of its pattern; markers reach none")
    func routing() {
        var machine = self.running()
        _ = machine.subscribe(2, kind: .channel, names: ["c"])
        _ = machine.subscribe(3, kind: .pattern, names: ["c*"])
        let r10 = machine.pushReceived(self.message("c", "x"), on: 1, at: self.t1)
        #expect(r10.deliveries == [self.delivered(1, "c", "x"), self.delivered(2, "c", "x")])
        let patterned = PubSubStateMachine.Push.message(.pattern, channel: "cc", pattern: "c*", payload: ByteBuffer(string: "y"))
        let viaPattern = machine.pushReceived(patterned, on: 1, at: self.t1).deliveries
        #expect(
            viaPattern
                == [Machine.Delivery(subscription: 3, element: .message(RedisPubSubMessage(channel: "cc", pattern: "c*", payload: ByteBuffer(string: "y"))))]
        )
        let r11 = machine.pushReceived(self.markerPush("stray"), on: 1, at: self.t1)
        #expect(r11 == Machine.Action())
        let r12 = machine.pushReceived(self.message("other", "z"), on: 1, at: self.t1)
        #expect(r12 == Machine.Action())
    }

    @Test("a pattern that matches the marker channel never delivers a marker")
    func patternMatchingMarker() {
        var machine = self.running()
        _ = machine.subscribe(2, kind: .pattern, names: ["*"])
        let viaPattern = PubSubStateMachine.Push.message(.pattern, channel: self.marker, pattern: "*", payload: ByteBuffer(string: "T"))
        let steady = machine.pushReceived(viaPattern, on: 1, at: self.t1)
        #expect(steady == Machine.Action())
        let started = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(started)
        let during = machine.pushReceived(viaPattern, on: 2, at: self.t1)
        #expect(during == Machine.Action())
    }

    @Test("a pattern that matches another client's marker channel never delivers it: the prefix is reserved")
    func patternMatchingOtherClientsMarker() {
        var machine = self.running()
        _ = machine.subscribe(2, kind: .pattern, names: ["*"])
        let other = PubSubStateMachine.Push.message(.pattern, channel: "__redis-rotation:handover:other", pattern: "*", payload: ByteBuffer(string: "T"))
        let dropped = machine.pushReceived(other, on: 1, at: self.t1)
        #expect(dropped == Machine.Action())
        let user = PubSubStateMachine.Push.message(.pattern, channel: "__redis-rotation", pattern: "*", payload: ByteBuffer(string: "m"))
        let delivered = machine.pushReceived(user, on: 1, at: self.t1)
        let message = RedisPubSubMessage(channel: "__redis-rotation", pattern: "*", payload: ByteBuffer(string: "m"))
        #expect(delivered == Machine.Action(deliveries: [Machine.Delivery(subscription: 2, element: .message(message))]))
    }

    @Test("names are bytes: channels that differ only in Unicode normalization are two subscriptions")
    func namesAreBytes() {
        var machine = self.running()
        let precomposed = PubSubName("caf\u{E9}")
        let decomposed = PubSubName("cafe\u{301}")
        #expect(machine.subscribe(2, kind: .channel, names: [precomposed]) == [precomposed])
        #expect(machine.subscribe(3, kind: .channel, names: [decomposed]) == [decomposed])
        let r1 = machine.pushReceived(self.message(decomposed, "m"), on: 1, at: self.t1)
        let message = RedisPubSubMessage(kind: .channel, channel: decomposed, pattern: nil, payload: ByteBuffer(string: "m"))
        #expect(r1 == Machine.Action(deliveries: [Machine.Delivery(subscription: 3, element: .message(message))]))
    }

    @Test("handover: the predecessor's messages before its marker, then the successor's after its marker; nothing twice, nothing lost")
    func handoverExactlyOnce() {
        var machine = self.running()
        let r13 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r13)
        var actions: [Machine.Action] = []
        // Server order: m1 (only on 1), [2 subscribed] m2, m2 again (a legitimate duplicate), [marker], m3, m4.
        actions.append(machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.markerPush("T"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m3"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 1, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 1, at: self.t1))
        #expect(actions.allSatisfy { !$0.handoverCompleted })
        let last = machine.pushReceived(self.markerPush("T"), on: 1, at: self.t1)
        #expect(last.handoverCompleted && last.close == [1])
        actions.append(last)
        actions.append(machine.pushReceived(self.message("c", "m3"), on: 1, at: self.t1))  // after the switch: closed, ignored
        actions.append(machine.pushReceived(self.message("c", "m4"), on: 2, at: self.t1))
        #expect(
            self.deliveries(actions) == ["m1", "m2", "m2", "m3", "m4"].map { self.delivered(1, "c", $0) }
        )
        #expect(machine.deliveringConnection == 2)
    }

    @Test("handover: the predecessor's marker first; its later messages wait and are discarded at the switch")
    func predecessorMarkerFirst() {
        var machine = self.running()
        let r14 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r14)
        var actions: [Machine.Action] = []
        actions.append(machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t1))
        actions.append(machine.pushReceived(self.markerPush("T"), on: 1, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 1, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m1"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.markerPush("T"), on: 2, at: self.t1))
        // m2 came after the marker on the predecessor: it is delivered once, from the successor.
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 2, at: self.t1))
        actions.append(machine.pushReceived(self.message("c", "m3"), on: 2, at: self.t1))
        #expect(self.deliveries(actions) == ["m1", "m2", "m3"].map { self.delivered(1, "c", $0) })
    }

    @Test("a marker with another token (an earlier, abandoned handover) is not this handover's")
    func staleMarker() {
        var machine = self.running()
        let r15 = machine.handoverStarted(to: 2, token: "new", at: self.t0)
        #expect(r15)
        let r16 = machine.pushReceived(self.markerPush("old"), on: 1, at: self.t1)
        #expect(r16 == Machine.Action())
        let r17 = machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t1)
        #expect(r17.deliveries == [self.delivered(1, "c", "m1")])
    }

    @Test("the successor fails before the switch: the predecessor delivers what it held back and goes on")
    func successorFails() {
        var machine = self.running()
        let r18 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r18)
        _ = machine.pushReceived(self.markerPush("T"), on: 1, at: self.t1)
        let r19 = machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t1)
        #expect(r19.deliveries.isEmpty)
        let lost = machine.connectionLost(2, at: self.t1)
        #expect(lost.handoverAbandoned && !lost.reconnect && lost.close.isEmpty)
        #expect(lost.deliveries == [self.delivered(1, "c", "m1")])
        let r20 = machine.pushReceived(self.message("c", "m2"), on: 1, at: self.t1)
        #expect(r20.deliveries == [self.delivered(1, "c", "m2")])

        // Abandoned by the shell (a timeout) rather than lost: the successor is closed.
        let r21 = machine.handoverStarted(to: 3, token: "U", at: self.t0)
        #expect(r21)
        let abandoned = machine.handoverAbandoned(3)
        #expect(abandoned.close == [3] && abandoned.handoverAbandoned)
        #expect(machine.deliveringConnection == 1)
    }

    @Test("the predecessor is lost after its marker: the successor takes over at its own, with no gap")
    func predecessorLostAfterMarker() {
        var machine = self.running()
        let r22 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r22)
        _ = machine.pushReceived(self.markerPush("T"), on: 1, at: self.t1)
        let r23 = machine.connectionLost(1, at: self.t1)
        #expect(r23 == Machine.Action())
        _ = machine.pushReceived(self.message("c", "before"), on: 2, at: self.t1)
        let switched = machine.pushReceived(self.markerPush("T"), on: 2, at: self.t1)
        #expect(switched.handoverCompleted && switched.close.isEmpty && switched.deliveries.isEmpty)
        let r24 = machine.pushReceived(self.message("c", "after"), on: 2, at: self.t1)
        #expect(r24.deliveries == [self.delivered(1, "c", "after")])
    }

    @Test("the predecessor is lost before its marker: the successor still waits for its own marker, which ends a gap from its SUBSCRIBE")
    func predecessorLostBeforeMarker() {
        var machine = self.running()
        let t2 = self.t1.addingTimeInterval(1)
        let r25 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r25)
        // m1 is on both streams (the successor was confirmed before it was published); the predecessor
        // delivers it and dies; the lagging successor reads it only afterwards.
        let r25a = machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t0)
        #expect(r25a == Machine.Action(deliveries: [self.delivered(1, "c", "m1")]))
        let lost = machine.connectionLost(1, at: self.t1)
        #expect(lost == Machine.Action())
        let r25b = machine.pushReceived(self.message("c", "m1"), on: 2, at: self.t1)
        #expect(r25b == Machine.Action())
        let switched = machine.pushReceived(self.markerPush("T"), on: 2, at: t2)
        #expect(switched == Machine.Action(deliveries: [self.gap(1, self.t0, t2)], handoverCompleted: true))
        let r26 = machine.pushReceived(self.message("c", "m2"), on: 2, at: t2)
        #expect(r26 == Machine.Action(deliveries: [self.delivered(1, "c", "m2")]))
        #expect(machine.deliveringConnection == 2)
    }

    @Test("the predecessor is lost before its marker, after the successor's: a gap, then what the successor held back")
    func predecessorLostBeforeMarkerSuccessorPastIt() {
        var machine = self.running()
        let r1 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r1)
        let r2 = machine.pushReceived(self.markerPush("T"), on: 2, at: self.t0)
        #expect(r2 == Machine.Action())
        let r3 = machine.pushReceived(self.message("c", "after"), on: 2, at: self.t0)
        #expect(r3 == Machine.Action())
        let lost = machine.connectionLost(1, at: self.t1)
        #expect(lost == Machine.Action(deliveries: [self.gap(1, self.t0, self.t1), self.delivered(1, "c", "after")], handoverCompleted: true))
    }

    @Test(
        "the predecessor is lost (before or after its marker), then the successor before its marker: the replacement signals a gap from the successor's SUBSCRIBE or the marker's PUBLISH",
        arguments: [false, true]
    )
    func bothLostDuringHandover(predecessorSawMarker: Bool) {
        var machine = self.running()
        let later = self.t1.addingTimeInterval(5)
        let r1 = machine.handoverStarted(to: 2, token: "T", at: self.t0)
        #expect(r1)
        let published = self.t0.addingTimeInterval(0.2)
        if predecessorSawMarker {
            machine.markerPublished(at: published)
            let r2 = machine.pushReceived(self.markerPush("T"), on: 1, at: self.t0.addingTimeInterval(0.5))
            #expect(r2 == Machine.Action())
        }
        let loss = self.t0.addingTimeInterval(1)
        let r3 = machine.connectionLost(1, at: loss)
        #expect(r3 == Machine.Action())
        let r4 = machine.connectionLost(2, at: self.t1)
        #expect(r4 == Machine.Action(reconnect: true, handoverAbandoned: true))
        machine.resumeStarted(3)
        let r5 = machine.resumeConfirmed(3, at: later)
        // After its marker the predecessor held messages back for the successor, published after the
        // marker's PUBLISH: those are missing too. Before it, the successor's dropped ones are.
        #expect(r5 == Machine.Action(deliveries: [self.gap(1, predecessorSawMarker ? published : self.t0, later)]))
    }

    @Test("a replacement that fails while the old connection delivers leaves no loss behind: a later loss's gap starts at that loss")
    func failedReplacementLeavesNoLoss() {
        var machine = self.running()
        // A marker-less successor, and a plain resuming one, each lost before they delivered anything.
        machine.markerlessReplacementStarted(2)
        let r1 = machine.connectionLost(2, at: self.t0)
        #expect(r1 == Machine.Action())
        machine.resumeStarted(3)
        let r2 = machine.connectionLost(3, at: self.t0)
        #expect(r2 == Machine.Action())
        let r3 = machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t0)
        #expect(r3 == Machine.Action(deliveries: [self.delivered(1, "c", "m1")]))
        // Much later the delivering connection is really lost and replaced.
        let r4 = machine.connectionLost(1, at: self.t1)
        #expect(r4 == Machine.Action(reconnect: true))
        machine.resumeStarted(4)
        let later = self.t1.addingTimeInterval(1)
        let r5 = machine.resumeConfirmed(4, at: later)
        #expect(r5 == Machine.Action(deliveries: [self.gap(1, self.t1, later)]))
    }

    @Test("without the marker: the old connection delivers to its PING's reply, the new one after its own; a gap between, nothing twice")
    func markerlessReplacement() {
        var machine = self.running()
        let t2 = self.t1.addingTimeInterval(1)
        machine.markerlessReplacementStarted(2)
        // m1 reaches both; the successor's copy is dropped.
        let r1 = machine.pushReceived(self.message("c", "m1"), on: 2, at: self.t0)
        #expect(r1 == Machine.Action())
        let r2 = machine.pushReceived(self.message("c", "m1"), on: 1, at: self.t0)
        #expect(r2 == Machine.Action(deliveries: [self.delivered(1, "c", "m1")]))
        // The predecessor's PING reply: it stops there and is closed.
        let retired = machine.connectionRetired(1, at: self.t1)
        #expect(retired == Machine.Action(close: [1]))
        let r3 = machine.pushReceived(self.message("c", "m2"), on: 1, at: self.t1)
        #expect(r3 == Machine.Action())
        // m2 reached the successor before its PING's reply: maybe delivered by the predecessor, dropped.
        let r4 = machine.pushReceived(self.message("c", "m2"), on: 2, at: self.t1)
        #expect(r4 == Machine.Action())
        let confirmed = machine.resumeConfirmed(2, at: t2)
        #expect(confirmed == Machine.Action(deliveries: [self.gap(1, self.t1, t2)]))
        let r5 = machine.pushReceived(self.message("c", "m3"), on: 2, at: t2)
        #expect(r5 == Machine.Action(deliveries: [self.delivered(1, "c", "m3")]))
        #expect(machine.deliveringConnection == 2)
    }

    @Test("without the marker, the successor lost after the predecessor retired: reconnect, and the replacement's gap starts at the retirement")
    func markerlessSuccessorLost() {
        var machine = self.running()
        machine.markerlessReplacementStarted(2)
        let retired = machine.connectionRetired(1, at: self.t0)
        #expect(retired == Machine.Action(close: [1]))
        let lost = machine.connectionLost(2, at: self.t1)
        #expect(lost == Machine.Action(reconnect: true))
        machine.resumeStarted(3)
        let r1 = machine.resumeConfirmed(3, at: self.t1)
        #expect(r1 == Machine.Action(deliveries: [self.gap(1, self.t0, self.t1)]))
    }

    @Test("a lost connection: reconnect; the replacement's messages wait for its confirmations and follow one gap")
    func lossAndResume() {
        var machine = self.running()
        _ = machine.subscribe(2, kind: .channel, names: ["d"])
        let lost = machine.connectionLost(1, at: self.t0)
        #expect(lost.reconnect && lost.deliveries.isEmpty)
        machine.resumeStarted(2)
        let r27 = machine.pushReceived(self.message("d", "early"), on: 2, at: self.t1)
        #expect(r27 == Machine.Action())
        let resumed = machine.resumeConfirmed(2, at: self.t1)
        #expect(resumed.deliveries == [self.gap(1, self.t0, self.t1), self.gap(2, self.t0, self.t1), self.delivered(2, "d", "early")])
        // The replacement is lost while resuming: still one gap, from the first loss.
        _ = machine.connectionLost(2, at: self.t1)
        machine.resumeStarted(3)
        _ = machine.connectionLost(3, at: self.t1.addingTimeInterval(1))
        machine.resumeStarted(4)
        let later = self.t1.addingTimeInterval(2)
        let r28 = machine.resumeConfirmed(4, at: later)
        #expect(r28.deliveries == [self.gap(1, self.t1, later), self.gap(2, self.t1, later)])
    }

    @Test("no gap when nothing was subscribed at the loss, nor for a subscription made after the last one ended")
    func noGapWithoutSubscriptions() {
        var machine = Machine(markerChannel: self.marker)
        machine.resumeStarted(1)
        _ = machine.resumeConfirmed(1, at: self.t0)
        let r29 = machine.connectionLost(1, at: self.t0)
        #expect(r29 == Machine.Action())
        _ = machine.subscribe(1, kind: .channel, names: ["c"])
        machine.resumeStarted(2)
        let r30 = machine.resumeConfirmed(2, at: self.t1)
        #expect(r30.deliveries.isEmpty)
        _ = machine.connectionLost(2, at: self.t1)
        _ = machine.unsubscribe(1)
        _ = machine.subscribe(2, kind: .channel, names: ["c"])
        machine.resumeStarted(3)
        let r31 = machine.resumeConfirmed(3, at: self.t1)
        #expect(r31.deliveries.isEmpty)
    }

    /// The predecessor (1) delivers m1, then dies with m2 still on its way (a kill drops the server's
    /// output buffer). The successor (2), subscribed before m2 was published, receives m2 at t=1.5 before
    /// its marker and drops it, as the rule says: the predecessor might have delivered it. It did not: m2
    /// is missing, so the gap must cover t=1.5; it starts at the successor's SUBSCRIBE (t=0.5), before the
    /// loss (t=3), also when the successor's marker came first.
    @Test(
        "predecessor lost before its marker: the gap covers what the successor dropped before its marker",
        arguments: [false, true]
    )
    func gapCoversWhatTheSuccessorDroppedBeforeItsMarker(successorMarkerFirst: Bool) {
        func at(_ seconds: Double) -> Date { self.t0.addingTimeInterval(seconds) }
        var machine = self.running()
        let started = machine.handoverStarted(to: 2, token: "T", at: at(0.5))
        #expect(started)
        var actions: [Machine.Action] = []
        actions.append(machine.pushReceived(self.message("c", "m1"), on: 1, at: at(1)))
        actions.append(machine.pushReceived(self.message("c", "m1"), on: 2, at: at(1.2)))
        actions.append(machine.pushReceived(self.message("c", "m2"), on: 2, at: at(1.5)))
        if successorMarkerFirst {
            actions.append(machine.pushReceived(self.markerPush("T"), on: 2, at: at(2)))
            actions.append(machine.pushReceived(self.message("c", "m3"), on: 2, at: at(2.5)))
            actions.append(machine.connectionLost(1, at: at(3)))
        } else {
            actions.append(machine.connectionLost(1, at: at(3)))
            actions.append(machine.pushReceived(self.markerPush("T"), on: 2, at: at(4)))
            actions.append(machine.pushReceived(self.message("c", "m3"), on: 2, at: at(4.5)))
        }
        let end = successorMarkerFirst ? at(3) : at(4)
        #expect(self.deliveries(actions) == [self.delivered(1, "c", "m1"), self.gap(1, at(0.5), end), self.delivered(1, "c", "m3")])
    }
}

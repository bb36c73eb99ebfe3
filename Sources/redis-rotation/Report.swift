import Foundation
import Histogram
import RedisRotation

/// The machine-readable report of a run (`--report-json`); field names are part of the tool's contract.
struct LoadReport: Codable, Sendable {
    struct Commands: Codable, Sendable {
        var ok: Int
        var failed: Int
        var retried: Int
    }

    struct Latency: Codable, Sendable {
        var p50: UInt64
        var p90: UInt64
        var p99: UInt64
        var p999: UInt64
        var max: UInt64
    }

    struct Event: Codable, Sendable {
        var t_s: Double
        var kind: String
        var detail: String
    }

    struct Second: Codable, Sendable {
        var t_s: Int
        var ops: Int
        var failed: Int
        var p99_us: UInt64
    }

    struct Phase: Codable, Sendable {
        var name: String
        var start_s: Double
        var ops: Int
        var failed: Int
        var p50_us: UInt64
        var p99_us: UInt64
        var max_us: UInt64
        var reconnects: Int
        var reauthentications: Int
    }

    var duration_s: Double
    var commands: Commands
    var writes: WriteVerification?
    var latency_us: Latency
    var reconnects: Int
    var reauthentications: Int
    var events: [Event]
    /// Events past the recorder's limit (10,000; rotation steps are always kept), counted only.
    var events_omitted: Int
    var timeline: [Second]
    var phases: [Phase]
    var failure_samples: [String]
    /// Pooled connections per credential version when the traffic ended.
    var connections_by_version: [String: Int]
    /// The same per node (`host:port`) for a cluster run (`--cluster`); absent otherwise.
    var connections_by_node: [String: [String: Int]]?
    /// Publish/subscribe traffic (`--subscribers`).
    var pubsub: PubSubReport?

    var succeeded: Bool {
        self.commands.failed == 0 && (self.writes?.lost ?? 0) == 0 && (self.pubsub?.succeeded ?? true)
            // In a cluster, the keys counted on the primaries must be exactly the acknowledged ones.
            && (self.writes.map { writes in writes.on_primaries.map { $0 == writes.acknowledged } ?? true } ?? true)
    }

    init(
        snapshot: LoadRecorder.Snapshot,
        duration: Double,
        retried: Int,
        connectionsByVersion: [String: Int],
        connectionsByNode: [String: [String: Int]]? = nil,
        writes: WriteVerification?,
        pubsub: PubSubReport? = nil
    ) {
        func latency(_ histogram: Histogram<UInt64>) -> Latency {
            guard histogram.totalCount > 0 else { return Latency(p50: 0, p90: 0, p99: 0, p999: 0, max: 0) }
            return Latency(
                p50: histogram.valueAtPercentile(50),
                p90: histogram.valueAtPercentile(90),
                p99: histogram.valueAtPercentile(99),
                p999: histogram.valueAtPercentile(99.9),
                max: histogram.max
            )
        }
        self.duration_s = (duration * 1000).rounded() / 1000
        self.commands = Commands(ok: snapshot.ok, failed: snapshot.failed, retried: retried)
        self.writes = writes
        self.latency_us = latency(snapshot.total)
        self.reconnects = snapshot.reconnects
        self.reauthentications = snapshot.reauthentications
        self.events = snapshot.events.map { Event(t_s: ($0.time * 1000).rounded() / 1000, kind: $0.kind, detail: $0.detail) }
        self.events_omitted = snapshot.eventsOmitted
        // Complete seconds only: the last, partial one would show as a drop in throughput.
        self.timeline = snapshot.seconds.prefix(Int(duration)).enumerated().map { index, second in
            Second(t_s: index, ops: second.ops, failed: second.failed, p99_us: second.p99)
        }
        self.phases = snapshot.phases.map { phase in
            let figures = latency(phase.histogram)
            return Phase(
                name: phase.name,
                start_s: (phase.startedAt * 1000).rounded() / 1000,
                ops: phase.ops,
                failed: phase.failed,
                p50_us: figures.p50,
                p99_us: figures.p99,
                max_us: figures.max,
                reconnects: phase.reconnects,
                reauthentications: phase.reauthentications
            )
        }
        self.failure_samples = snapshot.failureSamples
        self.connections_by_version = connectionsByVersion
        self.connections_by_node = connectionsByNode
        self.pubsub = pubsub
    }

    func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// The end-of-run summary and the per-phase table.
    func text() -> String {
        func ms(_ micros: UInt64) -> String { String(format: "%.2f", Double(micros) / 1000) }
        var lines: [String] = []
        lines.append(
            "commands: \(self.commands.ok) ok, \(self.commands.failed) failed, \(self.commands.retried) retried; "
                + "reconnects: \(self.reconnects); re-authentications: \(self.reauthentications)"
        )
        if let writes = self.writes {
            lines.append(
                "writes: \(writes.acknowledged) acknowledged, \(writes.found) found, \(writes.lost) lost"
                    + (writes.on_primaries.map { "; \($0) keys counted on the primaries" } ?? "")
            )
        }
        if let pubsub = self.pubsub {
            lines.append(
                "pub/sub: \(pubsub.published) published (\(pubsub.publish_failed) failed) to \(pubsub.subscribers) subscribers, "
                    + "\(pubsub.received) received, \(pubsub.duplicated) duplicated, \(pubsub.out_of_order) out of order, "
                    + "\(pubsub.lost) lost, \(pubsub.gaps) gaps signalled (\(pubsub.missed_in_gaps) missed in them)"
            )
        }
        lines.append(
            "latency ms: p50 \(ms(self.latency_us.p50))  p90 \(ms(self.latency_us.p90))  p99 \(ms(self.latency_us.p99))  "
                + "p99.9 \(ms(self.latency_us.p999))  max \(ms(self.latency_us.max))"
        )
        if !self.phases.isEmpty {
            lines.append("")
            let header = ["phase", "ops", "failed", "p50 ms", "p99 ms", "max ms", "reconnects", "re-auths"]
            var rows = [header]
            for phase in self.phases {
                rows.append([
                    phase.name, "\(phase.ops)", "\(phase.failed)", ms(phase.p50_us), ms(phase.p99_us), ms(phase.max_us),
                    "\(phase.reconnects)", "\(phase.reauthentications)",
                ])
            }
            let widths = header.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
            for (index, row) in rows.enumerated() {
                lines.append(
                    row.enumerated().map { column, cell in
                        column == 0 ? cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                            : String(repeating: " ", count: widths[column] - cell.count) + cell
                    }.joined(separator: "  ")
                )
                if index == 0 { lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
            }
        }
        if !self.failure_samples.isEmpty {
            lines.append("")
            lines.append("first failures:")
            lines += self.failure_samples.map { "  \($0)" }
        }
        return lines.joined(separator: "\n")
    }

    /// A self-contained HTML page: throughput and p99 per second, rotation steps marked.
    func html(title: String) -> String {
        let width = 960.0
        let height = 320.0
        let left = 60.0
        let right = 60.0
        let top = 20.0
        let bottom = 40.0
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        let seconds = max(1, self.timeline.count)
        let maxOps = max(1, self.timeline.map(\.ops).max() ?? 1)
        let maxP99 = max(1, self.timeline.map(\.p99_us).max() ?? 1)
        func x(_ second: Double) -> Double { left + plotWidth * second / Double(seconds) }
        func yOps(_ ops: Int) -> Double { top + plotHeight * (1 - Double(ops) / Double(maxOps)) }
        func yP99(_ p99: UInt64) -> Double { top + plotHeight * (1 - Double(p99) / Double(maxP99)) }
        let opsLine = self.timeline.map { String(format: "%.1f,%.1f", x(Double($0.t_s) + 0.5), yOps($0.ops)) }.joined(separator: " ")
        let p99Line = self.timeline.map { String(format: "%.1f,%.1f", x(Double($0.t_s) + 0.5), yP99($0.p99_us)) }.joined(separator: " ")
        var marks = ""
        for event in self.events where event.kind == "step" {
            let position = x(event.t_s)
            marks += String(format: "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' class='step'/>", position, top, position, top + plotHeight)
            // Rotated to read downwards from the top of the plot, so that the label stays inside it.
            marks += String(format: "<text x='%.1f' y='%.1f' class='label' transform='rotate(90 %.1f %.1f)'>%@</text>", position + 3, top + 4, position + 3, top + 4, escape(shortLabel(event.detail)))
        }
        var failures = ""
        for second in self.timeline where second.failed > 0 {
            failures += String(format: "<rect x='%.1f' y='%.1f' width='%.1f' height='6' class='failed'/>", x(Double(second.t_s)), top + plotHeight - 6, plotWidth / Double(seconds))
        }
        let svg = """
            <svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 \(Int(width)) \(Int(height))' width='\(Int(width))' height='\(Int(height))'>
            <rect x='\(left)' y='\(top)' width='\(plotWidth)' height='\(plotHeight)' class='frame'/>
            \(marks)\(failures)
            <polyline points='\(opsLine)' class='ops'/>
            <polyline points='\(p99Line)' class='p99'/>
            <text x='\(left - 8)' y='\(top + 10)' class='axis ops-label' text-anchor='end'>\(maxOps)/s</text>
            <text x='\(width - right + 8)' y='\(top + 10)' class='axis p99-label'>\(String(format: "%.1f", Double(maxP99) / 1000)) ms</text>
            <text x='\(left)' y='\(height - 12)' class='axis'>0 s</text>
            <text x='\(width - right)' y='\(height - 12)' class='axis' text-anchor='end'>\(seconds) s</text>
            </svg>
            """
        let rows = self.phases.map { phase in
            "<tr><td>\(escape(phase.name))</td><td>\(phase.ops)</td><td>\(phase.failed)</td><td>\(String(format: "%.2f", Double(phase.p50_us) / 1000))</td><td>\(String(format: "%.2f", Double(phase.p99_us) / 1000))</td><td>\(String(format: "%.2f", Double(phase.max_us) / 1000))</td><td>\(phase.reconnects)</td><td>\(phase.reauthentications)</td></tr>"
        }.joined(separator: "\n")
        return """
            <!doctype html>
            <html><head><meta charset='utf-8'><title>\(escape(title))</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
            .frame { fill: #fafafa; stroke: #ccc; } .ops { fill: none; stroke: #1f77b4; stroke-width: 2; }
            .p99 { fill: none; stroke: #d62728; stroke-width: 1.5; } .step { stroke: #888; stroke-dasharray: 4 3; }
            .label { font-size: 11px; fill: #555; } .axis { font-size: 12px; fill: #555; } .failed { fill: #d62728; }
            .ops-label { fill: #1f77b4; } .p99-label { fill: #d62728; }
            table { border-collapse: collapse; margin-top: 1.5em; } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
            td:first-child, th:first-child { text-align: left; }
            </style></head><body>
            <h1>\(escape(title))</h1>
            <p><span style='color:#1f77b4'>■ operations per second</span> &nbsp; <span style='color:#d62728'>■ p99 latency</span> &nbsp; dashed lines: rotation steps; red marks: seconds with failures</p>
            \(svg)
            <p>\(self.commands.ok) commands ok, \(self.commands.failed) failed, \(self.commands.retried) retried\(self.writes.map { writes in "; writes: \(writes.acknowledged) acknowledged, \(writes.lost) lost\(writes.on_primaries.map { ", \($0) counted on the primaries" } ?? "")" } ?? "").</p>
            <table><tr><th>phase</th><th>ops</th><th>failed</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>reconnects</th><th>re-auths</th></tr>
            \(rows)
            </table></body></html>
            """
    }
}

/// A step's name without its parenthesised detail, short enough to fit the chart's height.
func shortLabel(_ text: String) -> String {
    let head = text.components(separatedBy: " (").first ?? text
    return head.count > 40 ? String(head.prefix(39)) + "…" : head
}

func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "'", with: "&#39;")
}

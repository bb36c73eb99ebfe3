import Foundation
import RedisRotationAdmin

/// Prints steps and results as text, or as one JSON object per line with `--json`.
struct StepPrinter: Sendable {
    var json: Bool

    func step(_ step: RedisAdminStep) {
        if self.json {
            self.emit(["type": "step", "step": step.name, "node": step.node ?? "", "message": step.message])
        } else {
            self.line(step.description)
        }
    }

    /// A JSON object on one line.
    func emit(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        self.line(String(decoding: data, as: UTF8.self))
    }

    /// One line on standard output, written at once (steps must show as they happen). A closed
    /// output (`| head -1`) loses the line, never the run: stopping between two steps would leave a
    /// rotation half done (SIGPIPE is ignored at startup, so the write fails with EPIPE instead).
    func line(_ text: String) {
        try? FileHandle.standardOutput.write(contentsOf: Data((text + "\n").utf8))
    }
}

import Foundation
import Testing

@Suite("Documentation")
struct ReadmeExampleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test("the README's usage examples are the ones that compile in Examples/BasicUsage")
    func readmeExampleCompiles() throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(
            contentsOf: Self.root.appendingPathComponent("Examples/BasicUsage/main.swift"),
            encoding: .utf8
        )
        let blocks = readme.components(separatedBy: "```swift\n").dropFirst().map {
            $0.components(separatedBy: "```")[0]
        }
        #expect(blocks.count >= 2, "the README should show a plain and a TLS example")
        let normalizedExample = example.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        for block in blocks {
            let lines = block.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("import ") }
            // Every line of the README block appears in the example, in the same order.
            var position = normalizedExample.startIndex
            for line in lines {
                guard let found = normalizedExample[position...].firstIndex(of: line) else {
                    Issue.record("README line not in Examples/BasicUsage/main.swift (in order): \(line)")
                    break
                }
                position = found + 1
            }
        }
    }
}

import ArgumentParser
import Foundation

/// `redis-rotation`: the demo of a whole rotation against a private server, and a load test that
/// rotates (or watches rotations of) users' own servers.
struct RedisRotationTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redis-rotation",
        abstract: "Rotate Redis passwords, certificates and CAs under load without failing a command.",
        subcommands: [DemoCommand.self, LoadTestCommand.self, RotateCommand.self, InspectCommand.self]
    )
}

@main
enum Main {
    /// Exit statuses: 0 success, 1 a failed run, 2 a usage or configuration error.
    static func main() async {
        // A reader that goes away (`--json | head -1`) must not kill a rotation between two steps.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try RedisRotationTool.parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as RunFailure {
            FileHandle.standardError.write(Data("redis-rotation: \(failure.description)\n".utf8))
            exit(failure.exitCode)
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            if RedisRotationTool.exitCode(for: error) == .success {
                RedisRotationTool.exit(withError: error)  // --help, --version
            }
            FileHandle.standardError.write(Data("redis-rotation: \(RedisRotationTool.message(for: error))\n".utf8))
            exit(2)
        }
    }
}

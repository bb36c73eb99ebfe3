import Foundation
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// The generated command table (`RedisCommandInfo.all`) against the real server it was generated from:
/// it lists every command and subcommand, and its key specifications find exactly the keys the server
/// finds (`COMMAND GETKEYS`) in invocations built from the server's own argument documentation.
@Suite("Command specification", .timeLimit(.minutes(2)))
struct CommandSpecTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("the table has every command and subcommand the server lists, with the server's arity and flags")
    func coversTheServer() async throws {
        try await RedisServerProcess.withServer { server in
            let admin = try await server.adminConnection()
            defer { Task { await admin.close() } }
            let version = try await admin.send(RedisCommand("INFO", "server")).string ?? ""
            #expect(version.contains("redis_version:\(RedisCommandInfo.specificationVersion)"), "the tests' server is the one the table was generated from")
            // COMMAND LIST names subcommands too (`config|get`).
            let names = Set(
                (try await admin.send(RedisCommand("COMMAND", "LIST")).array ?? []).compactMap {
                    $0.string?.uppercased().replacingOccurrences(of: "|", with: " ")
                }
            )
            #expect(names.count >= 300)
            let table = Set(RedisCommandInfo.all.map(\.name))
            #expect(names.subtracting(table).isEmpty, "missing from the generated table: \(names.subtracting(table).sorted())")
            #expect(table.subtracting(names).isEmpty, "in the table but not on the server: \(table.subtracting(names).sorted())")
            // Arity and flags, one command at a time: a container's whole entry (with its subcommands'
            // key specifications) nests 8 levels deep, deeper than hiredis 0.14 reads (7).
            for entry in RedisCommandInfo.all where !RedisCommandInfo.all.contains(where: { $0.name.hasPrefix(entry.name + " ") }) {
                let name = entry.name.lowercased().replacingOccurrences(of: " ", with: "|")
                let reply = try await admin.send(RedisCommand("COMMAND", "INFO", .string(name)))
                guard let fields = reply.array?.first?.array, fields.count >= 3 else {
                    Issue.record("the server does not know \(entry.name)")
                    continue
                }
                #expect(fields[1].int == entry.arity, "\(entry.name) arity")
                #expect(Set(fields[2].array?.compactMap(\.string) ?? []) == entry.flags, "\(entry.name) flags")
            }
            #expect(RedisCommandInfo.lookup("get")?.isReadOnly == true)
            #expect(RedisCommandInfo.lookup("config", subcommand: "get")?.name == "CONFIG GET")
            #expect(RedisCommandInfo.lookup("blpop")?.isBlocking == true)
        }
    }

    @Test("for every command with keys, the key specifications find the keys COMMAND GETKEYS finds, movable keys included")
    func keyPositionsMatchTheServer() async throws {
        let docs = try JSONSerialization.jsonObject(
            with: Data(contentsOf: Self.root.appendingPathComponent("spec/redis-7.0-command-docs.json"))
        ) as! [String: Any]
        try await RedisServerProcess.withServer { server in
            let admin = try await server.adminConnection()
            defer { Task { await admin.close() } }
            var checked: Set<String> = []
            var compared = 0
            var mismatches: [String] = []
            for info in RedisCommandInfo.all where !info.keySpecs.isEmpty {
                let parts = info.name.lowercased().split(separator: " ").map(String.init)
                var commandDocs = docs[parts[0]] as? [String: Any] ?? [:]
                if parts.count == 2 {
                    commandDocs = (commandDocs["subcommands"] as? [String: Any])?["\(parts[0])|\(parts[1])"] as? [String: Any] ?? [:]
                }
                let arguments = commandDocs["arguments"] as? [[String: Any]] ?? []
                for variant in 0..<4 {
                    var keys = 0
                    let argv = parts.map { $0.uppercased() } + Self.sample(arguments, variant: variant, keys: &keys)
                    let reply: RESPValue
                    do {
                        reply = try await admin.send(RedisCommand("COMMAND", arguments: ["GETKEYS"] + argv.map { .string($0) }))
                    } catch {
                        continue  // The server finds this invocation invalid: another variant may fit.
                    }
                    compared += 1
                    checked.insert(info.name)
                    let serverKeys = (reply.array ?? []).compactMap(\.string)
                    let ours = info.keyIndices(in: argv).map { $0.map { argv[$0] } }
                    if ours != serverKeys {
                        mismatches.append("\(argv.joined(separator: " ")): server \(serverKeys), table \(ours.map { "\($0)" } ?? "nil")")
                    }
                }
            }
            let withKeys = Set(RedisCommandInfo.all.filter { !$0.keySpecs.isEmpty }.map(\.name))
            #expect(mismatches.isEmpty, "\(mismatches.count) of \(compared) invocations differ:\n\(mismatches.prefix(20).joined(separator: "\n"))")
            // Every command with key specifications was compared at least once.
            // Sharded pub/sub names its channels as keys (for cluster routing); COMMAND GETKEYS refuses them.
            let shardedPubSub: Set<String> = ["SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE"]
            #expect(withKeys.subtracting(checked) == shardedPubSub, "never accepted by the server: \(withKeys.subtracting(checked).sorted())")
            #expect(RedisCommandInfo.lookup("SPUBLISH")?.keyIndices(in: ["SPUBLISH", "channel", "message"]) == [1])
            #expect(RedisCommandInfo.lookup("SSUBSCRIBE")?.keyIndices(in: ["SSUBSCRIBE", "a", "b"]) == [1, 2])
            #expect(checked.contains("EVAL") && checked.contains("XREAD") && checked.contains("ZUNIONSTORE") && checked.contains("SORT"))
        }
    }

    /// A plausible invocation from the documented arguments. `variant` picks what optional parts are
    /// in (0: all, 1: none, 2 and 3: alternate) and which alternative of a one-of group is taken.
    static func sample(_ arguments: [[String: Any]], variant: Int, keys: inout Int) -> [String] {
        var argv: [String] = []
        for (position, argument) in arguments.enumerated() {
            let flags = argument["flags"] as? [String] ?? []
            if flags.contains("optional") {
                let include = variant == 0 || (variant == 2 && position % 2 == 0) || (variant == 3 && position % 2 == 1)
                if !include { continue }
            }
            let repeats = flags.contains("multiple") ? 2 : 1
            for repetition in 0..<repeats {
                if let token = argument["token"] as? String, repetition == 0 || flags.contains("multiple_token") {
                    argv.append(token)
                }
                argv += Self.value(of: argument, variant: variant, keys: &keys)
            }
        }
        return argv
    }

    private static func value(of argument: [String: Any], variant: Int, keys: inout Int) -> [String] {
        switch argument["type"] as? String ?? "" {
        case "key":
            keys += 1
            return ["key\(keys)"]
        case "pure-token":
            return []
        case "integer":
            return ["1"]
        case "double":
            return ["1.5"]
        case "unix-time":
            return ["1700000000"]
        case "pattern":
            return ["*"]
        case "oneof":
            let alternatives = argument["arguments"] as? [[String: Any]] ?? []
            guard !alternatives.isEmpty else { return [] }
            let chosen = alternatives[variant % alternatives.count]
            var result: [String] = []
            if let token = chosen["token"] as? String { result.append(token) }
            return result + Self.value(of: chosen, variant: variant, keys: &keys)
        case "block":
            return Self.sample(argument["arguments"] as? [[String: Any]] ?? [], variant: variant, keys: &keys)
        default:
            return ["value"]
        }
    }
}

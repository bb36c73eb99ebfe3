import Testing

@testable import RedisRotation

/// The per-name table `RedisCommand.init` classifies with (issue 14) against the full derivation it
/// replaced, for every name in the table and argument lists that make each rule decide.
@Suite("Command name traits")
struct CommandNameTraitsTests {
    struct Classification: Equatable, CustomStringConvertible {
        var isSensitive: Bool
        var isReadOnly: Bool
        var isIdempotent: Bool
        var sessionEffect: SessionEffect
        var pubSubCommand: PubSubStateMachine.Command?
        var description: String {
            "sensitive=\(isSensitive) readOnly=\(isReadOnly) idempotent=\(isIdempotent) session=\(sessionEffect) pubSub=\(String(describing: pubSubCommand))"
        }
    }

    /// The classification as `RedisCommand.init` made it before the table.
    static func fullPath(_ name: String, _ arguments: [RedisArgument]) -> Classification {
        let name = name.uppercased()
        let specificationName = RedisCommandIdempotency.specificationName(name, arguments: arguments)
        return Classification(
            isSensitive: RedisCommand.sensitiveNames.contains(name) || arguments.contains(where: \.isSecret),
            isReadOnly: RedisCommandIdempotency.isReadOnly(specificationName),
            isIdempotent: RedisCommandIdempotency.isIdempotent(specificationName, arguments: arguments),
            sessionEffect: SessionEffect(name: name, arguments: arguments),
            pubSubCommand: PubSubStateMachine.Command(name: name, argumentCount: arguments.count)
        )
    }

    static let argumentLists: [[RedisArgument]] = [
        [], ["key"], ["key", "value"], ["key", "value", "NX"], ["key", "value", "ex", "10"], ["key", "value", "GET"],
        ["key", "100", "GT"], ["GET", "maxmemory"], ["SETNAME", "name"], ["REPLY", "OFF"], ["DEBUG", "YES"],
        ["HELP"], ["BLOCK", "0", "STREAMS", "s", "$"], ["COUNT", "1", "STREAMS", "s", "$"], ["STREAMS", "s", "0"],
        ["key", .secret(RedisSecret("hunter2"))], [.integer(3), "a"],
    ]

    @Test("every name in the table, in upper and lower case, classifies every argument list as the full derivation does")
    func tableMatchesFullPath() {
        #expect(CommandNameTraits.table.count > 200, "the specification's commands are in the table")
        var checked = 0
        for name in CommandNameTraits.table.keys.sorted() {
            for arguments in Self.argumentLists {
                for spelling in [name, name.lowercased()] {
                    let command = RedisCommand(spelling, arguments: arguments)
                    let fast = Classification(
                        isSensitive: command.isSensitive,
                        isReadOnly: command.isReadOnly,
                        isIdempotent: command.isIdempotent,
                        sessionEffect: command.sessionEffect,
                        pubSubCommand: command.pubSubCommand
                    )
                    let full = Self.fullPath(spelling, arguments)
                    #expect(fast == full, "\(spelling) with \(arguments.count) arguments")
                    checked += 1
                }
            }
        }
        #expect(checked == CommandNameTraits.table.count * Self.argumentLists.count * 2)
    }

    @Test("names the table does not know take the full path: unknown and module commands, odd spellings")
    func unknownNames() {
        for name in ["FT.SEARCH", "JSON.SET", "Get", "gEt", "NOSUCHCOMMAND", "Ünïcode"] {
            for arguments in Self.argumentLists {
                let command = RedisCommand(name, arguments: arguments)
                let fast = Classification(
                    isSensitive: command.isSensitive,
                    isReadOnly: command.isReadOnly,
                    isIdempotent: command.isIdempotent,
                    sessionEffect: command.sessionEffect,
                    pubSubCommand: command.pubSubCommand
                )
                #expect(fast == Self.fullPath(name, arguments), "\(name)")
                #expect(command.name == name.uppercased())
            }
        }
    }

    @Test("lengths are counted in decimal digits as RESP writes them")
    func decimalDigits() {
        for value in [0, 1, 9, 10, 99, 100, 512 * 1024 * 1024, Int(Int32.max), Int.max] {
            #expect(RedisCommand.decimalDigits(value) == String(value).count, "\(value)")
        }
    }
}

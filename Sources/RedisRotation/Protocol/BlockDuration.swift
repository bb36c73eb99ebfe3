/// How long a blocking command (`BLPOP`, `BLMOVE`, `BZPOPMIN`, `XREAD ... BLOCK`, `WAIT`, ...) may wait
/// on the server before it answers, read from its own timeout argument. The client's deadline for the
/// reply is this plus the command timeout.
enum BlockDuration: Hashable, Sendable {
    /// A timeout of 0: until data arrives.
    case indefinitely
    case upTo(Duration)

    /// Reads the timeout of blocking command `name` (upper-cased); `nil` when it is not a non-negative
    /// number.
    init?(name: String, arguments: [RedisArgument]) {
        let text: String?
        let unit: Double
        switch name {
        case "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX":
            (text, unit) = (arguments.last?.numberText, 1)
        case "BLMPOP", "BZMPOP":
            (text, unit) = (arguments.first?.numberText, 1)
        case "WAIT", "WAITAOF":
            (text, unit) = (arguments.last?.numberText, 0.001)
        case "XREAD", "XREADGROUP":
            let index = Self.blockOptionIndex(name: name, keywords: arguments.map(\.keyword))
            (text, unit) = (index.flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1].numberText : nil }, 0.001)
        default:
            return nil
        }
        // Digits, a point and an exponent only: no `inf`, `nan` or hex.
        guard let text, !text.isEmpty, text.utf8.allSatisfy({ (48...57).contains($0) || $0 == 46 || $0 == 101 || $0 == 69 || $0 == 43 || $0 == 45 }),
            let value = Double(text), value.isFinite, value >= 0
        else { return nil }
        if value == 0 {
            self = .indefinitely
        } else {
            // Beyond 30 years is as good as forever, and keeps deadline arithmetic far from overflow.
            self = .upTo(.nanoseconds(Int64(min(value * unit, 30 * 365 * 86400) * 1e9)))
        }
    }

    /// Where `XREAD`'s or `XREADGROUP`'s `BLOCK` option is among `keywords` (the arguments' upper-cased
    /// short texts): only among the options, that is after `GROUP group consumer` and before `STREAMS`,
    /// so a consumer or a stream named `block` is not taken for it.
    static func blockOptionIndex(name: String, keywords: [String?]) -> Int? {
        let start = name == "XREADGROUP" ? 3 : 0
        let end = keywords.firstIndex(of: "STREAMS") ?? keywords.count
        guard start < end else { return nil }
        return keywords[start..<end].firstIndex(of: "BLOCK")
    }

    /// The most a caller waits for any reply: used for a timeout of 0.
    static let indefiniteWait: Duration = .seconds(30 * 365 * 86400)

    /// How long a reply may take, given the configured command timeout.
    func replyTimeout(commandTimeout: Duration) -> Duration {
        switch self {
        case .indefinitely: return Self.indefiniteWait
        case .upTo(let duration): return duration + commandTimeout
        }
    }
}

extension RedisArgument {
    /// The argument as text when it is a short number candidate (an integer, or short text).
    fileprivate var numberText: String? {
        if let integer = self.integerValue { return String(integer) }
        return self.text(maximumLength: 64)
    }
}

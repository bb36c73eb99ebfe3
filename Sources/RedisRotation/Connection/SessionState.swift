/// The state one connection carries on the server beyond its identity, tracked as commands are
/// *enqueued* rather than when their replies arrive: a `MULTI` whose caller was cancelled before the
/// `+OK` still opened a transaction on the server. Pure; the connection holds it under a lock.
///
/// States are the combination of the flags below; each flag moves only through the events documented
/// on it, and ``restored()`` clears every flag but ``irreversible``.
struct SessionState: Hashable, Sendable {
    /// `MULTI` enqueued, no `EXEC`/`DISCARD` since. Can move to: false on `EXEC`, `DISCARD`, restore.
    private(set) var inTransaction = false
    /// `WATCH` enqueued, no `UNWATCH`/`EXEC`/`DISCARD` since.
    private(set) var watching = false
    /// `SELECT` enqueued: the database may differ from the configured one.
    private(set) var databaseChanged = false
    /// `CLIENT SETNAME` enqueued outside the client's own re-authentication.
    private(set) var renamed = false
    /// A command's caller stopped waiting (cancelled, or its deadline passed) while its reply was still
    /// owed: the next caller's replies would queue behind it.
    private(set) var repliesOwed = false
    /// The command that made the session impossible to restore, if any: the connection must close.
    private(set) var irreversible: String?

    /// Whether nothing has to be undone before another user may have the connection.
    var isClean: Bool {
        !self.inTransaction && !self.watching && !self.databaseChanged && !self.renamed && !self.repliesOwed
            && self.irreversible == nil
    }

    /// A command with `effect` is about to be written.
    mutating func commandEnqueued(_ effect: SessionEffect) {
        switch effect {
        case .none, .blocks: break
        case .beginsTransaction: self.inTransaction = true
        case .endsTransaction:
            // EXEC or DISCARD without MULTI is an error on the server, which keeps any WATCH.
            if self.inTransaction {
                self.inTransaction = false
                self.watching = false
            }
        case .watches: self.watching = true
        case .unwatches: self.watching = self.inTransaction && self.watching  // Queued inside MULTI: not yet.
        case .selectsDatabase: self.databaseChanged = true
        case .renames: self.renamed = true
        case .irreversible(let name): self.irreversible = self.irreversible ?? name
        }
    }

    /// A caller stopped waiting for a reply that is still owed.
    mutating func replyAbandoned() {
        self.repliesOwed = true
    }

    /// The connection was restored: every owed reply arrived and the transaction, watches, database and
    /// name were reset.
    mutating func restored() {
        let irreversible = self.irreversible
        self = SessionState()
        self.irreversible = irreversible
    }

    /// What has to happen before the connection can serve someone else.
    enum Release: Hashable {
        /// Nothing: hand it on.
        case reuse
        /// Send these commands as one pipeline (the last is `PING`, so its reply also proves that every
        /// owed reply has arrived), then hand it on if each answered as expected.
        case restore([Step])
        /// Close it; the reason names what could not be undone.
        case close(String)
    }

    /// One command of a restoration.
    enum Step: Hashable {
        case discard, unwatch, selectDatabase, setName, ping
    }

    var release: Release {
        if let name = self.irreversible { return .close("\(name) was sent on it") }
        if self.isClean { return .reuse }
        var steps: [Step] = []
        // DISCARD first, so that UNWATCH is not queued inside the transaction; UNWATCH as well, in case
        // the MULTI failed on the server and DISCARD answered "without MULTI", leaving watches in place.
        if self.inTransaction { steps.append(.discard) }
        if self.watching { steps.append(.unwatch) }
        if self.databaseChanged { steps.append(.selectDatabase) }
        if self.renamed { steps.append(.setName) }
        steps.append(.ping)
        return .restore(steps)
    }
}

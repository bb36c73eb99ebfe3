import Foundation
@_spi(Fuzzing) import RedisRotation

// Input: the contents of a password file, plain or keyed. What the parser accepts must be usable by
// the rest of the client (a valid version, a password without a line break, an expiry it can compute
// and print with) and must read back the same when written out again in the keyed format.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCredentialFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let file = RedisFuzzing.parseCredentialFile(bytes) else { return 0 }

    check(!file.password.isEmpty, "an empty password was accepted")
    let password = file.password.withUnsafeBytes { Array($0) }
    check(!password.contains(0x0A), "a password with a line feed was accepted")
    if let version = file.version {
        check(RedisCredentials.isValidVersion(version), "an invalid version was accepted")
    }
    if let expiresAt = file.expiresAt {
        check(expiresAt.timeIntervalSince1970.isFinite, "an expiry that is not a finite time was accepted")
    }
    // What the client does with them: label connections, print, compute the time left.
    let credentials = RedisCredentials(
        username: file.username ?? "app",
        password: file.password,
        version: file.version ?? "fuzz-1",
        expiresAt: file.expiresAt
    )
    check(!credentials.description.isEmpty, "credentials without a description")
    _ = credentials.expiresAt.map { ($0.timeIntervalSinceNow / 86400 * 10).rounded() / 10 }

    // Written out keyed, the same credentials must come back.
    var keyed = Array("password=".utf8) + password + [0x0A]
    if let username = file.username { keyed += Array("username=\(username)\n".utf8) }
    if let version = file.version { keyed += Array("version=\(version)\n".utf8) }
    if let expiresAt = file.expiresAt { keyed += Array("expires=\(expiresAt.timeIntervalSince1970)\n".utf8) }
    // A value ending in CR is the one thing the format cannot write: a CR before the LF is dropped.
    let endsInCR = password.last == 0x0D || file.username?.utf8.last == 0x0D
    let written = endsInCR ? nil : keyed
    if let written {
        guard let again = RedisFuzzing.parseCredentialFile(written) else {
            fatalError("invariant broken: accepted credentials do not parse once written out keyed")
        }
        check(again.password == file.password, "the password changed when written out keyed")
        check(again.username == file.username, "the username changed when written out keyed")
        check(again.version == file.version, "the version changed when written out keyed")
        if let expected = file.expiresAt?.timeIntervalSince1970, let actual = again.expiresAt?.timeIntervalSince1970 {
            check(abs(expected - actual) <= 1e-6 * max(1, abs(expected)), "the expiry changed when written out keyed")
        } else {
            check(again.expiresAt == nil && file.expiresAt == nil, "the expiry appeared or vanished when written out keyed")
        }
    }
    return 0
}

/// A broken invariant is a finding: abort, so that libFuzzer saves the input.
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(message())") }
}

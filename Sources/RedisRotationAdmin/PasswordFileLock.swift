#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive `flock` on `<password file>.lock`, held by one rotation from its checks to its end,
/// so that two rotations of the same file never interleave (each would remove the password the other
/// published). The file also keeps a one-line journal, no secret in it: `adding=<version>` before a
/// new password is added, `published=<version>` once the file holds it, empty when done. A re-run
/// reads it to tell "interrupted before publishing" from "interrupted after".
///
/// The lock file is never removed: removing it would let a third run lock a new file while a second
/// still holds the old one. The lock goes with the descriptor (closed in `deinit`, or at exit).
final class PasswordFileLock: Sendable {
    let path: String
    private let fd: Int32

    /// Takes the lock without waiting; `nil` when another process or rotation holds it.
    init?(path: String) throws(RedisAdminError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw RedisAdminError(code: .passwordFile, message: "cannot open the lock file \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw RedisAdminError(code: .passwordFile, message: "cannot lock \(path): \(String(cString: strerror(code)))")
        }
        self.path = path
        self.fd = fd
    }

    deinit { close(self.fd) }

    /// The journal line a previous run left, e.g. `adding=r1700000000-0a1b`.
    func journal() -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = pread(self.fd, &buffer, buffer.count, 0)
        guard count > 0 else { return "" }
        return String(decoding: buffer[..<count], as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
    }

    /// Replaces the journal line; best effort (the lock matters, the journal only sharpens a resume).
    func record(_ line: String) {
        _ = ftruncate(self.fd, 0)
        let bytes = Array((line.isEmpty ? "" : line + "\n").utf8)
        _ = bytes.withUnsafeBytes { pwrite(self.fd, $0.baseAddress, $0.count, 0) }
        _ = fsync(self.fd)
    }
}

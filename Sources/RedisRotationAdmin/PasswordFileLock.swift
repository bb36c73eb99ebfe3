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
        // The journal is written into this file: one that is also another name (a hard link to the
        // password file), not a file, or someone else's would have that file overwritten.
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let code = errno
            close(fd)
            throw RedisAdminError(code: .passwordFile, message: "cannot examine the lock file \(path): \(String(cString: strerror(code))); nothing was changed")
        }
        let problem: String? =
            if (status.st_mode & S_IFMT) != S_IFREG { "it is not a regular file" }
            else if status.st_nlink != 1 { "it has \(status.st_nlink) names (a hard link, perhaps to the password file, which the journal would overwrite)" }
            else if status.st_uid != geteuid() { "it belongs to uid \(status.st_uid), not to this user (uid \(geteuid()))" }
            else { nil }
        if let problem {
            close(fd)
            throw RedisAdminError(code: .passwordFile, message: "refusing the lock file \(path): \(problem); remove it (it holds no secret) and run again. Nothing was changed")
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

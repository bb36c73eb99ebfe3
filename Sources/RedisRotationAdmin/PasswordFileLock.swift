#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive `flock` on `<password file>.lock`, held by one rotation from its checks to its end,
/// so that two rotations of the same file never interleave (each would remove the password the other
/// published).
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
}

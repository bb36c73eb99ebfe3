#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct FileReadError: Error {
    let message: String
}

/// Reads a whole file with POSIX calls, bounded to `limit` bytes (secrets and certificates are small;
/// anything larger is not what we were asked to read). With `truncating`, a larger file gives its first
/// `limit + 1` bytes instead of an error, so that the caller can say "oversized" itself.
///
/// The contents come as a ``RedisSecret``: the file may be a password or a private key, so the bytes
/// are read straight into storage that is wiped when released, and nothing else ever holds them.
func readFile(_ path: String, limit: Int = 16 * 1024 * 1024, truncating: Bool = false) throws(FileReadError) -> RedisSecret {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(message: String(cString: strerror(errno))) }
    defer { close(fd) }
    let contents = try RedisSecret(limit: limit + 1) { buffer throws(FileReadError) -> Int in
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno != EINTR { throw FileReadError(message: String(cString: strerror(errno))) }
        }
    }
    if contents.count > limit && !truncating {
        throw FileReadError(message: "larger than \(limit) bytes")
    }
    return contents
}

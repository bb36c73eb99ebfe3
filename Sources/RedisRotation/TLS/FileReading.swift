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
func readFile(_ path: String, limit: Int = 16 * 1024 * 1024, truncating: Bool = false) throws(FileReadError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(message: String(cString: strerror(errno))) }
    defer { close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw FileReadError(message: String(cString: strerror(errno)))
        }
        if count == 0 { break }
        result.append(contentsOf: chunk[0..<count])
        if result.count > limit {
            if truncating { return Array(result.prefix(limit + 1)) }
            throw FileReadError(message: "larger than \(limit) bytes")
        }
    }
    return result
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

extension RedisCredentialFile {
    /// Replaces the file at `path` with this content, so that a reader sees the old file or the new one,
    /// never a mix, never a file with looser permissions, and never the new one lost in a crash.
    ///
    /// A temporary file is created next to `path` (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600), given the
    /// original's owner, group, mode and POSIX access ACL (0600 when there is no original), written,
    /// `fsync`ed and renamed over `path`; then the directory is `fsync`ed. On any error the temporary file is removed and the
    /// original is untouched. A `path` that is a symbolic link is refused: the rename would replace the
    /// link, not its target.
    ///
    /// - Throws: ``RedisError`` with code `invalidArgument`, naming the file and the step that failed.
    public func write(to path: String) throws(RedisError) {
        let replaced = try replaceFileSafely(at: path, with: try self.encoded(), what: "the password file")
        if let warning = replaced.durabilityWarning { throw warning }
    }

    /// Like ``write(to:)``, but a failure after the rename (the directory cannot be flushed) is
    /// returned instead of thrown: the file already holds the new content, and a caller that took a
    /// throw for "not written" would act on a file it misread. With `restrictingOthers` the
    /// original's permission bits for others are dropped (a secret is never world-readable).
    package func replace(at path: String, restrictingOthers: Bool) throws(RedisError) -> FileReplacement {
        try replaceFileSafely(at: path, with: try self.encoded(), what: "the password file", restrictingOthers: restrictingOthers)
    }
}

/// What ``replaceFileSafely(at:with:what:restrictingOthers:)`` did once it did not throw: the file
/// holds the new content.
package struct FileReplacement: Sendable {
    /// Set when the rename happened but could not be made durable (the directory `fsync` failed): the
    /// new content is live, a crash could still bring the old file back.
    package var durabilityWarning: RedisError?
    /// The permission bits the new file got, and the original's (`nil` without an original).
    package var mode: mode_t
    package var originalMode: mode_t?
}

/// A test seam: directories whose `fsync` after the rename fails with `EIO`, as a failing disk would.
package let fileReplacementFailingDirectoryFlushes = Mutex<Set<String>>([])

/// A test seam: paths whose rename succeeds but reports `ENOENT`, as a retried rename over NFS can.
package let fileReplacementRenamesFailingAfterSuccess = Mutex<Set<String>>([])

/// Replaces the file at `path` with `content` as ``RedisCredentialFile/write(to:)`` describes: a
/// temporary file created `O_EXCL|O_NOFOLLOW` with mode 0600, given the original's owner, group and
/// mode, written, `fsync`ed, renamed over `path`, the directory `fsync`ed; removed on any error.
/// `what` names the file in errors ("the password file", "the CA bundle").
/// Throws only for failures before the rename (the original is untouched then); a failure after it is
/// the result's ``FileReplacement/durabilityWarning``.
@discardableResult
package func replaceFileSafely(at path: String, with content: RedisSecret, what: String, restrictingOthers: Bool = false) throws(RedisError) -> FileReplacement {
    func failure(_ step: String, _ code: Int32) -> RedisError {
        RedisError(code: .invalidArgument, message: "cannot write \(what) \(path): \(step): \(String(cString: strerror(code)))")
    }

    var mode: mode_t = 0o600
    var owner: (uid: uid_t, gid: gid_t)?
    var originalMode: mode_t?
    if let original = try existingFile(at: path, what: what) {
        mode = original.st_mode & 0o7777
        originalMode = mode
        owner = (original.st_uid, original.st_gid)
    }
    if restrictingOthers { mode &= ~mode_t(0o007) }

    let directory = parentDirectory(of: path)
    let name = path.split(separator: "/").last.map(String.init) ?? "password"
    var temporary = ""
    var fd: Int32 = -1
    for _ in 0..<8 {
        temporary = "\(directory)/.\(name).tmp-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd >= 0 || errno != EEXIST { break }
    }
    guard fd >= 0 else { throw failure("cannot create a temporary file in \(directory)", errno) }

    var renamed = false
    defer {
        if fd >= 0 { close(fd) }
        if !renamed { unlink(temporary) }
    }
    // The owner first: fchown may clear set-id bits, which fchmod then restores as they were.
    if let owner, fchown(fd, owner.uid, owner.gid) != 0 {
        throw failure("cannot give the new file the original's owner \(owner.uid):\(owner.gid)", errno)
    }
    // A POSIX ACL (`setfacl -m u:app:r`) is how some clients read the file; the rename would drop it.
    // Copied before fchmod, which then sets the owner, mask and other entries from `mode`.
    if originalMode != nil, let acl = try accessACL(of: path, what: what) {
        guard ExtendedAttributes.set(ExtendedAttributes.posixAccessACL, to: acl, onDescriptor: fd) else { throw failure("cannot give the new file the original's access ACL", errno) }
    }
    guard fchmod(fd, mode) == 0 else { throw failure("cannot set the new file's mode", errno) }
    let writeError = content.withUnsafeBytes { writeAll(fd, $0) }
    if let writeError { throw failure("cannot write the new content", writeError) }
    guard fsync(fd) == 0 else { throw failure("cannot flush the new content to disk", errno) }
    var written = stat()
    guard fstat(fd, &written) == 0 else { throw failure("cannot examine the new file", errno) }
    let closed = close(fd)
    fd = -1
    guard closed == 0 else { throw failure("cannot close the new file", errno) }
    let injectedRenameError = fileReplacementRenamesFailingAfterSuccess.withLock { $0.contains(path) }
    if rename(temporary, path) != 0 || injectedRenameError {
        let code = injectedRenameError ? ENOENT : errno
        // Over NFS a retried rename can report ENOENT although the first attempt succeeded: when the
        // path now names the new file, it was renamed, and a caller must not take it back.
        var current = stat()
        guard lstat(path, &current) == 0, current.st_dev == written.st_dev, current.st_ino == written.st_ino else {
            throw failure("cannot rename the new file over it", code)
        }
    }
    renamed = true
    var replacement = FileReplacement(durabilityWarning: nil, mode: mode, originalMode: originalMode)
    // The rename itself survives a crash only once the directory is on disk.
    let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard directoryFD >= 0 else {
        replacement.durabilityWarning = failure("written, but cannot open \(directory) to flush it", errno)
        return replacement
    }
    defer { close(directoryFD) }
    let injected = fileReplacementFailingDirectoryFlushes.withLock { $0.contains(directory) }
    if injected || fsync(directoryFD) != 0 {
        replacement.durabilityWarning = failure("written, but cannot flush \(directory) to disk", injected ? EIO : errno)
    }
    return replacement
}

/// Refuses, before anything is changed, a `path` that ``replaceFileSafely(at:with:what:)`` would
/// refuse: a symbolic link or something other than a regular file.
package func checkFileReplaceable(at path: String, what: String) throws(RedisError) {
    _ = try existingFile(at: path, what: what)
}

/// The file at `path` as `lstat` sees it; `nil` when there is none. Refuses links and non-files.
private func existingFile(at path: String, what: String) throws(RedisError) -> stat? {
    var original = stat()
    guard lstat(path, &original) == 0 else {
        if errno == ENOENT { return nil }
        throw RedisError(code: .invalidArgument, message: "cannot write \(what) \(path): cannot examine it: \(String(cString: strerror(errno)))")
    }
    if (original.st_mode & S_IFMT) == S_IFLNK {
        throw RedisError(
            code: .invalidArgument,
            message: "cannot write \(what) \(path): it is a symbolic link (managed by a secret manager?); name the file it points to"
        )
    }
    guard (original.st_mode & S_IFMT) == S_IFREG else {
        throw RedisError(code: .invalidArgument, message: "cannot write \(what) \(path): it is not a regular file")
    }
    return original
}

/// The POSIX access ACL of the file at `path` as stored; `nil` when it has none or the file system
/// has no ACLs.
private func accessACL(of path: String, what: String) throws(RedisError) -> [UInt8]? {
    if let acl = ExtendedAttributes.value(ExtendedAttributes.posixAccessACL, of: path) { return acl }
    if errno == ENODATA || errno == ENOTSUP || errno == EOPNOTSUPP { return nil }
    throw RedisError(code: .invalidArgument, message: "cannot write \(what) \(path): cannot read its access ACL: \(String(cString: strerror(errno)))")
}

/// Writes all of `bytes` to `fd`; the `errno` of a failure, or `nil`.
private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
    var offset = 0
    while offset < bytes.count {
        let count = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if count < 0 {
            if errno == EINTR { continue }
            return errno
        }
        offset += count
    }
    return nil
}

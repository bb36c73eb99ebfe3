#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Extended attributes (Linux `getxattr(2)` family), where a file keeps its POSIX ACL
/// (`system.posix_acl_access`). Glibc's Swift module does not export `<sys/xattr.h>`, so the calls
/// are looked up in the C library once; elsewhere every call reports `ENOTSUP`.
package enum ExtendedAttributes {
    /// The POSIX access ACL of a file.
    package static let posixAccessACL = "system.posix_acl_access"

    private typealias Get = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    private typealias Set = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    private typealias FSet = @convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32

    private static func symbol<T>(_ name: String, as type: T.Type) -> T? {
        #if os(Linux)
        guard let handle = dlopen(nil, RTLD_NOW), let address = dlsym(handle, name) else { return nil }
        return unsafeBitCast(address, to: type)
        #else
        return nil
        #endif
    }

    private static let lget = symbol("lgetxattr", as: Get.self)
    private static let lset = symbol("lsetxattr", as: Set.self)
    private static let fset = symbol("fsetxattr", as: FSet.self)

    /// The value of `name` on `path` (not following a final symbolic link); `nil` with `errno` set
    /// (`ENODATA` when it has none, `ENOTSUP` without extended attributes).
    package static func value(_ name: String, of path: String) -> [UInt8]? {
        guard let lget else {
            errno = ENOTSUP
            return nil
        }
        for _ in 0..<4 {
            let size = lget(path, name, nil, 0)
            guard size >= 0 else { return nil }
            var buffer = [UInt8](repeating: 0, count: size)
            let read = buffer.withUnsafeMutableBytes { lget(path, name, $0.baseAddress, $0.count) }
            if read >= 0 { return Array(buffer[..<read]) }
            // ERANGE: it grew between the two calls; ask again.
            if errno != ERANGE { return nil }
        }
        return nil
    }

    /// Sets `name` on `path` (not following a final symbolic link); `false` with `errno` set.
    package static func set(_ name: String, to value: [UInt8], on path: String) -> Bool {
        guard let lset else {
            errno = ENOTSUP
            return false
        }
        return value.withUnsafeBytes { lset(path, name, $0.baseAddress, $0.count, 0) } == 0
    }

    /// Sets `name` on the open file `fd`; `false` with `errno` set.
    package static func set(_ name: String, to value: [UInt8], onDescriptor fd: Int32) -> Bool {
        guard let fset else {
            errno = ENOTSUP
            return false
        }
        return value.withUnsafeBytes { fset(fd, name, $0.baseAddress, $0.count, 0) } == 0
    }
}

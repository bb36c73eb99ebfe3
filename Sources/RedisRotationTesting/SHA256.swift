private import COpenSSL

/// The SHA-256 digest of `bytes`, through OpenSSL's EVP interface.
func sha256(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
    var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
    var length: UInt32 = 0
    let ok = digest.withUnsafeMutableBufferPointer { output in
        EVP_Digest(bytes.baseAddress, bytes.count, output.baseAddress, &length, EVP_sha256(), nil)
    }
    precondition(ok == 1, "OpenSSL could not compute SHA-256")
    return Array(digest.prefix(Int(length)))
}

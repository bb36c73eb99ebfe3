private import COpenSSL

extension RedisSecret {
    /// The SHA-256 of the secret's bytes in lowercase hex: how `ACL GETUSER` lists a user's passwords,
    /// so a tool can tell which of them a secret is without sending it anywhere.
    public var sha256Hex: String {
        self.withUnsafeBytes { bytes in
            var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
            var length: UInt32 = 0
            let ok = digest.withUnsafeMutableBufferPointer { output in
                EVP_Digest(bytes.baseAddress, bytes.count, output.baseAddress, &length, EVP_sha256(), nil)
            }
            precondition(ok == 1, "OpenSSL could not compute SHA-256")
            return digest.prefix(Int(length)).map { byte in
                let hex = String(byte, radix: 16)
                return byte < 16 ? "0" + hex : hex
            }.joined()
        }
    }
}

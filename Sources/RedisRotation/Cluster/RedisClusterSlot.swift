import NIOCore

/// The hash slot of a key in Redis Cluster: CRC16 (XMODEM) of the key, or of its hash tag, modulo
/// 16384, exactly as the server computes it (`CLUSTER KEYSLOT`).
///
/// A hash tag is the part between the first `{` and the first `}` after it, when that part is not
/// empty: `{user:42}:cart` and `{user:42}:orders` share a slot, so a transaction or a multi-key
/// command may use both.
public enum RedisClusterSlot {
    /// The number of slots.
    public static let count = 16384

    /// The slot of `key`'s bytes.
    public static func slot(for key: some Collection<UInt8>) -> Int {
        let bytes = Array(key)
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
            let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")),
            close > open + 1
        {
            return Int(Self.crc16(bytes[(open + 1)..<close]) & 0x3FFF)
        }
        return Int(Self.crc16(bytes[...]) & 0x3FFF)
    }

    /// The slot of `key`.
    public static func slot(for key: RedisKey) -> Int {
        var buffer = ByteBuffer()
        key.argument.write(to: &buffer)
        return Self.slot(for: buffer.readableBytesView)
    }

    /// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as in the cluster specification.
    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ Self.table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 {
            crc = (crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }
}

import Foundation
@_spi(Fuzzing) import RedisRotation

// Input: PEM bytes, used each way the library reads PEM: as certificates (a chain, a CA bundle), as a
// private key, as the trust anchors of a TLS context and as a combined client identity (chain and key
// in one file, checked at a time inside the leaf's validity so that the checks past it run too).
// Every failure must be a RedisError; nothing may crash or leak.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPEM(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let source = RedisPEMSource.pem(bytes: bytes, name: "fuzz input")

    var certificates: [RedisCertificate] = []
    do {
        certificates = try RedisCertificate.load(source)
        check(!certificates.isEmpty, "a PEM without certificates loaded")
    } catch {
        check(error.code == .tlsMalformedPEM, "certificates failed with \(error.code), not tlsMalformedPEM")
    }
    for certificate in certificates {
        check(certificate.sha256Fingerprint.utf8.count == 32 * 3 - 1, "a fingerprint that is not 32 hex pairs")
        check(!certificate.description.isEmpty, "a certificate without a description")
        _ = certificate.timeUntilExpiry()
    }

    var keyParsed = false
    do {
        try RedisFuzzing.parsePrivateKey(pem: bytes)
        keyParsed = true
    } catch {
        check(error.code == .tlsMalformedPEM, "the key failed with \(error.code), not tlsMalformedPEM")
    }

    guard let leaf = certificates.first else { return 0 }
    do {
        let context = try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [source]))
        check(
            (1...certificates.count).contains(context.trustAnchors.count),
            "\(certificates.count) certificates gave \(context.trustAnchors.count) trust anchors"
        )
    } catch {
        _ = error.description
    }
    if keyParsed {
        let now = leaf.notBefore.addingTimeInterval(1)
        do {
            let context = try RedisTLSContext(
                configuration: RedisTLSConfiguration(clientIdentity: .combined(source)),
                now: now
            )
            check(context.clientCertificateChain.count == certificates.count, "the client chain lost certificates")
        } catch {
            _ = error.description
        }
    }
    return 0
}

/// A broken invariant is a finding: abort, so that libFuzzer saves the input.
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(message())") }
}

import Catalog
import Foundation
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// What a connection's files hold, read and checked: the TLS configuration and the secrets. Built whole or not at
/// all, so a half-written rotation never replaces material that works.
struct ConnectionMaterial: Sendable {
    var tls: TLSConfiguration
    var token: String?
    var password: String?
    /// The client certificate's end of validity, for `/ready` and the expiry metric.
    var clientCertificateExpires: Date?

    /// A file that cannot be used: the path, why, and the setting that names it.
    struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        var path: String
        var reason: String
        var setting: String
        var description: String { "\(setting) \(path): \(reason)" }
    }

    static func load(_ s: ConnectionSettings, now: Date = Date()) throws(Problem) -> ConnectionMaterial {
        var tls = TLSConfiguration.makeClientConfiguration()
        if s.tls.insecureSkipVerify { tls.certificateVerification = .none }
        var roots: [NIOSSLCertificate] = []
        if let ca = s.tls.caFile { roots += try certificates(ca, setting: "cacert") }
        if let dir = s.tls.caPath {
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted() } catch {
                throw Problem(path: dir, reason: "cannot list the directory: \(reason(error))", setting: "capath")
            }
            for name in names where name.hasSuffix(".pem") || name.hasSuffix(".crt") {
                roots += try certificates(dir + "/" + name, setting: "capath")
            }
            if roots.isEmpty { throw Problem(path: dir, reason: "holds no .pem or .crt certificate", setting: "capath") }
        }
        if !roots.isEmpty { tls.trustRoots = .certificates(roots) }
        var expires: Date? = nil
        if let certFile = s.tls.certFile, let keyFile = s.tls.keyFile {
            let chain = try certificates(certFile, setting: "cert")
            let leaf = chain[0]
            if let outside = outOfValidity(leaf, now: now) { throw Problem(path: certFile, reason: "the certificate \(outside)", setting: "cert") }
            let key: NIOSSLPrivateKey
            do {
                let bytes = try read(keyFile, setting: "key")
                key = try NIOSSLPrivateKey(bytes: Array(bytes), format: .pem)
            } catch let p as Problem { throw p } catch {
                throw Problem(path: keyFile, reason: "no PEM private key in it", setting: "key")
            }
            tls.certificateChain = chain.map { .certificate($0) }
            tls.privateKey = .privateKey(key)
            // BoringSSL refuses a key whose public half is not the certificate's.
            do { _ = try NIOSSLContext(configuration: tls) } catch {
                throw Problem(path: keyFile, reason: "the key does not match the certificate \(certFile)", setting: "key")
            }
            expires = Date(timeIntervalSince1970: TimeInterval(leaf.notValidAfter))
        }
        var material = ConnectionMaterial(tls: tls, clientCertificateExpires: expires)
        material.token = try secret(s.token, setting: s.token.map { _ in "token-file" } ?? "")
        material.password = try secret(s.password, setting: "password-file")
        return material
    }

    private static func secret(_ secret: Secret?, setting: String) throws(Problem) -> String? {
        switch secret {
        case nil: return nil
        case .inline(let value, _): return value
        case .file(let path):
            // Trimmed as Consul's client trims a token file; a password keeps inner spaces, loses its newline.
            let text = String(decoding: try read(path, setting: setting), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if text.isEmpty { throw Problem(path: path, reason: "the file is empty", setting: setting) }
            return text
        }
    }

    private static func certificates(_ path: String, setting: String) throws(Problem) -> [NIOSSLCertificate] {
        let bytes = try read(path, setting: setting)
        let certs = (try? NIOSSLCertificate.fromPEMBytes(Array(bytes))) ?? []
        if certs.isEmpty { throw Problem(path: path, reason: "no PEM certificate in it", setting: setting) }
        return certs
    }

    private static func read(_ path: String, setting: String) throws(Problem) -> Data {
        do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw Problem(path: path, reason: "cannot read it: \(reason(error))", setting: setting)
        }
    }

    private static func reason(_ error: any Error) -> String {
        if let posix = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(posix.code)))
        }
        let ns = error as NSError
        if ns.domain == NSCocoaErrorDomain {
            switch ns.code {
            case NSFileReadNoSuchFileError: return "no such file"
            case NSFileReadNoPermissionError: return "permission denied"
            default: break
            }
        }
        return ns.localizedDescription
    }

    static func iso(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }

    /// "expired at …" or "is not valid until …" for a certificate outside its validity at `now`; nil inside it.
    static func outOfValidity(_ cert: NIOSSLCertificate, now: Date) -> String? {
        let notAfter = Date(timeIntervalSince1970: TimeInterval(cert.notValidAfter))
        let notBefore = Date(timeIntervalSince1970: TimeInterval(cert.notValidBefore))
        if notAfter < now { return "expired at \(iso(notAfter))" }
        if notBefore > now { return "is not valid until \(iso(notBefore))" }
        return nil
    }
}

/// The state of a connection's files, to notice a rotation: each file's inode, size and modification time to the
/// nanosecond (a token of the same length rewritten within a second still differs), and a CA directory's listing.
struct MaterialFingerprint: Equatable, Sendable {
    private var entries: [String: [Int64]] = [:]

    init(_ s: ConnectionSettings) {
        var paths = s.files
        if let dir = s.tls.caPath {
            paths.append(dir)
            paths += ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted().map { dir + "/" + $0 }
        }
        for path in paths {
            var st = stat()
            entries[path] = stat(path, &st) == 0
                ? [Int64(st.st_ino), Int64(st.st_size), Int64(st.st_mtim.tv_sec), Int64(st.st_mtim.tv_nsec)] : []
        }
    }
}

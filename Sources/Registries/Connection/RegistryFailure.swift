import Catalog
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

/// Why a registry could not be read, in words that name the endpoint, what failed and the setting that fixes it.
/// Callers match on `kind`; `reason` is its metric label.
public struct RegistryFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        private let code: String
        private init(_ code: String) { self.code = code }
        /// The metric label (`signpost_registry_errors_total{reason}`).
        public var reason: String { code }
        public var description: String { code }

        public static let connectionRefused = Kind("connection_refused")
        public static let timeout = Kind("timeout")
        public static let unreachable = Kind("unreachable")
        public static let unknownCA = Kind("unknown_ca")
        public static let nameMismatch = Kind("name_mismatch")
        public static let expiredCertificate = Kind("expired_certificate")
        public static let clientCertificateRequired = Kind("client_certificate_required")
        public static let clientCertificateRefused = Kind("client_certificate_refused")
        public static let notTLS = Kind("not_tls")
        public static let tls = Kind("tls")
        public static let badCredentials = Kind("bad_credentials")
        /// etcd's token expired or was revoked: log in again and go on, no failure.
        public static let tokenExpired = Kind("token_expired")
        public static let permissionDenied = Kind("permission_denied")
        /// A user was given to an etcd without authentication: go on without a token.
        public static let authNotEnabled = Kind("auth_not_enabled")
        public static let aclNotFound = Kind("acl_token_not_found")
        public static let notJSON = Kind("not_json")
        public static let badResponse = Kind("bad_response")
        public static let tooLarge = Kind("too_large")
        public static let httpStatus = Kind("http_status")
        /// A certificate, key, CA, token or password file that cannot be used.
        public static let material = Kind("material")
        public static let other = Kind("other")
    }

    public var kind: Kind
    public var endpoint: String
    /// What failed, e.g. "/v1/catalog/services returned HTML, not JSON".
    public var detail: String
    /// The setting that fixes it, when one does.
    public var fix: String?

    public init(_ kind: Kind, endpoint: String, _ detail: String, fix: String? = nil) {
        self.kind = kind
        self.endpoint = endpoint
        self.detail = detail
        self.fix = fix
    }

    public var description: String {
        "\(endpoint): \(detail)" + (fix.map { "; \($0)" } ?? "")
    }
}

extension RegistryFailure {
    /// An error from the HTTP client, a TLS handshake or the network, classified; `settings` name the fixes.
    /// A certificate the server presented that did not verify is diagnosed further by `TLSProbe`.
    static func classify(_ error: any Error, endpoint: String, settings: ConnectionSettings) -> RegistryFailure {
        if let failure = error as? RegistryFailure { return failure }
        let text = String(describing: error)
        let caSetting = settings.tls.caFile.map { "cacert=\($0)" } ?? settings.tls.caPath.map { "capath=\($0)" } ?? "the system roots"
        if let ssl = error as? NIOSSLExtraError, ssl == .failedToValidateHostname {
            let host = settings.tls.serverName ?? Self.host(of: endpoint)
            return .init(.nameMismatch, endpoint: endpoint, "the server's certificate is not valid for \"\(host)\"",
                         fix: "connect by a name the certificate holds, or set server-name= (CONSUL_TLS_SERVER_NAME) to one it holds")
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return .init(.unknownCA, endpoint: endpoint, "the server's certificate is not signed by a CA in \(caSetting)",
                         fix: "set cacert= (ETCDCTL_CACERT, CONSUL_CACERT) to the CA that signed it")
        }
        if text.contains("CERTIFICATE_REQUIRED") || (text.contains("HANDSHAKE_FAILURE") && settings.tls.certFile == nil) {
            return .init(.clientCertificateRequired, endpoint: endpoint, "the server requires a client certificate and none was sent",
                         fix: "set cert= and key= (ETCDCTL_CERT/ETCDCTL_KEY, CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)")
        }
        if text.contains("BAD_CERTIFICATE") || text.contains("UNKNOWN_CA") || text.contains("CERTIFICATE_EXPIRED")
            || text.contains("CERTIFICATE_UNKNOWN") || (text.contains("HANDSHAKE_FAILURE") && settings.tls.certFile != nil) {
            return .init(.clientCertificateRefused, endpoint: endpoint,
                         "the server refused the client certificate \(settings.tls.certFile ?? "") (not issued by a CA it trusts, or expired)",
                         fix: "replace cert= and key= with a pair its trusted CA issued")
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") {
            return .init(.notTLS, endpoint: endpoint, "the server does not speak TLS on this port",
                         fix: "use http:// for this endpoint, or enable TLS on the server")
        }
        if error is NIOSSLError || error is BoringSSLError || text.contains("SSL") {
            return .init(.tls, endpoint: endpoint, "TLS failed: \(text)")
        }
        if let connect = error as? NIOConnectionError {
            let refused = connect.connectionErrors.contains { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
            return refused ? .init(.connectionRefused, endpoint: endpoint, "connection refused")
                           : .init(.unreachable, endpoint: endpoint, "cannot connect: \(text)")
        }
        if let io = error as? IOError, io.errnoCode == ECONNREFUSED || io.errnoCode == ENOENT {
            return .init(.connectionRefused, endpoint: endpoint, io.errnoCode == ENOENT ? "no socket at this path" : "connection refused")
        }
        if let http = error as? HTTPClientError {
            switch http {
            case .connectTimeout, .deadlineExceeded, .readTimeout, .writeTimeout:
                return .init(.timeout, endpoint: endpoint, "timed out (\(http))")
            case .remoteConnectionClosed:
                // A server that wants a client certificate closes a TLS 1.3 connection after the handshake.
                return .init(.unreachable, endpoint: endpoint, "the server closed the connection"
                             + (settings.tls.certFile == nil && endpoint.hasPrefix("https") ? " (does it require a client certificate? set cert= and key=)" : ""))
            default:
                return .init(.unreachable, endpoint: endpoint, "\(http)")
            }
        }
        if text.contains("ECONNREFUSED") || text.contains("Connection refused") {
            return .init(.connectionRefused, endpoint: endpoint, "connection refused")
        }
        return .init(.other, endpoint: endpoint, text)
    }

    /// A non-200 answer, from its status and body: etcd's gateway and Consul both say what is wrong in it.
    static func status(_ code: UInt, body: ByteBuffer, path: String, endpoint: String, registry: ConnectionOption.Registry) -> RegistryFailure {
        let text = String(decoding: body.readableBytesView.prefix(512), as: UTF8.self)
        let message = Self.errorMessage(text) ?? text.trimmingCharacters(in: .whitespacesAndNewlines)
        return status(code, message: message, path: path, endpoint: endpoint, registry: registry)
    }

    /// A failure from an HTTP status and the registry's message (etcd's watch stream carries both in its body).
    static func status(_ code: UInt, message: String, path: String, endpoint: String, registry: ConnectionOption.Registry) -> RegistryFailure {
        switch (registry, code) {
        case (.etcd, 401) where message.contains("invalid auth token"):
            return .init(.tokenExpired, endpoint: endpoint, "\(path): the etcd token is no longer valid")
        case (.etcd, 400) where message.contains("revision of auth store is old"):
            return .init(.tokenExpired, endpoint: endpoint, "\(path): etcd's users or roles changed since the token was issued")
        case (.etcd, 400) where message.contains("invalid user ID or password"):
            return .init(.badCredentials, endpoint: endpoint, "etcd refused the user name or password",
                         fix: "check user= and password-file= (ETCDCTL_USER)")
        case (.etcd, 400) where message.contains("CommonName of client"):
            // etcd's gateway calls etcd over a connection of its own, so a client certificate's CN cannot be the user.
            return .init(.badCredentials, endpoint: endpoint,
                         "etcd takes users from client certificates, which its JSON gateway cannot pass on (\"\(message.prefix(120))\")",
                         fix: "give Signpost an etcd user as well: user= and password-file= (ETCDCTL_USER)")
        case (.etcd, 400) where message.contains("user name is empty"):
            return .init(.badCredentials, endpoint: endpoint, "etcd has authentication enabled and no user was given",
                         fix: "set user= and password-file= (ETCDCTL_USER=NAME:PASSWORD)")
        case (.etcd, _) where message.contains("authentication is not enabled"):
            return .init(.authNotEnabled, endpoint: endpoint, "etcd has authentication off; the user is not needed")
        case (.etcd, 403):
            return .init(.permissionDenied, endpoint: endpoint, "\(path): permission denied",
                         fix: "grant the user's role read on the watched prefix (etcdctl role grant-permission ROLE read PREFIX --prefix=true)")
        case (.consul, 403) where message.contains("ACL not found"):
            return .init(.aclNotFound, endpoint: endpoint, "\(path): Consul does not know the ACL token",
                         fix: "set token-file= (CONSUL_HTTP_TOKEN_FILE) to a token Consul has")
        case (.consul, 403):
            return .init(.permissionDenied, endpoint: endpoint, "\(path): permission denied (\(message.prefix(200)))",
                         fix: "grant the token what Consul names there (Signpost reads with service:read, node:read, and agent:read for its datacenter)")
        case (.consul, 401):
            return .init(.badCredentials, endpoint: endpoint, "\(path): HTTP 401 \(message.prefix(200))",
                         fix: "check http-auth= (CONSUL_HTTP_AUTH)")
        default:
            return .init(.httpStatus, endpoint: endpoint, "\(path) returned HTTP \(code): \(message.prefix(200))")
        }
    }

    /// `message` or `error` of a JSON error body (etcd's gateway), else nil.
    private static func errorMessage(_ text: String) -> String? {
        struct Body: Decodable { var message: String?; var error: String? }
        guard let body = try? JSONDecoder().decode(Body.self, from: Data(text.utf8)) else { return nil }
        return body.message ?? body.error
    }

    static func host(of endpoint: String) -> String {
        var rest = Substring(endpoint)
        if let s = rest.range(of: "://") { rest = rest[s.upperBound...] }
        if rest.hasPrefix("[") { return String(rest.dropFirst().prefix { $0 != "]" }) }
        return String(rest.prefix { $0 != ":" && $0 != "/" })
    }
}

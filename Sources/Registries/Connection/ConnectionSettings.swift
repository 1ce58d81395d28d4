/// A password or token. Given inline (on the command line, where `/proc/PID/cmdline` shows it to every user on the
/// host) or in a file, which is read again when it changes. Its description never holds the value.
public enum Secret: Sendable, Equatable, CustomStringConvertible {
    /// `commandLine`: given in `--registry`, not in the environment.
    case inline(String, commandLine: Bool)
    case file(String)

    public var description: String {
        switch self {
        case .inline: return "(given inline)"
        case .file(let path): return "file \(path)"
        }
    }

    var onCommandLine: Bool { if case .inline(_, true) = self { return true } else { return false } }
}

/// How to reach a registry's API: its endpoints, TLS and credentials. Both registries take these through the same
/// URL options, each also reading the environment its official client reads (`ConnectionOption.table`).
public struct ConnectionSettings: Sendable, Equatable {
    /// `http://HOST:PORT`, `https://HOST:PORT` or `unix:///PATH`; several etcd endpoints fail over in turn.
    public var endpoints: [String]
    public var tls = TLSSettings()
    /// Consul's ACL token (`X-Consul-Token`).
    public var token: Secret? = nil
    /// An etcd user, or Consul's HTTP basic auth (`CONSUL_HTTP_AUTH`).
    public var user: String? = nil
    public var password: Secret? = nil
    /// The largest response body read; a larger one is refused before it is held in memory.
    public var maxResponseBytes = ConnectionSettings.defaultMaxResponseBytes

    /// 11 MB holds Consul's every check at 50,000 instances; four times a 100,000-instance catalog, with room.
    public static let defaultMaxResponseBytes = 96 << 20

    public init(endpoints: [String]) { self.endpoints = endpoints }

    /// The files the connection reads: certificates, key, CA and secrets, read again when any of them changes.
    public var files: [String] {
        var out = [tls.caFile, tls.certFile, tls.keyFile].compactMap { $0 }
        if case .file(let p) = token { out.append(p) }
        if case .file(let p) = password { out.append(p) }
        return out
    }

    /// Warnings to give at start-up and on `/ready`: verification turned off, secrets in the process's arguments.
    public var warnings: [String] {
        var out: [String] = []
        if !tls.isEmpty, !endpoints.contains(where: { $0.hasPrefix("https://") }) {
            out.append("TLS settings are given but no endpoint is https://; they are not used")
        }
        if tls.insecureSkipVerify {
            out.append("TLS verification is off (insecure-skip-verify): anyone on the path can impersonate the registry")
        }
        for (name, secret, fix) in [("token", token, "token-file= or CONSUL_HTTP_TOKEN_FILE"), ("password", password, "password-file= (etcd) or CONSUL_HTTP_AUTH (Consul)")]
        where secret?.onCommandLine == true {
            out.append("the \(name) is given on the command line, where /proc/PID/cmdline shows it to every user on the host; use \(fix)")
        }
        return out
    }
}

public struct TLSSettings: Sendable, Equatable {
    /// PEM CA bundle that replaces the system roots.
    public var caFile: String? = nil
    /// A directory of PEM CA certificates (Consul's `CONSUL_CAPATH`).
    public var caPath: String? = nil
    /// PEM client certificate (chain) and its key.
    public var certFile: String? = nil
    public var keyFile: String? = nil
    /// The name the server's certificate must carry, when it is not the endpoint's host.
    public var serverName: String? = nil
    public var insecureSkipVerify = false

    public init() {}

    /// Whether any TLS setting was given.
    var isEmpty: Bool { self == TLSSettings() }
}

/// One connection setting: its URL option and the environment variable the official client reads for it.
public struct ConnectionOption: Sendable {
    public enum Registry: Sendable, Hashable { case etcd, consul }
    public let option: String
    /// etcdctl's environment variable (and flag), if it has one.
    public let etcd: String?
    /// Consul's client environment variable, if it has one.
    public let consul: String?
    /// The registries that take it.
    public let scope: Set<Registry>
    let apply: @Sendable (inout ConnectionSettings, String, _ inline: Bool) throws(RegistrySpec.Invalid) -> Void

    /// Every connection setting, in one place: the parser reads it, and the README's table lists it.
    public static let table: [ConnectionOption] = [
        .init("cacert", etcd: "ETCDCTL_CACERT", consul: "CONSUL_CACERT") { s, v, _ in s.tls.caFile = v },
        .init("capath", etcd: nil, consul: "CONSUL_CAPATH") { s, v, _ in s.tls.caPath = v },
        .init("cert", etcd: "ETCDCTL_CERT", consul: "CONSUL_CLIENT_CERT") { s, v, _ in s.tls.certFile = v },
        .init("key", etcd: "ETCDCTL_KEY", consul: "CONSUL_CLIENT_KEY") { s, v, _ in s.tls.keyFile = v },
        .init("server-name", etcd: nil, consul: "CONSUL_TLS_SERVER_NAME") { s, v, _ in s.tls.serverName = v },
        .init("insecure-skip-verify", etcd: "ETCDCTL_INSECURE_SKIP_TLS_VERIFY", consul: nil) { s, v, _ throws(RegistrySpec.Invalid) in
            s.tls.insecureSkipVerify = try parseBool(v, "insecure-skip-verify")
        },
        // Consul's client spells the opposite: CONSUL_HTTP_SSL_VERIFY=false turns verification off.
        .init("ssl-verify", etcd: nil, consul: "CONSUL_HTTP_SSL_VERIFY", only: .consul) { s, v, _ throws(RegistrySpec.Invalid) in
            s.tls.insecureSkipVerify = try !parseBool(v, "CONSUL_HTTP_SSL_VERIFY")
        },
        // etcdctl's --user takes NAME or NAME:PASSWORD.
        .init("user", etcd: "ETCDCTL_USER", consul: nil, only: .etcd) { s, v, inline in
            guard let colon = v.firstIndex(of: ":") else { s.user = v; return }
            s.user = String(v[..<colon])
            s.password = .inline(String(v[v.index(after: colon)...]), commandLine: inline)
        },
        .init("password", etcd: "ETCDCTL_PASSWORD", consul: nil, only: .etcd) { s, v, inline in s.password = .inline(v, commandLine: inline) },
        .init("password-file", etcd: nil, consul: nil, only: .etcd) { s, v, _ in s.password = .file(v) },
        // Consul's CONSUL_HTTP_AUTH is USER[:PASSWORD], sent as HTTP basic auth.
        .init("http-auth", etcd: nil, consul: "CONSUL_HTTP_AUTH", only: .consul) { s, v, inline in
            let parts = v.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            s.user = String(parts[0])
            s.password = parts.count > 1 ? .inline(String(parts[1]), commandLine: inline) : nil
        },
        // After `token`: a token file wins over a token, as in Consul's client.
        .init("token", etcd: nil, consul: "CONSUL_HTTP_TOKEN", only: .consul) { s, v, inline in s.token = .inline(v, commandLine: inline) },
        .init("token-file", etcd: nil, consul: "CONSUL_HTTP_TOKEN_FILE", only: .consul) { s, v, _ in s.token = .file(v) },
        .init("max-response", etcd: nil, consul: nil) { s, v, _ throws(RegistrySpec.Invalid) in
            guard let n = parseSize(v), n >= 1 << 16 else {
                throw RegistrySpec.Invalid(description: "max-response must be a size of at least 64KB (e.g. 96MB), not \"\(v)\"")
            }
            s.maxResponseBytes = n
        },
    ]

    init(_ option: String, etcd: String?, consul: String?, only: Registry? = nil,
         _ apply: @escaping @Sendable (inout ConnectionSettings, String, Bool) throws(RegistrySpec.Invalid) -> Void) {
        self.option = option
        self.etcd = etcd
        self.consul = consul
        self.scope = only.map { [$0] } ?? [.etcd, .consul]
        self.apply = apply
    }

    /// The connection options of a registry URL, over the environment its official client reads. The environment
    /// is applied first and the URL over it, so per setting the URL wins; within each, the table's order makes a
    /// token file win over a token. Options the table does not know are left for the caller.
    static func apply(to settings: inout ConnectionSettings, registry: Registry, options: [String: String],
                      environment: [String: String]) throws(RegistrySpec.Invalid) {
        for entry in table where entry.scope.contains(registry) {
            guard let name = registry == .etcd ? entry.etcd : entry.consul, let value = environment[name], !value.isEmpty else { continue }
            try entry.apply(&settings, value, false)
        }
        for entry in table where entry.scope.contains(registry) {
            guard let value = options[entry.option] else { continue }
            try entry.apply(&settings, value, true)
        }
    }

    static func parseBool(_ v: String, _ name: String) throws(RegistrySpec.Invalid) -> Bool {
        // Go's strconv.ParseBool, which both official clients use; an empty URL value means true.
        switch v {
        case "", "1", "t", "T", "TRUE", "true", "True": return true
        case "0", "f", "F", "FALSE", "false", "False": return false
        default: throw RegistrySpec.Invalid(description: "\(name) must be true or false, not \"\(v)\"")
        }
    }

    /// `96MB`, `512KB`, `1GB` or a byte count.
    static func parseSize(_ v: String) -> Int? {
        let units: [(String, Int)] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)]
        for (suffix, scale) in units where v.uppercased().hasSuffix(suffix) {
            return Int(v.dropLast(suffix.count)).flatMap { $0 <= Int.max / scale ? $0 * scale : nil }
        }
        return Int(v)
    }
}

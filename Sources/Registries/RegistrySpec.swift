import Catalog
/// A `--registry` URL.
/// - `file:DIR`: catalog files (`--catalog DIR` is the short form).
/// - `etcd:http://HOST:PORT[,https://HOST2:PORT…][?prefix=/services/[,/micro/registry/…]]`; `?prefix=` (empty) is the
///   whole keyspace. Each prefix is watched on its own (`watchers`).
/// - `consul:http://HOST:PORT[?dc=dc1&stale=false&wait=5m]`, `consul:https://…` or `consul:unix:///PATH`; a bare
///   `consul:` is `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`, as Consul's client has it. Reads are stale by
///   default, as Consul's DNS reads (`allow_stale`); `?stale` alone or `?stale=true` keep that, `?stale=false` asks
///   the leader. `wait` is each blocking query's `?wait=` (Consul's default, 5m, when absent; Consul caps it at 10m).
/// Both take the connection options of `ConnectionOption.table` (TLS, credentials), each also read from the
/// environment the registry's own client reads; the URL wins.
public enum RegistrySpec: Sendable, Equatable, CustomStringConvertible {
    case file(directory: String)
    case etcd(connection: ConnectionSettings, prefixes: [String])
    case consul(connection: ConnectionSettings, datacenter: String?, stale: Bool, wait: Duration? = nil)

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public init(parsing given: String, environment: [String: String] = [:]) throws(Invalid) {
        // Every message quotes the URL with its secrets masked.
        let text = Self.masked(given)
        guard let colon = text.firstIndex(of: ":") else {
            throw Invalid(description: "invalid --registry \"\(text)\": expected file:DIR, etcd:http://HOST:PORT or consul:http://HOST:PORT")
        }
        let scheme = given[..<colon].lowercased()
        let rest = String(given[given.index(after: colon)...])
        let (base, query) = Self.splitQuery(rest)
        switch scheme {
        case "file":
            guard !rest.isEmpty else { throw Invalid(description: "invalid --registry \"\(text)\": missing directory") }
            self = .file(directory: rest)
        case "etcd":
            let endpoints = base.split(separator: ",").map { String($0.hasSuffix("/") ? $0.dropLast() : $0) }
            guard !endpoints.isEmpty else { throw Invalid(description: "invalid --registry \"\(text)\": no endpoints") }
            for e in endpoints { try Self.checkURL(e, in: text) }
            let settings = try Self.connection(endpoints, .etcd, own: ["prefix"], query: query, environment: environment, in: text)
            // Empty stays empty (the whole keyspace); anything else names a directory.
            let prefixes = (query["prefix"] ?? "/services/").split(separator: ",", omittingEmptySubsequences: false).map { p in
                p.isEmpty || p.hasSuffix("/") ? String(p) : p + "/"
            }
            self = .etcd(connection: settings, prefixes: Array(Set(prefixes)).sorted())
        case "consul":
            var address = base.hasSuffix("/") ? String(base.dropLast()) : base
            if address.isEmpty { address = Self.consulAddress(environment) }
            try Self.checkURL(address, unix: true, in: text)
            var wait: Duration? = nil
            if let given = query["wait"] {
                guard let d = GoDuration.parse(given), d > .zero, d <= .seconds(600) else {
                    throw Invalid(description: "invalid --registry \"\(text)\": wait must be a duration up to 10m")
                }
                wait = d
            }
            let settings = try Self.connection([address], .consul, own: ["dc", "stale", "wait"], query: query, environment: environment, in: text)
            let stale = query["stale"].map { $0 != "false" } ?? true
            self = .consul(connection: settings, datacenter: query["dc"], stale: stale, wait: wait)
        default:
            throw Invalid(description: "invalid --registry \"\(text)\": unknown kind \"\(scheme)\" (file, etcd or consul)")
        }
    }

    /// An endpoint URL of a scheme the registry speaks, without credentials in it. `text` is the masked --registry.
    private static func checkURL(_ url: String, unix: Bool = false, in text: String) throws(Invalid) {
        let schemes = unix ? ["http://", "https://", "unix://"] : ["http://", "https://"]
        guard let s = schemes.first(where: { url.hasPrefix($0) }), url.count > s.count else {
            throw Invalid(description: "invalid --registry \"\(text)\": \"\(Self.masked(url))\" is not an \(unix ? "http://, https:// or unix://" : "http:// or https://") URL")
        }
        if s != "unix://", url.dropFirst(s.count).prefix(while: { $0 != "/" }).contains("@") {
            throw Invalid(description: "invalid --registry \"\(text)\": credentials go in user= and password-file= (etcd) or token-file= (Consul), not in the URL")
        }
    }

    /// The connection options of `query` for `registry` (besides its `own`), checked together.
    private static func connection(_ endpoints: [String], _ registry: ConnectionOption.Registry, own: Set<String>, query: [String: String],
                                   environment: [String: String], in text: String) throws(Invalid) -> ConnectionSettings {
        let known = Set(ConnectionOption.table.filter { $0.scope.contains(registry) }.map(\.option))
        for key in query.keys where !own.contains(key) && !known.contains(key) {
            throw Invalid(description: "invalid --registry \"\(text)\": unknown option \"\(key)\"")
        }
        var settings = ConnectionSettings(endpoints: endpoints)
        do { try ConnectionOption.apply(to: &settings, registry: registry, options: query, environment: environment) } catch {
            throw Invalid(description: "invalid --registry \"\(text)\": \(error.description)")
        }
        if (settings.user == nil) != (settings.password == nil), registry == .etcd {
            throw Invalid(description: "invalid --registry \"\(text)\": an etcd user needs a password (password-file=, or ETCDCTL_USER=NAME:PASSWORD), and a password a user")
        }
        if (settings.tls.certFile == nil) != (settings.tls.keyFile == nil) {
            throw Invalid(description: "invalid --registry \"\(text)\": a client certificate needs its key (cert= and key= together)")
        }
        return settings
    }

    /// `text` with the value of every secret option masked, and any `user:password@` in an endpoint.
    static func masked(_ text: String) -> String {
        var out = text.replacingOccurrences(of: #"://[^/@?,]*@"#, with: "://***@", options: .regularExpression)
        for key in ["token", "password", "http-auth", "user"] {
            // user= and http-auth= keep the name, mask what follows its colon.
            let keep = key == "user" || key == "http-auth" ? #"([^&:]*):[^&]*"# : #"[^&]*"#
            let replacement = key == "user" || key == "http-auth" ? "$1$2:***" : "$1***"
            out = out.replacingOccurrences(of: #"([?&]"# + key + #"=)"# + keep, with: replacement, options: .regularExpression)
        }
        return out
    }

    /// `CONSUL_HTTP_ADDR` as Consul's client reads it: `unix://PATH`, a URL, or HOST:PORT (https when
    /// `CONSUL_HTTP_SSL` is true); `http://127.0.0.1:8500` when unset.
    static func consulAddress(_ environment: [String: String]) -> String {
        guard let addr = environment["CONSUL_HTTP_ADDR"], !addr.isEmpty else { return "http://127.0.0.1:8500" }
        if addr.hasPrefix("unix://") || addr.hasPrefix("http://") || addr.hasPrefix("https://") { return addr }
        let ssl = (try? ConnectionOption.parseBool(environment["CONSUL_HTTP_SSL"] ?? "false", "CONSUL_HTTP_SSL")) ?? false
        return (ssl ? "https://" : "http://") + addr
    }

    /// One spec per watcher: an etcd registry with several prefixes watches each on its own, as its own source.
    public var watchers: [RegistrySpec] {
        guard case .etcd(let connection, let prefixes) = self, prefixes.count > 1 else { return [self] }
        return prefixes.map { .etcd(connection: connection, prefixes: [$0]) }
    }

    static func splitQuery(_ text: String) -> (String, [String: String]) {
        guard let q = text.firstIndex(of: "?") else { return (text, [:]) }
        var out: [String: String] = [:]
        for pair in text[text.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            out[String(kv[0])] = kv.count > 1 ? String(kv[1]).removingPercentEncodingIfPossible : ""
        }
        return (String(text[..<q]), out)
    }

    /// The registry as logs, `/ready` and state-file names show it: endpoints, prefix and datacenter, never a
    /// credential.
    public var description: String {
        switch self {
        case .file(let d): return "file:\(d)"
        case .etcd(let c, let p): return "etcd:\(c.endpoints.joined(separator: ","))?prefix=\(p.joined(separator: ","))"
        case .consul(let c, let dc, _, _): return "consul:\(c.endpoints[0])" + (dc.map { "?dc=\($0)" } ?? "")
        }
    }

    /// The connection settings of an etcd or Consul registry.
    public var connection: ConnectionSettings? {
        switch self {
        case .file: return nil
        case .etcd(let c, _), .consul(let c, _, _, _): return c
        }
    }
}

extension String {
    /// `%2F` → `/` for query values; the text unchanged when it is not valid percent-encoding.
    var removingPercentEncodingIfPossible: String {
        var out: [UInt8] = []
        var bytes = Array(utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

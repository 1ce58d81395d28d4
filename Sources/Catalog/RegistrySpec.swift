/// A `--registry` URL.
/// - `file:DIR`: catalog files (`--catalog DIR` is the short form).
/// - `etcd:http://HOST:PORT[,http://HOST2:PORT…][?prefix=/services/[,/micro/registry/…]]`; `?prefix=` (empty) is the
///   whole keyspace. Each prefix is watched on its own (`watchers`).
/// - `consul:http://HOST:PORT[?dc=dc1&token=…&stale=false&wait=5m]`; the token may also come from
///   `CONSUL_HTTP_TOKEN`. Reads are stale by default, as Consul's DNS reads (`allow_stale`); `?stale` alone or
///   `?stale=true` keep that, `?stale=false` asks the leader. `wait` is each blocking query's `?wait=` (Consul's
///   default, 5m, when absent; Consul caps it at 10m).
public enum RegistrySpec: Sendable, Equatable, CustomStringConvertible {
    case file(directory: String)
    case etcd(endpoints: [String], prefixes: [String])
    case consul(address: String, datacenter: String?, token: String?, stale: Bool, wait: Duration? = nil)

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public init(parsing text: String, environment: [String: String] = [:]) throws(Invalid) {
        guard let colon = text.firstIndex(of: ":") else {
            throw Invalid(description: "invalid --registry \"\(text)\": expected file:DIR, etcd:http://HOST:PORT or consul:http://HOST:PORT")
        }
        let scheme = text[..<colon].lowercased()
        let rest = String(text[text.index(after: colon)...])
        let (base, query) = Self.splitQuery(rest)
        func checkURL(_ url: String) throws(Invalid) {
            guard url.hasPrefix("http://") || url.hasPrefix("https://"), url.count > "http://".count else {
                throw Invalid(description: "invalid --registry \"\(text)\": \"\(url)\" is not an http:// or https:// URL")
            }
        }
        switch scheme {
        case "file":
            guard !rest.isEmpty else { throw Invalid(description: "invalid --registry \"\(text)\": missing directory") }
            self = .file(directory: rest)
        case "etcd":
            let endpoints = base.split(separator: ",").map { String($0.hasSuffix("/") ? $0.dropLast() : $0) }
            guard !endpoints.isEmpty else { throw Invalid(description: "invalid --registry \"\(text)\": no endpoints") }
            for e in endpoints { try checkURL(e) }
            for key in query.keys where key != "prefix" {
                throw Invalid(description: "invalid --registry \"\(text)\": unknown option \"\(key)\"")
            }
            // Empty stays empty (the whole keyspace); anything else names a directory.
            let prefixes = (query["prefix"] ?? "/services/").split(separator: ",", omittingEmptySubsequences: false).map { p in
                p.isEmpty || p.hasSuffix("/") ? String(p) : p + "/"
            }
            self = .etcd(endpoints: endpoints, prefixes: Array(Set(prefixes)).sorted())
        case "consul":
            let address = base.hasSuffix("/") ? String(base.dropLast()) : base
            try checkURL(address)
            for key in query.keys where !["dc", "token", "stale", "wait"].contains(key) {
                throw Invalid(description: "invalid --registry \"\(text)\": unknown option \"\(key)\"")
            }
            var wait: Duration? = nil
            if let given = query["wait"] {
                guard let d = GoDuration.parse(given), d > .zero, d <= .seconds(600) else {
                    throw Invalid(description: "invalid --registry \"\(text)\": wait must be a duration up to 10m")
                }
                wait = d
            }
            let token = query["token"] ?? environment["CONSUL_HTTP_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
            let stale = query["stale"].map { $0 != "false" } ?? true
            self = .consul(address: address, datacenter: query["dc"], token: token, stale: stale, wait: wait)
        default:
            throw Invalid(description: "invalid --registry \"\(text)\": unknown kind \"\(scheme)\" (file, etcd or consul)")
        }
    }

    /// One spec per watcher: an etcd registry with several prefixes watches each on its own, as its own source.
    public var watchers: [RegistrySpec] {
        guard case .etcd(let endpoints, let prefixes) = self, prefixes.count > 1 else { return [self] }
        return prefixes.map { .etcd(endpoints: endpoints, prefixes: [$0]) }
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

    public var description: String {
        switch self {
        case .file(let d): return "file:\(d)"
        case .etcd(let e, let p): return "etcd:\(e.joined(separator: ","))?prefix=\(p.joined(separator: ","))"
        case .consul(let a, let dc, _, _, _): return "consul:\(a)" + (dc.map { "?dc=\($0)" } ?? "")
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

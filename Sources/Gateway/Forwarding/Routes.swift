import Catalog
import DNSWire

/// Where a name outside the served domains and the zone files goes when forwarding is on: split DNS
/// (`--forward-zone`, as dnsmasq's `server=/domain/ip`, Unbound's `forward-zone` and CoreDNS's `forward FROM`) and the
/// zones a resolver answers itself (`LocalZones`: RFC 6303, RFC 6761). The most specific zone holding the name
/// decides, and a `--forward-zone` beats a local zone of the same name; a name no zone holds goes to `--upstream`.
/// The one rule: the general path, the cache's fast path and `explain` all ask `route(for:)`.
public struct ForwardRoutes: Sendable, Equatable {
    public enum Route: Sendable, Equatable {
        /// `--forward-zone ZONE=UPSTREAM,…`: to the zone's own upstreams (`Forwarder.Configuration.zones`).
        case forward(zone: DNSName)
        /// `--forward-zone ZONE=none`: REFUSED, and never forwarded.
        case refuse(zone: DNSName)
        /// A locally served zone: answered from its `Zone`, and never forwarded.
        case local(Zone)

        public var zone: DNSName {
            switch self {
            case .forward(let z), .refuse(let z): return z
            case .local(let z): return z.origin
            }
        }

        public static func == (a: Route, b: Route) -> Bool {
            switch (a, b) {
            case (.forward(let x), .forward(let y)), (.refuse(let x), .refuse(let y)): return x == y
            case (.local(let x), .local(let y)): return x.origin == y.origin
            default: return false
            }
        }
    }

    /// By zone name (lower-cased).
    private let routes: [DNSName: Route]
    /// The last label of every zone (lower-cased): a name ending in another is looked up no further, so a name in
    /// `com` or `org` costs the cache's fast path no allocation.
    private let lastLabels: [[UInt8]]

    /// `forwardZones`: each `--forward-zone`, refused (`none`) or not; `localZones`: whether the local zones are
    /// served (`--no-local-zones` turns them off).
    public init(forwardZones: [(zone: DNSName, refuse: Bool)] = [], localZones: Bool = false) {
        var routes: [DNSName: Route] = [:]
        if localZones { for zone in LocalZones.all { routes[zone.origin.lowercased] = .local(zone) } }
        for (zone, refuse) in forwardZones { routes[zone.lowercased] = refuse ? .refuse(zone: zone.lowercased) : .forward(zone: zone.lowercased) }
        self.routes = routes
        lastLabels = Array(Set(routes.keys.compactMap { $0.labels.last.map(Array.init) }))
    }

    public var isEmpty: Bool { routes.isEmpty }

    /// The route of the most specific zone holding `name`; nil for the default upstreams.
    public func route(for name: DNSName) -> Route? {
        guard !routes.isEmpty, Self.lastLabel(of: name.wire, isOneOf: lastLabels) else { return nil }
        var n: DNSName? = name.lowercased
        while let candidate = n {
            if let r = routes[candidate] { return r }
            n = candidate.parent
        }
        return nil
    }

    /// Whether the name's last label (ASCII case ignored) is one of `labels` (lower-cased); reads in place.
    static func lastLabel(of wire: [UInt8], isOneOf labels: [[UInt8]]) -> Bool {
        var p = 0, last = 0
        while p < wire.count, wire[p] != 0 { last = p; p += Int(wire[p]) + 1 }
        guard p > 0 else { return labels.contains { $0.isEmpty } }
        let length = Int(wire[last])
        return labels.contains { label in
            label.count == length && (0..<length).allSatisfy { asciiLower(wire[last + 1 + $0]) == label[$0] }
        }
    }

    public static func == (a: ForwardRoutes, b: ForwardRoutes) -> Bool {
        a.routes.count == b.routes.count && a.routes.allSatisfy { b.routes[$0.key] == $0.value }
    }
}

/// The zones a resolver answers itself, so that none of their queries leaves the host: Unbound's defaults (its
/// `local_zone_enter_defaults` and the AS112 list, read in its source), which follow RFC 6303 (locally served
/// zones), RFC 6761 (special-use names), RFC 7686 (`onion`), RFC 8375 (`home.arpa`) and RFC 9462 (`resolver.arpa`).
/// Each is an empty zone (SOA and NS at the apex: any name below is NXDOMAIN with the SOA), but for `localhost`
/// (127.0.0.1 and ::1 at every name below it, RFC 6761 §6.3) and the loopback reverse zones (PTR `localhost.`).
public enum LocalZones {
    /// Unbound's SOA for these zones: MNAME `localhost.`, RNAME `nobody.invalid.`, serial 1, and its timers.
    static let ttl: UInt32 = 10800

    /// The special-use names (RFC 6761 and after).
    static let specialUse = ["test", "invalid", "onion", "home.arpa", "resolver.arpa", "service.arpa"]

    /// The reverse zones of private and special ranges (RFC 6303 §4; the AS112 list).
    static var reverse: [String] {
        var out = ["10.in-addr.arpa"] + (16...31).map { "\($0).172.in-addr.arpa" } + ["168.192.in-addr.arpa", "0.in-addr.arpa"]
        out += (64...127).map { "\($0).100.in-addr.arpa" }
        out += ["254.169.in-addr.arpa", "2.0.192.in-addr.arpa", "100.51.198.in-addr.arpa", "113.0.203.in-addr.arpa",
                "255.255.255.255.in-addr.arpa"]
        out.append(String(repeating: "0.", count: 32) + "ip6.arpa")  // ::
        out += ["d.f.ip6.arpa", "8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"]
        return out
    }

    /// The name of ::1 in ip6.arpa.
    static let loopback6 = "1." + String(repeating: "0.", count: 31) + "ip6.arpa"

    /// Every local zone, by origin.
    public static let all: [Zone] = {
        let localhost = try! DNSName("localhost")
        var zones = [zone("localhost", [(localhost, .a(IPv4("127.0.0.1")!)), (localhost, .aaaa(IPv6("::1")!))]),
                     zone("127.in-addr.arpa", [(try! DNSName("1.0.0.127.in-addr.arpa"), .ptr(localhost))]),
                     zone(loopback6, [(try! DNSName(loopback6), .ptr(localhost))])]
        zones += (specialUse + reverse).map { zone($0, []) }
        return zones
    }()

    /// The names listed in the README, in order.
    public static var names: [String] { all.map { $0.origin.description } }

    static func zone(_ origin: String, _ data: [(DNSName, RData)]) -> Zone {
        let apex = try! DNSName(origin)
        let host = try! DNSName("localhost")
        let soa = RData.SOA(mname: host, rname: try! DNSName("nobody.invalid"), serial: 1, refresh: 3600, retry: 1200,
                            expire: 604800, minimum: 10800)
        let records = [ResourceRecord(name: apex, ttl: ttl, rdata: .soa(soa)), ResourceRecord(name: apex, ttl: ttl, rdata: .ns(host))]
            + data.map { ResourceRecord(name: $0.0, ttl: ttl, rdata: $0.1) }
        return try! Zone(origin: apex, records: records, path: "(local zone)")
    }

    /// Whether every name below the zone answers as its apex does (`localhost`, RFC 6761 §6.3: "localhost" and its
    /// subdomains are loopback), rather than NXDOMAIN.
    static func redirects(_ zone: Zone) -> Bool { zone.origin == (try! DNSName("localhost")) }
}

import Catalog
import DNSWire

/// How answers are ordered across successive queries.
public enum AnswerOrder: String, Sendable, CaseIterable, Codable {
    /// Each query starts one position further round the healthy set.
    case cyclic
    /// A fresh shuffle for every query, as Consul does.
    case random
}

/// Which instances of a service a name selects (see `Resolver.serviceQuery`).
enum ServiceSelector: Equatable {
    case all
    case tag(String)
    /// `_<name>._tcp`: instances with the named port `<name>`, answered on that port; or else with the tag.
    case named(String)

    func matches(_ inst: Instance) -> Bool {
        switch self {
        case .all: return true
        case .tag(let t): return inst.hasTag(t)
        case .named(let n): return inst.namedPorts[n] != nil || inst.hasTag(n)
        }
    }

    /// The SRV port for an instance this selector matched.
    func port(of inst: Instance) -> UInt16 {
        if case .named(let n) = self, let p = inst.namedPorts[n] { return p }
        return inst.port
    }
}

/// The load-balancing policy announced to gRPC clients in `_grpc_config.<service>` TXT records.
public enum GRPCLBPolicy: String, Sendable, CaseIterable, Codable {
    case none
    case roundRobin = "round_robin"
    case pickFirst = "pick_first"

    /// The TXT record's text, in the `grpc_config=` form grpc-go's dns resolver reads: a list of choices,
    /// here one for every client, holding a service config with this policy.
    public var serviceConfigTXT: String {
        #"grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"\#(rawValue)":{}}]}}]"#
    }
}

/// TTLs per service name, with Consul's `service_ttl` semantics: an exact name wins,
/// then the longest `prefix*` match, then `*`, then the default (0, as in Consul).
public struct TTLPolicy: Sendable, Hashable {
    public var defaultTTL: UInt32
    public var exact: [String: UInt32]
    /// (prefix, ttl), longest prefix first.
    public var prefixes: [Prefix]

    public struct Prefix: Sendable, Hashable {
        public var prefix: String
        public var ttl: UInt32
    }

    public init(defaultTTL: UInt32 = 0, exact: [String: UInt32] = [:], prefixes: [Prefix] = []) {
        self.defaultTTL = defaultTTL
        self.exact = exact
        self.prefixes = prefixes.sorted { $0.prefix.count > $1.prefix.count }
    }

    public func ttl(for service: String) -> UInt32 {
        if exact.isEmpty && prefixes.isEmpty { return defaultTTL }
        let name = service.lowercased()
        if let t = exact[name] { return t }
        for p in prefixes where name.hasPrefix(p.prefix) { return p.ttl }
        return defaultTTL
    }

    /// Parses entries like `30s`, `*=5s`, `web=30s`, `db*=1m`.
    public static func parse(_ entries: [String]) throws(ConfigurationError) -> TTLPolicy {
        var policy = TTLPolicy()
        for entry in entries {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            let key = parts.count == 2 ? parts[0].lowercased() : "*"
            let value = parts.count == 2 ? parts[1] : parts[0]
            guard let seconds = parseDuration(value) else {
                throw ConfigurationError("invalid TTL \"\(entry)\": expected a duration such as 30s, 5m or 1h, optionally after NAME= or PREFIX*=")
            }
            if key == "*" {
                policy.defaultTTL = seconds
            } else if key.hasSuffix("*") {
                policy.prefixes.append(Prefix(prefix: String(key.dropLast()), ttl: seconds))
            } else {
                policy.exact[key] = seconds
            }
        }
        policy.prefixes.sort { $0.prefix.count > $1.prefix.count }
        return policy
    }
}

/// A duration in whole seconds, rounded down (TTLs); `GoDuration` is the one parser.
public func parseDuration(_ text: String) -> UInt32? { GoDuration.seconds(text) }

public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Everything the resolver needs besides the snapshot. Defaults match the README.
public struct ResolverConfiguration: Sendable, Equatable {
    /// The service domain, `consul` by default.
    public var domain: DNSName
    /// The local datacenter, used when a name carries none.
    public var datacenter: String { didSet { datacenterKey = NameKey(datacenter.lowercased()) } }
    /// The same, lower-cased, as the snapshot's maps key it.
    public private(set) var datacenterKey: NameKey
    /// Leave out `warning` instances too.
    public var onlyPassing: Bool
    public var order: AnswerOrder
    public var serviceTTL: TTLPolicy
    public var nodeTTL: UInt32
    /// Largest UDP response we send, whatever a client's EDNS buffer says.
    public var maxUDPSize: Int
    /// Addresses for the default `ns.<domain>` glue, when no zone file gives NS records.
    public var nameserverAddresses: [Address]
    /// The policy `_grpc_config.<service>` announces; service meta `grpc_lb_policy` overrides it.
    public var grpcLBPolicy: GRPCLBPolicy
    /// At most this many instances per A, AAAA or SRV answer; 0 for no limit (Consul's `a_record_limit`, which
    /// leaves SRV alone).
    public var answerLimit: Int
    /// A second domain answered exactly like `domain` (Consul's `alt_domain`).
    public var altDomain: DNSName?
    /// Node meta as TXT in the additional section of SRV answers (Consul's `enable_additional_node_meta_txt`).
    public var nodeMetaTXT: Bool
    /// Nearest-first answers (`--locality` and its settings); off by default.
    public var locality = LocalityConfiguration()
    /// Where names outside our data go with forwarding on: `--forward-zone`s and the local zones. Empty with
    /// forwarding off (outside names are then REFUSED).
    public var routes = ForwardRoutes()

    public init(domain: DNSName = try! DNSName("consul"), datacenter: String = "dc1", onlyPassing: Bool = false,
                order: AnswerOrder = .cyclic, serviceTTL: TTLPolicy = TTLPolicy(), nodeTTL: UInt32 = 0,
                maxUDPSize: Int = 1232,
                nameserverAddresses: [Address] = [.v4(IPv4("127.0.0.1")!)], grpcLBPolicy: GRPCLBPolicy = .none,
                answerLimit: Int = 0, altDomain: DNSName? = nil, nodeMetaTXT: Bool = false,
                locality: LocalityConfiguration = LocalityConfiguration()) {
        self.domain = domain.lowercased
        self.datacenter = datacenter
        self.datacenterKey = NameKey(datacenter.lowercased())
        self.onlyPassing = onlyPassing
        self.order = order
        self.serviceTTL = serviceTTL
        self.nodeTTL = nodeTTL
        self.maxUDPSize = maxUDPSize
        self.nameserverAddresses = nameserverAddresses
        self.grpcLBPolicy = grpcLBPolicy
        self.answerLimit = answerLimit
        self.altDomain = altDomain?.lowercased
        self.nodeMetaTXT = nodeMetaTXT
        self.locality = locality
    }

    /// Default SOA timers (RFC 1912 style), used without a zone file for the domain.
    /// The minimum (negative TTL) is 0, as in Consul, so new instances are found at once.
    public static let defaultSOATimers = (refresh: UInt32(3600), retry: UInt32(600), expire: UInt32(86400), minimum: UInt32(0))
}

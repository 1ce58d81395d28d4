import DNSWire

/// Check status, ordered from best to worst.
public enum Health: Int, Comparable, Sendable, CustomStringConvertible {
    case passing = 0, warning, critical, maintenance

    public init?(status: String) {
        switch status.lowercased() {
        case "passing": self = .passing
        case "warning": self = .warning
        case "critical": self = .critical
        case "maintenance": self = .maintenance
        default: return nil
        }
    }

    public static func < (a: Health, b: Health) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .passing: return "passing"
        case .warning: return "warning"
        case .critical: return "critical"
        case .maintenance: return "maintenance"
        }
    }

    /// Whether an instance in this state is served: critical and maintenance never are,
    /// warning is unless only passing instances are wanted.
    public func isServed(onlyPassing: Bool) -> Bool {
        switch self {
        case .passing: return true
        case .warning: return !onlyPassing
        case .critical, .maintenance: return false
        }
    }
}

/// Where an instance can be reached: an IP address or a hostname.
public enum Address: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4)
    case v6(IPv6)
    case hostname(DNSName)

    /// Parses an IP literal or a hostname; nil for anything that is neither.
    public init?(_ text: String) {
        if let v4 = IPv4(text) { self = .v4(v4); return }
        if text.contains(":") {
            guard let v6 = IPv6(text) else { return nil }
            self = .v6(v6)
            return
        }
        let allowed = text.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: ".") || b == UInt8(ascii: "_")
        }
        guard allowed, !text.isEmpty, let name = try? DNSName(text) else { return nil }
        self = .hostname(name)
    }

    /// `<hex>.addr` label: 8 hex digits for IPv4, 32 for IPv6 (Consul's encoding).
    public var hexLabel: String? {
        func hex(_ bytes: [UInt8]) -> String {
            bytes.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
        }
        switch self {
        case .v4(let a): return hex(a.array)
        case .v6(let a): return hex(a.bytes)
        case .hostname: return nil
        }
    }

    public var description: String {
        switch self {
        case .v4(let a): return a.description
        case .v6(let a): return a.description
        case .hostname(let n): return n.description
        }
    }
}

/// Where an instance runs: a region, and a zone within it (Consul's `Locality`, Envoy's, Kubernetes'
/// `topology.kubernetes.io/region` and `/zone`). Either may be empty.
public struct Locality: Sendable, Hashable, Codable, CustomStringConvertible {
    public var region: String
    public var zone: String

    public init(region: String = "", zone: String = "") { (self.region, self.zone) = (region, zone) }

    public var isEmpty: Bool { region.isEmpty && zone.isEmpty }
    public var description: String { [region, zone].filter { !$0.isEmpty }.joined(separator: "/") }
}

/// A node as registered: name, address, datacenter and its metadata.
public struct Node: Sendable, Hashable {
    public var name: String
    public var address: Address
    public var datacenter: String
    public var meta: [String: String]
    /// Consul's `TaggedAddresses` `lan_ipv4` and `lan_ipv6` that differ from `address`: a dual-stack node's
    /// other address.
    public var lanAddresses: [Address] = []

    public init(name: String, address: Address, datacenter: String, meta: [String: String], lanAddresses: [Address] = []) {
        self.name = name
        self.address = address
        self.datacenter = datacenter
        self.meta = meta
        self.lanAddresses = lanAddresses
    }
}

extension Address {
    var isIPv4: Bool { if case .v4 = self { true } else { false } }
    var isIPv6: Bool { if case .v6 = self { true } else { false } }

    /// The IP addresses among Consul `TaggedAddresses` `lan_ipv4`/`lan_ipv6` values that `primary` does not
    /// already give.
    public static func lanAddresses(ipv4: String?, ipv6: String?, besides primary: Address?) -> [Address] {
        var out: [Address] = []
        if let t = ipv4, let v4 = IPv4(t), Address.v4(v4) != primary { out.append(.v4(v4)) }
        if let t = ipv6, let v6 = IPv6(t), Address.v6(v6) != primary { out.append(.v6(v6)) }
        return out
    }
}

/// One registered instance of a service, with the health folded in from its checks.
public struct Instance: Sendable, Hashable {
    public var id: String
    public var service: String
    public var node: Node
    /// The service's own address; nil means "the node's address".
    public var serviceAddress: Address?
    public var port: UInt16
    /// Ports by lower-cased scheme, for instances that publish several endpoints (Kratos's `grpc://…`,
    /// `http://…`); `port` is the first of them. Asked for as `_<scheme>._tcp.<service>.service.<domain>`.
    public var namedPorts: [String: UInt16] = [:]
    public var tags: [String]
    public var meta: [String: String]
    public var weightPassing: UInt16
    public var weightWarning: UInt16
    public var health: Health

    /// The service's `TaggedAddresses` `lan_ipv4`/`lan_ipv6` that differ from its own address.
    public var serviceLanAddresses: [Address] = []
    /// The checks `health` was folded from: the node's and the instance's own (empty for registries without checks).
    public var checks: [CheckState] = []
    /// Where the registry holds it (a catalog file's line, an etcd key and revision, a Consul service's index).
    public var origin = Origin()
    /// Where it runs, as the registration says (Consul's `Service.Locality`, else its node's); nil when it says
    /// nothing. Meta keys (`--locality-key`) are the resolver's fallback.
    public var locality: Locality? = nil

    public init(id: String, service: String, node: Node, serviceAddress: Address?, port: UInt16, namedPorts: [String: UInt16] = [:],
                tags: [String], meta: [String: String], weightPassing: UInt16, weightWarning: UInt16, health: Health,
                serviceLanAddresses: [Address] = [], checks: [CheckState] = [], origin: Origin = Origin()) {
        (self.id, self.service, self.node, self.serviceAddress, self.port, self.namedPorts) = (id, service, node, serviceAddress, port, namedPorts)
        (self.tags, self.meta, self.weightPassing, self.weightWarning, self.health) = (tags, meta, weightPassing, weightWarning, health)
        (self.serviceLanAddresses, self.checks, self.origin) = (serviceLanAddresses, checks, origin)
    }

    /// The address clients should use (the SRV target's).
    public var address: Address { serviceAddress ?? node.address }

    /// The address an A (`v6` false) or AAAA (`v6` true) answer gives, picked as Consul's DNS picks it: the
    /// service's tagged LAN address of that family, then its own address, then the node's tagged LAN address, then
    /// the node's address. Nil when none is of that family (hostnames are `address`'s business).
    public func address(v6: Bool) -> Address? {
        let fits: (Address) -> Bool = { v6 ? $0.isIPv6 : $0.isIPv4 }
        if let a = serviceLanAddresses.first(where: fits) { return a }
        if let s = serviceAddress, fits(s) { return s }
        if let a = node.lanAddresses.first(where: fits) { return a }
        return fits(node.address) ? node.address : nil
    }

    /// The SRV weight that matches the instance's health.
    public var weight: UInt16 { health == .warning ? weightWarning : weightPassing }

    /// What makes two registrations the same instance: node and datacenter (ASCII case-insensitive) and ID, as the
    /// catalog merges them and the operator view tracks them.
    public var identity: [String] { [node.name.lowercased(), node.datacenter.lowercased(), id] }

    /// Equal but for the checks' output and where the registry holds the instance: what decides whether a
    /// registry's new list is worth publishing.
    public static func sameServing(_ a: [Instance]?, _ b: [Instance]) -> Bool {
        guard let a, a.count == b.count else { return false }
        return zip(a, b).allSatisfy { x, y in x.withoutNotes == y.withoutNotes }
    }

    /// The instance with its checks' output and its origin cleared.
    var withoutNotes: Instance {
        var out = self
        for i in out.checks.indices { out.checks[i].output = "" }
        out.origin = Origin()
        return out
    }

    public func hasTag(_ tag: String) -> Bool {
        tags.contains { $0.equalsIgnoringASCIICase(tag) }
    }
}

extension String {
    /// ASCII case-insensitive equality without allocating (DNS labels compare this way, RFC 4343).
    public func equalsIgnoringASCIICase(_ other: String) -> Bool {
        var a = utf8.makeIterator(), b = other.utf8.makeIterator()
        while true {
            switch (a.next(), b.next()) {
            case (nil, nil): return true
            case (let x?, let y?):
                if x != y && (x | 0x20) != (y | 0x20) { return false }
                if x != y && !((x | 0x20) >= 0x61 && (x | 0x20) <= 0x7A) { return false }
            default: return false
            }
        }
    }
}

/// A check as registered. An empty ServiceID makes it a node-level check.
public struct Check: Sendable, Hashable {
    public var id: String
    public var name: String
    public var status: Health
    public var serviceID: String
    public var output: String = ""
}

/// A check as an instance carries it, for the operator: what it is, its status and output, and whether it is the
/// node's (it then applies to every instance on the node, as Consul's `serfHealth` does) or the instance's own.
public struct CheckState: Sendable, Hashable, Codable {
    public var id: String
    public var name: String
    public var status: Health
    /// Its output, or its notes when it has none (`text(output:notes:)`).
    public var output: String
    public var nodeLevel: Bool

    public init(id: String, name: String, status: Health, output: String, nodeLevel: Bool) {
        (self.id, self.name, self.status, self.output, self.nodeLevel) = (id, name, status, output, nodeLevel)
    }

    /// What a check says: its output, or its notes when it has none (a maintenance check's reason is in its notes).
    public static func text(output: String?, notes: String?) -> String {
        if let output, !output.isEmpty { return output }
        return notes ?? ""
    }

    public init(_ check: Check) {
        self.init(id: check.id, name: check.name, status: check.status, output: check.output, nodeLevel: check.serviceID.isEmpty)
    }
}

/// Where a registry holds an instance: a catalog file and line, an etcd key and its `mod_revision`, or a Consul
/// service ID and its `ModifyIndex`.
public struct Origin: Sendable, Hashable, Codable {
    /// `file`, `etcd` or `consul`.
    public var registry: String
    public var location: String
    /// etcd's `mod_revision`, Consul's `ModifyIndex`.
    public var revision: Int64?

    public init(registry: String = "", location: String = "", revision: Int64? = nil) {
        (self.registry, self.location, self.revision) = (registry, location, revision)
    }

    public var description: String {
        switch registry {
        case "file": return location
        case "etcd": return "etcd key \(location)" + (revision.map { ", revision \($0)" } ?? "")
        case "consul": return "consul \(location)" + (revision.map { ", index \($0)" } ?? "")
        default: return location
        }
    }
}

extension Health: Codable {}

/// One `/v1/catalog/register` body.
public struct Registration: Sendable, Hashable {
    public var node: Node
    public var service: Instance?
    public var checks: [Check]
}

/// A problem in a catalog, zone or config file, reported as `path:line: reason`.
public struct CatalogProblem: Error, Sendable, Hashable, CustomStringConvertible {
    public var path: String
    public var line: Int
    public var reason: String

    public init(path: String, line: Int, reason: String) {
        self.path = path
        self.line = line
        self.reason = reason
    }

    public var description: String { line > 0 ? "\(path):\(line): \(reason)" : "\(path): \(reason)" }
}

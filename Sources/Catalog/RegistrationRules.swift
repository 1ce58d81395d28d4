import DNSWire

/// One registration as any registry's format gives it, before any rule: the text and numbers as written. Catalog
/// files, etcd values, Consul's health entries and the state file each fill one of these (their field names and
/// layouts are their own business) and turn it into an `Instance` through `RegistrationRules`, the one place
/// that decides what a registration means.
public struct RegistrationFields: Sendable, Equatable {
    public struct Weights: Sendable, Equatable {
        public var passing: Int?
        public var warning: Int?
        public init(passing: Int?, warning: Int?) { (self.passing, self.warning) = (passing, warning) }
    }

    public struct Check: Sendable, Equatable {
        public var id: String?
        public var name: String?
        public var status: String?
        public var output: String?
        public var notes: String?
        /// A node-level check (Consul's `serfHealth`, an empty `ServiceID`) rather than the instance's own.
        public var nodeLevel: Bool
        public init(id: String?, name: String?, status: String?, output: String? = nil, notes: String? = nil, nodeLevel: Bool = false) {
            (self.id, self.name, self.status, self.output, self.notes, self.nodeLevel) = (id, name, status, output, notes, nodeLevel)
        }
    }

    public var service: String
    public var id: String?
    /// The node's name; nil or empty for an instance without one (etcd's layouts), whose own address stands in.
    public var node: String?
    public var nodeAddress: String?
    public var datacenter: String?
    public var nodeMeta: [String: String]
    /// Consul's node `TaggedAddresses` `lan_ipv4` and `lan_ipv6`.
    public var nodeLAN: (ipv4: String?, ipv6: String?)
    /// The service's own address; nil or empty for the node's.
    public var address: String?
    public var port: Int?
    public var namedPorts: [String: UInt16]
    public var tags: [String]
    public var meta: [String: String]
    /// Nil when the registration has no `Weights`; a field it leaves out is nil.
    public var weights: Weights?
    /// The service's `TaggedAddresses` `lan_ipv4` and `lan_ipv6`.
    public var serviceLAN: (ipv4: String?, ipv6: String?)
    /// A status given for the instance itself, without a check (etcd's native `Status`).
    public var status: String?
    public var checks: [Check]
    /// The service's `Locality`, and its node's (Consul's agent gives its node one).
    public var locality: Locality?
    public var nodeLocality: Locality?

    public init(service: String, id: String? = nil, node: String? = nil, nodeAddress: String? = nil, datacenter: String? = nil,
                nodeMeta: [String: String] = [:], nodeLAN: (ipv4: String?, ipv6: String?) = (nil, nil), address: String? = nil,
                port: Int? = nil, namedPorts: [String: UInt16] = [:], tags: [String] = [], meta: [String: String] = [:],
                weights: Weights? = nil, serviceLAN: (ipv4: String?, ipv6: String?) = (nil, nil), status: String? = nil,
                checks: [Check] = [], locality: Locality? = nil, nodeLocality: Locality? = nil) {
        (self.service, self.id, self.node, self.nodeAddress, self.datacenter, self.nodeMeta) = (service, id, node, nodeAddress, datacenter, nodeMeta)
        (self.nodeLAN, self.address, self.port, self.namedPorts, self.tags, self.meta) = (nodeLAN, address, port, namedPorts, tags, meta)
        (self.weights, self.serviceLAN, self.status, self.checks) = (weights, serviceLAN, status, checks)
        (self.locality, self.nodeLocality) = (locality, nodeLocality)
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.service == b.service && a.id == b.id && a.node == b.node && a.nodeAddress == b.nodeAddress && a.datacenter == b.datacenter
            && a.nodeMeta == b.nodeMeta && a.nodeLAN == b.nodeLAN && a.address == b.address && a.port == b.port
            && a.namedPorts == b.namedPorts && a.tags == b.tags && a.meta == b.meta && a.weights == b.weights
            && a.serviceLAN == b.serviceLAN && a.status == b.status && a.checks == b.checks && a.locality == b.locality
            && a.nodeLocality == b.nodeLocality
    }
}

/// Why a registration cannot be served. `field` names the registration's field at fault, in Consul's spelling, so
/// that a format can point at its own line or key.
public enum RegistrationProblem: Error, Sendable, Equatable, CustomStringConvertible {
    /// A service name that cannot be a DNS name: skipped and reported, not an error of the registry's data.
    case serviceName(String, SkipReason)
    case nodeName(String)
    case missing(field: String)
    case address(field: String, text: String)
    /// `0.0.0.0` or `::` as a service's address, which Consul's catalog refuses ("Invalid service address").
    case unspecifiedAddress(String)
    case port(Int)
    case checkID

    public var field: String {
        switch self {
        case .serviceName: return "Service"
        case .nodeName: return "Node"
        case .missing(let field), .address(let field, _): return field
        case .unspecifiedAddress: return "Address"
        case .port: return "Port"
        case .checkID: return "CheckID"
        }
    }

    public var description: String {
        switch self {
        case .serviceName(let name, let reason): return "Service: \"\(name)\" cannot be served: \(reason)"
        case .nodeName(let name): return "Node: \"\(name)\" cannot be a DNS label"
        case .missing(let field): return "\(field): required"
        case .address(let field, let text): return "\(field): \"\(text)\" is neither an IP address nor a hostname"
        case .unspecifiedAddress(let text): return "Address: \"\(text)\" is the unspecified address, which Consul refuses for a service"
        case .port(let port): return "Port: \(port) is not from 0 to 65535"
        case .checkID: return "CheckID: a check needs a CheckID or a Name"
        }
    }
}

/// The rules that turn a registration into an instance, for every registry, following what Consul's catalog
/// accepts and how its DNS reads it. Where Signpost differs, it says so here:
/// - a node name must be a DNS name (labels of 1 to 63 bytes), since it is the SRV target; Consul only warns;
/// - a port outside 0…65535 is refused; Consul's DNS would wrap it.
public enum RegistrationRules {
    /// The instance `fields` describe, or why there is none. `localDatacenter` stands in for an empty datacenter.
    public static func instance(_ fields: RegistrationFields, localDatacenter: String) throws(RegistrationProblem) -> Instance {
        if let name = fields.node, !name.isEmpty {
            let node = try Self.node(name: name, address: fields.nodeAddress, datacenter: fields.datacenter, meta: fields.nodeMeta,
                                     lan: fields.nodeLAN, localDatacenter: localDatacenter)
            return try instance(fields, on: node)
        }
        // No node: the instance's own address stands in, and its SRV target is `<hex>.addr.<dc>.<domain>`.
        guard let address = try serviceAddress(fields) else { throw .missing(field: "Address") }
        return try instance(fields, on: Node(name: "", address: address, datacenter: datacenter(fields.datacenter, localDatacenter),
                                             meta: fields.nodeMeta))
    }

    /// The instance `fields` describe on `node` (one a format built through `node(…)`, as catalog files do once per
    /// body); its node fields are not read again.
    public static func instance(_ fields: RegistrationFields, on node: Node) throws(RegistrationProblem) -> Instance {
        if let reason = ServiceName.problem(fields.service) { throw .serviceName(fields.service, reason) }
        let serviceAddress = try serviceAddress(fields)
        let port = fields.port ?? 0
        guard (0...65535).contains(port) else { throw .port(port) }
        var checks: [CheckState] = []
        for c in fields.checks { checks.append(try check(c)) }
        let (passing, warning) = weights(fields.weights)
        var instance = Instance(id: fields.id.flatMap { $0.isEmpty ? nil : $0 } ?? fields.service, service: fields.service, node: node,
                                serviceAddress: serviceAddress, port: UInt16(port), namedPorts: fields.namedPorts, tags: fields.tags,
                                meta: fields.meta, weightPassing: passing, weightWarning: warning, health: .passing,
                                serviceLanAddresses: Address.lanAddresses(ipv4: fields.serviceLAN.ipv4, ipv6: fields.serviceLAN.ipv6,
                                                                          besides: serviceAddress))
        instance.checks = checks
        instance.health = fold(checks, status: fields.status.map(health))
        instance.locality = locality(fields.locality, node: fields.nodeLocality)
        return instance
    }

    /// The service's own address: none when empty; never the unspecified address.
    static func serviceAddress(_ fields: RegistrationFields) throws(RegistrationProblem) -> Address? {
        guard let text = fields.address, !text.isEmpty else { return nil }
        if ["0.0.0.0", "::", "[::]"].contains(text) { throw .unspecifiedAddress(text) }
        guard let a = Address(text) else { throw .address(field: "Address", text: text) }
        return a
    }

    /// A check: its ID is its CheckID, or else its Name (as Consul fills it in); its status as `health` reads it.
    public static func check(_ c: RegistrationFields.Check) throws(RegistrationProblem) -> CheckState {
        let name = c.name ?? ""
        let id = c.id.flatMap { $0.isEmpty ? nil : $0 } ?? name
        guard !id.isEmpty else { throw .checkID }
        return CheckState(id: id, name: name, status: health(c.status), output: CheckState.text(output: c.output, notes: c.notes),
                          nodeLevel: c.nodeLevel)
    }

    /// A node: a name that can be a DNS name (its labels are the SRV target's), an address that is an IP address or
    /// a hostname (`Address`, as the catalog-register body and Consul's `Node` call it).
    public static func node(name: String, address: String?, datacenter: String?, meta: [String: String],
                            lan: (ipv4: String?, ipv6: String?), localDatacenter: String) throws(RegistrationProblem) -> Node {
        guard !name.isEmpty else { throw .missing(field: "Node") }
        guard (try? DNSName(labels: name.split(separator: ".", omittingEmptySubsequences: false))) != nil else { throw .nodeName(name) }
        guard let text = address, !text.isEmpty else { throw .missing(field: "Address") }
        guard let parsed = Address(text) else { throw .address(field: "Address", text: text) }
        return Node(name: name, address: parsed, datacenter: Self.datacenter(datacenter, localDatacenter), meta: meta,
                    lanAddresses: Address.lanAddresses(ipv4: lan.ipv4, ipv6: lan.ipv6, besides: parsed))
    }

    /// The service's locality, else its node's (as Consul's services inherit their agent's); none when both are empty.
    static func locality(_ service: Locality?, node: Locality?) -> Locality? {
        if let service, !service.isEmpty { return service }
        if let node, !node.isEmpty { return node }
        return nil
    }

    static func datacenter(_ given: String?, _ local: String) -> String {
        given.flatMap { $0.isEmpty ? nil : $0 } ?? local
    }

    /// A status as Consul's catalog stores it and its DNS reads it: none (or empty) is critical; only critical
    /// (and maintenance, which Consul registers as a critical check) removes an instance; a status Consul does
    /// not know is served, except with `--only-passing`, which is what `warning` means here. Case is ignored.
    public static func health(_ status: String?) -> Health {
        guard let status, !status.isEmpty else { return .critical }
        return Health(status: status) ?? .warning
    }

    /// An instance's health: its worst check, node-level ones included, and its own status when it has one.
    /// No checks and no status is passing, as in Consul.
    public static func fold(_ checks: [CheckState], status: Health? = nil) -> Health {
        checks.reduce(status ?? .passing) { max($0, $1.status) }
    }

    /// Weights as Consul's catalog stores them: none are 1 and 1; a field left out is 0 (Consul decodes into a Go
    /// struct); then Passing below 1, Warning below 0, or either over 65535, make both 1.
    public static func weights(_ w: RegistrationFields.Weights?) -> (passing: UInt16, warning: UInt16) {
        guard let w else { return (1, 1) }
        let p = w.passing ?? 0, q = w.warning ?? 0
        guard (1...65535).contains(p), (0...65535).contains(q) else { return (1, 1) }
        return (UInt16(p), UInt16(q))
    }
}

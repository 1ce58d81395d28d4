import DNSWire

/// What one registry currently says: instances by lower-cased service name, and its nodes.
public struct SourceCatalog: Sendable {
    public var services: [String: [Instance]]
    public var nodes: [CatalogSnapshot.NodeKey: Node]

    public init(services: [String: [Instance]] = [:], nodes: [CatalogSnapshot.NodeKey: Node] = [:]) {
        self.services = services
        self.nodes = nodes
    }

    /// From catalog-file registrations, in file order. The first definition of a node wins; an instance's
    /// health is the worst of the checks on its node that name it, and of every node-level check of its node,
    /// from any registration (a check may name a service another body registered, as in Consul).
    public init(registrations: [Registration]) {
        var nodes: [CatalogSnapshot.NodeKey: Node] = [:]
        var checks: [CatalogSnapshot.NodeKey: [String: [Check]]] = [:]  // "" for node-level checks
        for r in registrations {
            let key = CatalogSnapshot.NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            if nodes[key] == nil { nodes[key] = r.node }
            for c in r.checks { checks[key, default: [:]][c.serviceID, default: []].append(c) }
        }
        var services: [String: [Instance]] = [:]
        for r in registrations {
            guard var inst = r.service else { continue }
            let key = CatalogSnapshot.NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            inst.node = nodes[key]!
            let own = (checks[key]?[""] ?? []) + (checks[key]?[inst.id] ?? [])
            inst.checks = own.map(CheckState.init)
            inst.health = RegistrationRules.fold(inst.checks)
            services[ServiceName.key(inst.service), default: []].append(inst)
        }
        self.init(services: services, nodes: nodes)
    }

    /// Checks that name a ServiceID no registration defines on their node: Consul refuses those
    /// ("Unknown service ID"), so they count for nothing; the catalog watcher reports them.
    public static func unmatchedChecks(_ registrations: [Registration]) -> [(node: String, check: Check)] {
        var defined: Set<[String]> = []
        for r in registrations { if let s = r.service { defined.insert([r.node.name.lowercased(), r.node.datacenter.lowercased(), s.id]) } }
        return registrations.flatMap { r in
            r.checks.filter { !$0.serviceID.isEmpty && !defined.contains([r.node.name.lowercased(), r.node.datacenter.lowercased(), $0.serviceID]) }
                .map { (r.node.name, $0) }
        }
    }
}

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
    /// health is the worst of its own checks and every node-level check of its node, from any registration.
    public init(registrations: [Registration]) {
        var nodes: [CatalogSnapshot.NodeKey: Node] = [:]
        var nodeHealth: [CatalogSnapshot.NodeKey: Health] = [:]
        for r in registrations {
            let key = CatalogSnapshot.NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            if nodes[key] == nil { nodes[key] = r.node }
            for c in r.checks where c.serviceID.isEmpty {
                nodeHealth[key] = max(nodeHealth[key] ?? .passing, c.status)
            }
        }
        var services: [String: [Instance]] = [:]
        for r in registrations {
            guard var inst = r.service else { continue }
            let key = CatalogSnapshot.NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            inst.node = nodes[key]!
            inst.health = max(inst.health, nodeHealth[key] ?? .passing)
            services[ServiceName.key(inst.service), default: []].append(inst)
        }
        self.init(services: services, nodes: nodes)
    }
}

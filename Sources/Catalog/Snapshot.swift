import Atomics
import DNSWire

/// All instances of one service name, in a stable base order (node, then ID).
/// The only mutable part is the rotation counter, which never touches the instance list.
public final class ServiceEntry: Sendable {
    public let name: String
    public let instances: [Instance]
    private let rotation = ManagedAtomic<UInt>(0)

    public init(name: String, instances: [Instance]) {
        self.name = name
        self.instances = instances
    }

    /// A fresh start offset for the next answer: 0, 1, 2, … for successive queries.
    public func nextRotation() -> Int {
        Int(truncatingIfNeeded: rotation.loadThenWrappingIncrement(ordering: .relaxed) & UInt(Int.max))
    }
}

/// An immutable view of the registry, swapped in whole by the watcher.
public final class CatalogSnapshot: AtomicReference, Sendable {
    /// Services by lower-cased name.
    public let services: [String: ServiceEntry]
    /// Nodes by lower-cased "name" and datacenter.
    public let nodes: [NodeKey: Node]
    /// Lower-cased datacenter names that appear in the catalog (plus the local one).
    public let datacenters: Set<String>
    /// Static zones, longest origin first.
    public let zones: [Zone]
    /// Increases with every published snapshot; used as the default SOA serial.
    public let generation: UInt32
    /// False only for the placeholder used before anything was loaded.
    public let isLoaded: Bool

    public struct NodeKey: Hashable, Sendable {
        public var name: String
        public var datacenter: String
        public init(name: String, datacenter: String) {
            self.name = name.lowercased()
            self.datacenter = datacenter.lowercased()
        }
    }

    public init(services: [String: ServiceEntry], nodes: [NodeKey: Node], datacenters: Set<String>, zones: [Zone],
                generation: UInt32, isLoaded: Bool = true) {
        self.services = services
        self.nodes = nodes
        self.datacenters = datacenters
        self.zones = zones.sorted { $0.origin.wire.count > $1.origin.wire.count }
        self.generation = generation
        self.isLoaded = isLoaded
    }

    public static let empty = CatalogSnapshot(services: [:], nodes: [:], datacenters: [], zones: [], generation: 0, isLoaded: false)

    /// The static zone with the longest origin that contains `name`.
    public func zone(containing name: DNSName) -> Zone? {
        zones.first { name.isSubdomain(of: $0.origin) }
    }

    /// Builds a snapshot from registrations (in file order) and zones.
    /// The first definition of a node or of an instance (node + service ID) wins.
    /// An instance's health is the worst of its own checks and every node-level check of its node.
    public static func build(registrations: [Registration], zones: [Zone], localDatacenter: String,
                             generation: UInt32) -> CatalogSnapshot {
        var nodes: [NodeKey: Node] = [:]
        var nodeHealth: [NodeKey: Health] = [:]
        var datacenters: Set<String> = [localDatacenter.lowercased()]
        for r in registrations {
            let key = NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            if nodes[key] == nil { nodes[key] = r.node }
            datacenters.insert(r.node.datacenter.lowercased())
            for c in r.checks where c.serviceID.isEmpty {
                nodeHealth[key] = max(nodeHealth[key] ?? .passing, c.status)
            }
        }
        var byService: [String: [Instance]] = [:]
        var seen: Set<[String]> = []
        for r in registrations {
            guard var inst = r.service else { continue }
            let key = NodeKey(name: r.node.name, datacenter: r.node.datacenter)
            guard seen.insert([key.name, key.datacenter, inst.id]).inserted else { continue }
            inst.node = nodes[key]!
            inst.health = max(inst.health, nodeHealth[key] ?? .passing)
            byService[inst.service.lowercased(), default: []].append(inst)
        }
        var services: [String: ServiceEntry] = [:]
        for (name, list) in byService {
            let sorted = list.sorted { ($0.node.name, $0.id) < ($1.node.name, $1.id) }
            services[name] = ServiceEntry(name: sorted[0].service, instances: sorted)
        }
        return CatalogSnapshot(services: services, nodes: nodes, datacenters: datacenters, zones: zones,
                               generation: generation)
    }
}

/// The one place readers get the current snapshot: a lock-free atomic load.
public final class SnapshotStore: Sendable {
    private let current: ManagedAtomic<CatalogSnapshot>

    public init(_ initial: CatalogSnapshot = .empty) {
        current = ManagedAtomic(initial)
    }

    public var snapshot: CatalogSnapshot { current.load(ordering: .acquiring) }

    public func publish(_ snapshot: CatalogSnapshot) {
        current.store(snapshot, ordering: .releasing)
    }
}

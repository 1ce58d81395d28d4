import Atomics
import DNSWire
import HashTreeCollections
#if canImport(Glibc)
import Glibc
#endif

/// All instances of one service name, in a stable base order (node, then ID).
/// The only mutable part is the rotation counter, which never touches the instance list.
public final class ServiceEntry: Sendable {
    public let name: String
    public let instances: [Instance]
    private let rotation = ManagedAtomic<UInt>(0)
    /// Answers encoded by the gateway on this entry's first query; they live and die with the entry, which a
    /// change to the service replaces.
    public let encoded = ManagedAtomicLazyReference<EncodedAnswers>()

    public init(name: String, instances: [Instance]) {
        self.name = name
        self.instances = instances
    }

    /// One service's instances from several registries, in registry order. The first occurrence of an
    /// instance (node, datacenter, ID) wins; the result is sorted by node, then ID, so the base order is stable.
    static func merged(name: String, _ lists: [[Instance]]) -> ServiceEntry? {
        var seen: Set<[String]> = []
        var all: [Instance] = []
        for list in lists {
            for inst in list where seen.insert([inst.node.name.lowercased(), inst.node.datacenter.lowercased(), inst.id]).inserted {
                all.append(inst)
            }
        }
        guard !all.isEmpty else { return nil }
        all.sort { ($0.node.name, $0.id) < ($1.node.name, $1.id) }
        return ServiceEntry(name: all[0].service, instances: all)
    }

    /// A fresh start offset for the next answer: 0, 1, 2, … for successive queries.
    public func nextRotation() -> Int {
        Int(truncatingIfNeeded: rotation.loadThenWrappingIncrement(ordering: .relaxed) & UInt(Int.max))
    }
}

/// A service's answers to `<name>.service.<domain>`, pre-encoded for one resolver configuration.
/// A nil template means that query type takes the general path (no such records, or a shape templates do not cover).
public final class EncodedAnswers: Sendable {
    /// Which resolver configuration built these.
    public let owner: Int
    /// How many instances the templates rotate over (the healthy ones in the local datacenter).
    public let count: Int
    public let a: AnswerTemplate?
    public let aaaa: AnswerTemplate?
    public let srv: AnswerTemplate?

    public init(owner: Int, count: Int, a: AnswerTemplate?, aaaa: AnswerTemplate?, srv: AnswerTemplate?) {
        self.owner = owner
        self.count = count
        self.a = a
        self.aaaa = aaaa
        self.srv = srv
    }
}

/// An immutable view of the registry, swapped in whole by the assembler.
/// The maps are persistent hash tries, so a new snapshot that changes one service shares everything else
/// with the old one: an update costs work proportional to that service, not to the whole catalog.
public final class CatalogSnapshot: AtomicReference, Sendable {
    /// Services by lower-cased name.
    public let services: TreeDictionary<String, ServiceEntry>
    /// Nodes by lower-cased name and datacenter.
    public let nodes: TreeDictionary<NodeKey, Node>
    /// Lower-cased datacenter names that appear in the catalog (plus the local one).
    public let datacenters: Set<String>
    /// Static zones, longest origin first.
    public let zones: [Zone]
    /// Increases with every published snapshot; used as the default SOA serial.
    public let generation: UInt32
    /// False until every registry (and the zone files) have loaded once.
    public let isLoaded: Bool
    /// Addresses → nodes and services, for PTR.
    public let reverse: ReverseIndex
    /// Empty non-terminals that service names and tags imply.
    public let names: NameIndex

    public struct NodeKey: Hashable, Sendable {
        public var name: String
        public var datacenter: String
        public init(name: String, datacenter: String) {
            self.name = name.lowercased()
            self.datacenter = datacenter.lowercased()
        }
    }

    public init(services: TreeDictionary<String, ServiceEntry>, nodes: TreeDictionary<NodeKey, Node>, datacenters: Set<String>,
                zones: [Zone], generation: UInt32, isLoaded: Bool = true, reverse: ReverseIndex = ReverseIndex(),
                names: NameIndex = NameIndex()) {
        self.services = services
        self.nodes = nodes
        self.datacenters = datacenters
        self.zones = zones.sorted { $0.origin.wire.count > $1.origin.wire.count }
        self.generation = generation
        self.isLoaded = isLoaded
        self.reverse = reverse
        self.names = names
    }

    public static let empty = CatalogSnapshot(services: [:], nodes: [:], datacenters: [], zones: [], generation: 0, isLoaded: false)

    /// The static zone with the longest origin that contains `name`.
    public func zone(containing name: DNSName) -> Zone? {
        zones.first { name.isSubdomain(of: $0.origin) }
    }

    /// A snapshot of a single catalog-file registry (used by tests and tools).
    public static func build(registrations: [Registration], zones: [Zone], localDatacenter: String,
                             generation: UInt32) -> CatalogSnapshot {
        build(source: SourceCatalog(registrations: registrations), zones: zones, localDatacenter: localDatacenter, generation: generation)
    }

    /// A snapshot of one registry's catalog (used by tests and tools).
    public static func build(source: SourceCatalog, zones: [Zone], localDatacenter: String, generation: UInt32) -> CatalogSnapshot {
        var services = TreeDictionary<String, ServiceEntry>()
        var reverse = ReverseIndex()
        var names = NameIndex()
        for (name, list) in source.services {
            if let e = ServiceEntry.merged(name: name, [list]) {
                services[name] = e
                reverse.replace(service: nil, with: e)
                names.replace(service: nil, with: e)
            }
        }
        for node in source.nodes.values { reverse.replace(node: nil, with: node) }
        var datacenters: Set<String> = [localDatacenter.lowercased()]
        for n in source.nodes.values { datacenters.insert(n.datacenter.lowercased()) }
        for list in source.services.values { for i in list { datacenters.insert(i.node.datacenter.lowercased()) } }
        return CatalogSnapshot(services: services, nodes: TreeDictionary(uniqueKeysWithValues: source.nodes.map { ($0.key, $0.value) }),
                               datacenters: datacenters, zones: zones, generation: generation, reverse: reverse, names: names)
    }
}

/// Why some registry's data cannot be trusted, for `/ready` (an immutable list, swapped whole).
public final class RegistryProblems: AtomicReference, Sendable {
    public let reasons: [String]
    public init(_ reasons: [String]) { self.reasons = reasons }
}

/// The one place readers get the current snapshot: a lock-free atomic load.
public final class SnapshotStore: Sendable {
    private let problemList = ManagedAtomic<RegistryProblems>(RegistryProblems([]))

    /// Registry problems that make the gateway not ready (an ACL that filters the catalog, say).
    public var problems: [String] { problemList.load(ordering: .acquiring).reasons }

    public func setProblems(_ reasons: [String]) { problemList.store(RegistryProblems(reasons), ordering: .releasing) }

    private let current: ManagedAtomic<CatalogSnapshot>

    public init(_ initial: CatalogSnapshot = .empty) {
        current = ManagedAtomic(initial)
    }

    public var snapshot: CatalogSnapshot { current.load(ordering: .acquiring) }

    public func publish(_ snapshot: CatalogSnapshot) {
        current.store(snapshot, ordering: .releasing)
    }

    /// Uptime in nanoseconds at which the oldest registry lost contact; 0 while all are in contact.
    private let staleSince = ManagedAtomic<UInt64>(0)

    public func setStale(since uptimeNanoseconds: UInt64?) {
        staleSince.store(uptimeNanoseconds ?? 0, ordering: .relaxed)
    }

    /// How long the data has been without a registry's confirmation; nil while every registry is in contact.
    public func staleness(now: UInt64 = Uptime.nanoseconds) -> Duration? {
        let since = staleSince.load(ordering: .relaxed)
        guard since != 0, now >= since else { return nil }
        return .nanoseconds(Int64(now - since))
    }
}

/// A monotonic clock reading that fits in an atomic.
public enum Uptime {
    public static var nanoseconds: UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

import Atomics
import DNSWire
import HashTreeCollections
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// All instances of one service name, in a stable base order (node, then ID).
/// The only mutable parts are the rotation counters, which never touch the instance list.
public final class ServiceEntry: Sendable {
    public let name: String
    public let instances: [Instance]
    /// One rotation counter per answer type, so that a client asking A and AAAA together for every lookup (glibc,
    /// Go) still sees each type's answers turn: a shared counter would give A only even turns, and with two
    /// instances the same one first every time.
    private let rotationA = Atomic<UInt>(0)
    private let rotationAAAA = Atomic<UInt>(0)
    private let rotationSRV = Atomic<UInt>(0)
    /// Whatever the gateway keeps with this entry (`EntryAttachment`): the first owner's in a slot that is one
    /// plain load to read, another owner's (after a reload that changed the gateway's settings) in a replaceable one.
    private let firstAttachment = ManagedAtomicLazyReference<EntryAttachment>()
    private let laterAttachment = ManagedAtomic<EntryAttachment?>(nil)

    /// The attachment `owner` made, if it is still here.
    @inline(__always)
    public func attachment(owner: Int) -> EntryAttachment? {
        if let a = firstAttachment.load(), a.owner == owner { return a }
        if let a = laterAttachment.load(ordering: .acquiring), a.owner == owner { return a }
        return nil
    }

    /// Keeps `attachment` (replacing another owner's later one); returns what is kept for its owner.
    public func attach(_ attachment: EntryAttachment) -> EntryAttachment {
        let first = firstAttachment.storeIfNilThenLoad(attachment)
        if first.owner == attachment.owner { return first }
        laterAttachment.store(attachment, ordering: .releasing)
        return attachment
    }

    public init(name: String, instances: [Instance]) {
        self.name = name
        self.instances = instances
    }

    /// One service's instances from several registries, in registry order. The first occurrence of an
    /// instance (node, datacenter, ID) wins; the result is sorted by node, then ID, so the base order is stable.
    static func merged(name: String, _ lists: [[Instance]]) -> ServiceEntry? {
        // One registry's list that is already in order, with lower-case node names (so no two instances can be the
        // same one under case folding): kept as it is, its storage shared with the registry's copy.
        let nonEmpty = lists.filter { !$0.isEmpty }
        if nonEmpty.count == 1, let only = nonEmpty.first, Self.isServedAsIs(only) {
            return ServiceEntry(name: only[0].service, instances: only)
        }
        var seen: Set<[String]> = []
        var all: [Instance] = []
        for list in lists {
            for inst in list where seen.insert(inst.identity).inserted {
                all.append(inst)
            }
        }
        guard !all.isEmpty else { return nil }
        all.sort(by: inOrder)
        return ServiceEntry(name: all[0].service, instances: all)
    }

    /// The base order of a service's instances: by node, then ID.
    static func inOrder(_ a: Instance, _ b: Instance) -> Bool { (a.node.name, a.id) < (b.node.name, b.id) }

    private static func isServedAsIs(_ list: [Instance]) -> Bool {
        for k in list.indices where k > 0 && !inOrder(list[k - 1], list[k]) { return false }
        return list.allSatisfy { !$0.node.name.utf8.contains { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") } }
    }

    /// A fresh turn for the next answer of this type: 0, 1, 2, … for successive queries of it. AAAA and SRV have
    /// their own counters; A and every other type share one.
    @inline(__always)
    public func nextRotation(_ type: UInt16) -> Int {
        let turn = switch type {
        case RRType.aaaa: rotationAAAA.wrappingAdd(1, ordering: .relaxed).oldValue
        case RRType.srv: rotationSRV.wrappingAdd(1, ordering: .relaxed).oldValue
        default: rotationA.wrappingAdd(1, ordering: .relaxed).oldValue
        }
        return Int(truncatingIfNeeded: turn & UInt(Int.max))
    }
}

/// Something a layer above keeps with a service entry (the gateway's pre-encoded answers), tagged with its owner.
/// The catalog neither reads nor builds it; it lives and dies with the entry, which a change to the service
/// replaces.
public final class EntryAttachment: AtomicReference, Sendable {
    public let owner: Int
    public let object: any AnyObject & Sendable
    public init(owner: Int, object: any AnyObject & Sendable) {
        self.owner = owner
        self.object = object
    }
}

/// An immutable view of the registry, swapped in whole by the assembler.
/// The maps are persistent hash tries, so a new snapshot that changes one service shares everything else
/// with the old one: an update costs work proportional to that service, not to the whole catalog.
public final class CatalogSnapshot: AtomicReference, Sendable {
    /// Services by name (ASCII case-insensitive).
    public let services: TreeDictionary<NameKey, ServiceEntry>
    /// Nodes by lower-cased name and datacenter.
    public let nodes: TreeDictionary<NodeKey, Node>
    /// Datacenter names that appear in the catalog (plus the local one), lower-cased.
    public let datacenters: Set<NameKey>
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

    /// A node by name and datacenter (ASCII case-insensitive); either may be a probe (`NameKey`).
    public struct NodeKey: Hashable, Sendable {
        public let nameKey: NameKey
        public let datacenterKey: NameKey
        public var name: String { nameKey.text }
        public var datacenter: String { datacenterKey.text }
        public init(name: String, datacenter: String) {
            self.nameKey = NameKey(name.lowercased())
            self.datacenterKey = NameKey(datacenter.lowercased())
        }
        public init(name: NameKey, datacenter: NameKey) {
            self.nameKey = name
            self.datacenterKey = datacenter
        }
    }

    public init(services: TreeDictionary<NameKey, ServiceEntry>, nodes: TreeDictionary<NodeKey, Node>, datacenters: Set<NameKey>,
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

    /// The zone file whose origin is `origin`, if any.
    public func zone(for origin: DNSName) -> Zone? { zoneIndex(for: origin).map { zones[$0] } }

    /// Where in `zones` the zone for `origin` is: the query path asks this, as an index needs no copy of the zone.
    public func zoneIndex(for origin: DNSName) -> Int? {
        zones.isEmpty ? nil : zones.firstIndex { $0.origin == origin }
    }

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
        var services = TreeDictionary<NameKey, ServiceEntry>()
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
        var datacenters: Set<NameKey> = [NameKey(localDatacenter.lowercased())]
        for n in source.nodes.values { datacenters.insert(NameKey(n.datacenter.lowercased())) }
        for list in source.services.values { for i in list { datacenters.insert(NameKey(i.node.datacenter.lowercased())) } }
        return CatalogSnapshot(services: services, nodes: TreeDictionary(uniqueKeysWithValues: source.nodes.map { ($0.key, $0.value) }),
                               datacenters: datacenters, zones: zones, generation: generation, reverse: reverse, names: names)
    }
}

/// Why some registry's data cannot be trusted, for `/ready` (an immutable list, swapped whole).
public final class RegistryProblems: AtomicReference, Sendable {
    public let reasons: [String]
    public init(_ reasons: [String]) { self.reasons = reasons }
}

/// Registries serving their state file (an immutable list, swapped whole).
final class RegistryOrigins: AtomicReference, Sendable {
    let list: [(registry: String, confirmed: Double)]
    init(_ list: [(String, Double)]) { self.list = list.map { (registry: $0.0, confirmed: $0.1) } }
}

/// The one place readers get the current snapshot: a lock-free atomic load.
public final class SnapshotStore: Sendable {
    /// Registries' states, recent changes and skips, for the operator view.
    public let activity = Activity()

    private let problemList = ManagedAtomic<RegistryProblems>(RegistryProblems([]))

    /// Registry problems that make the gateway not ready (an ACL that filters the catalog, say).
    public var problems: [String] { problemList.load(ordering: .acquiring).reasons }

    public func setProblems(_ reasons: [String]) { problemList.store(RegistryProblems(reasons), ordering: .releasing) }

    private let noticeList = ManagedAtomic<RegistryProblems>(RegistryProblems([]))

    /// What `/ready` says of registries without making the gateway unready while it serves their cached data: the
    /// last connection failure, a TLS or credential file that cannot be used, verification turned off.
    public var notices: [String] { noticeList.load(ordering: .acquiring).reasons }

    public func setNotices(_ lines: [String]) { noticeList.store(RegistryProblems(lines), ordering: .releasing) }

    private let stateOrigins = ManagedAtomic<RegistryOrigins>(RegistryOrigins([]))

    /// Registries whose data came from `--state-dir` and that have not answered since: name and confirmation time
    /// (seconds since the epoch), for `/ready`.
    public var fromState: [(registry: String, confirmed: Double)] { stateOrigins.load(ordering: .acquiring).list }

    public func setFromState(_ list: [(String, Double)]) { stateOrigins.store(RegistryOrigins(list), ordering: .releasing) }

    private let current: ManagedAtomic<CatalogSnapshot>

    public init(_ initial: CatalogSnapshot = .empty) {
        current = ManagedAtomic(initial)
    }

    public var snapshot: CatalogSnapshot { current.load(ordering: .acquiring) }

    public func publish(_ snapshot: CatalogSnapshot) {
        current.store(snapshot, ordering: .releasing)
    }

    /// Uptime in nanoseconds at which the oldest registry's data was last confirmed; negative for data confirmed
    /// before this boot (a state file); `Int64.min` while every registry is in contact.
    private let staleSince = ManagedAtomic<Int64>(Int64.min)

    public func setStale(since uptimeNanoseconds: Int64?) {
        staleSince.store(uptimeNanoseconds ?? Int64.min, ordering: .relaxed)
    }

    /// How long the data has been without a registry's confirmation; nil while every registry is in contact.
    public func staleness(now: UInt64 = Uptime.nanoseconds) -> Duration? {
        let since = staleSince.load(ordering: .relaxed)
        guard since != Int64.min, Int64(now) >= since else { return nil }
        return .nanoseconds(Int64(now) - since)
    }
}

/// A monotonic clock reading that fits in an atomic.
public enum Uptime {
    /// `nanoseconds` as a signed value, for instants that may lie before this boot.
    public static var signed: Int64 { Int64(nanoseconds) }

    public static var nanoseconds: UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

import DNSWire
import Foundation
import HashTreeCollections
import Logging
import Metrics
import NIOCore
import NIOPosix

/// Merges the registries (in `--registry` order) and the zone files into snapshots.
///
/// - A registry publishes either its whole catalog (`replace`), or only the services and nodes that
///   changed (`update`); then only those entries are merged again, and the persistent maps share the rest.
/// - The same service in several registries: the instance lists are merged, and the first registry wins when
///   two registries carry the same instance (node, datacenter, ID). The same node: the first registry wins.
/// - The snapshot is loaded once every registry and the zone files have loaded once; before that,
///   names in the domain get SERVFAIL rather than a false NXDOMAIN.
public actor CatalogAssembler {
    /// Runs on the registries' event loop, beside the Consul watcher and its connections: a watcher's update is
    /// a job queued on the same thread, not a thread woken in Swift's pool and another woken to come back.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { RegistryExecution.loop.executor.asUnownedSerialExecutor() }
    public nonisolated let store: SnapshotStore
    private let localDatacenter: String
    /// The local datacenter as configured (original case).
    public nonisolated let localDatacenterName: String
    private let logger: Logger
    private var sources: [SourceCatalog?]
    private var names: [String]
    private var zones: [Zone]?
    private var services = TreeDictionary<NameKey, ServiceEntry>()
    private var nodes = TreeDictionary<CatalogSnapshot.NodeKey, Node>()
    private var reverse = ReverseIndex()
    private var nameIndex = NameIndex()
    /// How many instances and nodes name each datacenter, so the set stays exact under updates.
    private var datacenterCounts: [String: Int] = [:]
    private var generation: UInt32 = 0
    /// Snapshots published: the rate a registry's churn costs the answer path.
    private let published = Counter(label: "signpost_snapshots_published_total")
    /// Uptime (ns) at which each registry lost contact, if it has.
    private var staleSince: [Int: Int64] = [:]

    /// - Parameters:
    ///   - sources: a name per registry, for logs.
    ///   - expectsZones: whether zone files will be delivered (so loading waits for them).
    public init(sources: [String], expectsZones: Bool, localDatacenter: String, store: SnapshotStore, logger: Logger) {
        self.names = sources
        self.sources = Array(repeating: nil, count: sources.count)
        self.zones = expectsZones ? nil : []
        self.localDatacenter = localDatacenter.lowercased()
        self.localDatacenterName = localDatacenter
        self.store = store
        self.logger = logger
        store.activity.setRegistries(sources)
    }

    /// A registry's whole catalog (initial load, re-list, or a file change).
    public func replace(source index: Int, with catalog: SourceCatalog) {
        let old = sources[index]
        sources[index] = catalog
        var serviceNames = Set(catalog.services.keys)
        var nodeKeys = Set(catalog.nodes.keys)
        if let old {
            serviceNames.formUnion(old.services.keys)
            nodeKeys.formUnion(old.nodes.keys)
        }
        remerge(services: serviceNames, nodes: nodeKeys, from: index)
        store.activity.updateRegistry(index) { $0.loaded = true }
        publish()
    }

    /// Only what changed: `services[name] = []` removes a service from this registry; `nodes[key] = nil`
    /// (an explicit nil value) removes a node.
    public func update(source index: Int, services changed: [String: [Instance]], nodes changedNodes: [CatalogSnapshot.NodeKey: Node?]) {
        // Mutate in place: copying the source's dictionaries here would cost the whole catalog per update.
        if sources[index] == nil { sources[index] = SourceCatalog() }
        for (name, list) in changed { sources[index]!.services[name] = list.isEmpty ? nil : list }
        for (key, node) in changedNodes { sources[index]!.nodes[key] = node }
        remerge(services: Set(changed.keys), nodes: Set(changedNodes.keys), from: index)
        store.activity.updateRegistry(index) { $0.loaded = true }
        publish()
    }

    /// A registry's data from its state file, confirmed at `confirmed` (seconds since the epoch): served, stale from
    /// that moment, until the registry answers (`setContact(inContact: true)` or a `replace`).
    public func restore(source index: Int, with catalog: SourceCatalog, confirmed: Double) {
        replace(source: index, with: catalog)
        // Wall-clock age, as the uptime clock cannot look before this boot; bounded (100 years) for the arithmetic.
        let age = min(max(0, Date().timeIntervalSince1970 - confirmed), 3.2e9)
        staleSince[index] = Uptime.signed - Int64(age * 1e9)
        fromState[index] = confirmed
        store.activity.updateRegistry(index) { $0.fromState = confirmed }
        store.setStale(since: staleSince.values.min())
        publishStatus()
        logger.warning("registry data from the state file; stale until the registry answers",
                       metadata: ["registry": "\(names[index])", "age": "\(Int(age))s"])
    }

    /// Registries serving their state file's data, with its confirmation time.
    private var fromState: [Int: Double] = [:]

    private func publishStatus() {
        store.setFromState(fromState.keys.sorted().map { (names[$0], fromState[$0]!) })
    }

    public func setZones(_ zones: [Zone]) {
        self.zones = zones
        publish()
    }

    /// A registry that answers, but with data that may be `age` old (a Consul follower without a leader): its
    /// staleness counts from that long ago, so `--max-stale` and the staleness metric see it.
    public func setContact(source index: Int, dataAge age: Duration) {
        let seconds = min(max(0, age.components.seconds), 3_200_000_000)
        let since = Uptime.signed - seconds * 1_000_000_000 - max(0, age.components.attoseconds / 1_000_000_000)
        if fromState.removeValue(forKey: index) != nil { publishStatus() }
        if staleSince[index] == nil {
            logger.warning("registry data is old; serving it as stale", metadata: ["registry": "\(names[index])", "age": "\(age)"])
        }
        staleSince[index] = since
        store.activity.updateRegistry(index) { ($0.fromState, $0.staleSince) = (nil, Date().timeIntervalSince1970 - Double(seconds)) }
        store.setStale(since: staleSince.values.min())
    }

    private var problems: [Int: String] = [:]

    /// A registry's problem that makes the gateway not ready (nil clears it); `/ready` says it.
    public func setProblem(source index: Int, _ reason: String?) {
        problems[index] = reason
        store.activity.updateRegistry(index) { $0.problem = reason }
        store.setProblems(problems.keys.sorted().map { "\(names[$0]): \(problems[$0]!)" })
    }

    private var connectionErrors: [Int: (reason: String, primary: Bool)] = [:]
    private var warnings: [Int: [String]] = [:]

    /// A registry's last connection failure (nil once it answers again), for `/ready` and the operator view. A
    /// registry's main watch says it; its other watches (Consul's health lists) only when the main one has nothing
    /// to say, so `/ready` names the failure that keeps the data from loading.
    public func setConnectionError(source index: Int, _ reason: String?, primary: Bool = true) {
        if !primary, let current = connectionErrors[index], current.primary { return }
        connectionErrors[index] = reason.map { ($0, primary) }
        store.activity.updateRegistry(index) { $0.lastError = reason }
        publishNotices()
    }

    /// Standing warnings about a registry's connection (verification off, a secret on the command line, a TLS
    /// or credential file that cannot be used).
    public func setWarnings(source index: Int, _ lines: [String]) {
        warnings[index] = lines.isEmpty ? nil : lines
        store.activity.updateRegistry(index) { $0.warnings = lines }
        publishNotices()
    }

    private func publishNotices() {
        let indexes = Set(connectionErrors.keys).union(warnings.keys).sorted()
        store.setNotices(indexes.flatMap { i in
            (connectionErrors[i].map { ["\(names[i]): \($0.reason)"] } ?? []) + (warnings[i] ?? []).map { "\(names[i]): warning: \($0)" }
        })
    }

    /// Records whether a registry is in contact; the store exposes the oldest loss of contact.
    public func setContact(source index: Int, inContact: Bool) {
        if inContact {
            if fromState.removeValue(forKey: index) != nil { publishStatus() }
            if staleSince.removeValue(forKey: index) != nil {
                logger.info("registry in contact again", metadata: ["registry": "\(names[index])"])
            }
        } else if staleSince[index] == nil {
            staleSince[index] = Uptime.signed
            logger.warning("registry unreachable; serving the cached catalog", metadata: ["registry": "\(names[index])"])
        }
        let since = staleSince[index].map { Date().timeIntervalSince1970 - Double(Uptime.signed - $0) / 1e9 }
        store.activity.updateRegistry(index) { r in
            r.staleSince = since
            if inContact { r.fromState = nil }
        }
        store.setStale(since: staleSince.values.min())
    }

    /// Merges the registries' lists again for these services and nodes, after a change `from` one registry
    /// (whose name the recorded instance changes carry).
    private func remerge(services serviceNames: Set<String>, nodes nodeKeys: Set<CatalogSnapshot.NodeKey>, from index: Int) {
        let now = Date().timeIntervalSince1970
        var changes: [Activity.Change] = [], keys: [String] = []
        defer {
            store.activity.record(changes, keys: keys)
            if !changes.isEmpty { store.activity.updateRegistry(index) { $0.lastChange = now } }
        }
        let registry = names.indices.contains(index) ? names[index] : "zones"
        for name in serviceNames {
            let lists = sources.compactMap { $0?.services[name] }
            let merged = ServiceEntry.merged(name: name, lists)
            let (c, k) = Activity.changes(service: name, before: services[name]?.instances ?? [], after: merged?.instances ?? [],
                                          registry: registry, now: now)
            changes += c
            keys += k
            count(services[name]?.instances, -1)
            count(merged?.instances, +1)
            reverse.replace(service: services[name], with: merged)
            nameIndex.replace(service: services[name], with: merged)
            services[name] = merged
        }
        for key in nodeKeys {
            let merged = sources.lazy.compactMap { $0?.nodes[key] }.first
            if let old = nodes[key] { datacenterCounts[old.datacenter.lowercased(), default: 0] -= 1 }
            if let merged { datacenterCounts[merged.datacenter.lowercased(), default: 0] += 1 }
            reverse.replace(node: nodes[key], with: merged)
            nodes[key] = merged
        }
    }

    private func count(_ instances: [Instance]?, _ delta: Int) {
        for inst in instances ?? [] { datacenterCounts[inst.node.datacenter.lowercased(), default: 0] += delta }
    }

    private func publish() {
        published.increment()
        // The default SOA serial: seconds since the epoch, but always increasing.
        generation = max(generation &+ 1, UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970)))
        var datacenters: Set<NameKey> = [NameKey(localDatacenter)]
        for (dc, n) in datacenterCounts where n > 0 { datacenters.insert(NameKey(dc)) }
        let loaded = zones != nil && sources.allSatisfy { $0 != nil }
        store.publish(CatalogSnapshot(services: services, nodes: nodes, datacenters: datacenters, zones: zones ?? [],
                                      generation: generation, isLoaded: loaded, reverse: reverse,
                                      names: nameIndex))
    }

    /// Instances and services currently served, for logs.
    public var counts: (services: Int, instances: Int) {
        (services.count, services.values.reduce(0) { $0 + $1.instances.count })
    }
}

/// The event loop the registry side shares: the assembler, the Consul watcher and its connections to the agent.
public enum RegistryExecution {
    public static let loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()
}

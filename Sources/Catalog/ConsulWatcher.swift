import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix

/// Follows a Consul agent through its HTTP API so that each change costs what changed, not the catalog.
///
/// Four blocking queries, each on a narrow wake (DESIGN.md, "Watching Consul at 10,000 services", says why these):
/// - `/v1/health/state/critical` and `/v1/health/state/warning`: Consul wakes them only when a check enters, leaves
///   or changes inside that status (its status index), and their bodies list only the checks not passing, which is
///   short in a healthy datacenter. Diffed by node and check ID against the last list, they name the services whose
///   health moved: a check that failed, came back to passing, or was deregistered while failing. A node-level check
///   names every service on its node.
/// - `/v1/catalog/services`, on the services table: a registration, a deregistration, a change of port, address,
///   tags or meta, and a node's removal (which removes its services). New names are read; names that went are
///   removed; and since the body cannot say which of the other services moved, a sweep asks each one for its own
///   index (`X-Consul-Index` of `/v1/health/service/<name>` with a filter that matches nothing: a few hundred bytes),
///   and reads only those whose index moved.
/// - `/v1/catalog/nodes`, filtered to nothing, on the nodes table: a node's address or meta changed (which moves
///   the index of every service on it, found by the same sweep).
///
/// A service is read with `/v1/health/service/<name>`, a bounded number at a time, and only a change in what it
/// serves is published, at most 20 times a second. So the agent sees at most `readConcurrency` + 4 connections
/// (Consul allows 200 per client), the snapshot is always complete, and a DNS answer never waits on Consul.
///
/// Blocking-query rules, as Consul documents them:
/// - the index returned in `X-Consul-Index` is sent back as `?index=`;
/// - an index that goes backwards resets to 0 (a full, non-blocking read);
/// - an index below 1 is treated as 1;
/// - a query that returns at once with nothing new is rate-limited (`minInterval`);
/// - the wait has jitter added, so many watchers do not wake in step.
public actor ConsulWatcher {
    public struct Configuration: Sendable {
        /// The agent's address (`http://`, `https://` or `unix://`), TLS and credentials.
        public var connection: ConnectionSettings
        public var address: String { connection.endpoints[0] }
        public var datacenter: String?
        public var stale: Bool
        public var localDatacenter: String
        /// The `?wait=` of each blocking query (Consul's default is 5m).
        public var wait: Duration = .seconds(300)
        /// The least time between two queries of one watch that return with nothing new.
        public var minInterval: Duration = .milliseconds(250)
        /// Health changes: this many reads at once, then one round per `churnInterval`, so a flapping check is
        /// read at that rate and its changes in between are folded into the next read.
        public var churnBurst = 2
        public var churnInterval: Duration = .seconds(1)
        /// Service reads (and index probes) in flight at once, each holding one connection to the agent.
        public var readConcurrency = 16
        /// The least time between two snapshots this watcher publishes; changes in between go out together.
        public var publishInterval: Duration = .milliseconds(50)
        /// `--state-dir`: the last-good data and the indexes, loaded at start-up and written on change.
        public var state: StateKeeper? = nil
        /// `--max-stale`: a state file confirmed longer ago than this is not served.
        public var maxStale: Duration? = nil
        public var backoff = Backoff()

        public init(connection: ConnectionSettings, datacenter: String? = nil, stale: Bool = true, localDatacenter: String = "dc1") {
            self.connection = connection
            self.datacenter = datacenter
            self.stale = stale
            self.localDatacenter = localDatacenter
        }
    }

    /// The two check lists watched, each holding only checks not passing.
    enum FailingStatus: String, CaseIterable, Sendable { case critical, warning }

    /// A check in a failing list: its service's key (empty for a node-level check) and its node (lower-cased).
    struct CheckMark: Equatable, Sendable {
        var service: String
        var node: String
    }

    /// The failing checks the data holds, for one status: each check (by node and check ID) with the services
    /// whose instances carry it (a node-level check: every service on its node). Kept from every read, so that a
    /// failing list is compared with the data, not with the previous list: a check that failed and recovered
    /// between two lists, while its service was read in between, still shows as a difference.
    struct HeldChecks: Sendable {
        private(set) var services: [String: Set<String>] = [:]
        private var keysByService: [String: [String]] = [:]

        static func key(node: String, check: String) -> String { node.lowercased() + "\u{0}" + check }

        /// What `service`'s instances now carry in this status.
        mutating func hold(_ service: String, _ keys: [String]) {
            for key in keysByService[service] ?? [] {
                services[key]?.remove(service)
                if services[key]?.isEmpty == true { services[key] = nil }
            }
            for key in keys { services[key, default: []].insert(service) }
            keysByService[service] = keys.isEmpty ? nil : keys
        }

        /// Where a failing list and the data disagree: the services of checks that only one of them has, and the
        /// nodes of node-level checks in the list that the data lacks (every service on them).
        func differences(_ list: [String: CheckMark]) -> (services: Set<String>, nodes: Set<String>) {
            var out: Set<String> = [], nodes: Set<String> = []
            for (key, mark) in list where services[key] == nil {
                if mark.service.isEmpty { nodes.insert(mark.node) } else { out.insert(mark.service) }
            }
            for (key, holders) in services where list[key] == nil { out.formUnion(holders) }
            return (out, nodes)
        }
    }

    public let configuration: Configuration
    private let assembler: CatalogAssembler
    private let sourceIndex: Int
    private let logger: Logger
    public nonisolated let connection: RegistryConnection
    private let loop: RegistryLoop
    /// Nodes each service's instances name, so a node stays while any service names it.
    private var nodesByService: [String: [CatalogSnapshot.NodeKey: Node]] = [:]
    /// The services with an instance on each node (by lower-cased node name): what a node-level check touches.
    private var servicesByNode: [String: Set<String>] = [:]
    private var nodeRefs = NodeReferences()
    /// Names already reported as skipped, so each is logged once, not on every catalog change.
    private var reportedSkips: Set<String> = []
    private let skips: SkipCounters
    /// 1 while Consul's ACLs filter what the watcher reads.
    private let filteredGauge: Gauge
    /// Updates held back by a service's churn limit (each folds one or more changes into the next read).
    private let delayed: Counter
    /// Index probes sent by sweeps, and the services they found moved.
    private let probes: Counter
    private let sweeps: Counter
    /// Services brought in line with a failing list without a read.
    private let patches: Counter

    /// The event loop this actor runs on, which is also the one its connections to the agent live on: a response
    /// is read and decoded on the thread that received it, with no hop between NIO's threads and Swift's pool.
    private nonisolated let eventLoop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { eventLoop.executor.asUnownedSerialExecutor() }

    public init(configuration: Configuration, assembler: CatalogAssembler, sourceIndex: Int, logger: Logger,
                connection: RegistryConnection? = nil) {
        let eventLoop = connection?.eventLoop ?? RegistryExecution.loop
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.logger = logger
        // Four blocking queries and at most `readConcurrency` reads: far under Consul's 200 connections per client.
        let connection = connection ?? RegistryConnection(settings: configuration.connection, registry: .consul,
                                                          name: "consul:" + configuration.address, logger: logger,
                                                          poolSize: configuration.readConcurrency + 6, eventLoop: eventLoop)
        self.connection = connection
        self.loop = RegistryLoop(connection: connection, assembler: assembler, sourceIndex: sourceIndex, state: configuration.state,
                                 backoff: configuration.backoff, logger: logger)
        self.skips = SkipCounters(registry: "consul")
        self.filteredGauge = Gauge(label: "signpost_registry_acl_filtered", dimensions: [("registry", "consul")])
        self.delayed = Counter(label: "signpost_registry_updates_delayed_total", dimensions: [("registry", "consul")])
        self.probes = Counter(label: "signpost_consul_index_probes_total")
        self.sweeps = Counter(label: "signpost_consul_sweeps_total")
        self.patches = Counter(label: "signpost_consul_patched_total")
        filteredGauge.record(0)
    }

    /// The next `?index=` after a response carried `returned`, per Consul's rules.
    static func nextIndex(previous: UInt64, returned: UInt64?) -> UInt64 {
        guard let returned else { return 0 }
        if returned < previous { return 0 }
        return max(returned, 1)
    }

    /// Runs until cancelled: the four watches, side by side.
    public func run() async {
        let files = Task { [loop] in await loop.watchFiles() }
        if let keeper = configuration.state, let state = keeper.load(maxStale: configuration.maxStale) { await restore(state) }
        let writer = configuration.state.map { keeper in Task { await keeper.run(source: self) } }
        // The watches prefer the loop their actor runs on: an answer then resumes on the thread that read it.
        let onLoop = LoopTaskExecutor(eventLoop)
        await withTaskGroup(of: Void.self) { group in
            group.addTask(executorPreference: onLoop) { await self.watchCatalog() }
            group.addTask(executorPreference: onLoop) { await self.watchNodes() }
            for status in FailingStatus.allCases { group.addTask(executorPreference: onLoop) { await self.watchFailing(status) } }
            await group.waitForAll()
        }
        writer?.cancel()
        await writer?.value
        for task in later.values { task.cancel() }
        flushTask?.cancel()
        files.cancel()
        await connection.shutdown()
    }

    /// The service set: a blocking query on `/v1/catalog/services`, whose index moves on writes to the service
    /// table. New services are read, services that went are removed, and a sweep finds which others moved.
    private func watchCatalog() async {
        var index = catalogIndex
        // Resumed from a state file: the first query blocks only briefly, so an unchanged Consul is confirmed at once
        // (a changed one answers at once anyway).
        var firstWait: Duration? = index > 0 ? .milliseconds(20) : nil
        await loop.run({ _, _ in
            let started = ContinuousClock.now
            let (body, returned, leader) = try await get("/v1/catalog/services", index: index, wait: firstWait ?? configuration.wait)
            firstWait = nil
            let services = try connection.decode([String: [String]?].self, body, path: "/v1/catalog/services", endpoint: configuration.address)
            let filtered = Self.filteredByACLs(services: services.keys, token: connection.hasToken, header: leader.filteredByACLs)
            await reportACLFiltering(filtered)
            let names = servable(services.keys)
            let next = Self.nextIndex(previous: index, returned: returned)
            if next < index { sweptThrough = 0 }
            // Everything filtered away: not loaded (SERVFAIL) if nothing was; if something was (a cache, a state
            // file), it is kept, unconfirmed, rather than an empty catalog (NXDOMAIN for every name). The problem is
            // on /ready; the blocking query goes on, and loads once the token can read.
            let blind = filtered && names.isEmpty
            if blind {
                if !loaded { await assembler.setContact(source: sourceIndex, inContact: true) }
            } else if !loaded {
                await loadAll(names)
            } else if next != catalogIndex {
                // Compared with the last index seen, not the one sent: after a failure (index 0) an unchanged
                // services table costs nothing.
                await reconcile(names, through: next)
            }
            if let age = leader.dataAge, !blind {
                await assembler.setContact(source: sourceIndex, dataAge: age)
                configuration.state?.confirmed(lag: age)
            } else if !blind {
                await assembler.setContact(source: sourceIndex, inContact: true)
                configuration.state?.confirmed()
            }
            if !unreadAfterRestore.isEmpty {
                let unread = unreadAfterRestore
                unreadAfterRestore = []
                await readAndPublish(unread.intersection(known))
            }
            if next == index { try await pace(since: started) }
            index = next
            catalogIndex = next
        }, onFailure: { index = 0 })
    }

    /// Nodes: a blocking query on `/v1/catalog/nodes` whose filter matches no node, so its body is `[]` and it is a
    /// pure wake on the nodes table. A node's address or meta changing moves the index of every service on it,
    /// which the sweep finds. (A node that goes takes its services with it, which the catalog watch sees too.)
    private func watchNodes() async {
        var index = nodesIndex
        await loop.run(reportsContact: false, { _, _ in
            let started = ContinuousClock.now
            let (body, returned, _) = try await get("/v1/catalog/nodes", index: index, wait: configuration.wait, filter: Self.matchesNoNode)
            // Empty, but still checked to be the list Consul sends: a proxy's answer is not a wake.
            _ = try connection.decode([AnyEntry].self, body, path: "/v1/catalog/nodes", endpoint: configuration.address)
            let next = Self.nextIndex(previous: index, returned: returned)
            // Compared with the last index seen (kept through failures); the first one ever is only a start.
            if loaded, nodesIndex > 0, next != nodesIndex { await sweep(through: next) }
            if next == index { try await pace(since: started) }
            if next != nodesIndex { configuration.state?.changed() }
            index = next
            nodesIndex = next
        }, onFailure: { index = 0 })
    }

    /// Any JSON object, unread.
    struct AnyEntry: Decodable {}

    /// Consul's filter language: no node and no health entry has an empty node name.
    static let matchesNoNode = #"Node == """#
    static let matchesNoEntry = #"Node.Node == """#

    /// Health: a blocking query on `/v1/health/state/<status>`, which Consul wakes only when that status's set of
    /// checks changes. The services whose checks entered, left or changed are read again (a node-level check:
    /// every service on that node). Each service has a token bucket (the blocking-query docs' advice): past its
    /// burst, its next read waits for a token, and the changes meanwhile fold into that read, so a flapping check
    /// costs one read a second and delays no other.
    ///
    /// The index Consul returns is the whole checks table's, so a write elsewhere (a passing check's output) makes
    /// the next query return at once with the same list: such a turn, with nothing changed, is paced.
    private func watchFailing(_ status: FailingStatus) async {
        // From 0 at every start: one read of a short list, compared with the data (restored or loaded).
        var index: UInt64 = 0
        let path = "/v1/health/state/" + status.rawValue
        await loop.run(reportsContact: false, { _, _ in
            let started = ContinuousClock.now
            let (body, returned, _) = try await get(path, index: index, wait: configuration.wait)
            let checks = try connection.decode([FailingCheck].self, body, path: path, endpoint: configuration.address)
            let next = Self.nextIndex(previous: index, returned: returned)
            let list = Self.listed(checks)
            let changed = failingChanges(status, list)
            // While the first load runs, a difference may be a service not read yet, or one read before the list:
            // either way it is read again once the load is done.
            if !loaded { changedDuringLoad.formUnion(changed) }
            if loaded, !changed.isEmpty {
                var now: Set<String> = []
                // A service with a read scheduled is left to it: that read takes this change too. (Taking a token for
                // it on every list while it waits would push its next turn ever later.)
                for name in changed where later[name] == nil {
                    let wait = buckets[name, default: TokenBucket(burst: configuration.churnBurst, interval: configuration.churnInterval)].take()
                    if wait == .zero { now.insert(name) } else { deferRead(name, by: wait) }
                }
                if !now.isEmpty {
                    let unpatched = await patch(status, list, services: now)
                    if !unpatched.isEmpty { await readAndPublish(unpatched) }
                }
            }
            if next == index || changed.isEmpty { try await pace(since: started) }
            index = next
        }, onFailure: { index = 0 })
    }

    /// One entry of `/v1/health/state/<status>`: what the diff and a patch need.
    struct FailingCheck: Decodable {
        var Node: String
        var CheckID: String
        var Name: String?
        var Status: String?
        var Output: String?
        var Notes: String?
        var ServiceID: String?
        var ServiceName: String?
    }

    /// The blocking queries' indexes, kept in the state file so a restart resumes where they were.
    private var catalogIndex: UInt64 = 0
    private var nodesIndex: UInt64 = 0
    /// The failing checks the data holds, per status.
    private var held: [FailingStatus: HeldChecks] = [:]
    /// Each service's own index (`X-Consul-Index` of its last read): what a sweep compares against.
    private var serviceIndexes: [String: UInt64] = [:]
    /// Reads under way; while any is, or one is scheduled, the data is behind what the watches have seen.
    private var readsInFlight = 0
    /// Services the state file says were followed but had no data (a read that failed): read once Consul answers.
    private var unreadAfterRestore: Set<String> = []
    /// Services whose checks changed while the first load ran; read once it is done.
    private var changedDuringLoad: Set<String> = []

    /// A failing list by node and check ID.
    static func listed(_ checks: [FailingCheck]) -> [String: FailingCheck] {
        var out: [String: FailingCheck] = [:]
        for c in checks { out[HeldChecks.key(node: c.Node, check: c.CheckID)] = c }
        return out
    }

    /// What the diff needs of each listed check: its service's key (empty for a node-level check) and its node.
    static func marks(_ list: [String: FailingCheck]) -> [String: CheckMark] {
        list.mapValues { CheckMark(service: ($0.ServiceID ?? "").isEmpty ? "" : ServiceName.key($0.ServiceName ?? ""), node: $0.Node.lowercased()) }
    }

    /// The services where this status's list and the data disagree.
    private func failingChanges(_ status: FailingStatus, _ list: [String: FailingCheck]) -> Set<String> {
        let (services, nodes) = held[status, default: HeldChecks()].differences(Self.marks(list))
        var changed = services
        for node in nodes { changed.formUnion(servicesByNode[node] ?? []) }
        return changed.intersection(known)
    }

    /// Brings `services` in line with a failing list without reading them: a listed check the data lacks takes the
    /// list's status and output (a node-level one, on every instance on its node); a check the data holds in this
    /// status that the list lacks is passing (or gone, which serves the same). The list carries all a check's DNS
    /// answer depends on, so an isolated flip costs the list alone. A service the list names but the data cannot
    /// place (an instance not read yet) is returned, to be read.
    private func patch(_ status: FailingStatus, _ list: [String: FailingCheck], services: Set<String>) async -> Set<String> {
        let heldNow = held[status, default: HeldChecks()]
        var patched: [String: [Instance]] = [:]
        var unread: Set<String> = []
        func apply(_ service: String, node: String, serviceID: String?, _ change: (inout Instance) -> Bool) {
            guard services.contains(service) else { return }
            // Being read: that read may have left Consul before this change; it is read again when it ends.
            if reading.contains(service) { readAgain.insert(service); return }
            guard var instances = patched[service] ?? published[service] else { unread.insert(service); return }
            var placed = false
            for i in instances.indices where instances[i].node.name.lowercased() == node && (serviceID == nil || instances[i].id == serviceID) {
                if change(&instances[i]) { placed = true }
            }
            if placed { patched[service] = instances } else { unread.insert(service) }
        }
        for (key, check) in list where heldNow.services[key] == nil {
            let node = check.Node.lowercased(), serviceID = check.ServiceID ?? ""
            let state = CheckState(id: check.CheckID, name: check.Name ?? "", status: Health(registered: check.Status),
                                   output: CheckState.text(output: check.Output, notes: check.Notes), nodeLevel: serviceID.isEmpty)
            let targets = serviceID.isEmpty ? (servicesByNode[node] ?? []) : [ServiceName.key(check.ServiceName ?? "")]
            for service in targets {
                apply(service, node: node, serviceID: serviceID.isEmpty ? nil : serviceID) { Self.setCheck(state, on: &$0); return true }
            }
        }
        for (key, holders) in heldNow.services where list[key] == nil {
            guard let split = key.firstIndex(of: "\u{0}") else { continue }
            let node = String(key[..<split]), checkID = String(key[key.index(after: split)...])
            for service in holders {
                apply(service, node: node, serviceID: nil) { instance in
                    guard let j = instance.checks.firstIndex(where: { $0.id == checkID }) else { return false }
                    var check = instance.checks[j]
                    check.status = .passing
                    check.output = ""
                    Self.setCheck(check, on: &instance)
                    return true
                }
            }
        }
        var changes: [String: [Instance]] = [:]
        for (service, instances) in patched where !unread.contains(service) {
            hold(service, instances)
            if !Instance.sameServing(published[service], instances) { changes[service] = instances }
            published[service] = instances
        }
        patches.increment(by: Int64(patched.count - unread.intersection(patched.keys).count))
        if !changes.isEmpty { await publish(changes, [:]) }
        return unread
    }

    /// A check's new state on an instance (added when the instance lacks it), and the instance's health folded again.
    static func setCheck(_ check: CheckState, on instance: inout Instance) {
        if let j = instance.checks.firstIndex(where: { $0.id == check.id && $0.nodeLevel == check.nodeLevel }) {
            instance.checks[j] = check
        } else {
            instance.checks.append(check)
        }
        instance.health = foldedHealth(instance.checks)
    }

    /// An instance's health in Consul: its worst check, node-level ones included.
    static func foldedHealth(_ checks: [CheckState]) -> Health {
        checks.reduce(.passing) { max($0, $1.status) }
    }

    /// Records the failing checks a service's data now carries (none, for a service that went).
    private func hold(_ service: String, _ instances: [Instance]) {
        var keys: [FailingStatus: [String]] = [:]
        for instance in instances {
            for check in instance.checks {
                let status: FailingStatus
                switch check.status {
                case .critical, .maintenance: status = .critical
                case .warning: status = .warning
                case .passing: continue
                }
                keys[status, default: []].append(HeldChecks.key(node: instance.node.name, check: check.id))
            }
        }
        for status in FailingStatus.allCases where held[status] != nil || keys[status] != nil {
            held[status, default: HeldChecks()].hold(service, keys[status] ?? [])
        }
    }

    /// Whether Consul's ACLs hid part of the catalog. Consul answers 200 with the results it may show, and sets
    /// `X-Consul-Results-Filtered-By-ACLs` only for a request that carries a token; so with a token the header
    /// tells, and without one a catalog that lacks the `consul` service (every real catalog lists it) does.
    static func filteredByACLs(services: some Collection<String>, token: Bool, header: Bool) -> Bool {
        if token { return header }
        return !services.contains { $0.equalsIgnoringASCIICase("consul") }
    }

    private var aclFiltered = false

    /// Logs a change of ACL filtering once, as an error that names the fix; sets the gauge and `/ready`.
    private func reportACLFiltering(_ filtered: Bool) async {
        guard filtered != aclFiltered else { return }
        aclFiltered = filtered
        filteredGauge.record(filtered ? 1 : 0)
        if filtered {
            let who = connection.hasToken ? "the watcher's token" : "the anonymous token"
            let reason = "Consul's ACLs filter the catalog for \(who); give Signpost a token with service:read and node:read (token-file= or CONSUL_HTTP_TOKEN_FILE)"
            logger.error("\(reason)", metadata: ["consul.address": "\(configuration.address)"])
            await assembler.setProblem(source: sourceIndex, reason)
        } else {
            logger.info("Consul's ACLs no longer filter the catalog", metadata: ["consul.address": "\(configuration.address)"])
            await assembler.setProblem(source: sourceIndex, nil)
        }
    }

    /// The services that can be served: every name that can be a DNS name, dotted ones included. The rest are
    /// logged once each and counted.
    private func servable(_ names: some Sequence<String>) -> Set<String> {
        var out: Set<String> = []
        for name in names {
            guard let reason = ServiceName.problem(name) else { out.insert(ServiceName.key(name)); continue }
            if reportedSkips.insert(name).inserted {
                let skip = SkippedName(location: "\(configuration.address)/v1/catalog/services", name: name, reason: reason)
                logger.error("\(skip)", metadata: ["registry": "consul", "consul.service": "\(name)", "reason": "\(reason.rawValue)"])
                skips.count(reason)
                assembler.store.activity.noteSkipped(registry: "consul", location: skip.location, name: name, reason: reason.description)
            }
        }
        return out
    }

    /// Services currently followed.
    private var known: Set<String> = []
    private var loaded = false
    /// Each service's instances as last published, so an unchanged read publishes nothing.
    private var published: [String: [Instance]] = [:]
    /// Per-service churn limits, and the reads they hold back.
    private var buckets: [String: TokenBucket] = [:]
    /// Reads scheduled for later (a churn limit's wait, or a failed read's backoff), one per service.
    private var later: [String: Task<Void, Never>] = [:]
    private var retryFailures: [String: Int] = [:]

    /// A read held back by the service's churn limit; a read already waiting takes this change too.
    private func deferRead(_ name: String, by wait: Duration) {
        delayed.increment()
        readLater(name, after: wait, replacing: false)
    }

    /// Reads `name` once more after `delay`. A read already scheduled stays, unless `replacing`.
    private func readLater(_ name: String, after delay: Duration, replacing: Bool) {
        if later[name] != nil && !replacing { return }
        later[name]?.cancel()
        later[name] = Task { [weak self] in
            do { try await Task.sleep(for: delay) } catch { return }
            await self?.readScheduled(name)
        }
    }

    private func readScheduled(_ name: String) async {
        later[name] = nil
        guard known.contains(name) else { return }
        await readAndPublish([name])
    }

    /// The first load: every service's health, `readConcurrency` at a time, then one replace. A service whose
    /// read failed (a 500, a 429, a 403 for its ACL) is retried on its own; it never keeps the others out.
    private func loadAll(_ names: Set<String>) async {
        known = names
        let results = await read(names)
        var catalog = SourceCatalog()
        for (name, instances) in results {
            catalog.services[name] = instances
            published[name] = instances
            setNodes(for: name, instances)
        }
        catalog.nodes = nodeRefs.nodes
        await assembler.replace(source: sourceIndex, with: catalog)
        lastPublish = .now
        #if os(Linux)
        // The load's bodies and their parse are garbage now, spread over the threads' malloc arenas; give the
        // pages back rather than hold the load's peak for the life of the process.
        _ = glibcMallocTrim(0)
        #endif
        configuration.state?.changed()
        loaded = true
        logger.info("consul loaded", metadata: ["consul.address": "\(configuration.address)", "consul.services": "\(names.count)"])
        if !changedDuringLoad.isEmpty {
            let changed = changedDuringLoad
            changedDuringLoad = []
            await readAndPublish(changed)
        }
    }

    /// A new service set at index `index`: services that went are removed, new ones are read, and a sweep finds
    /// which of the others moved.
    private func reconcile(_ names: Set<String>, through index: UInt64) async {
        let gone = known.subtracting(names)
        let new = names.subtracting(known)
        known = names
        if !gone.isEmpty {
            var services: [String: [Instance]] = [:]
            var nodes: [CatalogSnapshot.NodeKey: Node?] = [:]
            for name in gone {
                later.removeValue(forKey: name)?.cancel()
                buckets[name] = nil
                published[name] = nil
                serviceIndexes[name] = nil
                hold(name, [])
                services[name] = []
                nodes.merge(setNodes(for: name, [])) { $1 }
            }
            await publish(services, nodes)
        }
        if !new.isEmpty { await readAndPublish(new) }
        await sweep(through: index)
    }

    /// The highest index a sweep must cover, and the highest one a sweep already started covers: a sweep that
    /// starts after a write has been seen finds it, so two watches woken by one write (a new node with its service)
    /// cost one sweep.
    private var sweepWanted: UInt64 = 0
    private var sweptThrough: UInt64 = 0
    private var sweeping = false

    /// Asks every followed service for its own index, `readConcurrency` at a time, and reads those whose index is
    /// not the one their data came with. A probe that fails is a read (which retries on its own).
    private func sweep(through index: UInt64) async {
        sweepWanted = max(sweepWanted, index)
        guard !sweeping else { return }
        sweeping = true
        defer { sweeping = false }
        while sweepWanted > sweptThrough {
            sweptThrough = sweepWanted
            sweeps.increment()
            let names = known.subtracting(later.keys)
            var moved: Set<String> = []
            readsInFlight += 1
            await withTaskGroup(of: (String, UInt64?).self) { group in
                var pending = names.makeIterator()
                var started = 0
                while started < configuration.readConcurrency, let name = pending.next() {
                    group.addTask { await self.probe(name) }
                    started += 1
                }
                while let (name, index) = await group.next() {
                    if index == nil || index != serviceIndexes[name] { moved.insert(name) }
                    if let next = pending.next() { group.addTask { await self.probe(next) } }
                }
            }
            readsInFlight -= 1
            probes.increment(by: Int64(names.count))
            if !moved.isEmpty { await readAndPublish(moved) }
        }
    }

    /// A service's own index: `/v1/health/service/<name>` filtered to nothing, so the body is `[]` and only the
    /// `X-Consul-Index` header, which Consul takes before the filter runs, says anything.
    private func probe(_ name: String) async -> (String, UInt64?) {
        do { return (name, try await get(Self.healthPath(name), index: 0, wait: .zero, filter: Self.matchesNoEntry).1) } catch { return (name, nil) }
    }

    /// Reads these services and publishes those whose instances changed, in one update.
    private func readAndPublish(_ names: Set<String>) async {
        let results = await read(names)
        var services: [String: [Instance]] = [:]
        var nodes: [CatalogSnapshot.NodeKey: Node?] = [:]
        // A check whose output alone changed (Consul writes output every check_update_interval) is not a change to
        // publish: the answers are the same, and the explain view shows that output once something else changes.
        for (name, instances) in results where known.contains(name) && !Instance.sameServing(published[name], instances) {
            published[name] = instances
            services[name] = instances
            nodes.merge(setNodes(for: name, instances)) { $1 }
        }
        if !services.isEmpty { await publish(services, nodes) }
    }

    /// Changes waiting for the next snapshot, and when the last one went out.
    private var pendingServices: [String: [Instance]] = [:]
    private var pendingNodes: [CatalogSnapshot.NodeKey: Node?] = [:]
    private var lastPublish: ContinuousClock.Instant? = nil
    private var flushTask: Task<Void, Never>? = nil

    /// Hands changes to the assembler: at once when the last snapshot is `publishInterval` old, otherwise together
    /// with whatever else changes until then. Under churn the snapshot is rebuilt at most 1 / `publishInterval` times
    /// a second, and no change waits longer than that.
    private func publish(_ services: [String: [Instance]], _ nodes: [CatalogSnapshot.NodeKey: Node?]) async {
        pendingServices.merge(services) { $1 }
        pendingNodes.merge(nodes) { $1 }
        guard flushTask == nil else { return }
        let due = (lastPublish ?? .now - configuration.publishInterval) + configuration.publishInterval
        if ContinuousClock.now >= due {
            await flush()
        } else {
            flushTask = Task { [weak self] in
                do { try await Task.sleep(until: due) } catch { return }
                await self?.flushScheduled()
            }
        }
    }

    private func flushScheduled() async {
        flushTask = nil
        await flush()
    }

    private func flush() async {
        guard !pendingServices.isEmpty || !pendingNodes.isEmpty else { return }
        let services = pendingServices, nodes = pendingNodes
        pendingServices = [:]
        pendingNodes = [:]
        lastPublish = .now
        await assembler.update(source: sourceIndex, services: services, nodes: nodes)
        configuration.state?.changed()
    }

    /// Services being read, and those that changed again meanwhile: each is read once more when its read ends,
    /// so an answer that left Consul before the last change never has the last word.
    private var reading: Set<String> = []
    private var readAgain: Set<String> = []

    /// `/v1/health/service/<name>` for each, at most `readConcurrency` at once. Failures are logged, and retried.
    /// A service already being read is not read twice at once; it is read again after.
    private func read(_ requested: Set<String>) async -> [String: [Instance]] {
        let names = requested.subtracting(reading)
        readAgain.formUnion(requested.intersection(reading))
        reading.formUnion(names)
        var results = await readNow(names)
        reading.subtract(names)
        let again = readAgain.intersection(names)
        readAgain.subtract(again)
        if !again.isEmpty { results.merge(await read(again)) { $1 } }
        return results
    }

    private func readNow(_ names: Set<String>) async -> [String: [Instance]] {
        readsInFlight += 1
        defer { readsInFlight -= 1 }
        var results: [String: [Instance]] = [:]
        // One service (an isolated change): read in place, as a child task would start on Swift's pool and hop back.
        if names.count == 1, let name = names.first {
            let (_, result) = await readOne(name)
            results[name] = take(name, result)
            return results
        }
        await withTaskGroup(of: (String, Result<([Instance], UInt64?), any Error>).self) { group in
            var pending = names.sorted().makeIterator()
            var started = 0
            while started < configuration.readConcurrency, let name = pending.next() {
                // On every core, not on the watches' loop.
                group.addTask(executorPreference: globalConcurrentExecutor) { await self.readOne(name) }
                started += 1
            }
            while let (name, result) = await group.next() {
                results[name] = take(name, result)
                if let next = pending.next() { group.addTask(executorPreference: globalConcurrentExecutor) { await self.readOne(next) } }
            }
        }
        return results
    }

    /// A read's outcome recorded: its index and failing checks, or a retry; the instances when it was read.
    private func take(_ name: String, _ result: Result<([Instance], UInt64?), any Error>) -> [Instance]? {
        switch result {
        case .success(let (instances, index)):
            serviceIndexes[name] = index
            hold(name, instances)
            retryFailures[name] = nil
            return instances
        case .failure(let error):
            serviceIndexes[name] = nil
            scheduleRetry(name, error)
            return nil
        }
    }

    /// A read: nonisolated, so that the reads of a load (16 at a time) are decoded on every core, not on the
    /// actor's one thread.
    private nonisolated func readOne(_ name: String) async -> (String, Result<([Instance], UInt64?), any Error>) {
        do {
            let (instances, index, _) = try await health(name, index: 0)
            return (name, .success((instances, index)))
        } catch { return (name, .failure(error)) }
    }

    private func scheduleRetry(_ name: String, _ error: any Error) {
        guard !connection.isClosed else { return }
        let failures = (retryFailures[name] ?? 0) + 1
        retryFailures[name] = failures
        if failures == 1 {
            logger.warning("consul service not read; retrying it", metadata: ["consul.service": "\(name)", "error": "\(error)"])
        }
        readLater(name, after: configuration.backoff.delay(afterFailures: failures), replacing: true)
    }

    /// Rate limit: a query that came back with nothing new waits out the rest of `minInterval`.
    private func pace(since started: ContinuousClock.Instant) async throws {
        let elapsed = ContinuousClock.now - started
        if elapsed < configuration.minInterval { try await Task.sleep(for: configuration.minInterval - elapsed) }
    }

    /// Records which nodes a service names; returns the node entries that changed (nil = gone).
    @discardableResult
    private func setNodes(for service: String, _ instances: [Instance]) -> [CatalogSnapshot.NodeKey: Node?] {
        var now: [CatalogSnapshot.NodeKey: Node] = [:]
        for i in instances { now[NodeReferences.key(i.node)] = i.node }
        let before = nodesByService[service] ?? [:]
        nodesByService[service] = now.isEmpty ? nil : now
        for key in before.keys where now[key] == nil {
            servicesByNode[key.name]?.remove(service)
            if servicesByNode[key.name]?.isEmpty == true { servicesByNode[key.name] = nil }
        }
        for key in now.keys where before[key] == nil { servicesByNode[key.name, default: []].insert(service) }
        var touched: Set<CatalogSnapshot.NodeKey> = []
        // Only nodes that left, arrived or changed; an unchanged node keeps its count.
        for (key, node) in before where now[key] != node && nodeRefs.release(node) { touched.insert(key) }
        for (key, node) in now where before[key] != node && nodeRefs.retain(node) { touched.insert(key) }
        var changed: [CatalogSnapshot.NodeKey: Node?] = [:]
        for key in touched { changed[key] = .some(nodeRefs.node(key)) }
        return changed
    }

    static func healthPath(_ name: String) -> String {
        "/v1/health/service/" + (name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? name)
    }

    /// One service's instances, with health folded in from node-level and service-level checks.
    private nonisolated func health(_ name: String, index: UInt64) async throws -> ([Instance], UInt64?, LeaderContact) {
        let path = Self.healthPath(name)
        let (body, returned, leader) = try await Self.get(configuration, connection, path, index: index, wait: configuration.wait)
        let entries = try connection.decode([Lenient<HealthEntry>].self, body, path: path, endpoint: configuration.address)
        var out: [Instance] = []
        out.reserveCapacity(entries.count)
        for element in entries {
            do {
                guard let entry = element.wrappedValue else { throw EntryError(description: "entry does not decode: " + (element.problem ?? "")) }
                out.append(try Self.instance(from: entry, localDatacenter: configuration.localDatacenter))
            } catch {
                logger.error("consul entry skipped", metadata: ["registry": "consul", "consul.service": "\(name)", "reason": "\(error)"])
                skips.count(.unknownFormat)
                assembler.store.activity.noteSkipped(registry: "consul", location: "/v1/health/service/\(name)", name: name,
                                                     reason: "\(error)")
            }
        }
        return (out, returned, leader)
    }

    /// The agent's own datacenter, `Config.Datacenter` of `/v1/agent/self` (which needs `agent:read`).
    public static func agentDatacenter(connection settings: ConnectionSettings, logger: Logger) async throws -> String {
        let connection = RegistryConnection(settings: settings, registry: .consul, name: "consul:" + settings.endpoints[0], logger: logger)
        defer { Task { await connection.shutdown() } }
        return try await connection.agentDatacenter()
    }

    /// A health entry that cannot be an instance.
    struct EntryError: Error, CustomStringConvertible { var description: String }

    /// What a stale read says of the leader: `X-Consul-KnownLeader` and `X-Consul-LastContact` (milliseconds).
    struct LeaderContact {
        var knownLeader: String?
        var lastContact: String?
        /// `X-Consul-Results-Filtered-By-ACLs: true` (sent only to requests with a token).
        var filteredByACLs = false

        /// How old the answering server's data may be, when that matters: it has no leader, or has not heard
        /// from it for a second or more. Nil while the data is current.
        var dataAge: Duration? {
            let age = Duration.milliseconds(Int64(lastContact ?? "") ?? 0)
            if knownLeader == "false" || age >= .seconds(1) { return age }
            return nil
        }
    }

    /// One entry of `/v1/health/service/<name>`, typed as Consul's Go structs are (`structs.CheckServiceNode`):
    /// what an instance is made of. An entry that does not decode, or lacks a node, its address or a service name
    /// (`instance(from:)`), is skipped, logged and counted; the others serve.
    struct HealthEntry: Decodable, Sendable {
        struct NodePart: Decodable, Sendable {
            var Node: String?
            var Address: String?
            var Datacenter: String?
            var TaggedAddresses: [String: String]?
            var Meta: [String: String]?
        }
        struct TaggedAddress: Decodable, Sendable { var Address: String? }
        struct Weights: Decodable, Sendable {
            var Passing: Int?
            var Warning: Int?
        }
        struct ServicePart: Decodable, Sendable {
            var ID: String?
            var Service: String?
            var Tags: [String]?
            var Address: String?
            var TaggedAddresses: [String: TaggedAddress]?
            var Meta: [String: String]?
            var Port: Int?
            var Weights: Weights?
            var ModifyIndex: Int64?
        }
        struct Check: Decodable, Sendable {
            var CheckID: String?
            var Name: String?
            var Status: String?
            var Output: String?
            var Notes: String?
            var ServiceID: String?
        }
        var Node: NodePart?
        var Service: ServicePart?
        var Checks: [Check]?
    }

    static func instance(from entry: HealthEntry, localDatacenter: String) throws -> Instance {
        guard let node = entry.Node, let service = entry.Service, let nodeName = node.Node, let nodeAddressText = node.Address,
              let nodeAddress = Address(nodeAddressText), let serviceName = service.Service else {
            throw EntryError(description: "entry without Node, Node.Address or Service")
        }
        let dc = node.Datacenter.flatMap { $0.isEmpty ? nil : $0 } ?? localDatacenter
        let n = Node(name: nodeName, address: nodeAddress, datacenter: dc, meta: node.Meta ?? [:],
                     lanAddresses: Address.lanAddresses(ipv4: node.TaggedAddresses?["lan_ipv4"], ipv6: node.TaggedAddresses?["lan_ipv6"], besides: nodeAddress))
        var serviceAddress: Address? = nil
        if let a = service.Address, !a.isEmpty {
            guard let parsed = Address(a) else { throw EntryError(description: "Service.Address \"\(a)\" is not an address") }
            // Kept even when it equals the node's: Consul's DNS then names the SRV target <hex>.addr, not the node.
            serviceAddress = parsed
        }
        let id = service.ID.flatMap { $0.isEmpty ? nil : $0 } ?? serviceName
        var checks: [CheckState] = []
        for check in entry.Checks ?? [] {
            let sid = check.ServiceID ?? ""
            guard sid.isEmpty || sid == id else { continue }
            let name = check.Name ?? ""
            checks.append(CheckState(id: check.CheckID.flatMap { $0.isEmpty ? nil : $0 } ?? name, name: name,
                                     status: Health(registered: check.Status),
                                     output: CheckState.text(output: check.Output, notes: check.Notes), nodeLevel: sid.isEmpty))
        }
        let serviceTagged = service.TaggedAddresses
        let (passing, warning) = Instance.weights(passing: service.Weights?.Passing, warning: service.Weights?.Warning)
        var inst = Instance(id: id, service: serviceName, node: n, serviceAddress: serviceAddress,
                            port: UInt16(clamping: max(0, service.Port ?? 0)), tags: service.Tags ?? [], meta: service.Meta ?? [:],
                            weightPassing: passing, weightWarning: warning,
                            health: Self.foldedHealth(checks),
                            serviceLanAddresses: Address.lanAddresses(ipv4: serviceTagged?["lan_ipv4"]?.Address,
                                                                      ipv6: serviceTagged?["lan_ipv6"]?.Address, besides: serviceAddress))
        inst.checks = checks
        inst.origin = Origin(registry: "consul", location: "service \(id) on node \(nodeName)", revision: service.ModifyIndex)
        return inst
    }

    /// A GET, blocking when `index` > 0; returns the body, `X-Consul-Index` and the leader headers. `filter` is
    /// an expression in Consul's filter language.
    private func get(_ path: String, index: UInt64, wait: Duration, filter: String? = nil) async throws -> (ByteBuffer, UInt64?, LeaderContact) {
        try await Self.get(configuration, connection, path, index: index, wait: wait, filter: filter)
    }

    /// Runs where it is called from: on the actor (the watches, whose answers then need no hop), or on Swift's pool
    /// (reads).
    private static func get(_ configuration: Configuration, _ connection: RegistryConnection, _ path: String, index: UInt64, wait: Duration,
                            filter: String? = nil, isolation: isolated (any Actor)? = #isolation) async throws -> (ByteBuffer, UInt64?, LeaderContact) {
        var query: [String] = []
        if let dc = configuration.datacenter { query.append("dc=\(dc)") }
        if configuration.stale { query.append("stale") }
        if let filter { query.append("filter=" + (filter.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? filter)) }
        let waitSeconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        if index > 0 {
            // Jitter on top of the wait, so watches started together do not all return together.
            let jittered = waitSeconds + Double.random(in: 0...(waitSeconds / 16))
            query.append("index=\(index)")
            query.append("wait=\(Int(jittered * 1000))ms")
        }
        let endpoint = configuration.address
        let (headers, body) = try await connection.fetchJSON(endpoint, path, query: query.joined(separator: "&"),
                                                             deadline: .now() + .seconds(Int64(waitSeconds * 1.1) + 30))
        let returned = headers.first(name: "X-Consul-Index").flatMap { UInt64($0) }
        var leader = LeaderContact(knownLeader: headers.first(name: "X-Consul-KnownLeader"),
                                   lastContact: headers.first(name: "X-Consul-LastContact"))
        leader.filteredByACLs = headers.first(name: "X-Consul-Results-Filtered-By-ACLs") == "true"
        return (body, returned, leader)
    }
}

extension ConsulWatcher: StateSource {
    /// The services as published, each service's own index, and the catalog and nodes indexes to resume from.
    /// While reads or a sweep are under way or scheduled, the data is behind what the watches have seen: then the
    /// catalog index is 0, so a restart sweeps (and reads only the services whose index is not the one stored with
    /// their data). The failing lists need nothing stored: they are read again at start and compared with the data.
    public func currentState() -> (entries: [String: [Instance]], resume: [String: String]) {
        func text(_ value: some Encodable) -> String {
            (try? JSONEncoder().encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
        }
        let settled = readsInFlight == 0 && !sweeping && later.isEmpty && changedDuringLoad.isEmpty
        return (published, ["known": text(known.sorted()), "serviceIndexes": text(serviceIndexes),
                            "catalogIndex": settled ? String(catalogIndex) : "0", "nodesIndex": String(nodesIndex)])
    }

    /// The state file's services, served until Consul answers. The blocking queries resume from its indexes:
    /// Consul answers at once if they moved meanwhile, and only what changed is read again. A file written
    /// mid-change (catalog index 0), or by an older Signpost, resumes with a sweep.
    func restore(_ state: RegistryState) async {
        var catalog = SourceCatalog()
        for (name, instances) in state.entries where !instances.isEmpty {
            published[name] = instances
            catalog.services[name] = instances
            setNodes(for: name, instances)
            hold(name, instances)
        }
        catalog.nodes = nodeRefs.nodes
        let decoder = JSONDecoder()
        func value<T: Decodable>(_ key: String, _ type: T.Type) -> T? { state.resume[key].flatMap { try? decoder.decode(T.self, from: Data($0.utf8)) } }
        known = Set(published.keys).union(value("known", [String].self) ?? [])
        unreadAfterRestore = known.subtracting(published.keys)
        serviceIndexes = value("serviceIndexes", [String: UInt64].self) ?? [:]
        loaded = true
        catalogIndex = UInt64(state.resume["catalogIndex"] ?? "") ?? 0
        nodesIndex = UInt64(state.resume["nodesIndex"] ?? "") ?? 0
        // A file from before the per-service indexes: sweep (which then reads every service).
        if state.resume["serviceIndexes"] == nil { catalogIndex = 0 }
        await assembler.restore(source: sourceIndex, with: catalog, confirmed: state.confirmed)
        logger.info("serving the state file until Consul answers", metadata: ["path": "\(configuration.state!.path)",
                                                                            "consul.services": "\(known.count)", "consul.index": "\(catalogIndex)"])
    }
}

extension RegistryConnection {
    /// `Config.Datacenter` of `/v1/agent/self`.
    func agentDatacenter() async throws -> String {
        struct Agent: Decodable { struct Config: Decodable { var Datacenter: String }; var Config: Config }
        let endpoint = settings.endpoints[0], path = "/v1/agent/self"
        let body = try await execute(request(endpoint, path), endpoint: endpoint, deadline: .now() + .seconds(3)) { response in
            try await jsonBody(response, path: path, endpoint: endpoint)
        }
        let dc = try decode(Agent.self, body, path: path, endpoint: endpoint).Config.Datacenter
        guard !dc.isEmpty else { throw RegistryFailure(.badResponse, endpoint: endpoint, "\(path): Config.Datacenter is empty") }
        return dc
    }
}

#if os(Linux)
/// glibc's `malloc_trim`, which Swift's Glibc module does not export.
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

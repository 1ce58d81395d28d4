import Catalog
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
        let onLoop = LoopTaskExecutor.of(eventLoop)
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
    func watchCatalog() async {
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
    func watchNodes() async {
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

    /// Health: a blocking query on `/v1/health/state/<status>`, which Consul wakes only when that status's set of
    /// checks changes. The services whose checks entered, left or changed are read again (a node-level check:
    /// every service on that node). Each service has a token bucket (the blocking-query docs' advice): past its
    /// burst, its next read waits for a token, and the changes meanwhile fold into that read, so a flapping check
    /// costs one read a second and delays no other.
    ///
    /// The index Consul returns is the whole checks table's, so a write elsewhere (a passing check's output) makes
    /// the next query return at once with the same list: such a turn, with nothing changed, is paced.
    func watchFailing(_ status: FailingStatus) async {
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

    // MARK: State (all of it here; the behaviour is in the extensions by concern)

    public let configuration: Configuration
    let assembler: CatalogAssembler
    let sourceIndex: Int
    let logger: Logger
    public nonisolated let connection: RegistryConnection
    let loop: RegistryLoop
    /// Nodes each service's instances name, so a node stays while any service names it.
    var nodesByService: [String: [CatalogSnapshot.NodeKey: Node]] = [:]
    /// The services with an instance on each node (by lower-cased node name): what a node-level check touches.
    var servicesByNode: [String: Set<String>] = [:]
    var nodeRefs = NodeReferences()
    /// Names already reported as skipped, so each is logged once, not on every catalog change.
    var reportedSkips: Set<String> = []
    let skips: SkipCounters
    /// 1 while Consul's ACLs filter what the watcher reads.
    let filteredGauge: Gauge
    /// Updates held back by a service's churn limit (each folds one or more changes into the next read).
    let delayed: Counter
    /// Index probes sent by sweeps, and the services they found moved.
    let probes: Counter
    let sweeps: Counter
    /// Services brought in line with a failing list without a read.
    let patches: Counter

    /// The event loop this actor runs on, which is also the one its connections to the agent live on: a response
    /// is read and decoded on the thread that received it, with no hop between NIO's threads and Swift's pool.
    nonisolated let eventLoop: any EventLoop
    /// The blocking queries' indexes, kept in the state file so a restart resumes where they were.
    var catalogIndex: UInt64 = 0
    var nodesIndex: UInt64 = 0
    /// The failing checks the data holds, per status.
    var held: [FailingStatus: HeldChecks] = [:]
    /// Each service's own index (`X-Consul-Index` of its last read): what a sweep compares against.
    var serviceIndexes: [String: UInt64] = [:]
    /// Reads under way; while any is, or one is scheduled, the data is behind what the watches have seen.
    var readsInFlight = 0
    /// Services the state file says were followed but had no data (a read that failed): read once Consul answers.
    var unreadAfterRestore: Set<String> = []
    /// Services whose checks changed while the first load ran; read once it is done.
    var changedDuringLoad: Set<String> = []

    var aclFiltered = false

    /// Services currently followed.
    var known: Set<String> = []
    var loaded = false
    /// Each service's instances as last published, so an unchanged read publishes nothing.
    var published: [String: [Instance]] = [:]
    /// Per-service churn limits, and the reads they hold back.
    var buckets: [String: TokenBucket] = [:]
    /// Reads scheduled for later (a churn limit's wait, or a failed read's backoff), one per service.
    var later: [String: Task<Void, Never>] = [:]
    var retryFailures: [String: Int] = [:]

    /// The highest index a sweep must cover, and the highest one a sweep already started covers: a sweep that
    /// starts after a write has been seen finds it, so two watches woken by one write (a new node with its service)
    /// cost one sweep.
    var sweepWanted: UInt64 = 0
    var sweptThrough: UInt64 = 0
    var sweeping = false

    /// Changes waiting for the next snapshot, and when the last one went out.
    var pendingServices: [String: [Instance]] = [:]
    var pendingNodes: [CatalogSnapshot.NodeKey: Node?] = [:]
    var lastPublish: ContinuousClock.Instant? = nil
    var flushTask: Task<Void, Never>? = nil

    /// Services being read, and those that changed again meanwhile: each is read once more when its read ends,
    /// so an answer that left Consul before the last change never has the last word.
    var reading: Set<String> = []
    var readAgain: Set<String> = []
}

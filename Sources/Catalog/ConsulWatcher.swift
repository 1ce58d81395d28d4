import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore

/// Follows a Consul agent through its HTTP API with two aggregate blocking queries, whatever the catalog's size:
/// `/v1/catalog/services` for the set of services (its index moves on service-table writes), and
/// `/v1/health/state/any` for every check (its index moves on check writes). When either moves, only the services
/// concerned are read again with `/v1/health/service/<name>`, a bounded number at a time, and only those whose
/// instances changed are published. So the agent sees at most `readConcurrency` + 2 connections (Consul allows
/// 200 per client), the snapshot is always complete, and a DNS answer never waits on Consul.
///
/// Blocking-query rules, as Consul documents them:
/// - the index returned in `X-Consul-Index` is sent back as `?index=`;
/// - an index that goes backwards resets to 0 (a full, non-blocking read);
/// - an index below 1 is treated as 1;
/// - a query that returns at once without a new index is rate-limited (`minInterval`);
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
        /// The least time between two queries of one watch that return without a new index.
        public var minInterval: Duration = .milliseconds(250)
        /// Health changes: this many reads at once, then one round per `churnInterval`, so a flapping check is
        /// read at that rate and its changes in between are folded into the next read.
        public var churnBurst = 2
        public var churnInterval: Duration = .seconds(1)
        /// Service reads in flight at once (each holds one connection to the agent).
        public var readConcurrency = 16
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

    public let configuration: Configuration
    private let assembler: CatalogAssembler
    private let sourceIndex: Int
    private let logger: Logger
    public nonisolated let connection: RegistryConnection
    private let loop: RegistryLoop
    /// Nodes each service's instances name, so a node stays while any service names it.
    private var nodesByService: [String: [CatalogSnapshot.NodeKey: Node]] = [:]
    private var nodeRefs = NodeReferences()
    /// Names already reported as skipped, so each is logged once, not on every catalog change.
    private var reportedSkips: Set<String> = []
    private let skips: SkipCounters
    /// 1 while Consul's ACLs filter what the watcher reads.
    private let filteredGauge: Gauge
    /// Updates held back by a service's churn limit (each folds one or more changes into the next read).
    private let delayed: Counter

    public init(configuration: Configuration, assembler: CatalogAssembler, sourceIndex: Int, logger: Logger,
                connection: RegistryConnection? = nil) {
        self.configuration = configuration
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.logger = logger
        // Two blocking queries and at most `readConcurrency` reads: far under Consul's 200 connections per client.
        let connection = connection ?? RegistryConnection(settings: configuration.connection, registry: .consul,
                                                          name: "consul:" + configuration.address, logger: logger,
                                                          poolSize: configuration.readConcurrency + 4)
        self.connection = connection
        self.loop = RegistryLoop(connection: connection, assembler: assembler, sourceIndex: sourceIndex, state: configuration.state,
                                 backoff: configuration.backoff, logger: logger)
        self.skips = SkipCounters(registry: "consul")
        self.filteredGauge = Gauge(label: "signpost_registry_acl_filtered", dimensions: [("registry", "consul")])
        self.delayed = Counter(label: "signpost_registry_updates_delayed_total", dimensions: [("registry", "consul")])
        filteredGauge.record(0)
    }

    /// The next `?index=` after a response carried `returned`, per Consul's rules.
    static func nextIndex(previous: UInt64, returned: UInt64?) -> UInt64 {
        guard let returned else { return 0 }
        if returned < previous { return 0 }
        return max(returned, 1)
    }

    /// Runs until cancelled: the two aggregate watches, side by side.
    public func run() async {
        let files = Task { [loop] in await loop.watchFiles() }
        if let keeper = configuration.state, let state = keeper.load(maxStale: configuration.maxStale) { await restore(state) }
        let writer = configuration.state.map { keeper in Task { await keeper.run(source: self) } }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.watchCatalog() }
            group.addTask { await self.watchChecks() }
            await group.waitForAll()
        }
        writer?.cancel()
        await writer?.value
        for task in later.values { task.cancel() }
        files.cancel()
        await connection.shutdown()
    }

    /// The service set: a blocking query on `/v1/catalog/services`, whose index moves on writes to the service
    /// table. New services are read, services that went are removed, and, since any instance may have changed,
    /// the others are read again (only changed ones are published).
    private func watchCatalog() async {
        var index = catalogIndex
        // Resumed from a state file: the first query blocks only briefly, so an unchanged Consul is confirmed at once
        // (a changed one answers at once anyway).
        var firstWait: Duration? = index > 0 ? .milliseconds(20) : nil
        await loop.run({ _, _ in
            let started = ContinuousClock.now
            let (services, returned, leader) = try await getJSON("/v1/catalog/services", index: index, wait: firstWait, as: [String: Any].self)
            firstWait = nil
            let filtered = Self.filteredByACLs(services: services.keys, token: connection.hasToken, header: leader.filteredByACLs)
            await reportACLFiltering(filtered)
            let names = servable(services.keys)
            let next = Self.nextIndex(previous: index, returned: returned)
            // Everything filtered away: not loaded (SERVFAIL) if nothing was; if something was (a cache, a state
            // file), it is kept, unconfirmed, rather than an empty catalog (NXDOMAIN for every name). The problem is
            // on /ready; the blocking query goes on, and loads once the token can read.
            let blind = filtered && names.isEmpty
            if blind {
                if !loaded { await assembler.setContact(source: sourceIndex, inContact: true) }
            } else if !loaded {
                await loadAll(names)
            } else if next != index {
                await reconcile(names)
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

    /// Health: a blocking query on `/v1/health/state/any`, whose index moves on every check write. The services
    /// whose checks changed (a node-level check: every service on that node) are read again. Each service has a
    /// token bucket (the blocking-query docs' advice): past its burst, its next read waits for a token, and the
    /// changes meanwhile fold into that read, so a flapping check costs one read a second and delays no other.
    private func watchChecks() async {
        var index = checksIndex
        await loop.run(reportsContact: false, { _, _ in
            let started = ContinuousClock.now
            let (checks, returned, _) = try await getJSON("/v1/health/state/any", index: index, as: [[String: Any]].self)
            let next = Self.nextIndex(previous: index, returned: returned)
            let changed = checkChanges(checks)
            if !loaded { changedDuringLoad.formUnion(changed) }
            if loaded, !changed.isEmpty {
                var now: Set<String> = []
                for name in changed {
                    let wait = buckets[name, default: TokenBucket(burst: configuration.churnBurst, interval: configuration.churnInterval)].take()
                    if wait == .zero { now.insert(name) } else { deferRead(name, by: wait) }
                }
                if !now.isEmpty { await readAndPublish(now) }
            }
            if next == index { try await pace(since: started) }
            // A new resume point (the baseline and its index) is worth writing even when no data changed.
            if next != checksIndex { configuration.state?.changed() }
            index = next
            checksIndex = next
        }, onFailure: {
            index = 0
            self.checkIndexes = nil
        })
    }

    /// The blocking queries' indexes, kept in the state file so a restart resumes where they were.
    private var catalogIndex: UInt64 = 0
    private var checksIndex: UInt64 = 0
    /// Reads under way; while any is, or one is scheduled, the checks' baseline is ahead of the data.
    private var readsInFlight = 0
    /// Services the state file says were followed but had no data (a read that failed): read once Consul answers.
    private var unreadAfterRestore: Set<String> = []

    /// Every check's ModifyIndex, by node and check ID, with its service; nil until the first read.
    private var checkIndexes: [String: (index: UInt64, service: String, node: String)]? = nil
    /// Services whose checks changed while the first load ran; read once it is done.
    private var changedDuringLoad: Set<String> = []

    /// `/v1/health/state/any`'s checks by node and check ID: ModifyIndex, service key (empty for a node-level
    /// check) and node key.
    static func indexChecks(_ checks: [[String: Any]]) -> [String: (index: UInt64, service: String, node: String)] {
        var out: [String: (index: UInt64, service: String, node: String)] = [:]
        for c in checks {
            let node = c["Node"] as? String ?? "", id = c["CheckID"] as? String ?? ""
            out[node + "\u{0}" + id] = ((c["ModifyIndex"] as? NSNumber)?.uint64Value ?? 0,
                                        ServiceName.key(c["ServiceName"] as? String ?? ""), node.lowercased())
        }
        return out
    }

    /// The services whose checks changed since the last call (nothing on the first call, which sets the baseline).
    private func checkChanges(_ checks: [[String: Any]]) -> Set<String> {
        let fresh = Self.indexChecks(checks)
        defer { checkIndexes = fresh }
        guard let before = checkIndexes else { return [] }
        var changedServices: Set<String> = [], changedNodes: Set<String> = []
        for (key, now) in fresh where before[key]?.index != now.index {
            if now.service.isEmpty { changedNodes.insert(now.node) } else { changedServices.insert(now.service) }
        }
        for (key, was) in before where fresh[key] == nil {
            if was.service.isEmpty { changedNodes.insert(was.node) } else { changedServices.insert(was.service) }
        }
        if !changedNodes.isEmpty {
            for (service, nodes) in nodesByService where nodes.keys.contains(where: { changedNodes.contains($0.name) }) {
                changedServices.insert(service)
            }
        }
        return changedServices.intersection(known)
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
        configuration.state?.changed()
        loaded = true
        logger.info("consul loaded", metadata: ["consul.address": "\(configuration.address)", "consul.services": "\(names.count)"])
        if !changedDuringLoad.isEmpty {
            let changed = changedDuringLoad
            changedDuringLoad = []
            await readAndPublish(changed)
        }
    }

    /// A new service set: services that went are removed; the rest are read again.
    private func reconcile(_ names: Set<String>) async {
        let gone = known.subtracting(names)
        known = names
        if !gone.isEmpty {
            var services: [String: [Instance]] = [:]
            var nodes: [CatalogSnapshot.NodeKey: Node?] = [:]
            for name in gone {
                later.removeValue(forKey: name)?.cancel()
                buckets[name] = nil
                published[name] = nil
                services[name] = []
                nodes.merge(setNodes(for: name, [])) { $1 }
            }
            await assembler.update(source: sourceIndex, services: services, nodes: nodes)
            configuration.state?.changed()
        }
        await readAndPublish(names)
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
        if !services.isEmpty {
            await assembler.update(source: sourceIndex, services: services, nodes: nodes)
            configuration.state?.changed()
        }
    }

    /// `/v1/health/service/<name>` for each, at most `readConcurrency` at once. Failures are logged, and retried.
    private func read(_ names: Set<String>) async -> [String: [Instance]] {
        readsInFlight += 1
        defer { readsInFlight -= 1 }
        var results: [String: [Instance]] = [:]
        await withTaskGroup(of: (String, Result<[Instance], any Error>).self) { group in
            var pending = names.sorted().makeIterator()
            var started = 0
            while started < configuration.readConcurrency, let name = pending.next() {
                group.addTask { await self.readOne(name) }
                started += 1
            }
            while let (name, result) = await group.next() {
                switch result {
                case .success(let instances):
                    results[name] = instances
                    retryFailures[name] = nil
                case .failure(let error):
                    scheduleRetry(name, error)
                }
                if let next = pending.next() { group.addTask { await self.readOne(next) } }
            }
        }
        return results
    }

    private func readOne(_ name: String) async -> (String, Result<[Instance], any Error>) {
        do { return (name, .success(try await health(name, index: 0).0)) } catch { return (name, .failure(error)) }
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

    /// Rate limit: a query that came back without a new index waits out the rest of `minInterval`.
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
        var touched: Set<CatalogSnapshot.NodeKey> = []
        // Only nodes that left, arrived or changed; an unchanged node keeps its count.
        for (key, node) in before where now[key] != node && nodeRefs.release(node) { touched.insert(key) }
        for (key, node) in now where before[key] != node && nodeRefs.retain(node) { touched.insert(key) }
        var changed: [CatalogSnapshot.NodeKey: Node?] = [:]
        for key in touched { changed[key] = .some(nodeRefs.node(key)) }
        return changed
    }

    /// One service's instances, with health folded in from node-level and service-level checks.
    private func health(_ name: String, index: UInt64) async throws -> ([Instance], UInt64?, LeaderContact) {
        let path = name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? name
        let (entries, returned, leader) = try await getJSON("/v1/health/service/\(path)", index: index, as: [[String: Any]].self)
        var out: [Instance] = []
        for entry in entries {
            do { out.append(try Self.instance(from: entry, localDatacenter: configuration.localDatacenter)) } catch {
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

    static func instance(from entry: [String: Any], localDatacenter: String) throws -> Instance {
        guard let node = entry["Node"] as? [String: Any], let service = entry["Service"] as? [String: Any],
              let nodeName = node["Node"] as? String, let nodeAddressText = node["Address"] as? String,
              let nodeAddress = Address(nodeAddressText), let serviceName = service["Service"] as? String else {
            throw EntryError(description: "entry without Node, Node.Address or Service")
        }
        let dc = (node["Datacenter"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? localDatacenter
        let nodeTagged = node["TaggedAddresses"] as? [String: String]
        let n = Node(name: nodeName, address: nodeAddress, datacenter: dc, meta: (node["Meta"] as? [String: String]) ?? [:],
                     lanAddresses: Address.lanAddresses(ipv4: nodeTagged?["lan_ipv4"], ipv6: nodeTagged?["lan_ipv6"], besides: nodeAddress))
        var serviceAddress: Address? = nil
        if let a = service["Address"] as? String, !a.isEmpty {
            guard let parsed = Address(a) else { throw EntryError(description: "Service.Address \"\(a)\" is not an address") }
            // Kept even when it equals the node's: Consul's DNS then names the SRV target <hex>.addr, not the node.
            serviceAddress = parsed
        }
        let id = (service["ID"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? serviceName
        let weights = service["Weights"] as? [String: Any]
        var health = Health.passing
        var checks: [CheckState] = []
        for check in entry["Checks"] as? [[String: Any]] ?? [] {
            let sid = check["ServiceID"] as? String ?? ""
            guard sid.isEmpty || sid == id else { continue }
            let status = Health(registered: check["Status"] as? String)
            health = max(health, status)
            let name = check["Name"] as? String ?? ""
            checks.append(CheckState(id: (check["CheckID"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? name, name: name,
                                     status: status, output: CheckState.text(output: check["Output"] as? String, notes: check["Notes"] as? String),
                                     nodeLevel: sid.isEmpty))
        }
        let port = (service["Port"] as? NSNumber)?.intValue ?? 0
        let serviceTagged = service["TaggedAddresses"] as? [String: [String: Any]]
        let (passing, warning) = Instance.weights(passing: (weights?["Passing"] as? NSNumber)?.intValue,
                                                  warning: (weights?["Warning"] as? NSNumber)?.intValue)
        var inst = Instance(id: id, service: serviceName, node: n, serviceAddress: serviceAddress,
                        port: UInt16(clamping: max(0, port)), tags: service["Tags"] as? [String] ?? [],
                        meta: (service["Meta"] as? [String: String]) ?? [:],
                        weightPassing: passing, weightWarning: warning,
                        health: health,
                        serviceLanAddresses: Address.lanAddresses(ipv4: serviceTagged?["lan_ipv4"]?["Address"] as? String,
                                                                  ipv6: serviceTagged?["lan_ipv6"]?["Address"] as? String,
                                                                  besides: serviceAddress))
        inst.checks = checks
        inst.origin = Origin(registry: "consul", location: "service \(id) on node \(nodeName)",
                             revision: (service["ModifyIndex"] as? NSNumber)?.int64Value)
        return inst
    }

    /// `get`, with the body decoded as the JSON shape the endpoint documents.
    private func getJSON<T>(_ path: String, index: UInt64, wait: Duration? = nil, as type: T.Type) async throws -> (T, UInt64?, LeaderContact) {
        let (body, returned, leader) = try await get(path, index: index, wait: wait ?? configuration.wait)
        return (try RegistryConnection.jsonValue(T.self, body, path: path, endpoint: configuration.address), returned, leader)
    }

    /// A GET, blocking when `index` > 0; returns the body, `X-Consul-Index` and the leader headers.
    private func get(_ path: String, index: UInt64, wait: Duration) async throws -> (ByteBuffer, UInt64?, LeaderContact) {
        var query: [String] = []
        if let dc = configuration.datacenter { query.append("dc=\(dc)") }
        if configuration.stale { query.append("stale") }
        let waitSeconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        if index > 0 {
            // Jitter on top of the wait, so watches started together do not all return together.
            let jittered = waitSeconds + Double.random(in: 0...(waitSeconds / 16))
            query.append("index=\(index)")
            query.append("wait=\(Int(jittered * 1000))ms")
        }
        let endpoint = configuration.address
        let request = connection.request(endpoint, path + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        return try await connection.execute(request, endpoint: endpoint, deadline: .now() + .seconds(Int64(waitSeconds * 1.1) + 30)) { response in
            let body = try await connection.jsonBody(response, path: path, endpoint: endpoint)
            let returned = response.headers.first(name: "X-Consul-Index").flatMap { UInt64($0) }
            var leader = LeaderContact(knownLeader: response.headers.first(name: "X-Consul-KnownLeader"),
                                       lastContact: response.headers.first(name: "X-Consul-LastContact"))
            leader.filteredByACLs = response.headers.first(name: "X-Consul-Results-Filtered-By-ACLs") == "true"
            return (body, returned, leader)
        }
    }
}

extension ConsulWatcher: StateSource {
    /// The services as published, and the indexes (the checks' too) to resume the blocking queries from.
    /// While reads are under way or scheduled, the checks' baseline already counts changes whose data is not here
    /// yet: then no baseline is kept, and the catalog index is 0, so a restart reads every service again.
    public func currentState() -> (entries: [String: [Instance]], resume: [String: String]) {
        let knownText = (try? JSONSerialization.data(withJSONObject: known.sorted())).map { String(decoding: $0, as: UTF8.self) } ?? "[]"
        guard readsInFlight == 0, later.isEmpty, changedDuringLoad.isEmpty, let baseline = checkIndexes else {
            return (published, ["catalogIndex": "0", "checksIndex": "0", "known": knownText])
        }
        var checks: [String: [Any]] = [:]
        for (key, c) in baseline { checks[key] = [String(c.index), c.service, c.node] }
        let text = (try? JSONSerialization.data(withJSONObject: checks)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return (published, ["catalogIndex": String(catalogIndex), "checksIndex": String(checksIndex), "checks": text, "known": knownText])
    }

    /// The state file's services, served until Consul answers. The blocking queries resume from its indexes:
    /// Consul answers at once if they moved meanwhile, and only what changed is read again (every service, if the
    /// service set moved, as after any catalog change).
    func restore(_ state: RegistryState) async {
        var catalog = SourceCatalog()
        for (name, instances) in state.entries where !instances.isEmpty {
            published[name] = instances
            catalog.services[name] = instances
            setNodes(for: name, instances)
        }
        catalog.nodes = nodeRefs.nodes
        let stored = state.resume["known"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String] } ?? []
        known = Set(published.keys).union(stored)
        unreadAfterRestore = known.subtracting(published.keys)
        loaded = true
        catalogIndex = UInt64(state.resume["catalogIndex"] ?? "") ?? 0
        checksIndex = UInt64(state.resume["checksIndex"] ?? "") ?? 0
        if let text = state.resume["checks"], let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: [String]] {
            var checks: [String: (index: UInt64, service: String, node: String)] = [:]
            for (key, v) in object where v.count == 3 { checks[key] = (UInt64(v[0]) ?? 0, v[1], v[2]) }
            checkIndexes = checks
        } else {
            checksIndex = 0
        }
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

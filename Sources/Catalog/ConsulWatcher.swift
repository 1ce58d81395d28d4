import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore

/// Follows a Consul agent through its HTTP API with blocking queries: `/v1/catalog/services` for the set of
/// services, and `/v1/health/service/<name>` for each service's nodes, instances and checks.
///
/// Every service is watched eagerly, one blocking query each, so the snapshot is always complete and a DNS
/// answer never waits on Consul. (Watching lazily on a name's first query suits very large catalogs better,
/// at the price of a slow first answer; see DESIGN.md.)
///
/// Blocking-query rules, as Consul documents them:
/// - the index returned in `X-Consul-Index` is sent back as `?index=`;
/// - an index that goes backwards resets to 0 (a full, non-blocking read);
/// - an index below 1 is treated as 1;
/// - a query that returns at once without a new index is rate-limited (`minInterval`);
/// - the wait has jitter added, so many watchers do not wake in step.
public actor ConsulWatcher {
    public struct Configuration: Sendable {
        public var address: String
        public var datacenter: String?
        public var token: String?
        public var stale: Bool
        public var localDatacenter: String
        /// The `?wait=` of each blocking query (Consul's default is 5m).
        public var wait: Duration = .seconds(300)
        /// The least time between two queries of one watch that return without a new index.
        public var minInterval: Duration = .milliseconds(250)
        /// Per service: this many updates at once, then one per `churnInterval`, so a flapping check publishes at
        /// that rate and its changes in between are folded into the next read.
        public var churnBurst = 2
        public var churnInterval: Duration = .seconds(1)
        public var backoff = Backoff()

        public init(address: String, datacenter: String? = nil, token: String? = nil, stale: Bool = true, localDatacenter: String = "dc1") {
            self.address = address
            self.datacenter = datacenter
            self.token = token
            self.stale = stale
            self.localDatacenter = localDatacenter
        }
    }

    struct HTTPError: Error, CustomStringConvertible { var description: String }

    public let configuration: Configuration
    private let assembler: CatalogAssembler
    private let sourceIndex: Int
    private let logger: Logger
    private let restarts: Counter
    /// Exists only while `run()` runs, which shuts it down; a client is never left without an owner.
    private var client: HTTPClient!
    private var watches: [String: Task<Void, Never>] = [:]
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

    public init(configuration: Configuration, assembler: CatalogAssembler, sourceIndex: Int, logger: Logger) {
        self.configuration = configuration
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.logger = logger
        self.restarts = Counter(label: "signpost_registry_watch_restarts_total", dimensions: [("registry", "consul")])
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

    /// Runs until cancelled.
    public func run() async {
        var http = HTTPClient.Configuration()
        http.timeout = .init(connect: .seconds(2))
        http.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        var index: UInt64 = 0
        var failures = 0
        var loaded = false
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                let (body, returned, leader) = try await get("/v1/catalog/services", index: index)
                guard let services = try JSONSerialization.jsonObject(with: body) as? [String: Any] else {
                    throw HTTPError(description: "/v1/catalog/services: not a JSON object")
                }
                let filtered = Self.filteredByACLs(services: services.keys, token: configuration.token, header: leader.filteredByACLs)
                await reportACLFiltering(filtered)
                let names = servable(services.keys)
                if filtered && names.isEmpty && !loaded {
                    // Everything was filtered away: not loaded (SERVFAIL), rather than an empty catalog (NXDOMAIN
                    // for every name). The blocking query goes on, and loads once the token can read.
                    await assembler.setContact(source: sourceIndex, inContact: true)
                    let next = Self.nextIndex(previous: index, returned: returned)
                    if next == index { try await pace(since: started) }
                    index = next
                    continue
                }
                if !loaded {
                    try await loadAll(names)
                    loaded = true
                } else {
                    try await reconcile(names)
                }
                if let age = leader.dataAge {
                    await assembler.setContact(source: sourceIndex, dataAge: age)
                } else {
                    await assembler.setContact(source: sourceIndex, inContact: true)
                }
                failures = 0
                let next = Self.nextIndex(previous: index, returned: returned)
                if next == index { try await pace(since: started) }
                index = next
            } catch {
                if Task.isCancelled { break }
                failures += 1
                restarts.increment()
                logger.warning("consul unreachable", metadata: ["consul.address": "\(configuration.address)", "error": "\(error)"])
                await assembler.setContact(source: sourceIndex, inContact: false)
                index = 0
                do { try await Task.sleep(for: configuration.backoff.delay(afterFailures: failures)) } catch { break }
            }
        }
        for task in watches.values { task.cancel() }
        try? await client.shutdown()
    }

    /// Whether Consul's ACLs hid part of the catalog. Consul answers 200 with the results it may show, and sets
    /// `X-Consul-Results-Filtered-By-ACLs` only for a request that carries a token; so with a token the header
    /// tells, and without one a catalog that lacks the `consul` service (every real catalog lists it) does.
    static func filteredByACLs(services: some Collection<String>, token: String?, header: Bool) -> Bool {
        if token != nil { return header }
        return !services.contains { $0.equalsIgnoringASCIICase("consul") }
    }

    private var aclFiltered = false

    /// Logs a change of ACL filtering once, as an error that names the fix; sets the gauge and `/ready`.
    private func reportACLFiltering(_ filtered: Bool) async {
        guard filtered != aclFiltered else { return }
        aclFiltered = filtered
        filteredGauge.record(filtered ? 1 : 0)
        if filtered {
            let who = configuration.token == nil ? "the anonymous token" : "the watcher's token"
            let reason = "Consul's ACLs filter the catalog for \(who); give Signpost a token with service:read and node:read (?token= or CONSUL_HTTP_TOKEN)"
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
            }
        }
        return out
    }

    /// The first load: every service's health, then one replace. A service whose read failed is left to its own
    /// watch, which retries it; one bad service never keeps the others from loading.
    private func loadAll(_ names: Set<String>) async throws {
        var catalog = SourceCatalog()
        var indexes: [String: UInt64] = [:]
        for name in names.sorted() {
            // One failing service (a 500, a 429, a 403 for its ACL) does not hold back the others: its own watch
            // retries it, with backoff, from index 0.
            do {
                let (instances, returned, _) = try await health(name, index: 0)
                catalog.services[name] = instances
                indexes[name] = Self.nextIndex(previous: 0, returned: returned)
                setNodes(for: name, instances)
            } catch {
                logger.warning("consul service not loaded; its watch retries it", metadata: ["consul.service": "\(name)", "error": "\(error)"])
            }
        }
        catalog.nodes = nodeRefs.nodes
        await assembler.replace(source: sourceIndex, with: catalog)
        for name in names { startWatch(name, from: indexes[name] ?? 0) }
        logger.info("consul loaded", metadata: ["consul.address": "\(configuration.address)", "consul.services": "\(names.count)"])
    }

    /// Starts watches for new services and removes services that are gone.
    private func reconcile(_ names: Set<String>) async throws {
        for gone in Set(watches.keys).subtracting(names) {
            watches.removeValue(forKey: gone)?.cancel()
            let nodes = setNodes(for: gone, [])
            await assembler.update(source: sourceIndex, services: [gone: []], nodes: nodes)
        }
        for new in names.subtracting(watches.keys) {
            // The watch's first query (index 0) reads the new service, and retries it on failure.
            startWatch(new, from: 0)
        }
    }

    private func startWatch(_ name: String, from start: UInt64) {
        watches[name]?.cancel()
        watches[name] = Task { [weak self] in await self?.watch(name, from: start) }
    }

    /// One service's blocking loop; publishes only when its data changed.
    private func watch(_ name: String, from start: UInt64) async {
        var index = start
        var failures = 0
        var bucket = TokenBucket(burst: configuration.churnBurst, interval: configuration.churnInterval)
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                let (instances, returned, _) = try await health(name, index: index)
                guard !Task.isCancelled, watches[name] != nil else { return }
                let next = Self.nextIndex(previous: index, returned: returned)
                if next != index || index == 0 {
                    let nodes = setNodes(for: name, instances)
                    await assembler.update(source: sourceIndex, services: [name: instances], nodes: nodes)
                    // Churn: past the burst, wait for a token; what changes meanwhile comes with the next read.
                    let wait = bucket.take()
                    if wait > .zero {
                        delayed.increment()
                        try await Task.sleep(for: wait)
                    }
                } else {
                    try await pace(since: started)
                }
                index = next
                failures = 0
            } catch {
                if Task.isCancelled { return }
                failures += 1
                index = 0
                do { try await Task.sleep(for: configuration.backoff.delay(afterFailures: failures)) } catch { return }
            }
        }
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
        let (body, returned, leader) = try await get("/v1/health/service/\(path)", index: index)
        guard let entries = try JSONSerialization.jsonObject(with: body) as? [[String: Any]] else {
            throw HTTPError(description: "/v1/health/service/\(name): not a JSON array")
        }
        var out: [Instance] = []
        for entry in entries {
            do { out.append(try Self.instance(from: entry, localDatacenter: configuration.localDatacenter)) } catch {
                logger.error("consul entry skipped", metadata: ["registry": "consul", "consul.service": "\(name)", "reason": "\(error)"])
                skips.count(.unknownFormat)
            }
        }
        return (out, returned, leader)
    }

    /// The agent's own datacenter, `Config.Datacenter` of `/v1/agent/self` (which needs `agent:read`).
    public static func agentDatacenter(address: String, token: String?, logger: Logger) async throws -> String {
        var http = HTTPClient.Configuration()
        http.timeout = .init(connect: .seconds(2), read: .seconds(2))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        do {
            let dc = try await agentDatacenter(client, address: address, token: token, logger: logger)
            try? await client.shutdown()
            return dc
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private static func agentDatacenter(_ client: HTTPClient, address: String, token: String?, logger: Logger) async throws -> String {
        var request = HTTPClientRequest(url: address + "/v1/agent/self")
        if let token { request.headers.add(name: "X-Consul-Token", value: token) }
        let response = try await client.execute(request, timeout: .seconds(3), logger: logger)
        let body = try await response.body.collect(upTo: 16 << 20)
        guard response.status == .ok else {
            throw HTTPError(description: "/v1/agent/self: HTTP \(response.status.code) \(String(buffer: body))")
        }
        guard let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
              let config = json["Config"] as? [String: Any], let dc = config["Datacenter"] as? String, !dc.isEmpty else {
            throw HTTPError(description: "/v1/agent/self: no Config.Datacenter")
        }
        return dc
    }

    /// A check status as Consul's DNS reads it: only critical (and maintenance, which Consul registers as a
    /// critical check) removes an instance; a status it does not know is served, except with --only-passing,
    /// which is what `warning` means here. A check without a status is critical, as Consul registers it.
    static func health(_ status: String?) -> Health {
        guard let status else { return .critical }
        return Health(status: status) ?? .warning
    }

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
            throw HTTPError(description: "entry without Node, Node.Address or Service")
        }
        let dc = (node["Datacenter"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? localDatacenter
        let nodeTagged = node["TaggedAddresses"] as? [String: String]
        let n = Node(name: nodeName, address: nodeAddress, datacenter: dc, meta: (node["Meta"] as? [String: String]) ?? [:],
                     lanAddresses: Address.lanAddresses(ipv4: nodeTagged?["lan_ipv4"], ipv6: nodeTagged?["lan_ipv6"], besides: nodeAddress))
        var serviceAddress: Address? = nil
        if let a = service["Address"] as? String, !a.isEmpty {
            guard let parsed = Address(a) else { throw HTTPError(description: "Service.Address \"\(a)\" is not an address") }
            // Kept even when it equals the node's: Consul's DNS then names the SRV target <hex>.addr, not the node.
            serviceAddress = parsed
        }
        let id = (service["ID"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? serviceName
        let weights = service["Weights"] as? [String: Any]
        var health = Health.passing
        for check in entry["Checks"] as? [[String: Any]] ?? [] {
            let sid = check["ServiceID"] as? String ?? ""
            guard sid.isEmpty || sid == id else { continue }
            health = max(health, Self.health(check["Status"] as? String))
        }
        let port = (service["Port"] as? NSNumber)?.intValue ?? 0
        let serviceTagged = service["TaggedAddresses"] as? [String: [String: Any]]
        // Consul's catalog replaces invalid weights (Passing below 1, Warning below 0, either over 65535) with 1/1.
        var passing = (weights?["Passing"] as? NSNumber)?.intValue ?? 1, warning = (weights?["Warning"] as? NSNumber)?.intValue ?? 1
        if !(1...65535).contains(passing) || !(0...65535).contains(warning) { (passing, warning) = (1, 1) }
        return Instance(id: id, service: serviceName, node: n, serviceAddress: serviceAddress,
                        port: UInt16(clamping: max(0, port)), tags: service["Tags"] as? [String] ?? [],
                        meta: (service["Meta"] as? [String: String]) ?? [:],
                        weightPassing: UInt16(passing), weightWarning: UInt16(warning),
                        health: health,
                        serviceLanAddresses: Address.lanAddresses(ipv4: serviceTagged?["lan_ipv4"]?["Address"] as? String,
                                                                  ipv6: serviceTagged?["lan_ipv6"]?["Address"] as? String,
                                                                  besides: serviceAddress))
    }

    /// A GET, blocking when `index` > 0; returns the body, `X-Consul-Index` and the leader headers.
    private func get(_ path: String, index: UInt64) async throws -> (Data, UInt64?, LeaderContact) {
        var query: [String] = []
        if let dc = configuration.datacenter { query.append("dc=\(dc)") }
        if configuration.stale { query.append("stale") }
        let waitSeconds = Double(configuration.wait.components.seconds)
        if index > 0 {
            // Jitter on top of the wait, so watches started together do not all return together.
            let jittered = waitSeconds + Double.random(in: 0...(waitSeconds / 16))
            query.append("index=\(index)")
            query.append("wait=\(Int(jittered * 1000))ms")
        }
        var request = HTTPClientRequest(url: configuration.address + path + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        if let token = configuration.token { request.headers.add(name: "X-Consul-Token", value: token) }
        let response = try await client.execute(request, timeout: .seconds(Int64(waitSeconds * 1.1) + 30), logger: logger)
        let body = try await response.body.collect(upTo: 256 << 20)
        guard response.status == .ok else {
            throw HTTPError(description: "\(path): HTTP \(response.status.code) \(String(buffer: body))")
        }
        let returned = response.headers.first(name: "X-Consul-Index").flatMap { UInt64($0) }
        var leader = LeaderContact(knownLeader: response.headers.first(name: "X-Consul-KnownLeader"),
                                   lastContact: response.headers.first(name: "X-Consul-LastContact"))
        leader.filteredByACLs = response.headers.first(name: "X-Consul-Results-Filtered-By-ACLs") == "true"
        return (Data(body.readableBytesView), returned, leader)
    }
}

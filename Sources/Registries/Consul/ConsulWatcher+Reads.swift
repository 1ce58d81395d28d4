import Catalog
import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix

/// Reading services: the first load, new and moved services, sweeps, per-service pacing, retries, and handing
/// the changes to the assembler.
extension ConsulWatcher {
    /// Whether Consul's ACLs hid part of the catalog. Consul answers 200 with the results it may show, and sets
    /// `X-Consul-Results-Filtered-By-ACLs` only for a request that carries a token; so with a token the header
    /// tells, and without one a catalog that lacks the `consul` service (every real catalog lists it) does.
    static func filteredByACLs(services: some Collection<String>, token: Bool, header: Bool) -> Bool {
        if token { return header }
        return !services.contains { $0.equalsIgnoringASCIICase("consul") }
    }

    /// Logs a change of ACL filtering once, as an error that names the fix; sets the gauge and `/ready`.
    func reportACLFiltering(_ filtered: Bool) async {
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
    func servable(_ names: some Sequence<String>) -> Set<String> {
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

    /// A read held back by the service's churn limit; a read already waiting takes this change too.
    func deferRead(_ name: String, by wait: Duration) {
        delayed.increment()
        readLater(name, after: wait, replacing: false)
    }

    /// Reads `name` once more after `delay`. A read already scheduled stays, unless `replacing`.
    func readLater(_ name: String, after delay: Duration, replacing: Bool) {
        if later[name] != nil && !replacing { return }
        later[name]?.cancel()
        later[name] = Task { [weak self] in
            do { try await Task.sleep(for: delay) } catch { return }
            await self?.readScheduled(name)
        }
    }

    func readScheduled(_ name: String) async {
        later[name] = nil
        guard known.contains(name) else { return }
        await readAndPublish([name])
    }

    /// The first load: every service's health, `readConcurrency` at a time, then one replace. A service whose
    /// read failed (a 500, a 429, a 403 for its ACL) is retried on its own; it never keeps the others out.
    func loadAll(_ names: Set<String>) async {
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
    func reconcile(_ names: Set<String>, through index: UInt64) async {
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

    /// Asks every followed service for its own index, `readConcurrency` at a time, and reads those whose index is
    /// not the one their data came with. A probe that fails is a read (which retries on its own).
    func sweep(through index: UInt64) async {
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
    func probe(_ name: String) async -> (String, UInt64?) {
        do { return (name, try await get(Self.healthPath(name), index: 0, wait: .zero, filter: Self.matchesNoEntry).1) } catch { return (name, nil) }
    }

    /// Reads these services and publishes those whose instances changed, in one update.
    func readAndPublish(_ names: Set<String>) async {
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

    /// Hands changes to the assembler: at once when the last snapshot is `publishInterval` old, otherwise together
    /// with whatever else changes until then. Under churn the snapshot is rebuilt at most 1 / `publishInterval` times
    /// a second, and no change waits longer than that.
    func publish(_ services: [String: [Instance]], _ nodes: [CatalogSnapshot.NodeKey: Node?]) async {
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

    func flushScheduled() async {
        flushTask = nil
        await flush()
    }

    func flush() async {
        guard !pendingServices.isEmpty || !pendingNodes.isEmpty else { return }
        let services = pendingServices, nodes = pendingNodes
        pendingServices = [:]
        pendingNodes = [:]
        lastPublish = .now
        await assembler.update(source: sourceIndex, services: services, nodes: nodes)
        configuration.state?.changed()
    }

    /// `/v1/health/service/<name>` for each, at most `readConcurrency` at once. Failures are logged, and retried.
    /// A service already being read is not read twice at once; it is read again after.
    func read(_ requested: Set<String>) async -> [String: [Instance]] {
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

    func readNow(_ names: Set<String>) async -> [String: [Instance]] {
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
    func take(_ name: String, _ result: Result<([Instance], UInt64?), any Error>) -> [Instance]? {
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
    nonisolated func readOne(_ name: String) async -> (String, Result<([Instance], UInt64?), any Error>) {
        do {
            let (instances, index, _) = try await health(name, index: 0)
            return (name, .success((instances, index)))
        } catch { return (name, .failure(error)) }
    }

    func scheduleRetry(_ name: String, _ error: any Error) {
        guard !connection.isClosed else { return }
        let failures = (retryFailures[name] ?? 0) + 1
        retryFailures[name] = failures
        if failures == 1 {
            logger.warning("consul service not read; retrying it", metadata: ["consul.service": "\(name)", "error": "\(error)"])
        }
        readLater(name, after: configuration.backoff.delay(afterFailures: failures), replacing: true)
    }

    /// Rate limit: a query that came back with nothing new waits out the rest of `minInterval`.
    func pace(since started: ContinuousClock.Instant) async throws {
        let elapsed = ContinuousClock.now - started
        if elapsed < configuration.minInterval { try await Task.sleep(for: configuration.minInterval - elapsed) }
    }

    /// Records which nodes a service names; returns the node entries that changed (nil = gone).
    @discardableResult
    func setNodes(for service: String, _ instances: [Instance]) -> [CatalogSnapshot.NodeKey: Node?] {
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
}

#if os(Linux)
/// glibc's `malloc_trim`, which Swift's Glibc module does not export.
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

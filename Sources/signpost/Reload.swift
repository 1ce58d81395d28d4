import Catalog
import Registries
import Gateway
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// SIGHUP: read the command line and `--config` file again into a new `ServeConfiguration`, compare it with the
/// running one field by field, build a new query handler and swap it in whole, then rescan the catalog and zone
/// files. Queries in progress finish on the handler they started with, so none is dropped. A reload that fails
/// (a bad config file, an invalid value) changes nothing and says why.
/// - The resolver, with every answer it has pre-encoded, is kept when its settings are unchanged, so the fast
///   path stays warm.
/// - The forwarder, with its cache, and the rate limiter, with its buckets, are kept unless their settings changed.
/// - Restart-only settings that differ are named in a warning and wait for a restart.
final class Reloader: Sendable {
    private struct State {
        var running: ServeConfiguration
        var forwarder: Forwarder?
        var probes: Task<Void, Never>?
        /// The Consul agent's zone, once asked (at start-up, or by the first reload that turned `--locality` on).
        var agentZone: String?
    }

    /// What start-up applied; restart-only changes are measured against it.
    private let started: ServeConfiguration
    private let slot: QueryHandlerSlot
    private let fileWatchers: [CatalogWatcher]
    private let connections: [RegistryConnection]
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state: NIOLockedValueBox<State>

    init(running: ServeConfiguration, slot: QueryHandlerSlot, forwarder: Forwarder?, fileWatchers: [CatalogWatcher],
         connections: [RegistryConnection] = [], group: any EventLoopGroup, logger: Logger) {
        self.started = running
        self.slot = slot
        self.fileWatchers = fileWatchers
        self.connections = connections
        self.group = group
        self.logger = logger
        self.state = NIOLockedValueBox(State(running: running, forwarder: forwarder, probes: forwarder.map { f in Task { await f.runProbes() } },
                                             agentZone: running.agentZone))
    }

    func reload() async {
        logger.info("SIGHUP: reloading the configuration, catalog and zones, and the registries' TLS and credential files")
        // Files first: a rotated certificate or token is picked up even when the configuration does not parse.
        for connection in connections { connection.refresh(force: true) }
        var new: ServeConfiguration
        do {
            let agentZone = state.withLockedValue { $0.agentZone }
            func load(_ zone: String?) throws -> ServeConfiguration {
                try ServeConfiguration.load(arguments: Array(CommandLine.arguments.dropFirst()), running: started.restartOnly.server.listen,
                                            datacenter: started.resolver.datacenter, agentZone: zone)
            }
            new = try load(agentZone)
            // `--locality` turned on with no `--zone`: Signpost's own zone is the Consul agent's, as at start-up.
            if new.resolver.locality.mode != .off, new.resolver.locality.zone == nil, agentZone == nil {
                let (_, zone, note) = await Serve.localDatacenter(given: started.resolver.datacenter, started.restartOnly.registries, needZone: true)
                note(logger)
                if let zone {
                    state.withLockedValue { $0.agentZone = zone }
                    new = try load(zone)
                }
            }
        } catch {
            let reason = (error as? StartupError)?.message ?? "\(error)"
            logger.error("reload failed; still serving the previous configuration", metadata: ["reason": "\(reason)"])
            return
        }
        let kept = apply(new)
        var problems = 0
        for watcher in fileWatchers { problems += await watcher.refresh().count }
        logger.info("reloaded", metadata: ["forwarding": "\(new.forwarding == nil ? "off" : "on")", "resolver": "\(kept ? "kept" : "rebuilt")",
                                           "catalog.problems": "\(problems)"])
    }

    /// Swaps in the handler `new` describes; returns whether the resolver (and its encoded answers) was kept.
    /// `new` keeps the datacenter chosen at start-up (`load(…, datacenter:)`): it may have come from the Consul
    /// agent, and it is restart-only.
    func apply(_ new: ServeConfiguration) -> Bool {
        let changed = new.restartOnly.changes(from: started.restartOnly)
        if !changed.isEmpty {
            logger.warning("these settings change only on restart; the change waits", metadata: ["settings": "\(changed.joined(separator: ", "))"])
        }
        return state.withLockedValue { state -> Bool in
            let old = slot.handler
            let keepResolver = old.resolver.configuration == new.resolver
            let resolver = keepResolver ? old.resolver : Resolver(configuration: new.resolver)
            if new.forwarding != state.running.forwarding {
                state.probes?.cancel()
                state.forwarder?.retire()
                state.forwarder = new.forwarding.map { Forwarder(configuration: $0, group: group, logger: logger) }
                state.probes = state.forwarder.map { f in Task { await f.runProbes() } }
            }
            state.running = new
            slot.replace(with: QueryHandler(configuration: new, resolver: resolver, store: old.store, logger: old.logger,
                                            forwarder: state.forwarder, rrl: old.rrl))
            return keepResolver
        }
    }
}

/// `signpost_instances{health=…}`: instances in the catalog by health, counted every 5 s (counting on every
/// registry update would cost each update time proportional to the whole catalog).
struct InstanceCounter {
    let store: SnapshotStore
    private let gauges = [Health.passing, .warning, .critical, .maintenance].map {
        Gauge(label: "signpost_instances", dimensions: [("health", $0.description)])
    }

    init(store: SnapshotStore) { self.store = store }

    func run() async {
        while !Task.isCancelled {
            var counts = [0, 0, 0, 0]
            for entry in store.snapshot.services.values {
                for instance in entry.instances { counts[instance.health.rawValue] += 1 }
            }
            for (gauge, count) in zip(gauges, counts) { gauge.record(Double(count)) }
            do { try await Task.sleep(for: .seconds(5)) } catch { return }
        }
    }
}

import Catalog
import Registries
import DNSWire
import Foundation
import Gateway
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

extension Serve {
    func run() async throws {
        let settings = try overFile()
        let environment = ProcessInfo.processInfo.environment
        let resolvConf = { (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "" }
        let given = try ServeConfiguration(settings, environment: environment, resolvConf: resolvConf)
        let prometheus = Self.bootstrap(level: given.restartOnly.logLevel)
        let logger = Logger(label: "signpost")
        let store = SnapshotStore()
        // Logged once the sockets are bound: a busy port must stay the only line printed.
        let needZone = (settings.locality ?? .off) != .off && settings.zone == nil
        let (dc, agentZone, datacenterNote) = await Self.localDatacenter(given: given.restartOnly.datacenter, given.restartOnly.registries,
                                                                         needZone: needZone)
        let config = try ServeConfiguration(settings, environment: environment, resolvConf: resolvConf, datacenter: dc, agentZone: agentZone)
        let restart = config.restartOnly
        let assembler = CatalogAssembler(sources: restart.registries.map(\.description), expectsZones: restart.zones != nil,
                                         localDatacenter: dc, store: store, logger: logger)
        let stateDir = restart.stateDir.flatMap { StateKeeper.usable(directory: $0, logger: logger) ? $0 : nil }
        var (fileWatchers, services, connections) = try makeWatchers(restart.registries, zonesDir: restart.zones, stateDir: stateDir, maxStale: config.maxStale,
                                                        assembler: assembler, logger: logger)
        for w in fileWatchers { services.append(TaskService { await w.run() }) }
        let monitor = StalenessMonitor(store: store, logger: logger)
        services.append(TaskService { await monitor.run() })

        let group = MultiThreadedEventLoopGroup(numberOfThreads: restart.threads)
        let forwarder = config.forwarding.map { Forwarder(configuration: $0, group: group, logger: logger) }
        let slot = QueryHandlerSlot(QueryHandler(configuration: config, resolver: Gateway.Resolver(configuration: config.resolver), store: store,
                                                 logger: logger, forwarder: forwarder, rrl: nil))
        let server = DNSServer(configuration: restart.server, handler: slot, group: group, logger: logger)
        let reloader = Reloader(running: config, slot: slot, forwarder: forwarder, fileWatchers: fileWatchers, connections: connections,
                                group: group, logger: logger)
        // Trap SIGHUP before anything can send it: its default action would end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        services.append(TaskService {
            for await _ in hangups.cancelOnGracefulShutdown() { await reloader.reload() }
        })
        services.append(TaskService { await InstanceCounter(store: store).run() })
        let adminServer = restart.admin.map {
            // Its own thread: the status page's work (sorting 10k services, explaining) never delays a DNS answer.
            AdminServer(address: $0, group: MultiThreadedEventLoopGroup(numberOfThreads: 1), store: store, maxStale: config.maxStale,
                        // The query counters and histogram are Signpost's own sharded table, summed here.
                        metrics: { prometheus.emitToBuffer() + Array(QueryObserver.exposition().utf8) },
                        handler: slot, logger: logger)
        }
        try await start(server, adminServer, group: group, user: restart.user, logger: logger)
        datacenterNote(logger)
        for w in fileWatchers { await w.refresh() }
        Self.logForwarding(config.forwarding, logger)
        let serviceGroup = ServiceGroup(services: services + [server] + (adminServer.map { [$0] } ?? []),
                                        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await serviceGroup.run()
        try? await group.shutdownGracefully()
    }

    /// Logging at `level`, metrics through Prometheus, and as many descriptors as the hard limit allows (each TCP
    /// connection is one).
    private static func bootstrap(level: Logger.Level) -> PrometheusCollectorRegistry {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var files = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        }
        let prometheus = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: prometheus)
        factory.durationHistogramBuckets["signpost_upstream_duration_seconds"] =
            [100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 500_000, 2_000_000].map { Duration.microseconds($0) }
        MetricsSystem.bootstrap(factory)
        return prometheus
    }

    /// Binds first, so a busy port fails before anything else is logged; queries that arrive before the catalog has
    /// loaded get SERVFAIL, never a false NXDOMAIN. Then drops root, if asked to.
    private func start(_ server: DNSServer, _ admin: AdminServer?, group: MultiThreadedEventLoopGroup, user: String?,
                       logger: Logger) async throws {
        do {
            try await server.start()
            if let bound = try await admin?.start(), !["127.0.0.1", "::1", "localhost"].contains(bound.host) {
                logger.warning("the admin endpoint is not on loopback: /ui and /v1/* show every service, check output and registry address to whoever reaches it",
                               metadata: ["admin": "\(bound)"])
            }
        } catch let error as DNSServer.BindError {
            try? await group.shutdownGracefully()
            throw StartupError(message: error.description)
        }
        guard let user else { return }
        do { try dropPrivileges(to: user) } catch let error as StartupError {
            try? await group.shutdownGracefully()
            throw error
        }
        logger.info("running as \(user)")
    }

    private static func logForwarding(_ forwarding: Forwarder.Configuration?, _ logger: Logger) {
        if let config = forwarding {
            logger.info("forwarding other names", metadata: ["upstreams": "\(config.upstreams.map { "\($0)" })",
                                                             "policy": "\(config.policy.rawValue)"])
        } else {
            logger.info("forwarding off: names outside the domain and the zones get REFUSED")
        }
    }

    /// `--datacenter`; without it, the first Consul registry's agent's own datacenter, as Consul's DNS uses
    /// (an agent in `us-east-1` answers plain names from `us-east-1`); else dc1. Also the agent's zone (its node's
    /// `Locality`), which `--zone` defaults to with `--locality`. Returns what to log about them.
    static func localDatacenter(given: String?, _ specs: [RegistrySpec], needZone: Bool = false) async -> (String, zone: String?, (Logger) -> Void) {
        if let given, !needZone { return (given, nil, { _ in }) }
        for case .consul(let connection, _, _, _) in specs {
            let address = connection.endpoints[0]
            do {
                let (dc, locality) = try await ConsulWatcher.agentDatacenter(connection: connection, logger: Logger(label: "signpost"))
                let zone = locality.flatMap { $0.zone.isEmpty ? nil : $0.zone }
                return (given ?? dc, zone, { logger in
                    if given == nil { logger.info("local datacenter from the Consul agent", metadata: ["datacenter": "\(dc)", "consul.address": "\(address)"]) }
                    if let zone { logger.info("the Consul agent's zone, Signpost's own unless --zone says otherwise", metadata: ["zone": "\(zone)"]) }
                })
            } catch {
                if let given { return (given, nil, { _ in }) }
                return (ServeConfiguration.defaultDatacenter, nil, { $0.warning("could not read the Consul agent's datacenter; using dc1 (set --datacenter to choose)",
                                                                         metadata: ["consul.address": "\(address)", "error": "\(error)"]) })
            }
        }
        return (given ?? ServeConfiguration.defaultDatacenter, nil, { _ in })
    }
}

extension QueryHandler {
    /// The handler a configuration describes, around `resolver`; `rrl` is a limiter to keep (its buckets), or nil
    /// for a fresh one when the configuration asks for one.
    convenience init(configuration c: ServeConfiguration, resolver: Gateway.Resolver, store: SnapshotStore, logger: Logger, forwarder: Forwarder?,
         rrl: ResponseRateLimiter?) {
        let limiter = rrl.flatMap { $0.configuration == c.rateLimit ? $0 : nil } ?? c.rateLimit.map { ResponseRateLimiter(configuration: $0) }
        self.init(resolver: resolver, store: store, logger: logger, maxStale: c.maxStale, forwarder: forwarder, access: c.access,
                  observer: QueryObserver(queryLog: c.queryLog ? Logger(label: "signpost.query") : nil), rrl: limiter)
    }
}

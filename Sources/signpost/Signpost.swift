import ArgumentParser
import CPrivileges
import Catalog
import DNSWire
import Foundation
import Gateway
import Logging
import Metrics
import NIOCore
import Prometheus
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

@main
struct Signpost: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signpost",
        abstract: "A DNS gateway for service discovery: Consul-style names from a watched registry.",
        subcommands: [Serve.self, Check.self],
        defaultSubcommand: Serve.self)

    /// Every failure is one line on stderr and a non-zero exit; never a stack trace.
    static func main() async {
        do {
            let arguments: [String]
            do {
                arguments = try ConfigFile.merge(Array(CommandLine.arguments.dropFirst()))
            } catch {
                throw StartupError(message: error.description, code: 64)
            }
            var command = try parseAsRoot(arguments)
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch let error as StartupError {
            FileHandle.standardError.write(Data("signpost: \(error.message)\n".utf8))
            Foundation.exit(error.code)
        } catch {
            if exitCode(for: error) == .success || error is CleanExit { exit(withError: error) }
            if let code = error as? ExitCode { Foundation.exit(code.rawValue) }
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("signpost: \(message) (see 'signpost --help')\n".utf8))
            Foundation.exit(64)
        }
    }
}

struct StartupError: Error {
    var message: String
    var code: Int32 = 1
}

/// Options shared by `serve` and `check`.
struct CatalogOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("JSON file of settings named like these flags; flags on the command line win.", valueName: "FILE"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Directory of JSON catalog files (Consul /v1/catalog/register bodies); short for --registry file:DIR. Default zones/catalog when no --registry is given.", valueName: "DIR"))
    var catalog: String?

    @Option(name: .long, help: ArgumentHelp("Directory of RFC 1035 master files (*.zone). Default: zones, if it exists.", valueName: "DIR"))
    var zones: String?

    @Option(name: .long, help: "The local datacenter, used for names that give none. Default: the Consul agent's own (from /v1/agent/self) with a consul registry, else dc1.")
    var datacenter: String?

    /// The datacenter the flags name, before any registry is asked.
    var flagDatacenter: String { datacenter ?? "dc1" }

    /// The zones directory to use: an explicit one must exist; the default is optional.
    func zonesDirectory() -> String? {
        if let zones { return zones }
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: "zones", isDirectory: &isDir) && isDir.boolValue ? "zones" : nil
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve DNS (the default command).")

    @Option(name: .long, help: ArgumentHelp("Address to serve on, over UDP and TCP. Repeatable. Port 0 picks a free port.", valueName: "HOST:PORT"))
    var listen: [String] = ["127.0.0.1:8600"]

    @OptionGroup var catalogOptions: CatalogOptions

    @Option(name: .long, help: ArgumentHelp("A registry to watch: file:DIR, etcd:http://HOST:PORT[,…][?prefix=/services/], consul:http://HOST:PORT[?dc=&token=&stale=true]. Repeatable; catalogs are merged, earlier registries win conflicts.", valueName: "URL"))
    var registry: [String] = []

    @Option(name: .long, help: ArgumentHelp("Answer SERVFAIL for the domain once registry data is this stale (e.g. 10m). Default: unlimited.", valueName: "DURATION"))
    var maxStale: String?

    @Option(name: .long, help: "The service domain.")
    var domain: String = "consul"

    @Option(name: .long, help: ArgumentHelp("A second domain answered exactly like --domain (Consul's alt_domain).", valueName: "NAME"))
    var altDomain: String?

    @Flag(name: .long, help: "Serve only instances whose checks all pass (leave out warning ones too).")
    var onlyPassing = false

    @Option(name: .long, help: ArgumentHelp("At most N instances per A, AAAA or SRV answer, walking round the whole set over successive queries; 0 for no limit (Consul's a_record_limit).", valueName: "N"))
    var answerLimit: Int = 0

    @Flag(name: .long, help: "Add each node's meta as TXT records to the additional section of SRV answers (Consul's enable_additional_node_meta_txt). Off: some SRV parsers break on them.")
    var nodeMetaTxt = false

    @Option(name: .long, help: ArgumentHelp("Service TTL, Consul style: 30s, or NAME=30s, or PREFIX*=30s. Repeatable. Default 0s.", valueName: "TTL"))
    var serviceTTL: [String] = []

    @Option(name: .long, help: ArgumentHelp("TTL for node and addr answers.", valueName: "DURATION"))
    var nodeTTL: String = "0s"

    @Option(name: .long, help: ArgumentHelp("Load-balancing policy announced to gRPC clients in _grpc_config.<service> TXT records: round_robin, pick_first or none. Service meta grpc_lb_policy overrides it.", valueName: "POLICY"))
    var grpcLbPolicy: GRPCLBPolicy = .none

    @Option(name: .long, help: "Answer order: cyclic (rotate by one per query) or random (shuffle).")
    var order: AnswerOrder = .cyclic

    @Option(name: .long, help: "Largest UDP response with EDNS, in bytes (512-65535).")
    var maxUDPSize: Int = 1232

    @Option(name: .long, help: ArgumentHelp("Close idle TCP connections after this long.", valueName: "DURATION"))
    var tcpIdleTimeout: String = "10s"

    @Option(name: .long, help: "TCP connections open at once; a new one beyond this closes the one quiet longest.")
    var tcpMaxConnections: Int = 512

    @Option(name: .long, help: "Forwarded queries one TCP connection may have waiting; beyond this its reads pause.")
    var tcpMaxInflight: Int = 32

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "Event loop threads and UDP workers, one UDP socket each on a fixed port. Default: one per core.")
    var threads: Int?

    @Option(name: .long, help: "UDP front end: mmsg (recvmmsg/sendmmsg threads, the default) or nio (a NIO channel per event loop).")
    var udpEngine: DNSServer.UDPEngine = .mmsg

    @Option(name: .long, help: ArgumentHelp("Serve /health, /ready and /metrics over HTTP here. Off by default.", valueName: "HOST:PORT"))
    var admin: String?

    @Option(name: .long, help: ArgumentHelp("UDP responses per second per client network (/24, /56); 0 turns rate limiting off (the default).", valueName: "N"))
    var rrlRate: Int = 0

    @Option(name: .long, help: ArgumentHelp("With --rrl-rate: every Nth limited response is sent truncated instead of dropped; 0 never.", valueName: "N"))
    var rrlSlip: Int = 2

    @Option(name: .long, help: ArgumentHelp("Networks never rate limited. Repeatable; \"none\" for none. Default: loopback (it cannot be spoofed from outside).", valueName: "CIDR"))
    var rrlExempt: [String] = []

    /// The response rate limiter, or nil when `--rrl-rate` is 0.
    func rateLimiter() throws -> ResponseRateLimiter? {
        guard rrlRate != 0 else { return nil }
        guard rrlRate > 0, rrlSlip >= 0 else { throw StartupError(message: "--rrl-rate and --rrl-slip must not be negative", code: 64) }
        var exempt = ResponseRateLimiter.loopback
        if !rrlExempt.isEmpty {
            do { exempt = try rrlExempt.filter { $0 != "none" }.map { t throws(ConfigurationError) in try CIDR(t) } } catch {
                throw StartupError(message: error.description, code: 64)
            }
        }
        return ResponseRateLimiter(configuration: .init(rate: rrlRate, slip: rrlSlip, exempt: exempt))
    }

    @Option(name: .long, help: ArgumentHelp("Started as root: switch to this user once the ports are bound (so port 53 needs no root afterwards).", valueName: "NAME"))
    var user: String?

    @Flag(name: .long, help: "Log every query (client, name, type, protocol, rcode, size, duration) at info level. Off by default.")
    var queryLog = false

    @Option(name: .long, help: ArgumentHelp("Forward other names to this resolver (port 53 by default). Repeatable. Default: the nameservers in /etc/resolv.conf, except Signpost's own addresses.", valueName: "HOST[:PORT]"))
    var upstream: [String] = []

    @Flag(name: .long, help: "Do not forward: names outside the domain and the zones get REFUSED.")
    var noForward = false

    @Option(name: .long, help: "Upstream order: sequential, random or round_robin.")
    var upstreamPolicy: Forwarder.Policy = .sequential

    @Option(name: .long, help: ArgumentHelp("Give up on an upstream after this long.", valueName: "DURATION"))
    var upstreamTimeout: String = "2s"

    @Option(name: .long, help: "Upstream queries in flight at most; beyond that, SERVFAIL at once.")
    var maxConcurrent: Int = 1000

    @Option(name: .long, help: "Forwarding cache capacity, in entries (LRU).")
    var cacheSize: Int = 10000

    @Option(name: .long, help: ArgumentHelp("Lowest TTL a cached positive answer gets.", valueName: "DURATION"))
    var cacheMinTTL: String = "0s"

    @Option(name: .long, help: ArgumentHelp("Highest TTL a cached answer gets.", valueName: "DURATION"))
    var cacheMaxTTL: String = "1d"

    @Option(name: .long, help: ArgumentHelp("Serve expired cache entries for this long when every upstream fails (RFC 8767).", valueName: "DURATION"))
    var staleTTL: String = "1d"

    @Option(name: .long, help: ArgumentHelp("Clients allowed to have other names forwarded. Repeatable. Default: loopback, RFC 1918, RFC 6598, link-local, ULA.", valueName: "CIDR"))
    var allowRecursion: [String] = []

    /// The forwarder's configuration and ACL, or nil when forwarding is off (or there is no upstream).
    func forwardingSetup(listen: [ListenAddress], logger: Logger) throws -> (Forwarder.Configuration, AccessControl)? {
        if noForward { return nil }
        var chosen: [ListenAddress] = []
        if upstream.isEmpty {
            let resolv = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
            chosen = defaultUpstreams(resolvConf: resolv, listen: listen)
        } else {
            for text in upstream {
                do { chosen.append(try ListenAddress(parsing: text, defaultPort: 53)) } catch {
                    throw StartupError(message: "invalid --upstream \"\(text)\": \(error.description)", code: 64)
                }
            }
            // Never forward to ourselves.
            chosen.removeAll { u in listen.contains { $0.host == u.host && $0.port == u.port } }
        }
        var addresses: [SocketAddress] = []
        for u in chosen {
            guard let a = try? SocketAddress(ipAddress: u.host, port: u.port) else {
                throw StartupError(message: "invalid upstream \"\(u)\": not an IP address", code: 64)
            }
            addresses.append(a)
        }
        guard !addresses.isEmpty else { return nil }
        var config = Forwarder.Configuration(upstreams: addresses)
        config.policy = upstreamPolicy
        guard let t = parseDurationMilliseconds(upstreamTimeout), t > 0 else { throw StartupError(message: "invalid --upstream-timeout", code: 64) }
        config.timeout = .milliseconds(t)
        guard maxConcurrent > 0, cacheSize > 0 else { throw StartupError(message: "--max-concurrent and --cache-size must be positive", code: 64) }
        config.maxConcurrent = maxConcurrent
        config.cacheSize = cacheSize
        guard let minTTL = parseDuration(cacheMinTTL), let maxTTL = parseDuration(cacheMaxTTL), let stale = parseDuration(staleTTL) else {
            throw StartupError(message: "invalid cache TTL", code: 64)
        }
        (config.cacheMinTTL, config.cacheMaxTTL, config.staleTTL) = (minTTL, maxTTL, stale)
        var acl = AccessControl()
        if !allowRecursion.isEmpty {
            do { acl = AccessControl(allowed: try allowRecursion.map { t throws(ConfigurationError) in try CIDR(t) }) } catch {
                throw StartupError(message: error.description, code: 64)
            }
        }
        return (config, acl)
    }

    /// The resolver's configuration, and the listeners'.
    func configurations() throws(ConfigurationError) -> (ResolverConfiguration, DNSServer.Configuration) {
        guard let domainName = try? DNSName(domain), domainName.labelCount > 0 else {
            throw ConfigurationError("invalid --domain \"\(domain)\"")
        }
        guard let nodeTTLValue = parseDuration(nodeTTL) else { throw ConfigurationError("invalid --node-ttl \"\(nodeTTL)\"") }
        var altDomainName: DNSName? = nil
        if let altDomain {
            guard let name = try? DNSName(altDomain), name.labelCount > 0, name.lowercased != domainName.lowercased else {
                throw ConfigurationError("invalid --alt-domain \"\(altDomain)\": a domain other than --domain")
            }
            altDomainName = name
        }
        guard answerLimit >= 0 else { throw ConfigurationError("--answer-limit must not be negative") }
        guard let idle = parseDuration(tcpIdleTimeout), idle > 0 else {
            throw ConfigurationError("invalid --tcp-idle-timeout \"\(tcpIdleTimeout)\"")
        }
        guard (512...65535).contains(maxUDPSize) else { throw ConfigurationError("--max-udp-size must be 512-65535") }
        guard tcpMaxConnections > 0, tcpMaxInflight > 0 else { throw ConfigurationError("--tcp-max-connections and --tcp-max-inflight must be positive") }
        let addresses = try listen.map { text throws(ConfigurationError) in try ListenAddress(parsing: text) }
        let nsAddresses = addresses.compactMap { Address($0.host) }.filter {
            $0 != Address("0.0.0.0") && $0 != Address("::")
        }
        let resolverConfig = ResolverConfiguration(
            domain: domainName, datacenter: catalogOptions.flagDatacenter, onlyPassing: onlyPassing, order: order,
            serviceTTL: try TTLPolicy.parse(serviceTTL), nodeTTL: nodeTTLValue,
            maxUDPSize: maxUDPSize, nameserverAddresses: nsAddresses.isEmpty ? [Address("127.0.0.1")!] : nsAddresses,
            grpcLBPolicy: grpcLbPolicy, answerLimit: answerLimit, altDomain: altDomainName, nodeMetaTXT: nodeMetaTxt)
        let serverConfig = DNSServer.Configuration(listen: addresses, tcpIdleTimeout: .seconds(Int64(idle)), udpEngine: udpEngine,
                                                   udpWorkers: threads ?? NIOCore.System.coreCount,
                                                   tcpMaxConnections: tcpMaxConnections, tcpMaxInflight: tcpMaxInflight)
        return (resolverConfig, serverConfig)
    }

    /// `--datacenter`; without it, the first Consul registry's agent's own datacenter, as Consul's DNS uses
    /// (an agent in `us-east-1` answers plain names from `us-east-1`); else dc1. Returns what to log about it.
    func localDatacenter(_ specs: [RegistrySpec]) async -> (String, (Logger) -> Void) {
        if let given = catalogOptions.datacenter { return (given, { _ in }) }
        for case .consul(let address, _, let token, _, _) in specs {
            do {
                let dc = try await ConsulWatcher.agentDatacenter(address: address, token: token, logger: Logger(label: "signpost"))
                return (dc, { $0.info("local datacenter from the Consul agent", metadata: ["datacenter": "\(dc)", "consul.address": "\(address)"]) })
            } catch {
                return ("dc1", { $0.warning("could not read the Consul agent's datacenter; using dc1 (set --datacenter to choose)",
                                            metadata: ["consul.address": "\(address)", "error": "\(error)"]) })
            }
        }
        return ("dc1", { _ in })
    }

    func maxStaleDuration() throws -> Duration? {
        guard let maxStale else { return nil }
        guard let seconds = parseDuration(maxStale), seconds > 0 else { throw StartupError(message: "invalid --max-stale \"\(maxStale)\"", code: 64) }
        return .seconds(Int64(seconds))
    }

    /// Metrics, and the query log when `--query-log` asks for it.
    func queryObserver() -> QueryObserver {
        QueryObserver(queryLog: queryLog ? Logger(label: "signpost.query") : nil)
    }

    /// Settings that SIGHUP cannot change: the sockets, the threads, the registries and the logging.
    var restartOnlySettings: String {
        "\(listen) \(String(describing: threads)) \(udpEngine) \(String(describing: admin)) \(registry) "
            + "\(String(describing: catalogOptions.catalog)) \(String(describing: catalogOptions.zonesDirectory())) "
            + "\(catalogOptions.flagDatacenter) \(logLevel) \(tcpIdleTimeout) \(tcpMaxConnections) \(tcpMaxInflight)"
    }

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw StartupError(message: "invalid --log-level \"\(logLevel)\"", code: 64)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "signpost")
        // Each TCP connection is a descriptor: allow as many as the hard limit does.
        var files = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        }
        let prometheus = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: prometheus)
        // Answers take microseconds; forwarded ones, milliseconds.
        factory.durationHistogramBuckets["signpost_dns_request_duration_seconds"] =
            [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 500_000, 2_000_000].map { Duration.microseconds($0) }
        factory.durationHistogramBuckets["signpost_upstream_duration_seconds"] =
            [100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 500_000, 2_000_000].map { Duration.microseconds($0) }
        MetricsSystem.bootstrap(factory)

        var (resolverConfig, serverConfig): (ResolverConfiguration, DNSServer.Configuration)
        do { (resolverConfig, serverConfig) = try configurations() } catch { throw StartupError(message: error.description, code: 64) }
        let maxStaleValue = try maxStaleDuration()
        var specs: [RegistrySpec] = []
        if let c = catalogOptions.catalog { specs.append(.file(directory: c)) }
        do {
            for r in registry { specs += try RegistrySpec(parsing: r, environment: ProcessInfo.processInfo.environment).watchers }
        } catch {
            throw StartupError(message: error.description, code: 64)
        }
        if specs.isEmpty { specs = [.file(directory: "zones/catalog")] }

        let store = SnapshotStore()
        let zonesDir = catalogOptions.zonesDirectory()
        // Logged once the sockets are bound: a busy port must stay the only line printed.
        let (dc, datacenterNote) = await localDatacenter(specs)
        resolverConfig.datacenter = dc
        let assembler = CatalogAssembler(sources: specs.map(\.description), expectsZones: zonesDir != nil,
                                         localDatacenter: dc, store: store, logger: logger)
        var (fileWatchers, services) = try makeWatchers(specs, zonesDir: zonesDir, assembler: assembler, logger: logger)
        for w in fileWatchers { services.append(TaskService { await w.run() }) }
        let monitor = StalenessMonitor(store: store, logger: logger)
        services.append(TaskService { await monitor.run() })

        let forwarding = try forwardingSetup(listen: serverConfig.listen, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads ?? NIOCore.System.coreCount)
        let forwarder = forwarding.map { Forwarder(configuration: $0.0, group: group, logger: logger) }
        let slot = QueryHandlerSlot(QueryHandler(resolver: Resolver(configuration: resolverConfig),
                                                 store: store, logger: logger, maxStale: maxStaleValue,
                                                 forwarder: forwarder, access: forwarding?.1 ?? AccessControl(),
                                                 observer: queryObserver(),
                                                 rrl: try rateLimiter()))
        let server = DNSServer(configuration: serverConfig, handler: slot, group: group, logger: logger)
        let reloader = Reloader(running: self, datacenter: dc, listen: serverConfig.listen, slot: slot, forwarder: forwarder, forwarding: forwarding?.0,
                                fileWatchers: fileWatchers, group: group, logger: logger)
        // Trap SIGHUP before anything can send it: its default action would end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        services.append(TaskService {
            for await _ in hangups.cancelOnGracefulShutdown() { await reloader.reload() }
        })
        services.append(TaskService { await InstanceCounter(store: store).run() })
        var adminServer: AdminServer? = nil
        if let admin {
            do {
                adminServer = AdminServer(address: try ListenAddress(parsing: admin, defaultPort: 8080), group: group, store: store,
                                          maxStale: maxStaleValue, metrics: { prometheus.emitToBuffer() }, logger: logger)
            } catch {
                throw StartupError(message: "invalid --admin: \(error.description)", code: 64)
            }
        }
        // Bind first, so a busy port fails before anything else is logged; queries that arrive
        // before the catalog has loaded get SERVFAIL, never a false NXDOMAIN.
        do {
            try await server.start()
            try await adminServer?.start()
        } catch let error as DNSServer.BindError {
            try? await group.shutdownGracefully()
            throw StartupError(message: error.description)
        }
        datacenterNote(logger)
        if let user {
            do { try dropPrivileges(to: user) } catch let error as StartupError {
                try? await group.shutdownGracefully()
                throw error
            }
            logger.info("running as \(user)")
        }
        for w in fileWatchers { await w.refresh() }
        if let (config, _) = forwarding {
            logger.info("forwarding other names", metadata: ["upstreams": "\(config.upstreams.map { "\($0)" })",
                                                             "policy": "\(config.policy.rawValue)"])
        } else {
            logger.info("forwarding off: names outside the domain and the zones get REFUSED")
        }

        let serviceGroup = ServiceGroup(
            services: services + [server] + (adminServer.map { [$0] } ?? []),
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await serviceGroup.run()
        try? await group.shutdownGracefully()
    }
}

/// Switches the whole process (every thread: glibc applies setuid to all of them) to `name`, its group, and no
/// supplementary groups; then checks that root cannot be regained.
func dropPrivileges(to name: String) throws {
    guard let entry = getpwnam(name) else { throw StartupError(message: "--user \(name): no such user", code: 64) }
    let (uid, gid) = (entry.pointee.pw_uid, entry.pointee.pw_gid)
    if getuid() == uid && geteuid() == uid { return }
    guard geteuid() == 0 else {
        throw StartupError(message: "--user \(name): only root can switch users (running as uid \(geteuid()))", code: 64)
    }
    // The main thread first, while we may still signal it: async main parks it where setuid() does not reach.
    let main = getpid()
    if sp_drop_thread_privileges(main, uid, gid) != 0 {
        throw StartupError(message: "--user \(name): could not switch the main thread")
    }
    guard setgroups(0, nil) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
        throw StartupError(message: "--user \(name): \(String(cString: strerror(errno)))")
    }
    guard setuid(0) != 0, geteuid() == uid else { throw StartupError(message: "--user \(name): root privileges could be regained") }
}

/// One watcher per registry, plus one for the zone files. File watchers are returned separately,
/// because they load once before serving starts.
func makeWatchers(_ specs: [RegistrySpec], zonesDir: String?, assembler: CatalogAssembler, logger: Logger)
    throws -> ([CatalogWatcher], [any Service])
{
    let dc = assembler.localDatacenterName
    var fileWatchers: [CatalogWatcher] = []
    var services: [any Service] = []
    func file(_ catalog: String?, _ zones: String?, _ index: Int) throws -> CatalogWatcher {
        do {
            return try CatalogWatcher(configuration: .init(catalogDirectory: catalog, zonesDirectory: zones, localDatacenter: dc),
                                      assembler: assembler, sourceIndex: index, logger: logger)
        } catch {
            throw StartupError(message: "cannot use \(error.path): \(error.reason)")
        }
    }
    for (index, spec) in specs.enumerated() {
        switch spec {
        case .file(let directory):
            fileWatchers.append(try file(directory, nil, index))
        case .etcd(let endpoints, let prefixes):
            let watcher = EtcdWatcher(configuration: .init(endpoints: endpoints, prefix: prefixes[0], localDatacenter: dc),
                                      assembler: assembler, sourceIndex: index, logger: logger)
            services.append(TaskService { await watcher.run() })
        case .consul(let address, let datacenter, let token, let stale, let wait):
            var config = ConsulWatcher.Configuration(address: address, datacenter: datacenter, token: token, stale: stale,
                                                     localDatacenter: dc)
            if let wait { config.wait = wait }
            let watcher = ConsulWatcher(configuration: config, assembler: assembler, sourceIndex: index, logger: logger)
            services.append(TaskService { await watcher.run() })
        }
    }
    if let zonesDir { fileWatchers.append(try file(nil, zonesDir, -1)) }
    return (fileWatchers, services)
}

/// A loop (a watcher's poll or watch, the staleness monitor) run inside the ServiceGroup,
/// cancelled on graceful shutdown.
struct TaskService: Service {
    let body: @Sendable () async -> Void

    init(_ body: @escaping @Sendable () async -> Void) { self.body = body }

    func run() async throws {
        await cancelWhenGracefulShutdown { await body() }
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the catalog and zone files; print path:line: reason for each problem.")

    @OptionGroup var catalogOptions: CatalogOptions

    func run() async throws {
        let zonesDir = catalogOptions.zonesDirectory()
        let catalog = catalogOptions.catalog ?? "zones/catalog"
        let problems = CatalogWatcher.check(catalogDirectory: catalog, zonesDirectory: zonesDir,
                                            localDatacenter: catalogOptions.flagDatacenter)
        for p in problems { print(p) }
        if !problems.isEmpty {
            throw StartupError(message: "\(problems.count) problem\(problems.count == 1 ? "" : "s") found")
        }
        print("ok: \(catalog)\(zonesDir.map { " and \($0)" } ?? "")")
    }
}

extension AnswerOrder: ExpressibleByArgument {}
extension GRPCLBPolicy: ExpressibleByArgument {}
extension Forwarder.Policy: ExpressibleByArgument {}
extension DNSServer.UDPEngine: ExpressibleByArgument {}

/// "2s", "500ms", "1m" in milliseconds.
func parseDurationMilliseconds(_ text: String) -> Int64? {
    if text.hasSuffix("ms"), let v = Int64(text.dropLast(2)) { return v }
    return parseDuration(text).map { Int64($0) * 1000 }
}

import ArgumentParser
import Catalog
import Registries
import DNSWire
import Foundation
import Gateway
import Logging
import NIOCore

/// The whole configuration of `serve`, checked and typed: one value, built by one function (`load`) from the
/// command line and the optional `--config` file, which the executable, SIGHUP and the tests all use.
/// SIGHUP builds a new one and compares it with the running one field by field.
struct ServeConfiguration: Sendable, Equatable {
    /// What SIGHUP applies. The resolver is kept, with every answer it has encoded, when its part is unchanged.
    var resolver: ResolverConfiguration
    var maxStale: Duration?
    /// Nil: forwarding off (`--no-forward`, or no upstream to forward to).
    var forwarding: Forwarder.Configuration?
    var access: AccessControl
    var rateLimit: ResponseRateLimiter.Configuration?
    var queryLog: Bool
    /// The Consul agent's zone found at start-up (`--zone`'s default with `--locality`); reloads keep it.
    var agentZone: String?
    /// What only a restart applies.
    var restartOnly: RestartOnly

    /// Settings SIGHUP cannot change: the sockets, the threads, the registries, the identity and the logging.
    struct RestartOnly: Sendable, Equatable {
        var server: DNSServer.Configuration
        var threads: Int
        var admin: ListenAddress?
        var registries: [RegistrySpec]
        var zones: String?
        /// As given; nil asks the Consul agent (or means dc1).
        var datacenter: String?
        var logLevel: Logger.Level
        var user: String?
        /// `--state-dir`: where each registry's last-good catalog is kept.
        var stateDir: String?

        /// The names of the fields that differ from `old`, for the log line a reload writes (compared as values:
        /// a registry's token or wait counts, though its description leaves them out). Every field counts, the
        /// server's one by one, so a field added here is compared without being listed again.
        func changes(from old: RestartOnly) -> [String] {
            func differing(_ a: Any, _ b: Any) -> [String] {
                zip(Mirror(reflecting: a).children, Mirror(reflecting: b).children).compactMap { x, y in
                    guard let label = x.label, let value = x.value as? any Equatable else { return nil }
                    return value.isEqual(to: y.value) ? nil : label
                }
            }
            return (differing(server, old.server) + differing(self, old).filter { $0 != "server" }).sorted()
        }
    }

    /// The configuration `arguments` (without the program name) and their `--config` file give.
    /// `running`: the addresses the sockets are bound to, when reloading; the resolver's `ns` glue and the
    /// forwarder's "never forward to ourselves" use them, not a `--listen` that waits for a restart.
    static func load(arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
                     resolvConf: () -> String = { (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "" },
                     running: [ListenAddress]? = nil, datacenter: String? = nil, agentZone: String? = nil) throws -> ServeConfiguration
    {
        let command: ParsableCommand
        do { command = try Signpost.parseAsRoot(arguments) } catch {
            throw StartupError(message: Signpost.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)", code: 64)
        }
        guard let serve = command as? Serve else { throw StartupError(message: "not a serve command", code: 64) }
        return try ServeConfiguration(serve.overFile(), environment: environment, resolvConf: resolvConf, running: running, datacenter: datacenter, agentZone: agentZone)
    }

    /// The local datacenter when neither `--datacenter` nor the file gives one and no Consul agent says.
    static let defaultDatacenter = "dc1"
    /// The catalog directory when no registry is given.
    static let defaultCatalog = "zones/catalog"

    /// Defaults applied and every value checked. The one place a setting's default and meaning live. `datacenter`:
    /// the local datacenter chosen for this process (the Consul agent's, found at start-up, and kept by reloads:
    /// it is restart-only), over `--datacenter`; `restartOnly.datacenter` stays as given, so a reload that
    /// changes it is told.
    /// `agentZone`: the Consul agent's zone, which `--zone` defaults to (kept by reloads as the datacenter is).
    init(_ s: Serve, environment: [String: String] = [:], resolvConf: () -> String = { "" }, running: [ListenAddress]? = nil,
         datacenter: String? = nil, agentZone: String? = nil) throws(StartupError)
    {
        do {
            restartOnly = try Self.restartOnly(s, environment: environment)
            let listen = running ?? restartOnly.server.listen
            resolver = try Self.resolver(s, listen: listen, datacenter: datacenter, agentZone: agentZone)
            self.agentZone = agentZone
            let limits = try Self.handlerLimits(s)
            (maxStale, rateLimit, queryLog) = (limits.maxStale, limits.rateLimit, s.queryLog ?? false)
            (forwarding, access, resolver.routes) = try Self.forwarding(s, listen: listen, resolvConf: resolvConf)
        } catch {
            throw StartupError(message: error.description, code: 64)
        }
    }

    private static func restartOnly(_ s: Serve, environment: [String: String]) throws(ConfigurationError) -> RestartOnly {
        let listen = try (s.listen.isEmpty ? ["127.0.0.1:8600"] : s.listen).map { text throws(ConfigurationError) in try ListenAddress(parsing: text) }
        guard let idle = (s.tcpIdleTimeout ?? DurationSetting(.seconds(10))).value.timeAmount, idle > .zero else {
            throw ConfigurationError("--tcp-idle-timeout must be positive")
        }
        let (connections, inflight) = (s.tcpMaxConnections ?? 512, s.tcpMaxInflight ?? 32)
        guard connections > 0, inflight > 0 else { throw ConfigurationError("--tcp-max-connections and --tcp-max-inflight must be positive") }
        let threads = s.threads ?? NIOCore.System.coreCount
        guard threads > 0 else { throw ConfigurationError("--threads must be positive") }
        let server = DNSServer.Configuration(listen: listen, tcpIdleTimeout: idle, udpEngine: s.udpEngine ?? .mmsg, udpWorkers: threads,
                                             tcpMaxConnections: connections, tcpMaxInflight: inflight)
        guard let level = Logger.Level(rawValue: s.logLevel ?? "info") else { throw ConfigurationError("invalid --log-level \"\(s.logLevel!)\"") }
        var admin: ListenAddress? = nil
        if let text = s.admin {
            // A bare port (`8080`, `:8080`) is on loopback: the status page shows every service, check output and
            // registry address, so reaching it from elsewhere must be asked for by naming the host.
            let local = text.allSatisfy(\.isNumber) ? "127.0.0.1:" + text : text.hasPrefix(":") ? "127.0.0.1" + text : text
            do { admin = try ListenAddress(parsing: local, defaultPort: 8080) } catch { throw ConfigurationError("invalid --admin: \(error.description)") }
        }
        var registries: [RegistrySpec] = []
        if let c = s.catalogOptions.catalog { registries.append(.file(directory: c)) }
        for r in s.registry {
            do { registries += try RegistrySpec(parsing: r, environment: environment).watchers } catch { throw ConfigurationError(error.description) }
        }
        if registries.isEmpty { registries = [.file(directory: defaultCatalog)] }
        return RestartOnly(server: server, threads: threads, admin: admin, registries: registries, zones: CatalogOptions.zonesDirectory(s.catalogOptions.zones),
                           datacenter: s.catalogOptions.datacenter, logLevel: level, user: s.user, stateDir: s.stateDir)
    }

    private static func resolver(_ s: Serve, listen: [ListenAddress], datacenter: String?, agentZone: String?) throws(ConfigurationError)
        -> ResolverConfiguration
    {
        let domainText = s.domain ?? "consul"
        guard let domain = try? DNSName(domainText), domain.labelCount > 0 else { throw ConfigurationError("invalid --domain \"\(domainText)\"") }
        var altDomain: DNSName? = nil
        if let text = s.altDomain {
            guard let name = try? DNSName(text), name.labelCount > 0, name.lowercased != domain.lowercased else {
                throw ConfigurationError("invalid --alt-domain \"\(text)\": a domain other than --domain")
            }
            altDomain = name
        }
        let answerLimit = s.answerLimit ?? 0, maxUDPSize = s.maxUDPSize ?? 1232
        guard answerLimit >= 0 else { throw ConfigurationError("--answer-limit must not be negative") }
        guard (512...65535).contains(maxUDPSize) else { throw ConfigurationError("--max-udp-size must be 512-65535") }
        let addresses = listen.compactMap { Address($0.host) }.filter { $0 != Address("0.0.0.0") && $0 != Address("::") }
        return ResolverConfiguration(
            domain: domain, datacenter: datacenter ?? s.catalogOptions.datacenter ?? ServeConfiguration.defaultDatacenter, onlyPassing: s.onlyPassing ?? false, order: s.order ?? .cyclic,
            serviceTTL: try TTLPolicy.parse(s.serviceTTL), nodeTTL: s.nodeTTL?.seconds ?? 0, maxUDPSize: maxUDPSize,
            nameserverAddresses: addresses.isEmpty ? [Address("127.0.0.1")!] : addresses, grpcLBPolicy: s.grpcLbPolicy ?? .none,
            answerLimit: answerLimit, altDomain: altDomain, nodeMetaTXT: s.nodeMetaTxt ?? false,
            locality: try locality(s, agentZone: agentZone))
    }

    /// Nearest-first answers: `--locality`, the zones of clients, the meta keys and the guard.
    private static func locality(_ s: Serve, agentZone: String?) throws(ConfigurationError) -> LocalityConfiguration {
        var l = LocalityConfiguration()
        l.mode = s.locality ?? .off
        l.zone = s.zone.flatMap { $0.isEmpty ? nil : $0 } ?? agentZone
        for text in s.clientZone {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[1].isEmpty else { throw ConfigurationError("invalid --client-zone \"\(text)\": expected CIDR=ZONE") }
            l.clientZones.append((try CIDR(parts[0]), parts[1]))
        }
        var zoneKeys: [String] = [], regionKeys: [String] = []
        for text in s.localityKey {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            switch (parts.first, parts.count) {
            case ("zone", 2): zoneKeys.append(parts[1])
            case ("region", 2): regionKeys.append(parts[1])
            default: throw ConfigurationError("invalid --locality-key \"\(text)\": expected zone=KEY or region=KEY")
            }
        }
        if !zoneKeys.isEmpty { l.zoneKeys = zoneKeys }
        if !regionKeys.isEmpty { l.regionKeys = regionKeys }
        l.ecsTrusted = try s.ecsTrusted.map { t throws(ConfigurationError) in try CIDR(t) }
        l.minimum = s.localityMin ?? 1
        l.minimumShare = s.localityMinShare ?? 0.5
        guard l.minimum >= 1 else { throw ConfigurationError("--locality-min must be at least 1") }
        guard (0...1).contains(l.minimumShare) else { throw ConfigurationError("--locality-min-share must be from 0 to 1") }
        return l
    }

    private static func handlerLimits(_ s: Serve) throws(ConfigurationError)
        -> (maxStale: Duration?, rateLimit: ResponseRateLimiter.Configuration?)
    {
        if let d = s.maxStale?.value, d <= .zero { throw ConfigurationError("--max-stale must be positive") }
        let rate = s.rrlRate ?? 0, slip = s.rrlSlip ?? 2
        guard rate >= 0, slip >= 0 else { throw ConfigurationError("--rrl-rate and --rrl-slip must not be negative") }
        guard rate > 0 else { return (s.maxStale?.value, nil) }
        var exempt = ResponseRateLimiter.loopback
        if case let list = s.rrlExempt, !list.isEmpty {
            exempt = try list.filter { $0 != "none" }.map { t throws(ConfigurationError) in try CIDR(t) }
        }
        return (s.maxStale?.value, .init(rate: rate, slip: slip, exempt: exempt))
    }

    /// The forwarder's configuration, the recursion ACL, and where outside names go (`--forward-zone`, the local
    /// zones); nil configuration and no routes when forwarding is off.
    private static func forwarding(_ s: Serve, listen: [ListenAddress], resolvConf: () -> String) throws(ConfigurationError)
        -> (Forwarder.Configuration?, AccessControl, ForwardRoutes)
    {
        var access = AccessControl()
        if case let list = s.allowRecursion, !list.isEmpty { access = AccessControl(allowed: try list.map { t throws(ConfigurationError) in try CIDR(t) }) }
        guard s.forward ?? true else { return (nil, access, ForwardRoutes()) }
        /// A list of upstreams for one zone (or `--upstream`): all DNS over TLS, or none, so a zone forwarded over
        /// TLS never falls back to plain DNS; never one of our own listening addresses.
        func upstreams(_ texts: [String], _ flag: String) throws(ConfigurationError) -> [Upstream] {
            var out: [Upstream] = []
            for text in texts {
                do { out.append(try Upstream(parsing: text)) } catch { throw ConfigurationError("\(flag): \(error.description)") }
            }
            if out.contains(where: \.isTLS) && out.contains(where: { !$0.isTLS }) {
                throw ConfigurationError("\(flag) mixes tls:// and plain upstreams: a zone forwarded over TLS must never fall back to plain DNS")
            }
            return out.filter { u in !listen.contains { Upstream(parsingIfAddress: $0).map { $0.address == u.address } ?? false } }
        }
        var zones: [Forwarder.Zone] = [], refused: [DNSName] = []
        for text in s.forwardZone {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let zone = try? DNSName(parts[0]), !parts[1].isEmpty else {
                throw ConfigurationError("invalid --forward-zone \"\(text)\": expected ZONE=UPSTREAM[,UPSTREAM…] (HOST[:PORT] or tls://IP[:853]@NAME) or ZONE=none")
            }
            guard !zones.contains(where: { $0.name == zone.lowercased }) && !refused.contains(zone) else {
                throw ConfigurationError("--forward-zone \(zone) is given twice")
            }
            if parts[1].lowercased() == "none" { refused.append(zone); continue }
            let list = try upstreams(parts[1].split(separator: ",").map(String.init), "--forward-zone \(zone)")
            guard !list.isEmpty else { throw ConfigurationError("--forward-zone \(zone) names only Signpost's own addresses") }
            zones.append(Forwarder.Zone(name: zone, upstreams: list))
        }
        let routes = ForwardRoutes(forwardZones: zones.map { ($0.name, false) } + refused.map { ($0, true) }, localZones: s.localZones ?? true)
        let defaults: [Upstream]
        if case let given = s.upstream, !given.isEmpty {
            defaults = try upstreams(given, "--upstream")
        } else {
            defaults = try defaultUpstreams(resolvConf: resolvConf(), listen: listen).map { u throws(ConfigurationError) in
                guard let upstream = Upstream(parsingIfAddress: u) else { throw ConfigurationError("invalid upstream \"\(u)\": not an IP address") }
                return upstream
            }
        }
        // Forward zones alone forward too; names outside them are then REFUSED, as with forwarding off.
        guard !defaults.isEmpty || !zones.isEmpty else { return (nil, access, ForwardRoutes()) }
        var config = Forwarder.Configuration(upstreams: defaults)
        config.tlsCA = s.upstreamCa
        if let ca = s.upstreamCa {
            do { _ = try Forwarder.tlsConfiguration(ca: ca) } catch { throw ConfigurationError("--upstream-ca \(ca): cannot read PEM certificates (\(error))") }
        }
        guard let idle = (s.upstreamIdleTimeout ?? DurationSetting(.seconds(10))).value.timeAmount, idle > .zero else {
            throw ConfigurationError("--upstream-idle-timeout must be positive")
        }
        config.idleTimeout = idle
        config.zones = zones
        config.policy = s.upstreamPolicy ?? .sequential
        guard let timeout = (s.upstreamTimeout ?? DurationSetting(.seconds(2))).value.timeAmount, timeout > .zero else {
            throw ConfigurationError("--upstream-timeout must be positive")
        }
        config.timeout = timeout
        (config.maxConcurrent, config.cacheSize) = (s.maxConcurrent ?? 1000, s.cacheSize ?? 10000)
        guard config.maxConcurrent > 0, config.cacheSize > 0 else { throw ConfigurationError("--max-concurrent and --cache-size must be positive") }
        config.cacheMinTTL = s.cacheMinTTL?.seconds ?? 0
        config.cacheMaxTTL = s.cacheMaxTTL?.seconds ?? 86400
        config.staleTTL = s.staleTTL?.seconds ?? 86400
        return (config, access, routes)
    }
}

extension Equatable {
    /// Whether `other` is a value of the same type, equal to this one.
    func isEqual(to other: Any) -> Bool { (other as? Self) == self }
}

extension Duration {
    /// The same span as NIO's `TimeAmount`; nil past its range.
    var timeAmount: TimeAmount? {
        let (seconds, atto) = components
        guard seconds < Int64.max / 1_000_000_000 else { return nil }
        return .nanoseconds(seconds * 1_000_000_000 + atto / 1_000_000_000)
    }
}

import ArgumentParser
import Catalog
import Gateway
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// SIGHUP: read the command line and `--config` file again, build a new query handler and swap it in whole,
/// then rescan the catalog and zone files. Queries in progress finish on the handler they started with, so
/// none is dropped. A reload that fails (a bad config file, an invalid value) changes nothing and says why.
/// The forwarder, with its cache, is kept unless the forwarding settings changed.
final class Reloader: Sendable {
    struct Failure: Error { var reason: String }

    private struct Forwarding {
        var forwarder: Forwarder?
        var configuration: Forwarder.Configuration?
        var probes: Task<Void, Never>?
    }

    private let restartOnly: String
    /// The local datacenter chosen at start-up (it may have come from the Consul agent); restart-only.
    private let datacenter: String
    private let listen: [ListenAddress]
    private let slot: QueryHandlerSlot
    private let fileWatchers: [CatalogWatcher]
    private let group: any EventLoopGroup
    private let logger: Logger
    private let forwarding: NIOLockedValueBox<Forwarding>

    init(running: Serve, datacenter: String, listen: [ListenAddress], slot: QueryHandlerSlot, forwarder: Forwarder?, forwarding: Forwarder.Configuration?,
         fileWatchers: [CatalogWatcher], group: any EventLoopGroup, logger: Logger) {
        self.restartOnly = running.restartOnlySettings
        self.datacenter = datacenter
        self.listen = listen
        self.slot = slot
        self.fileWatchers = fileWatchers
        self.group = group
        self.logger = logger
        self.forwarding = NIOLockedValueBox(Forwarding(forwarder: forwarder, configuration: forwarding,
                                                       probes: forwarder.map { f in Task { await f.runProbes() } }))
    }

    func reload() async {
        logger.info("SIGHUP: reloading the configuration, catalog and zones")
        do {
            let serve = try parse()
            var resolverConfig: ResolverConfiguration
            do { resolverConfig = try serve.configurations().0 } catch { throw Failure(reason: error.description) }
            resolverConfig.datacenter = datacenter
            let maxStale: Duration?
            let setup: (Forwarder.Configuration, AccessControl)?
            let rrl: ResponseRateLimiter?
            do {
                maxStale = try serve.maxStaleDuration()
                setup = try serve.forwardingSetup(listen: listen, logger: logger)
                rrl = try serve.rateLimiter()
            } catch let error as StartupError {
                throw Failure(reason: error.message)
            }
            if serve.restartOnlySettings != restartOnly {
                logger.warning("listen addresses, threads, the UDP engine, the admin address, registries, the catalog and zones directories, the datacenter, the log level and the TCP idle timeout change only on restart; those changes wait")
            }
            let forwarder = forwarding.withLockedValue { state -> Forwarder? in
                guard let (config, _) = setup else {
                    state.probes?.cancel()
                    state = Forwarding()
                    return nil
                }
                if let current = state.forwarder, state.configuration == config { return current }
                state.probes?.cancel()
                let fresh = Forwarder(configuration: config, group: group, logger: logger)
                state = Forwarding(forwarder: fresh, configuration: config, probes: Task { await fresh.runProbes() })
                return fresh
            }
            let old = slot.handler
            // The rate limiter keeps its buckets unless its settings changed.
            let limiter = old.rrl.flatMap { current in rrl.flatMap { current.configuration == $0.configuration ? current : nil } } ?? rrl
            slot.replace(with: QueryHandler(resolver: Resolver(configuration: resolverConfig), store: old.store, logger: old.logger,
                                            maxStale: maxStale, forwarder: forwarder, access: setup?.1 ?? AccessControl(),
                                            observer: serve.queryObserver(), rrl: limiter))
            var problems = 0
            for watcher in fileWatchers { problems += await watcher.refresh().count }
            logger.info("reloaded", metadata: ["forwarding": "\(forwarder == nil ? "off" : "on")",
                                               "catalog.problems": "\(problems)"])
        } catch {
            let reason = (error as? Failure)?.reason ?? "\(error)"
            logger.error("reload failed; still serving the previous configuration", metadata: ["reason": "\(reason)"])
        }
    }

    /// The `serve` command as the command line and the config file give it now.
    private func parse() throws -> Serve {
        let arguments: [String]
        do { arguments = try ConfigFile.merge(Array(CommandLine.arguments.dropFirst())) } catch {
            throw Failure(reason: error.description)
        }
        do {
            guard let serve = try Signpost.parseAsRoot(arguments) as? Serve else { throw Failure(reason: "not a serve command") }
            return serve
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(reason: Signpost.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)")
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

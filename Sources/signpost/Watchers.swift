import Catalog
import Registries
import Logging
import ServiceLifecycle

/// One watcher per registry, plus one for the zone files. File watchers are returned separately,
/// because they load once before serving starts. With `stateDir`, etcd and Consul watchers keep their last-good
/// data there (catalog and zone files are on disk already). The registries' connections are returned too, for
/// SIGHUP to read their TLS and credential files again.
func makeWatchers(_ specs: [RegistrySpec], zonesDir: String?, stateDir: String? = nil, maxStale: Duration? = nil,
                  assembler: CatalogAssembler, logger: Logger) throws -> ([CatalogWatcher], [any Service], [RegistryConnection])
{
    let keeper = { (spec: RegistrySpec) in stateDir.map { StateKeeper(directory: $0, registry: spec.description, logger: logger) } }
    let dc = assembler.localDatacenterName
    var fileWatchers: [CatalogWatcher] = []
    var services: [any Service] = []
    var connections: [RegistryConnection] = []
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
        case .etcd(let connection, let prefixes):
            var config = EtcdWatcher.Configuration(connection: connection, prefix: prefixes[0], localDatacenter: dc)
            (config.state, config.maxStale) = (keeper(spec), maxStale)
            // The prefixes of one registry share its connection: one login, one set of clients, one file watch.
            let shared = connections.first { $0.registry == .etcd && $0.settings == connection }
            let watcher = EtcdWatcher(configuration: config, assembler: assembler, sourceIndex: index, logger: logger, connection: shared)
            if shared == nil { connections.append(watcher.connection) }
            services.append(TaskService { await watcher.run() })
        case .consul(let connection, let datacenter, let stale, let wait):
            var config = ConsulWatcher.Configuration(connection: connection, datacenter: datacenter, stale: stale, localDatacenter: dc)
            if let wait { config.wait = wait }
            (config.state, config.maxStale) = (keeper(spec), maxStale)
            let watcher = ConsulWatcher(configuration: config, assembler: assembler, sourceIndex: index, logger: logger)
            connections.append(watcher.connection)
            services.append(TaskService { await watcher.run() })
        }
    }
    if let zonesDir { fileWatchers.append(try file(nil, zonesDir, -1)) }
    return (fileWatchers, services, connections)
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

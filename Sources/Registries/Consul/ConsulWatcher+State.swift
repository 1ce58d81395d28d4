import Catalog
import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix

extension ConsulWatcher: StateSource {
    /// The services as published, each service's own index, and the catalog and nodes indexes to resume from.
    /// While reads or a sweep are under way or scheduled, the data is behind what the watches have seen: then the
    /// catalog index is 0, so a restart sweeps (and reads only the services whose index is not the one stored with
    /// their data). The failing lists need nothing stored: they are read again at start and compared with the data.
    public func currentState() -> (entries: [String: [Instance]], resume: [String: String]) {
        func text(_ value: some Encodable) -> String {
            (try? JSONEncoder().encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
        }
        let settled = readsInFlight == 0 && !sweeping && later.isEmpty && changedDuringLoad.isEmpty
        return (published, ["known": text(known.sorted()), "serviceIndexes": text(serviceIndexes),
                            "catalogIndex": settled ? String(catalogIndex) : "0", "nodesIndex": String(nodesIndex)])
    }

    /// The state file's services, served until Consul answers. The blocking queries resume from its indexes:
    /// Consul answers at once if they moved meanwhile, and only what changed is read again. A file written
    /// mid-change (catalog index 0), or by an older Signpost, resumes with a sweep.
    func restore(_ state: RegistryState) async {
        var catalog = SourceCatalog()
        for (name, instances) in state.entries where !instances.isEmpty {
            published[name] = instances
            catalog.services[name] = instances
            setNodes(for: name, instances)
            hold(name, instances)
        }
        catalog.nodes = nodeRefs.nodes
        let decoder = JSONDecoder()
        func value<T: Decodable>(_ key: String, _ type: T.Type) -> T? { state.resume[key].flatMap { try? decoder.decode(T.self, from: Data($0.utf8)) } }
        known = Set(published.keys).union(value("known", [String].self) ?? [])
        unreadAfterRestore = known.subtracting(published.keys)
        serviceIndexes = value("serviceIndexes", [String: UInt64].self) ?? [:]
        loaded = true
        catalogIndex = UInt64(state.resume["catalogIndex"] ?? "") ?? 0
        nodesIndex = UInt64(state.resume["nodesIndex"] ?? "") ?? 0
        // A file from before the per-service indexes: sweep (which then reads every service).
        if state.resume["serviceIndexes"] == nil { catalogIndex = 0 }
        await assembler.restore(source: sourceIndex, with: catalog, confirmed: state.confirmed)
        logger.info("serving the state file until Consul answers", metadata: ["path": "\(configuration.state!.path)",
                                                                            "consul.services": "\(known.count)", "consul.index": "\(catalogIndex)"])
    }
}

import Catalog
import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix

/// Consul's HTTP API as the watcher reads it: blocking GETs, `/v1/health/service/<name>` decoded into instances,
/// and the agent's datacenter.
extension ConsulWatcher {
    /// Any JSON object, unread.
    struct AnyEntry: Decodable {}

    /// Consul's filter language: no node and no health entry has an empty node name.
    static let matchesNoNode = #"Node == """#
    static let matchesNoEntry = #"Node.Node == """#

    static func healthPath(_ name: String) -> String {
        "/v1/health/service/" + (name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? name)
    }

    /// One service's instances, with health folded in from node-level and service-level checks.
    nonisolated func health(_ name: String, index: UInt64) async throws -> ([Instance], UInt64?, LeaderContact) {
        let path = Self.healthPath(name)
        let (body, returned, leader) = try await Self.get(configuration, connection, path, index: index, wait: configuration.wait)
        let entries = try connection.decode([Lenient<HealthEntry>].self, body, path: path, endpoint: configuration.address)
        var out: [Instance] = []
        out.reserveCapacity(entries.count)
        for element in entries {
            do {
                guard let entry = element.wrappedValue else { throw EntryError(description: "entry does not decode: " + (element.problem ?? "")) }
                out.append(try Self.instance(from: entry, localDatacenter: configuration.localDatacenter))
            } catch {
                logger.error("consul entry skipped", metadata: ["registry": "consul", "consul.service": "\(name)", "reason": "\(error)"])
                skips.count(.unknownFormat)
                assembler.store.activity.noteSkipped(registry: "consul", location: "/v1/health/service/\(name)", name: name,
                                                     reason: "\(error)")
            }
        }
        return (out, returned, leader)
    }

    /// The agent's own datacenter, `Config.Datacenter` of `/v1/agent/self` (which needs `agent:read`), and its
    /// locality: the agent's `locality { region zone }` becomes its node's `Locality` in the catalog, read from
    /// `/v1/catalog/node/<Config.NodeName>` (nil when it has none, or that read fails).
    public static func agentDatacenter(connection settings: ConnectionSettings, logger: Logger) async throws -> (String, Locality?) {
        let connection = RegistryConnection(settings: settings, registry: .consul, name: "consul:" + settings.endpoints[0], logger: logger)
        defer { Task { await connection.shutdown() } }
        let (datacenter, node) = try await connection.agentSelf()
        let locality = node.isEmpty ? nil : try? await connection.nodeLocality(node)
        return (datacenter, locality ?? nil)
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

    /// One entry of `/v1/health/service/<name>`, typed as Consul's Go structs are (`structs.CheckServiceNode`):
    /// what an instance is made of. An entry that does not decode, or lacks a node, its address or a service name
    /// (`instance(from:)`), is skipped, logged and counted; the others serve.
    struct HealthEntry: Decodable, Sendable {
        struct NodePart: Decodable, Sendable {
            var Node: String?
            var Address: String?
            var Datacenter: String?
            var TaggedAddresses: [String: String]?
            var Meta: [String: String]?
            var Locality: RegisteredLocality?
        }
        struct TaggedAddress: Decodable, Sendable { var Address: String? }
        struct Weights: Decodable, Sendable {
            var Passing: Int?
            var Warning: Int?
        }
        struct ServicePart: Decodable, Sendable {
            var ID: String?
            var Service: String?
            var Tags: [String]?
            var Address: String?
            var TaggedAddresses: [String: TaggedAddress]?
            var Meta: [String: String]?
            var Port: Int?
            var Weights: Weights?
            var ModifyIndex: Int64?
            var Locality: RegisteredLocality?
        }
        /// Consul's `structs.HealthCheck`, as health entries and the failing lists (`FailingCheck`) give it.
        struct Check: Decodable, Sendable {
            var Node: String?
            var CheckID: String?
            var Name: String?
            var Status: String?
            var Output: String?
            var Notes: String?
            var ServiceID: String?
            var ServiceName: String?
        }
        var Node: NodePart?
        var Service: ServicePart?
        var Checks: [Check]?
    }

    /// The entry as the shared rules read a registration (`RegistrationRules`). Only the entry's node-level checks
    /// and the instance's own are its checks: Consul lists a node's checks for every service on it.
    static func instance(from entry: HealthEntry, localDatacenter: String) throws -> Instance {
        guard let node = entry.Node, let nodeName = node.Node, !nodeName.isEmpty, let service = entry.Service, let serviceName = service.Service else {
            throw EntryError(description: "entry without Node, Node.Node or Service")
        }
        let id = service.ID.flatMap { $0.isEmpty ? nil : $0 } ?? serviceName
        let checks = (entry.Checks ?? []).compactMap { c -> RegistrationFields.Check? in
            let sid = c.ServiceID ?? ""
            guard sid.isEmpty || sid == id else { return nil }
            return .init(id: c.CheckID, name: c.Name, status: c.Status, output: c.Output, notes: c.Notes, nodeLevel: sid.isEmpty)
        }
        let fields = RegistrationFields(
            service: serviceName, id: id, node: nodeName, nodeAddress: node.Address, datacenter: node.Datacenter,
            nodeMeta: node.Meta ?? [:], nodeLAN: (node.TaggedAddresses?["lan_ipv4"], node.TaggedAddresses?["lan_ipv6"]),
            address: service.Address, port: service.Port, tags: service.Tags ?? [], meta: service.Meta ?? [:],
            weights: service.Weights.map { .init(passing: $0.Passing, warning: $0.Warning) },
            serviceLAN: (service.TaggedAddresses?["lan_ipv4"]?.Address, service.TaggedAddresses?["lan_ipv6"]?.Address), checks: checks,
            locality: service.Locality?.value, nodeLocality: node.Locality?.value)
        var inst: Instance
        do { inst = try RegistrationRules.instance(fields, localDatacenter: localDatacenter) } catch {
            throw EntryError(description: "service \(id) on node \(nodeName): \(error)")
        }
        inst.origin = Origin(registry: "consul", location: "service \(id) on node \(inst.node.name)", revision: service.ModifyIndex)
        return inst
    }

    /// A GET, blocking when `index` > 0; returns the body, `X-Consul-Index` and the leader headers. `filter` is
    /// an expression in Consul's filter language.
    func get(_ path: String, index: UInt64, wait: Duration, filter: String? = nil) async throws -> (ByteBuffer, UInt64?, LeaderContact) {
        try await Self.get(configuration, connection, path, index: index, wait: wait, filter: filter)
    }

    /// Runs where it is called from: on the actor (the watches, whose answers then need no hop), or on Swift's pool
    /// (reads).
    static func get(_ configuration: Configuration, _ connection: RegistryConnection, _ path: String, index: UInt64, wait: Duration,
                            filter: String? = nil, isolation: isolated (any Actor)? = #isolation) async throws -> (ByteBuffer, UInt64?, LeaderContact) {
        var query: [String] = []
        if let dc = configuration.datacenter { query.append("dc=\(dc)") }
        if configuration.stale { query.append("stale") }
        if let filter { query.append("filter=" + (filter.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? filter)) }
        let waitSeconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        if index > 0 {
            // Jitter on top of the wait, so watches started together do not all return together.
            let jittered = waitSeconds + Double.random(in: 0...(waitSeconds / 16))
            query.append("index=\(index)")
            query.append("wait=\(Int(jittered * 1000))ms")
        }
        let endpoint = configuration.address
        let (headers, body) = try await connection.fetchJSON(endpoint, path, query: query.joined(separator: "&"),
                                                             deadline: .now() + .seconds(Int64(waitSeconds * 1.1) + 30))
        let returned = headers.first(name: "X-Consul-Index").flatMap { UInt64($0) }
        var leader = LeaderContact(knownLeader: headers.first(name: "X-Consul-KnownLeader"),
                                   lastContact: headers.first(name: "X-Consul-LastContact"))
        leader.filteredByACLs = headers.first(name: "X-Consul-Results-Filtered-By-ACLs") == "true"
        return (body, returned, leader)
    }
}

extension RegistryConnection {
    /// `Config.Datacenter` and `Config.NodeName` of `/v1/agent/self`.
    func agentSelf() async throws -> (datacenter: String, node: String) {
        struct Agent: Decodable { struct Config: Decodable { var Datacenter: String; var NodeName: String? }; var Config: Config }
        let endpoint = settings.endpoints[0], path = "/v1/agent/self"
        let body = try await execute(request(endpoint, path), endpoint: endpoint, deadline: .now() + .seconds(3)) { response in
            try await jsonBody(response, path: path, endpoint: endpoint)
        }
        let config = try decode(Agent.self, body, path: path, endpoint: endpoint).Config
        guard !config.Datacenter.isEmpty else { throw RegistryFailure(.badResponse, endpoint: endpoint, "\(path): Config.Datacenter is empty") }
        return (config.Datacenter, config.NodeName ?? "")
    }

    /// A node's `Locality` (Consul 1.16+), from `/v1/catalog/node/<name>`; nil when it has none.
    func nodeLocality(_ node: String) async throws -> Locality? {
        struct NodeServices: Decodable { struct Node: Decodable { var Locality: RegisteredLocality? }; var Node: Node? }
        let endpoint = settings.endpoints[0]
        let path = "/v1/catalog/node/" + (node.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? node)
        let body = try await execute(request(endpoint, path), endpoint: endpoint, deadline: .now() + .seconds(3)) { response in
            try await jsonBody(response, path: path, endpoint: endpoint)
        }
        let locality = try decode(NodeServices.self, body, path: path, endpoint: endpoint).Node?.Locality?.value
        return locality?.isEmpty == false ? locality : nil
    }
}

import Catalog
import DNSWire
import Foundation

/// One etcd key under a watched prefix, read as the instances it stands for. Values are recognised by shape
/// (see `EtcdLayout` for the framework formats):
/// - native: `{"Address": "192.0.2.1", "Port": 80, "ID", "Service", "Tags", "Meta", "Weights", "Node",
///   "Datacenter", "Status"}` (only Address is required);
/// - etcd's endpoints manager / grpc-go naming: `{"Op": 0, "Addr": "192.0.2.1:50051", "Metadata": …}`;
/// - the lease tutorial: `{"Name": "g.srv.mail", "IP": "192.0.2.1:8972"}`;
/// - go-micro: a service with `nodes[]`, one instance per node;
/// - Kratos: `{"id", "name", "metadata", "endpoints": ["grpc://ip:port", "http://ip:port"]}`;
/// - plain (go-zero and others): a bare `host:port`, or an IP address.
///
/// The service name comes from the value where a layout puts it there (go-micro's and Kratos's `name`, the
/// tutorial's `Name`); otherwise from the key, as its first segment after the prefix (a leading `/` ignored).
public enum EtcdValue {
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
        public var reason: SkipReason = .unknownFormat
    }

    /// The key's instances; nil for a gRPC naming "delete" op, or a key outside the prefix.
    public static func parse(key: String, value: [UInt8], prefix: String, localDatacenter: String) throws(Invalid) -> [Instance]? {
        guard key.hasPrefix(prefix) else { return nil }
        var rest = key.dropFirst(prefix.count)
        if rest.hasPrefix("/") { rest = rest.dropFirst() }
        let slash = rest.firstIndex(of: "/")
        let keyService = slash.map { String(rest[..<$0]) }.flatMap { $0.isEmpty ? nil : $0 }
        let keyID = slash.map { String(rest[rest.index(after: $0)...]) } ?? ""
        let context = KeyContext(key: key, service: keyService, id: keyID.isEmpty ? key : keyID, datacenter: localDatacenter)

        let text = value.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        switch text.first {
        case UInt8(ascii: "{"):
            return try object(value, context)
        case UInt8(ascii: "\""):
            guard let s = try? JSONDecoder().decode(String.self, from: Data(value)) else {
                throw Invalid(description: "invalid JSON string")
            }
            return [try plain(s, context)]
        default:
            return [try plain(String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines), context)]
        }
    }

    struct KeyContext {
        var key: String
        /// The key's first segment after the prefix; nil when the key has no `<service>/` segment.
        var service: String?
        /// What follows that segment (the whole key when nothing does).
        var id: String
        var datacenter: String

        /// The service's name: the value's, where its layout gives one, or else the key's first segment. Whether
        /// it can be served is the registration rules' call (`instance`).
        func serviceName(_ fromValue: String?) throws(Invalid) -> String {
            if let fromValue, !fromValue.isEmpty { return fromValue }
            guard let service else { throw Invalid(description: "key is not <prefix><service>/<id>") }
            return service
        }

        /// An instance without a node: its address is its own, so its SRV target is `<hex>.addr.<dc>.<domain>`.
        func instance(_ service: String, id: String, address: Address, port: UInt16, meta: [String: String] = [:],
                      namedPorts: [String: UInt16] = [:]) throws(Invalid) -> Instance {
            try EtcdValue.instance(RegistrationFields(service: service, id: id, datacenter: datacenter, address: address.description,
                                                      port: Int(port), namedPorts: namedPorts, meta: meta), self)
        }
    }

    /// A registration through the shared rules (`RegistrationRules`); a refusal is this key's `Invalid`.
    static func instance(_ fields: RegistrationFields, _ context: KeyContext) throws(Invalid) -> Instance {
        do throws(RegistrationProblem) {
            return try RegistrationRules.instance(fields, localDatacenter: context.datacenter)
        } catch {
            if case .serviceName(_, let reason) = error { throw Invalid(description: "\(error)", reason: reason) }
            throw Invalid(description: "\(error)")
        }
    }

    static func address(_ text: String) throws(Invalid) -> Address {
        guard let a = Address(text) else { throw Invalid(description: "\"\(text)\" is neither an IP address nor a hostname") }
        return a
    }

    /// `host:port`, `[v6]:port`; with `portOptional`, a bare host too (port 0).
    static func hostPort(_ text: String, portOptional: Bool = false) throws(Invalid) -> (Address, UInt16) {
        if portOptional, let a = Address(text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text) {
            return (a, 0)
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw Invalid(description: "\"\(text)\" is not host:port")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (try address(host), port)
    }

    /// A bare `host:port` or IP address (go-zero writes `host:port`). A bare word is not taken for a hostname:
    /// over a whole keyspace, most such values are someone else's settings.
    static func plain(_ text: String, _ context: KeyContext) throws(Invalid) -> Instance {
        let service = try context.serviceName(nil)
        if let ip = IPv4(text) { return try context.instance(service, id: context.id, address: .v4(ip), port: 0) }
        if text.contains(":"), !text.contains("]"), let ip = IPv6(text) {
            return try context.instance(service, id: context.id, address: .v6(ip), port: 0)
        }
        guard let (address, port) = try? hostPort(text) else {
            throw Invalid(description: "none of the value formats: not JSON, host:port or an IP address")
        }
        return try context.instance(service, id: context.id, address: address, port: port)
    }

    /// A JSON object: the layout is told by which fields it has (`EtcdLayout.Detected`, one parse).
    static func object(_ value: [UInt8], _ context: KeyContext) throws(Invalid) -> [Instance]? {
        let detected: EtcdLayout.Detected
        do { detected = try JSONDecoder().decode(EtcdLayout.Detected.self, from: Data(value)) } catch {
            switch error {
            case let invalid as Invalid: throw invalid
            case let failure as EtcdLayout.Detected.Failure: throw Invalid(description: "\(failure.layout): \(RegistryConnection.short(failure.error))")
            case DecodingError.typeMismatch(_, let c) where c.codingPath.isEmpty: throw Invalid(description: "expected a JSON object")
            default: throw Invalid(description: "invalid JSON: \(RegistryConnection.short(error))")
            }
        }
        switch detected {
        case .goMicro(let s):
            let service = try context.serviceName(s.name)
            guard !s.nodes.isEmpty else { throw Invalid(description: "go-micro service: no nodes") }
            var out: [Instance] = []
            for node in s.nodes {
                let (address, port) = try hostPort(node.address, portOptional: true)
                out.append(try context.instance(service, id: node.id.isEmpty ? context.id : node.id, address: address, port: port,
                                                meta: s.metadata.merging(node.metadata) { $1 }))
            }
            return out
        case .kratos(let k):
            return [try kratos(k, context)]
        case .endpointUpdate(let u):
            guard u.op != 1 else { return nil }
            let (address, port) = try hostPort(u.addr)
            return [try context.instance(try context.serviceName(nil), id: context.id, address: address, port: port)]
        case .tutorial(let t):
            let (address, port) = try hostPort(t.ip)
            return [try context.instance(try context.serviceName(t.name), id: context.id, address: address, port: port)]
        case .native(let n):
            return [try native(n, context)]
        case .none:
            throw Invalid(description: "none of the value formats: needs Address (native), Addr (endpoints manager), IP (tutorial), nodes (go-micro) or endpoints (Kratos)")
        }
    }

    /// Kratos: one instance, at the first endpoint's address; each scheme's port is a named port.
    static func kratos(_ k: EtcdLayout.Kratos, _ context: KeyContext) throws(Invalid) -> Instance {
        let service = try context.serviceName(k.name)
        var first: (Address, UInt16)? = nil
        var named: [String: UInt16] = [:]
        for endpoint in k.endpoints {
            guard let sep = endpoint.range(of: "://") else { throw Invalid(description: "Kratos endpoint \"\(endpoint)\" is not scheme://host:port") }
            let scheme = endpoint[..<sep.lowerBound].lowercased()
            var hostPortText = endpoint[sep.upperBound...]
            if let end = hostPortText.firstIndex(where: { $0 == "?" || $0 == "/" }) { hostPortText = hostPortText[..<end] }
            let (address, port) = try hostPort(String(hostPortText))
            if first == nil { first = (address, port) }
            if named[scheme] == nil { named[scheme] = port }
        }
        guard let (address, port) = first else { throw Invalid(description: "Kratos instance: no endpoints") }
        return try context.instance(service, id: k.id.isEmpty ? context.id : k.id, address: address, port: port, meta: k.metadata, namedPorts: named)
    }

    /// The native format: with a `Node`, `Address` is the node's and the SRV target the node's name; without
    /// one, the instance's own (its `<hex>.addr` name). `Status` is the instance's, as a check's would be.
    static func native(_ n: EtcdLayout.Native, _ context: KeyContext) throws(Invalid) -> Instance {
        let node = n.node.flatMap { $0.isEmpty ? nil : $0 }
        return try instance(RegistrationFields(service: try context.serviceName(nil), id: n.id.flatMap { $0.isEmpty ? nil : $0 } ?? context.id,
                                               node: node, nodeAddress: node == nil ? nil : n.address, datacenter: n.datacenter ?? context.datacenter,
                                               address: node == nil ? n.address : nil, port: n.port, tags: n.tags, meta: n.meta,
                                               weights: n.weights, status: n.status, locality: n.locality), context)
    }
}

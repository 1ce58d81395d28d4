import DNSWire

/// One etcd key under the prefix, as an instance. Three value formats are understood:
/// 1. native: `{"Address": "192.0.2.1", "Port": 80, "ID", "Service", "Tags", "Meta", "Weights", "Node",
///    "Datacenter", "Status"}` (only Address is required);
/// 2. etcd's gRPC naming / endpoints manager: `{"Op": 0, "Addr": "192.0.2.1:50051", "Metadata": …}`;
/// 3. the tutorial format: `{"Name": "mail", "IP": "192.0.2.1:8972"}`.
/// The service name is always the first path segment after the prefix.
public enum EtcdValue {
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// nil when the key is not `<prefix><service>/<something>` or the value is a gRPC "delete" op.
    public static func parse(key: String, value: [UInt8], prefix: String, localDatacenter: String) throws(Invalid) -> (service: String, instance: Instance)? {
        guard key.hasPrefix(prefix) else { return nil }
        let rest = key.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex else {
            throw Invalid(description: "key is not <prefix><service>/<id>")
        }
        let serviceName = String(rest[..<slash])
        let suffix = String(rest[rest.index(after: slash)...])
        guard (try? DNSName(labels: [serviceName])) != nil, !serviceName.contains(".") else {
            throw Invalid(description: "service \"\(serviceName)\" cannot be a DNS label")
        }
        let root: JSONNode
        do { root = try JSONParser.parse(value) } catch { throw Invalid(description: "invalid JSON: \(error.reason)") }
        guard case .object(let raw, _) = root.value else { throw Invalid(description: "expected a JSON object") }
        var f: [String: JSONNode] = [:]
        for (k, v) in raw { f[k.lowercased()] = v }

        func string(_ k: String) throws(Invalid) -> String? {
            guard let n = f[k] else { return nil }
            if case .null = n.value { return nil }
            guard case .string(let s) = n.value else { throw Invalid(description: "\(k): expected a string") }
            return s
        }
        func int(_ k: String, _ range: ClosedRange<Int>) throws(Invalid) -> Int? {
            guard let n = f[k] else { return nil }
            guard case .number(let d) = n.value, d == d.rounded(), range.contains(Int(d)) else {
                throw Invalid(description: "\(k): expected an integer from \(range.lowerBound) to \(range.upperBound)")
            }
            return Int(d)
        }
        func address(_ text: String) throws(Invalid) -> Address {
            guard let a = Address(text) else { throw Invalid(description: "\"\(text)\" is neither an IP address nor a hostname") }
            return a
        }
        func hostPort(_ text: String) throws(Invalid) -> (Address, UInt16) {
            guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
                throw Invalid(description: "\"\(text)\" is not host:port")
            }
            var host = String(text[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            return (try address(host), port)
        }

        var inst = Instance(id: suffix.isEmpty ? key : suffix, service: serviceName,
                            node: Node(name: "", address: .v4(IPv4(bytes: [0, 0, 0, 0])), datacenter: localDatacenter, meta: [:]),
                            serviceAddress: nil, port: 0, tags: [], meta: [:], weightPassing: 1, weightWarning: 1, health: .passing)
        var nodeName = ""
        let addr: Address
        if f["addr"] != nil {
            // etcd gRPC naming: Op 0 adds, 1 deletes.
            if let op = try int("op", 0...1), op == 1 { return nil }
            guard let text = try string("addr") else { throw Invalid(description: "Addr: expected a string") }
            (addr, inst.port) = try hostPort(text)
        } else if f["ip"] != nil {
            guard let text = try string("ip") else { throw Invalid(description: "IP: expected a string") }
            (addr, inst.port) = try hostPort(text)
        } else if let text = try string("address"), !text.isEmpty {
            addr = try address(text)
            inst.port = UInt16(try int("port", 0...65535) ?? 0)
            if let id = try string("id"), !id.isEmpty { inst.id = id }
            if let dc = try string("datacenter"), !dc.isEmpty { inst.node.datacenter = dc }
            nodeName = try string("node") ?? ""
            if let n = f["tags"] {
                guard case .array(let items) = n.value else { throw Invalid(description: "Tags: expected an array of strings") }
                for item in items {
                    guard case .string(let t) = item.value else { throw Invalid(description: "Tags: expected an array of strings") }
                    inst.tags.append(t)
                }
            }
            if let n = f["meta"], case .object(let m, _) = n.value {
                for (k, v) in m { if case .string(let s) = v.value { inst.meta[k] = s } }
            }
            if let n = f["weights"], case .object(let w, _) = n.value {
                if case .number(let p)? = w["Passing"]?.value ?? w["passing"]?.value, p >= 1, p <= 65535 { inst.weightPassing = UInt16(p) }
                if case .number(let p)? = w["Warning"]?.value ?? w["warning"]?.value, p >= 0, p <= 65535 { inst.weightWarning = UInt16(p) }
            }
            if let status = try string("status") {
                guard let h = Health(status: status) else {
                    throw Invalid(description: "Status: \"\(status)\" is not one of passing, warning, critical, maintenance")
                }
                inst.health = h
            }
        } else {
            throw Invalid(description: "none of the value formats: needs Address (native), Addr (gRPC naming) or IP")
        }
        if nodeName.isEmpty {
            // No node: the address is the service's own, so the SRV target is <hex>.addr.<dc>.<domain>.
            inst.node.address = addr
            inst.serviceAddress = addr
        } else {
            guard (try? DNSName(labels: nodeName.split(separator: ".", omittingEmptySubsequences: false))) != nil else {
                throw Invalid(description: "Node: \"\(nodeName)\" cannot be a DNS label")
            }
            inst.node.name = nodeName
            inst.node.address = addr
        }
        return (serviceName.lowercased(), inst)
    }
}

import DNSWire

/// Reads catalog files shaped like Consul's `/v1/catalog/register` body.
/// Keys match case-insensitively, as Consul's Go decoder does; unknown keys are ignored.
public enum RegistrationDecoder {
    struct SchemaError: Error {
        var line: Int
        var reason: String
    }

    /// Parses a whole file: one registration object, or an array of them.
    public static func decode(bytes: [UInt8], path: String, defaultDatacenter: String) throws(CatalogProblem) -> [Registration] {
        var skipped: [SkippedName] = []
        return try decode(bytes: bytes, path: path, defaultDatacenter: defaultDatacenter, skipped: &skipped)
    }

    /// The same, and the services whose names can never be DNS names: each is left out (with its checks), and
    /// the rest of the file loads.
    public static func decode(bytes: [UInt8], path: String, defaultDatacenter: String,
                              skipped: inout [SkippedName]) throws(CatalogProblem) -> [Registration] {
        let root: JSONNode
        do {
            root = try JSONParser.parse(bytes)
        } catch {
            throw CatalogProblem(path: path, line: error.line, reason: "invalid JSON: \(error.reason)")
        }
        do throws(SchemaError) {
            switch root.value {
            case .object:
                return [try registration(root, at: "", file: path, defaultDatacenter: defaultDatacenter, skipped: &skipped)]
            case .array(let items):
                var out: [Registration] = []
                for (i, item) in items.enumerated() {
                    out.append(try registration(item, at: "[\(i)].", file: path, defaultDatacenter: defaultDatacenter, skipped: &skipped))
                }
                return out
            default:
                throw SchemaError(line: root.line, reason: "expected an object or an array of objects, got \(root.typeName)")
            }
        } catch {
            throw CatalogProblem(path: path, line: error.line, reason: error.reason)
        }
    }

    private struct Object {
        let fields: [String: JSONNode]
        let line: Int
        let path: String

        init(_ node: JSONNode, path: String) throws(SchemaError) {
            guard case .object(let dict, _) = node.value else {
                throw SchemaError(line: node.line, reason: "\(path.isEmpty ? "registration" : String(path.dropLast())): expected an object, got \(node.typeName)")
            }
            var lowered: [String: JSONNode] = [:]
            for (k, v) in dict { lowered[k.lowercased()] = v }
            self.fields = lowered
            self.line = node.line
            self.path = path
        }

        func node(_ key: String) -> JSONNode? {
            guard let n = fields[key.lowercased()] else { return nil }
            if case .null = n.value { return nil }
            return n
        }

        func string(_ key: String, required: Bool = false) throws(SchemaError) -> String? {
            guard let n = node(key) else {
                if required { throw SchemaError(line: line, reason: "\(path)\(key): required") }
                return nil
            }
            guard case .string(let s) = n.value else {
                throw SchemaError(line: n.line, reason: "\(path)\(key): expected a string, got \(n.typeName)")
            }
            if required && s.isEmpty { throw SchemaError(line: n.line, reason: "\(path)\(key): must not be empty") }
            return s
        }

        func integer(_ key: String, in range: ClosedRange<Int>) throws(SchemaError) -> Int? {
            guard let n = node(key) else { return nil }
            guard case .number(let d) = n.value, d == d.rounded(), d >= Double(range.lowerBound), d <= Double(range.upperBound) else {
                throw SchemaError(line: n.line, reason: "\(path)\(key): expected an integer from \(range.lowerBound) to \(range.upperBound)")
            }
            return Int(d)
        }

        func strings(_ key: String) throws(SchemaError) -> [String] {
            guard let n = node(key) else { return [] }
            guard case .array(let items) = n.value else {
                throw SchemaError(line: n.line, reason: "\(path)\(key): expected an array of strings, got \(n.typeName)")
            }
            var out: [String] = []
            for (i, item) in items.enumerated() {
                guard case .string(let s) = item.value else {
                    throw SchemaError(line: item.line, reason: "\(path)\(key)[\(i)]: expected a string, got \(item.typeName)")
                }
                out.append(s)
            }
            return out
        }

        func stringMap(_ key: String) throws(SchemaError) -> [String: String] {
            guard let n = node(key) else { return [:] }
            guard case .object(let dict, _) = n.value else {
                throw SchemaError(line: n.line, reason: "\(path)\(key): expected an object of strings, got \(n.typeName)")
            }
            var out: [String: String] = [:]
            for (k, v) in dict {
                guard case .string(let s) = v.value else {
                    throw SchemaError(line: v.line, reason: "\(path)\(key).\(k): expected a string, got \(v.typeName)")
                }
                out[k] = s
            }
            return out
        }

        func object(_ key: String) throws(SchemaError) -> Object? {
            guard let n = node(key) else { return nil }
            return try Object(n, path: "\(path)\(key).")
        }
    }

    static func address(_ text: String, line: Int, field: String) throws(SchemaError) -> Address {
        guard let a = Address(text) else {
            throw SchemaError(line: line, reason: "\(field): \"\(text)\" is neither an IP address nor a hostname")
        }
        return a
    }

    static func registration(_ json: JSONNode, at path: String, file: String, defaultDatacenter: String,
                             skipped: inout [SkippedName]) throws(SchemaError) -> Registration {
        let o = try Object(json, path: path)
        let nodeName = try o.string("Node", required: true)!
        guard (try? DNSName(labels: nodeName.split(separator: ".", omittingEmptySubsequences: false))) != nil else {
            throw SchemaError(line: o.node("Node")!.line, reason: "\(path)Node: \"\(nodeName)\" cannot be a DNS label")
        }
        let addrText = try o.string("Address", required: true)!
        var node = Node(
            name: nodeName,
            address: try address(addrText, line: o.node("Address")!.line, field: "\(path)Address"),
            datacenter: (try o.string("Datacenter")).flatMap { $0.isEmpty ? nil : $0 } ?? defaultDatacenter,
            meta: try o.stringMap("NodeMeta"))
        let tagged = try o.stringMap("TaggedAddresses")
        node.lanAddresses = Address.lanAddresses(ipv4: tagged["lan_ipv4"], ipv6: tagged["lan_ipv6"], besides: node.address)

        var checks: [Check] = []
        var checkNodes: [JSONNode] = []
        if let single = o.node("Check") { checkNodes.append(single) }
        if let many = o.node("Checks") {
            guard case .array(let items) = many.value else {
                throw SchemaError(line: many.line, reason: "\(path)Checks: expected an array, got \(many.typeName)")
            }
            checkNodes += items
        }
        for (i, c) in checkNodes.enumerated() {
            let co = try Object(c, path: "\(path)Checks[\(i)].")
            let name = try co.string("Name") ?? ""
            let id = try co.string("CheckID") ?? name
            guard !id.isEmpty else { throw SchemaError(line: co.line, reason: "\(co.path)CheckID: a check needs a CheckID or a Name") }
            // As Consul stores it: no status is critical, a status it does not know is served (see Health(registered:)).
            let status = Health(registered: try co.string("Status"))
            checks.append(Check(id: id, name: name, status: status, serviceID: try co.string("ServiceID") ?? "",
                                output: CheckState.text(output: try co.string("Output"), notes: try co.string("Notes"))))
        }

        var instance: Instance? = nil
        var skippedID: String? = nil
        if let s = try o.object("Service") {
            let name = try s.string("Service", required: true)!
            let id = try s.string("ID").flatMap { $0.isEmpty ? nil : $0 } ?? name
            if let reason = ServiceName.problem(name) {
                skipped.append(SkippedName(location: "\(file):\(s.node("Service")!.line)", name: name, reason: reason))
                skippedID = id
            } else {
                instance = try service(s, name: name, id: id, node: node, checks: checks)
                instance?.origin = Origin(registry: "file", location: "\(file):\(s.line)")
            }
        }
        // A check may name a service another body registers on the same node, as in Consul; the catalog folds it in
        // (and reports one that names no service on the node).
        return Registration(node: node, service: instance, checks: checks.filter { skippedID == nil || $0.serviceID != skippedID })
    }

    private static func service(_ s: Object, name: String, id: String, node: Node, checks: [Check]) throws(SchemaError) -> Instance {
        var serviceAddress: Address? = nil
        if let a = try s.string("Address"), !a.isEmpty {
            serviceAddress = try address(a, line: s.node("Address")!.line, field: "\(s.path)Address")
        }
        var weights: (passing: UInt16, warning: UInt16) = (1, 1)
        if let w = try s.object("Weights") {
            // Out-of-range weights are 1/1, as Consul's catalog stores them.
            weights = Instance.weights(passing: try w.integer("Passing", in: Int(Int32.min)...Int(Int32.max)),
                                       warning: try w.integer("Warning", in: Int(Int32.min)...Int(Int32.max)))
        }
        // Health is folded in from every check on the node, in any body, when the catalog is built.
        let health = Health.passing
        // TaggedAddresses: {"lan_ipv4": {"Address": "…", "Port": …}, "lan_ipv6": {…}}, as Consul takes them.
        var lan: [String: String] = [:]
        if let t = try s.object("TaggedAddresses") {
            for key in ["lan_ipv4", "lan_ipv6"] { lan[key] = try t.object(key)?.string("Address") }
        }
        return Instance(
            id: id, service: name, node: node,
            // An address equal to the node's is kept: Consul's DNS names the SRV target <hex>.addr whenever the
            // service has an IP address of its own.
            serviceAddress: serviceAddress,
            port: UInt16(try s.integer("Port", in: 0...65535) ?? 0),
            tags: try s.strings("Tags"), meta: try s.stringMap("Meta"),
            weightPassing: weights.passing, weightWarning: weights.warning, health: health,
            serviceLanAddresses: Address.lanAddresses(ipv4: lan["lan_ipv4"], ipv6: lan["lan_ipv6"], besides: serviceAddress))
    }
}

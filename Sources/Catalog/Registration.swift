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

        /// Consul's `Locality`: `{"Region": "…", "Zone": "…"}`.
        func locality(_ key: String) throws(SchemaError) -> Locality? {
            guard let l = try object(key) else { return nil }
            return Locality(region: try l.string("Region") ?? "", zone: try l.string("Zone") ?? "")
        }

        func object(_ key: String) throws(SchemaError) -> Object? {
            guard let n = node(key) else { return nil }
            return try Object(n, path: "\(path)\(key).")
        }
    }

    /// A rule's refusal, at the line of the field it names (or of the object).
    private static func schemaError(_ problem: RegistrationProblem, _ o: Object) -> SchemaError {
        SchemaError(line: o.node(problem.field)?.line ?? o.line, reason: "\(o.path)\(problem)")
    }

    static func registration(_ json: JSONNode, at path: String, file: String, defaultDatacenter: String,
                             skipped: inout [SkippedName]) throws(SchemaError) -> Registration {
        let o = try Object(json, path: path)
        let tagged = try o.stringMap("TaggedAddresses")
        let (name, address) = (try o.string("Node", required: true)!, try o.string("Address", required: true))
        let (datacenter, meta) = (try o.string("Datacenter"), try o.stringMap("NodeMeta"))
        let nodeLocality = try o.locality("Locality")
        let node: Node
        do throws(RegistrationProblem) {
            node = try RegistrationRules.node(name: name, address: address, datacenter: datacenter, meta: meta,
                                              lan: (tagged["lan_ipv4"], tagged["lan_ipv6"]), localDatacenter: defaultDatacenter)
        } catch {
            throw schemaError(error, o)
        }

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
            let serviceID = try co.string("ServiceID") ?? ""
            let fields = RegistrationFields.Check(id: try co.string("CheckID"), name: try co.string("Name"), status: try co.string("Status"),
                                                  output: try co.string("Output"), notes: try co.string("Notes"), nodeLevel: serviceID.isEmpty)
            let state: CheckState
            do { state = try RegistrationRules.check(fields) } catch { throw SchemaError(line: co.line, reason: "\(co.path)\(error)") }
            checks.append(Check(id: state.id, name: state.name, status: state.status, serviceID: serviceID, output: state.output))
        }

        var instance: Instance? = nil
        var skippedID: String? = nil
        if let s = try o.object("Service") {
            var fields = try serviceFields(s)
            fields.nodeLocality = nodeLocality
            do throws(RegistrationProblem) {
                instance = try RegistrationRules.instance(fields, on: node)
                instance?.origin = Origin(registry: "file", location: "\(file):\(s.line)")
            } catch {
                guard case .serviceName(let name, let reason) = error else { throw schemaError(error, s) }
                skipped.append(SkippedName(location: "\(file):\(s.node("Service")!.line)", name: name, reason: reason))
                skippedID = fields.id.flatMap { $0.isEmpty ? nil : $0 } ?? name
            }
        }
        // A check may name a service another body registers on the same node, as in Consul; the catalog folds it in
        // (and reports one that names no service on the node). Health is folded in then, from every body's checks.
        return Registration(node: node, service: instance, checks: checks.filter { skippedID == nil || $0.serviceID != skippedID })
    }

    /// A `Service` object's fields, typed as the file gives them (a wrong type is an error at its line).
    private static func serviceFields(_ s: Object) throws(SchemaError) -> RegistrationFields {
        var weights: RegistrationFields.Weights? = nil
        if let w = try s.object("Weights") {
            weights = .init(passing: try w.integer("Passing", in: Int(Int32.min)...Int(Int32.max)),
                            warning: try w.integer("Warning", in: Int(Int32.min)...Int(Int32.max)))
        }
        // TaggedAddresses: {"lan_ipv4": {"Address": "…", "Port": …}, "lan_ipv6": {…}}, as Consul takes them.
        let tagged = try s.object("TaggedAddresses")
        return RegistrationFields(service: try s.string("Service", required: true)!, id: try s.string("ID"), address: try s.string("Address"),
                                  port: try s.integer("Port", in: Int(Int32.min)...Int(Int32.max)), tags: try s.strings("Tags"),
                                  meta: try s.stringMap("Meta"), weights: weights,
                                  serviceLAN: (try tagged?.object("lan_ipv4")?.string("Address"), try tagged?.object("lan_ipv6")?.string("Address")),
                                  locality: try s.locality("Locality"))
    }
}

import Catalog
import DNSWire
import Foundation

/// The value shapes the Go ecosystem writes into etcd, as `Codable` types. Each was read off the framework's own
/// source; DESIGN.md says where. Keys match case-insensitively, as Go's `encoding/json` does.
enum EtcdLayout {
    /// go-micro's registry (`/micro/registry/<service>/<node-id>`): the JSON of `registry.Service`, holding the
    /// one node the key stands for.
    struct GoMicro: Decodable {
        struct Node: Decodable {
            var id: String
            var address: String
            var metadata: [String: String]

            init(from decoder: any Decoder) throws {
                let c = try decoder.container(keyedBy: AnyCaseKey.self)
                id = try c.value(String.self, "id") ?? ""
                address = try c.value(String.self, "address") ?? ""
                metadata = try c.value([String: String].self, "metadata") ?? [:]
            }
        }
        var name: String
        var metadata: [String: String]
        var nodes: [Node]

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            name = try c.value(String.self, "name") ?? ""
            metadata = try c.value([String: String].self, "metadata") ?? [:]
            nodes = try c.value([Node].self, "nodes") ?? []
        }
    }

    /// Kratos's registry (`/microservices/<service>/<id>`): the JSON of `registry.ServiceInstance`, whose
    /// endpoints are URLs, one per scheme (`grpc://10.0.0.5:9000`, `http://10.0.0.5:8000`).
    struct Kratos: Decodable {
        var id: String
        var name: String
        var metadata: [String: String]
        var endpoints: [String]

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            id = try c.value(String.self, "id") ?? ""
            name = try c.value(String.self, "name") ?? ""
            metadata = try c.value([String: String].self, "metadata") ?? [:]
            endpoints = try c.value([String].self, "endpoints") ?? []
        }
    }

    /// etcd's endpoints manager and grpc-go's older etcd naming (`<target>/<addr>`): `{"Op": 0, "Addr": …}`.
    /// Op 1 is a delete.
    struct EndpointUpdate: Decodable {
        var op: Int
        var addr: String

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            op = try c.value(Int.self, "op") ?? 0
            addr = try c.value(String.self, "addr") ?? ""
        }
    }

    /// The lease tutorial's `ServiceInfo` (`<name>/<ip:port>`, often at the keyspace root): `{"Name", "IP"}`.
    struct Tutorial: Decodable {
        var name: String
        var ip: String

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            name = try c.value(String.self, "name") ?? ""
            ip = try c.value(String.self, "ip") ?? ""
        }
    }
}

extension EtcdLayout {
    /// Signpost's own format: `{"Address", "Port", "ID", "Service", "Tags", "Meta", "Weights", "Node", "Datacenter",
    /// "Status"}`, any case. A field of the wrong type is an error that names it (as Consul refuses a
    /// registration with a meta value that is not a string, or a weight that is not an integer); what the values
    /// mean is `RegistrationRules`'.
    struct Native: Decodable {
        var address: String
        var port: Int?
        var id: String?
        var datacenter: String?
        var tags: [String] = []
        var meta: [String: String] = [:]
        var weights: RegistrationFields.Weights?
        var locality: Locality?
        var status: String?
        var node: String?

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            func key(_ name: String) -> AnyCaseKey? {
                guard let k = c.allKeys.first(where: { $0.stringValue.equalsIgnoringASCIICase(name) }), !((try? c.decodeNil(forKey: k)) ?? false) else { return nil }
                return k
            }
            func string(_ name: String) throws -> String? {
                guard let k = key(name) else { return nil }
                guard let s = try? c.decode(String.self, forKey: k) else { throw EtcdValue.Invalid(description: "\(name): expected a string") }
                return s
            }
            guard let a = try string("address"), !a.isEmpty else { throw EtcdValue.Invalid(description: "Address: expected a non-empty string") }
            address = a
            if let k = key("port") {
                guard let d = try? c.decode(Double.self, forKey: k), d == d.rounded(), abs(d) < 1e15 else {
                    throw EtcdValue.Invalid(description: "Port: expected an integer")
                }
                port = Int(d)
            }
            id = try string("id")
            datacenter = try string("datacenter")
            if let k = key("tags") {
                guard let t = try? c.decode([String].self, forKey: k) else { throw EtcdValue.Invalid(description: "Tags: expected an array of strings") }
                tags = t
            }
            if let k = key("meta") {
                guard let m = try? c.decode([String: String].self, forKey: k) else { throw EtcdValue.Invalid(description: "Meta: expected an object of strings") }
                meta = m
            }
            if let k = key("weights") {
                guard let w = try? c.nestedContainer(keyedBy: AnyCaseKey.self, forKey: k) else {
                    throw EtcdValue.Invalid(description: "Weights: expected an object")
                }
                func integer(_ name: String) throws -> Int? {
                    guard let k = w.allKeys.first(where: { $0.stringValue.equalsIgnoringASCIICase(name) }) else { return nil }
                    guard let d = try? w.decode(Double.self, forKey: k), d == d.rounded(), abs(d) < 1e15 else {
                        throw EtcdValue.Invalid(description: "Weights.\(name): expected an integer")
                    }
                    return Int(d)
                }
                weights = .init(passing: try integer("Passing"), warning: try integer("Warning"))
            }
            status = try string("status")
            node = try string("node")
            if let k = key("locality") {
                // Either field may be left out, as in Consul's `Locality` (both are `omitempty`).
                do { locality = try c.decode(RegisteredLocality.self, forKey: k).value } catch {
                    throw EtcdValue.Invalid(description: "Locality: expected {\"Region\": string, \"Zone\": string}, either optional")
                }
            }
        }
    }

    /// A value's layout, told by which fields it has, and decoded in the same pass: one parse per value.
    enum Detected: Decodable {
        case goMicro(GoMicro), kratos(Kratos), endpointUpdate(EndpointUpdate), tutorial(Tutorial), native(Native), none

        /// A layout's value that does not decode: which layout, and why.
        struct Failure: Error {
            var layout: String
            var error: any Error
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyCaseKey.self)
            func has(_ name: String) -> Bool { c.allKeys.contains { $0.stringValue.equalsIgnoringASCIICase(name) } }
            func decode<T: Decodable>(_ type: T.Type, _ layout: String) throws -> T {
                do { return try T(from: decoder) } catch let invalid as EtcdValue.Invalid { throw invalid } catch {
                    throw Failure(layout: layout, error: error)
                }
            }
            if has("nodes") { self = .goMicro(try decode(GoMicro.self, "go-micro service")) }
            else if has("endpoints") { self = .kratos(try decode(Kratos.self, "Kratos instance")) }
            else if has("addr") { self = .endpointUpdate(try decode(EndpointUpdate.self, "endpoint update")) }
            else if has("ip") { self = .tutorial(try decode(Tutorial.self, "{Name, IP}")) }
            else if has("address") { self = .native(try decode(Native.self, "native")) }
            else { self = .none }
        }
    }
}

/// A coding key for any name, so that a field can be found whatever its case.
struct AnyCaseKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension KeyedDecodingContainer where Key == AnyCaseKey {
    /// The field whose name equals `name` ignoring ASCII case; nil when absent or null.
    func value<T: Decodable>(_ type: T.Type, _ name: String) throws -> T? {
        guard let key = allKeys.first(where: { $0.stringValue.equalsIgnoringASCIICase(name) }) else { return nil }
        return try decodeIfPresent(T.self, forKey: key)
    }
}

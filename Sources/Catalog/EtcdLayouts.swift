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

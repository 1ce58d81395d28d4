import Catalog

/// Consul's `Locality` as a registration writes it, `{"Region": "…", "Zone": "…"}`: on a Consul service or node,
/// and in an etcd native value. Either field may be left out (both are `omitempty` in Consul's structs), and keys
/// match ignoring case, as Go's `encoding/json` matches them. The one decoding both registries use.
struct RegisteredLocality: Decodable, Sendable {
    var value: Locality

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyCaseKey.self)
        value = Locality(region: try c.value(String.self, "Region") ?? "", zone: try c.value(String.self, "Zone") ?? "")
    }
}

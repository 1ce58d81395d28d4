import Catalog
import DNSWire
@testable import Gateway
import Logging
import NIOCore

/// A catalog built from compact instance descriptions, for table-driven resolver tests.
enum Fixture {
    struct I {
        var node: String
        var address: String
        var service: String
        var serviceAddress: String? = nil
        var port: Int = 80
        var tags: [String] = []
        var status: String = "passing"
        var nodeStatus: String? = nil
        var dc: String? = nil
        var meta: [String: String] = [:]
        var weights: (Int, Int) = (1, 1)
    }

    static func json(_ i: I) -> String {
        var checks = [#"{"CheckID": "svc-\#(i.node)", "Status": "\#(i.status)", "ServiceID": "\#(i.service)-\#(i.node)"}"#]
        if let n = i.nodeStatus { checks.append(#"{"CheckID": "node-\#(i.node)", "Status": "\#(n)"}"#) }
        let addr = i.serviceAddress.map { #", "Address": "\#($0)""# } ?? ""
        let tags = i.tags.map { "\"\($0)\"" }.joined(separator: ",")
        let meta = i.meta.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ",")
        let dc = i.dc.map { #", "Datacenter": "\#($0)""# } ?? ""
        return #"""
        {"Node": "\#(i.node)", "Address": "\#(i.address)"\#(dc), "NodeMeta": {\#(meta)},
         "Service": {"ID": "\#(i.service)-\#(i.node)", "Service": "\#(i.service)", "Port": \#(i.port), "Tags": [\#(tags)]\#(addr),
                     "Weights": {"Passing": \#(i.weights.0), "Warning": \#(i.weights.1)}},
         "Checks": [\#(checks.joined(separator: ","))]}
        """#
    }

    static func snapshot(_ instances: [I], zones: [Zone] = []) -> CatalogSnapshot {
        let regs = instances.flatMap {
            try! RegistrationDecoder.decode(bytes: Array(json($0).utf8), path: "fixture", defaultDatacenter: "dc1")
        }
        return CatalogSnapshot.build(registrations: regs, zones: zones, localDatacenter: "dc1", generation: 42)
    }

    static let standard: [I] = [
        I(node: "web-1", address: "192.0.2.11", service: "web", port: 8080, tags: ["v2", "primary"], meta: ["rack": "r1"]),
        I(node: "web-2", address: "192.0.2.12", service: "web", port: 8080, tags: ["v2"]),
        I(node: "web-3", address: "192.0.2.13", service: "web", serviceAddress: "198.51.100.13", port: 9090, tags: ["canary"],
          status: "warning", weights: (10, 3)),
        I(node: "web-4", address: "192.0.2.14", service: "web", tags: ["v2"], status: "critical"),
        I(node: "web-5", address: "192.0.2.15", service: "web", status: "maintenance"),
        I(node: "web-6", address: "192.0.2.16", service: "web", nodeStatus: "critical"),
        I(node: "api-1", address: "2001:db8::21", service: "api", port: 50051),
        I(node: "api-2", address: "192.0.2.22", service: "api", port: 50051),
        I(node: "db-1", address: "192.0.2.31", service: "db", serviceAddress: "db.example.internal", port: 5432),
        I(node: "far-1", address: "192.0.2.41", service: "web", dc: "dc2"),
        I(node: "dead-1", address: "192.0.2.51", service: "dead", status: "critical"),
        I(node: "t-1", address: "192.0.2.61", service: "tagged", tags: ["v1.2"]),
    ]

    static func name(_ s: String) -> DNSName { try! DNSName(s) }

    static func resolver(_ configure: (inout ResolverConfiguration) -> Void = { _ in }) -> Resolver {
        var c = ResolverConfiguration()
        configure(&c)
        return Resolver(configuration: c)
    }

    static func query(_ name: String, _ type: UInt16, id: UInt16 = 0x4242, edns: UInt16? = nil, rd: Bool = true) -> ByteBuffer {
        var h = DNSHeader(id: id)
        h.rd = rd
        var m = Message(header: h, questions: [Question(name: try! DNSName(name), type: type)])
        var buf = m.encode()
        if let edns {
            // Append an OPT record and bump ARCOUNT.
            buf.writeBytes([0, 0, 41, UInt8(edns >> 8), UInt8(edns & 0xFF), 0, 0, 0, 0, 0, 0])
            m.header.arCount = 1
            buf.setInteger(UInt16(1), at: 10)
        }
        return buf
    }
}

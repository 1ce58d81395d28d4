import Catalog
import Registries
import DNSWire
@testable import Gateway
import Testing

/// Dotted service names (the longest existing name wins), Kratos's named ports, and gRPC's `_grpc_config` TXT.
@Suite("Resolver: dotted names, named ports, gRPC service config")
struct DottedNameTests {
    static func snapshot() -> CatalogSnapshot {
        var source = SourceCatalog(registrations: Fixture.standard.flatMap { i in
            try! RegistrationDecoder.decode(bytes: Array(Fixture.json(i).utf8), path: "fixture", defaultDatacenter: "dc1")
        } + [
            Fixture.I(node: "hello-1", address: "192.0.2.71", service: "hello.service", port: 50051, tags: ["v2"]),
            Fixture.I(node: "greeter-1", address: "192.0.2.72", service: "go.micro.srv.greeter", port: 40123),
            Fixture.I(node: "v2web-1", address: "192.0.2.73", service: "v2.web"),
            Fixture.I(node: "ab-1", address: "192.0.2.74", service: "web", tags: ["a.b"]),
        ].flatMap { i in try! RegistrationDecoder.decode(bytes: Array(Fixture.json(i).utf8), path: "fixture", defaultDatacenter: "dc1") })
        // Kratos: one instance, two schemes; and a service whose meta picks its own gRPC policy.
        let kratos = try! EtcdValue.parse(key: "/microservices/helloworld/k1", value: Array(#"""
            {"id": "k1", "name": "helloworld", "endpoints": ["grpc://192.0.2.81:9000", "http://192.0.2.81:8000"]}
            """#.utf8), prefix: "", localDatacenter: "dc1")!
        source.services["helloworld"] = kratos
        let pinned = try! EtcdValue.parse(key: "/microservices/pinned/p1", value: Array(#"""
            {"id": "p1", "name": "pinned", "metadata": {"grpc_lb_policy": "pick_first"}, "endpoints": ["grpc://192.0.2.82:9000"]}
            """#.utf8), prefix: "", localDatacenter: "dc1")!
        source.services["pinned"] = pinned
        let off = try! EtcdValue.parse(key: "/microservices/off/o1", value: Array(#"""
            {"id": "o1", "name": "off", "metadata": {"grpc_lb_policy": "none"}, "endpoints": ["grpc://192.0.2.83:9000"]}
            """#.utf8), prefix: "", localDatacenter: "dc1")!
        source.services["off"] = off
        return CatalogSnapshot.build(source: source, zones: [], localDatacenter: "dc1", generation: 1)
    }

    let snapshot = Self.snapshot()

    func resolve(_ name: String, _ type: UInt16, policy: GRPCLBPolicy = .none) -> Answer {
        Fixture.resolver { $0.grpcLBPolicy = policy }.resolve(Question(name: Fixture.name(name), type: type), in: snapshot)
    }

    func addresses(_ a: Answer) -> Set<String> {
        Set(a.answers.compactMap { if case .a(let v4) = $0.rdata { return v4.description } else { return nil } })
    }

    @Test(arguments: [
        // The longest existing service name wins; the labels left in front are a tag.
        ("hello.service.service.consul", RCode.noError, ["192.0.2.71"]),
        ("HELLO.Service.service.dc1.consul", RCode.noError, ["192.0.2.71"]),
        ("v2.hello.service.service.consul", RCode.noError, ["192.0.2.71"]),
        ("v3.hello.service.service.consul", RCode.nxDomain, []),
        ("go.micro.srv.greeter.service.consul", RCode.noError, ["192.0.2.72"]),
        // Not a service, but go.micro.srv.greeter exists below it: an empty non-terminal, NODATA (RFC 8020).
        ("srv.greeter.service.consul", RCode.noError, []),
        ("micro.srv.greeter.service.consul", RCode.noError, []),
        ("nope.greeter.service.consul", RCode.nxDomain, []),
        // Where Signpost differs from Consul: a service `v2.web` exists, so this is it, not the tag v2 on web.
        ("v2.web.service.consul", RCode.noError, ["192.0.2.73"]),
        // No service `b.web` or `a.b.web`: still the tag `a.b` on web, as in Consul.
        ("a.b.web.service.consul", RCode.noError, ["192.0.2.74"]),
        // The RFC 2782 form keeps working for single-label names.
        ("_web._v2.service.consul", RCode.noError, ["192.0.2.11", "192.0.2.12"]),
        ("_web._tcp.service.consul", RCode.noError, ["192.0.2.11", "192.0.2.12", "198.51.100.13", "192.0.2.74"]),
    ])
    func longestExistingName(name: String, rcode: UInt16, expected: [String]) {
        let a = resolve(name, RRType.a)
        #expect(a.rcode == rcode, "\(name)")
        #expect(addresses(a) == Set(expected), "\(name)")
    }

    @Test func dottedServicesAnswerSRVWithTheirNodes() {
        let srv = resolve("hello.service.service.consul", RRType.srv)
        #expect(srv.answers.map(\.rdata) == [.srv(priority: 1, weight: 1, port: 50051, target: Fixture.name("hello-1.node.dc1.consul"))])
        #expect(srv.answers.first?.name == Fixture.name("hello.service.service.consul"))
    }

    @Test func kratosSchemesAreNamedPorts() {
        func ports(_ name: String) -> [UInt16] {
            resolve(name, RRType.srv).answers.compactMap { if case .srv(_, _, let p, _) = $0.rdata { return p } else { return nil } }
        }
        #expect(ports("helloworld.service.consul") == [9000], "the plain name answers the first endpoint")
        #expect(ports("_grpc._tcp.helloworld.service.consul") == [9000])
        #expect(ports("_http._tcp.helloworld.service.consul") == [8000])
        #expect(resolve("_ftp._tcp.helloworld.service.consul", RRType.srv).rcode == RCode.nxDomain)
        #expect(addresses(resolve("helloworld.service.consul", RRType.a)) == ["192.0.2.81"])
        #expect(addresses(resolve("_http._tcp.helloworld.service.consul", RRType.a)) == ["192.0.2.81"])
    }

    func txt(_ a: Answer) -> [String] {
        a.answers.compactMap { if case .txt(let chunks) = $0.rdata { return String(decoding: chunks.joined(), as: UTF8.self) } else { return nil } }
    }

    @Test func grpcServiceConfig() {
        let roundRobin = #"grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"round_robin":{}}]}}]"#
        let pickFirst = #"grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"pick_first":{}}]}}]"#
        let a = resolve("_grpc_config.hello.service.service.consul", RRType.txt, policy: .roundRobin)
        #expect(a.rcode == RCode.noError && a.authoritative && txt(a) == [roundRobin])
        #expect(txt(resolve("_grpc_config.web.service.dc1.consul", RRType.txt, policy: .pickFirst)) == [pickFirst])
        // Service meta overrides the flag, both ways.
        #expect(txt(resolve("_grpc_config.pinned.service.consul", RRType.txt, policy: .roundRobin)) == [pickFirst])
        #expect(txt(resolve("_grpc_config.pinned.service.consul", RRType.txt)) == [pickFirst])
        #expect(resolve("_grpc_config.off.service.consul", RRType.txt, policy: .roundRobin).rcode == RCode.nxDomain)
        // Other types at the name: NODATA with the SOA. No policy, or no service: NXDOMAIN. Never SERVFAIL.
        let nodata = resolve("_grpc_config.web.service.consul", RRType.a, policy: .roundRobin)
        #expect(nodata.rcode == RCode.noError && nodata.answers.isEmpty && nodata.authority.count == 1)
        #expect(resolve("_grpc_config.web.service.consul", RRType.txt).rcode == RCode.nxDomain)
        #expect(resolve("_grpc_config.nope.service.consul", RRType.txt, policy: .roundRobin).rcode == RCode.nxDomain)
    }
}

@testable import Catalog
import DNSWire
import Logging
import Testing

@Suite("etcd values")
struct EtcdValueTests {
    func parse(_ key: String, _ value: String) throws(EtcdValue.Invalid) -> (service: String, instance: Instance)? {
        try EtcdValue.parse(key: key, value: Array(value.utf8), prefix: "/services/", localDatacenter: "dc1")
    }

    @Test func native() throws {
        let p = try #require(try parse("/services/Web/i-1", #"""
            {"ID": "web-a", "Address": "192.0.2.1", "Port": 8080, "Tags": ["v2"], "Meta": {"k": "v"},
             "Weights": {"Passing": 5, "Warning": 2}, "Node": "n1", "Datacenter": "dc2", "Status": "warning"}
            """#))
        #expect(p.service == "web")
        let i = p.instance
        #expect(i.id == "web-a" && i.service == "Web" && i.port == 8080 && i.tags == ["v2"] && i.meta == ["k": "v"])
        #expect(i.weightPassing == 5 && i.weightWarning == 2 && i.health == .warning)
        #expect(i.node.name == "n1" && i.node.datacenter == "dc2" && i.node.address == .v4(IPv4("192.0.2.1")!))
        #expect(i.serviceAddress == nil)  // SRV target: the node
    }

    @Test func grpcNamingAndTutorialFormats() throws {
        let g = try #require(try parse("/services/greeter/[2001:db8::1]:50051", #"{"Op": 0, "Addr": "[2001:db8::1]:50051", "Metadata": null}"#))
        #expect(g.instance.port == 50051 && g.instance.address == .v6(IPv6("2001:db8::1")!))
        #expect(g.instance.serviceAddress != nil && g.instance.node.name.isEmpty)  // SRV target: <hex>.addr
        #expect(try parse("/services/greeter/x", #"{"Op": 1, "Addr": "192.0.2.1:1"}"#) == nil)  // a gRPC delete op
        let t = try #require(try parse("/services/mail/1", #"{"Name": "mail", "IP": "192.0.2.4:8972"}"#))
        #expect(t.instance.port == 8972 && t.instance.address == .v4(IPv4("192.0.2.4")!))
        let host = try #require(try parse("/services/db/1", #"{"Addr": "db.example.internal:5432"}"#))
        #expect(host.instance.address == .hostname(try DNSName("db.example.internal")))
    }

    @Test(arguments: [
        ("/services/web/1", "not json"), ("/services/web/1", "[1]"), ("/services/web/1", #"{"Port": 80}"#),
        ("/services/web/1", #"{"Addr": "192.0.2.1"}"#), ("/services/web/1", #"{"IP": "192.0.2.1:99999"}"#),
        ("/services/web/1", #"{"Address": "192.0.2.1", "Status": "sick"}"#), ("/services/web", #"{"Address": "192.0.2.1"}"#),
        ("/services/we.b/1", #"{"Address": "192.0.2.1"}"#), ("/services/web/1", #"{"Address": "not an address!"}"#),
    ])
    func invalid(key: String, value: String) {
        #expect(throws: EtcdValue.Invalid.self) { try parse(key, value) }
    }

    @Test func prefixEnd() {
        #expect(EtcdWatcher.prefixEnd("/services/") == Array("/services0".utf8))
        #expect(EtcdWatcher.prefixEnd("a\u{7F}") == [0x61, 0x80])
    }
}

@Suite("Registry URLs")
struct RegistrySpecTests {
    @Test func parses() throws {
        #expect(try RegistrySpec(parsing: "file:zones/catalog") == .file(directory: "zones/catalog"))
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379,http://127.0.0.2:2379/?prefix=/svc")
                == .etcd(endpoints: ["http://127.0.0.1:2379", "http://127.0.0.2:2379"], prefix: "/svc/"))
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379") == .etcd(endpoints: ["http://127.0.0.1:2379"], prefix: "/services/"))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?dc=dc2&stale=true", environment: ["CONSUL_HTTP_TOKEN": "t0k"])
                == .consul(address: "http://127.0.0.1:8500", datacenter: "dc2", token: "t0k", stale: true))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?token=a%2Fb", environment: ["CONSUL_HTTP_TOKEN": "env"])
                == .consul(address: "http://127.0.0.1:8500", datacenter: nil, token: "a/b", stale: false))
    }

    @Test(arguments: ["zones/catalog", "zk:http://x", "etcd:127.0.0.1:2379", "etcd:http://x?prefx=/a", "consul:", "file:"])
    func rejects(text: String) {
        #expect(throws: RegistrySpec.Invalid.self) { try RegistrySpec(parsing: text) }
    }
}

@Suite("Assembler")
struct AssemblerTests {
    static func inst(_ node: String, _ addr: String, service: String = "web", id: String? = nil, dc: String = "dc1") -> Instance {
        Instance(id: id ?? service, service: service, node: Node(name: node, address: Address(addr)!, datacenter: dc, meta: [:]),
                 serviceAddress: nil, port: 80, tags: [], meta: [:], weightPassing: 1, weightWarning: 1, health: .passing)
    }

    @Test func mergesSourcesAndUpdatesIncrementally() async throws {
        let store = SnapshotStore()
        let a = CatalogAssembler(sources: ["file", "etcd"], expectsZones: false, localDatacenter: "dc1", store: store, logger: Logger(label: "t"))
        await a.replace(source: 0, with: SourceCatalog(services: ["web": [Self.inst("n1", "192.0.2.1")], "db": [Self.inst("n9", "192.0.2.9", service: "db")]]))
        // Not loaded until every registry has delivered once.
        #expect(!store.snapshot.isLoaded)
        await a.replace(source: 1, with: SourceCatalog(services: ["web": [Self.inst("n1", "192.0.2.99"), Self.inst("n2", "192.0.2.2")]]))
        #expect(store.snapshot.isLoaded)
        // Same instance (node, dc, ID) in both: the first registry wins; others merge.
        #expect(store.snapshot.services["web"]!.instances.map(\.address) == [Address("192.0.2.1")!, Address("192.0.2.2")!])

        // An update touches only the named service; every other entry is the same object.
        let dbBefore = store.snapshot.services["db"]!
        await a.update(source: 1, services: ["web": [Self.inst("n3", "192.0.2.3", dc: "dc3")]], nodes: [:])
        #expect(store.snapshot.services["db"]! === dbBefore)
        #expect(store.snapshot.services["web"]!.instances.map(\.node.name) == ["n1", "n3"])
        #expect(store.snapshot.datacenters == ["dc1", "dc3"])
        await a.update(source: 1, services: ["web": []], nodes: [:])
        #expect(store.snapshot.datacenters == ["dc1"])
        await a.update(source: 0, services: ["web": []], nodes: [:])
        #expect(store.snapshot.services["web"] == nil)
    }

    @Test func staleness() async {
        let store = SnapshotStore()
        let a = CatalogAssembler(sources: ["etcd"], expectsZones: false, localDatacenter: "dc1", store: store, logger: Logger(label: "t"))
        #expect(store.staleness() == nil)
        await a.setContact(source: 0, inContact: false)
        #expect(store.staleness() != nil)
        #expect(store.staleness(now: Uptime.nanoseconds + 5_000_000_000)! >= .seconds(5))
        await a.setContact(source: 0, inContact: true)
        #expect(store.staleness() == nil)
    }
}

@Suite("Backoff")
struct BackoffTests {
    @Test func growsAndStaysUnderTheCap() {
        let b = Backoff(base: .milliseconds(100), cap: .seconds(5))
        for n in 1...40 {
            let ceiling = min(Duration.seconds(5), .milliseconds(100) * (1 << min(n - 1, 30)))
            for _ in 0..<50 {
                let d = b.delay(afterFailures: n)
                #expect(d >= .zero && d <= ceiling)
            }
        }
        // Full jitter: the delays spread out rather than repeating one value.
        #expect(Set((0..<50).map { _ in b.delay(afterFailures: 6) }).count > 10)
    }
}

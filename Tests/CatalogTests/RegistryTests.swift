import Foundation
@testable import Catalog
import DNSWire
import Logging
import Testing

@Suite("etcd values")
struct EtcdValueTests {
    func parse(_ key: String, _ value: String, prefix: String = "/services/") throws(EtcdValue.Invalid) -> [Instance]? {
        try EtcdValue.parse(key: key, value: Array(value.utf8), prefix: prefix, localDatacenter: "dc1")
    }

    func one(_ key: String, _ value: String, prefix: String = "/services/") throws -> Instance {
        let list = try #require(try parse(key, value, prefix: prefix))
        #expect(list.count == 1)
        return try #require(list.first)
    }

    /// A golden value from Tests/CatalogTests/Resources/etcd (its README says where each shape comes from).
    func golden(_ name: String) throws -> String {
        let url = try #require(Bundle.module.url(forResource: "Resources/etcd/\(name)", withExtension: nil))
        return try String(contentsOf: url, encoding: .utf8)
    }

    @Test func native() throws {
        let i = try one("/services/Web/i-1", #"""
            {"ID": "web-a", "Address": "192.0.2.1", "Port": 8080, "Tags": ["v2"], "Meta": {"k": "v"},
             "Weights": {"Passing": 5, "Warning": 2}, "Node": "n1", "Datacenter": "dc2", "Status": "warning"}
            """#)
        #expect(i.id == "web-a" && i.service == "Web" && i.port == 8080 && i.tags == ["v2"] && i.meta == ["k": "v"])
        #expect(i.weightPassing == 5 && i.weightWarning == 2 && i.health == .warning)
        #expect(i.node.name == "n1" && i.node.datacenter == "dc2" && i.node.address == .v4(IPv4("192.0.2.1")!))
        #expect(i.serviceAddress == nil)  // SRV target: the node
    }

    @Test func endpointsManagerAndTutorial() throws {
        let g = try one("/services/greeter/[2001:db8::1]:50051", #"{"Op": 0, "Addr": "[2001:db8::1]:50051", "Metadata": null}"#)
        #expect(g.port == 50051 && g.address == .v6(IPv6("2001:db8::1")!) && g.id == "[2001:db8::1]:50051")
        #expect(g.serviceAddress != nil && g.node.name.isEmpty)  // SRV target: <hex>.addr
        #expect(try parse("/services/greeter/x", #"{"Op": 1, "Addr": "192.0.2.1:1"}"#) == nil)  // a gRPC delete op
        let manager = try one("/services/greeter/192.0.2.21:50051", try golden("endpoints-manager.json"))
        #expect(manager.service == "greeter" && manager.port == 50051 && manager.address == .v4(IPv4("192.0.2.21")!))
        let host = try one("/services/db/1", #"{"Addr": "db.example.internal:5432"}"#)
        #expect(host.address == .hostname(try DNSName("db.example.internal")))
        // The tutorial's value names the service; its "Ip" variant is read too (Go's JSON keys are case-blind).
        let t = try one("g.srv.mail/127.0.0.1:8972", try golden("tutorial.json"), prefix: "")
        #expect(t.service == "g.srv.mail" && t.port == 8972 && t.address == .v4(IPv4("127.0.0.1")!) && t.id == "127.0.0.1:8972")
        #expect(try one("mail/1", #"{"Name": "mail", "Ip": "192.0.2.4:8972"}"#, prefix: "").port == 8972)
    }

    @Test func goMicro() throws {
        let key = "/micro/registry/go.micro.srv.greeter/go.micro.srv.greeter-9b8e2e0c-6a51-4f0e-9a4b-3c1d2e5f7a10"
        for prefix in ["/micro/registry/", ""] {
            let i = try one(key, try golden("go-micro.json"), prefix: prefix)
            #expect(i.service == "go.micro.srv.greeter" && i.id == "go.micro.srv.greeter-9b8e2e0c-6a51-4f0e-9a4b-3c1d2e5f7a10")
            #expect(i.address == .v4(IPv4("192.0.2.41")!) && i.port == 40123 && i.meta["registry"] == "etcd")
        }
        // Several nodes in one value: one instance each.
        let two = try #require(try parse("/micro/registry/s/x", #"{"name": "s", "nodes": [{"id": "a", "address": "192.0.2.1:1"}, {"id": "b", "address": "[2001:db8::2]:2"}]}"#, prefix: "/micro/registry/"))
        #expect(two.map(\.id) == ["a", "b"] && two.map(\.port) == [1, 2])
    }

    @Test func kratos() throws {
        let i = try one("/microservices/helloworld/b1a4c3e2-0f6d-11ee-9d1a-0242ac120002", try golden("kratos.json"), prefix: "")
        #expect(i.service == "helloworld" && i.id == "b1a4c3e2-0f6d-11ee-9d1a-0242ac120002" && i.meta == ["region": "eu"])
        #expect(i.address == .v4(IPv4("192.0.2.51")!) && i.port == 9000 && i.namedPorts == ["grpc": 9000, "http": 8000])
    }

    @Test func plainValues() throws {
        // go-zero: `<key>/<lease id>` holding a bare host:port.
        let z = try one("dms.rpc/7587864068988009477", try golden("go-zero.txt"), prefix: "")
        #expect(z.service == "dms.rpc" && z.id == "7587864068988009477" && z.port == 8080 && z.address == .v4(IPv4("192.0.2.61")!))
        #expect(try one("/services/web/1", "192.0.2.7").port == 0)
        #expect(try one("/services/web/1", #""192.0.2.8:81""#).port == 81)
        #expect(try one("/services/web/1", "2001:db8::9").address == .v6(IPv6("2001:db8::9")!))
    }

    @Test func skippedNamesSayWhy() {
        let long = String(repeating: "a", count: 64)
        #expect(throws: EtcdValue.Invalid.self) { try parse("/services/\(long)/1", "192.0.2.1:1") }
        do { _ = try parse("x", #"{"Name": "a..b", "IP": "192.0.2.1:1"}"#, prefix: "") } catch {
            #expect(error.reason == .emptyLabel)
        }
        do { _ = try parse("/services/\(long)/1", "192.0.2.1:1") } catch { #expect(error.reason == .labelTooLong) }
        do { _ = try parse("/services/w/1", "true") } catch { #expect(error.reason == .unknownFormat) }
        let huge = Array(repeating: String(repeating: "b", count: 60), count: 5).joined(separator: ".")
        #expect(ServiceName.problem(huge) == .nameTooLong)
        #expect(ServiceName.problem("grpc.health.v1.greeter") == nil)
    }

    @Test(arguments: [
        ("/services/web/1", "not json"), ("/services/web/1", "[1]"), ("/services/web/1", #"{"Port": 80}"#),
        ("/services/web/1", #"{"Addr": "192.0.2.1"}"#), ("/services/web/1", #"{"IP": "192.0.2.1:99999"}"#),
        ("/services/web/1", #"{"Address": "192.0.2.1", "Status": "sick"}"#), ("/services/web", #"{"Address": "192.0.2.1"}"#),
        ("/services/we..b/1", #"{"Address": "192.0.2.1"}"#), ("/services/web/1", #"{"Address": "not an address!"}"#),
        ("/services/web/1", "hostname-only"), ("/services/web/1", #"{"name": "x", "nodes": []}"#),
        ("/services/web/1", #"{"name": "x", "endpoints": ["192.0.2.1:80"]}"#),
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
                == .etcd(endpoints: ["http://127.0.0.1:2379", "http://127.0.0.2:2379"], prefixes: ["/svc/"]))
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379") == .etcd(endpoints: ["http://127.0.0.1:2379"], prefixes: ["/services/"]))
        // An empty prefix is the whole keyspace; several are watched each on its own.
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379?prefix=") == .etcd(endpoints: ["http://127.0.0.1:2379"], prefixes: [""]))
        let two = try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379?prefix=/services/,/micro/registry")
        #expect(two == .etcd(endpoints: ["http://127.0.0.1:2379"], prefixes: ["/micro/registry/", "/services/"]))
        #expect(two.watchers == [.etcd(endpoints: ["http://127.0.0.1:2379"], prefixes: ["/micro/registry/"]),
                                 .etcd(endpoints: ["http://127.0.0.1:2379"], prefixes: ["/services/"])])
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?dc=dc2&stale=true", environment: ["CONSUL_HTTP_TOKEN": "t0k"])
                == .consul(address: "http://127.0.0.1:8500", datacenter: "dc2", token: "t0k", stale: true))
        // Stale reads by default, as Consul's DNS reads; a bare ?stale keeps them, ?stale=false asks the leader.
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?token=a%2Fb", environment: ["CONSUL_HTTP_TOKEN": "env"])
                == .consul(address: "http://127.0.0.1:8500", datacenter: nil, token: "a/b", stale: true))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?stale") == .consul(address: "http://127.0.0.1:8500", datacenter: nil, token: nil, stale: true))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?stale=false") == .consul(address: "http://127.0.0.1:8500", datacenter: nil, token: nil, stale: false))
        // The blocking queries' ?wait=, as Consul spells it; 10m is Consul's own cap.
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?wait=1500ms")
                == .consul(address: "http://127.0.0.1:8500", datacenter: nil, token: nil, stale: true, wait: .milliseconds(1500)))
    }

    @Test func goDurations() {
        #expect(GoDuration.parse("1.5s") == .milliseconds(1500))
        #expect(GoDuration.parse("500ms") == .milliseconds(500))
        #expect(GoDuration.parse("250us") == .microseconds(250))
        #expect(GoDuration.parse("1h30m") == .seconds(5400))
        #expect(GoDuration.parse("1d") == .seconds(86400))
        #expect(GoDuration.parse("10") == .seconds(10))
        #expect(GoDuration.parse("0") == .zero)
        for bad in ["", "s", "1x", "-1s", "1.2.3s", "5 s"] { #expect(GoDuration.parse(bad) == nil, "\(bad)") }
        for d: Duration in [.milliseconds(1500), .milliseconds(500), .microseconds(250), .seconds(5400), .seconds(90061), .zero] {
            #expect(GoDuration.parse(GoDuration.format(d)) == d)
        }
        #expect(GoDuration.format(.seconds(5400)) == "1h30m")
        #expect(GoDuration.seconds("2.9s") == 2)
        // Past what Int64 nanoseconds hold: refused, not a crash later.
        #expect(GoDuration.parse("10000000000") == nil && GoDuration.parse("9223372035") != nil)
        #expect(GoDuration.parse(GoDuration.format(.seconds(9_223_372_035))) == .seconds(9_223_372_035))
        // Name keys compare bytes, ASCII case folded, as they hash: no Unicode equivalence.
        #expect(NameKey("caf\u{E9}") != NameKey("cafe\u{301}") && NameKey("WEB") == NameKey("web"))
    }

    @Test(arguments: ["zones/catalog", "zk:http://x", "etcd:127.0.0.1:2379", "etcd:http://x?prefx=/a", "consul:", "file:", "consul:http://x?wait=11m", "consul:http://x?wait=0s"])
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

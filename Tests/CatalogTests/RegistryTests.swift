import Foundation
@testable import Catalog
@testable import Registries
import DNSWire
import HashTreeCollections
import Logging
import NIOCore
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

    @Test func nativeFieldsOfTheWrongTypeAreNamed() throws {
        func reason(_ value: String) -> String {
            do { _ = try parse("/services/web/1", value); return "" } catch { return error.description }
        }
        #expect(reason(#"{"Address": "192.0.2.1", "Port": "80"}"#) == "Port: expected an integer")
        #expect(reason(#"{"Address": "192.0.2.1", "Port": 70000}"#) == "Port: 70000 is not from 0 to 65535")
        #expect(reason(#"{"address": "192.0.2.1", "tags": "v1"}"#) == "Tags: expected an array of strings")
        #expect(reason(#"{"Address": 7}"#) == "address: expected a string")
        #expect(reason(#"{"Address": "192.0.2.1", "Port": }"#).hasPrefix("invalid JSON"))
        #expect(reason(#"{"name": "x", "nodes": 3}"#).hasPrefix("go-micro service: "))
        // A meta value that is not a string is refused, as Consul refuses it; a key in any case is the field.
        #expect(reason(#"{"ADDRESS": "192.0.2.1", "Meta": {"a": "x", "b": 2}}"#) == "Meta: expected an object of strings")
        #expect(reason(#"{"Address": "192.0.2.1", "Weights": {"Passing": 1.5}}"#) == "Weights.Passing: expected an integer")
        let i = try one("/services/web/1", #"{"ADDRESS": "192.0.2.1", "Meta": {"a": "x"}, "weights": {"passing": 0}}"#)
        #expect(i.meta == ["a": "x"] && i.weightPassing == 1)
        // A status Consul does not know is served, as Consul serves it (not with --only-passing).
        #expect(try one("/services/web/1", #"{"Address": "192.0.2.1", "Status": "sick"}"#).health == .warning)
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
        ("/services/web/1", #"{"Address": "0.0.0.0"}"#), ("/services/web", #"{"Address": "192.0.2.1"}"#),
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
    static func etcd(_ endpoints: [String], _ prefixes: [String]) -> RegistrySpec {
        .etcd(connection: ConnectionSettings(endpoints: endpoints), prefixes: prefixes)
    }

    static func consul(_ address: String, dc: String? = nil, token: Secret? = nil, stale: Bool = true, wait: Duration? = nil) -> RegistrySpec {
        var c = ConnectionSettings(endpoints: [address])
        c.token = token
        return .consul(connection: c, datacenter: dc, stale: stale, wait: wait)
    }

    @Test func parses() throws {
        #expect(try RegistrySpec(parsing: "file:zones/catalog") == .file(directory: "zones/catalog"))
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379,http://127.0.0.2:2379/?prefix=/svc")
                == Self.etcd(["http://127.0.0.1:2379", "http://127.0.0.2:2379"], ["/svc/"]))
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379") == Self.etcd(["http://127.0.0.1:2379"], ["/services/"]))
        // An empty prefix is the whole keyspace; several are watched each on its own.
        #expect(try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379?prefix=") == Self.etcd(["http://127.0.0.1:2379"], [""]))
        let two = try RegistrySpec(parsing: "etcd:http://127.0.0.1:2379?prefix=/services/,/micro/registry")
        #expect(two == Self.etcd(["http://127.0.0.1:2379"], ["/micro/registry/", "/services/"]))
        #expect(two.watchers == [Self.etcd(["http://127.0.0.1:2379"], ["/micro/registry/"]), Self.etcd(["http://127.0.0.1:2379"], ["/services/"])])
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?dc=dc2&stale=true", environment: ["CONSUL_HTTP_TOKEN": "t0k"])
                == Self.consul("http://127.0.0.1:8500", dc: "dc2", token: .inline("t0k", commandLine: false)))
        // Stale reads by default, as Consul's DNS reads; a bare ?stale keeps them, ?stale=false asks the leader.
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?token=a%2Fb", environment: ["CONSUL_HTTP_TOKEN": "env"])
                == Self.consul("http://127.0.0.1:8500", token: .inline("a/b", commandLine: true)))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?stale") == Self.consul("http://127.0.0.1:8500"))
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?stale=false") == Self.consul("http://127.0.0.1:8500", stale: false))
        // The blocking queries' ?wait=, as Consul spells it; 10m is Consul's own cap.
        #expect(try RegistrySpec(parsing: "consul:http://127.0.0.1:8500?wait=1500ms") == Self.consul("http://127.0.0.1:8500", wait: .milliseconds(1500)))
    }

    /// The connection settings: the URL's options, the official clients' environment under them, and which wins.
    @Test func connectionSettings() throws {
        let e = try RegistrySpec(parsing: "etcd:https://10.0.0.1:2379,https://10.0.0.2:2379?cacert=/ca.pem&cert=/c.pem&key=/k.pem&server-name=etcd.internal&user=reader&password-file=/pw",
                                 environment: ["ETCDCTL_CACERT": "/env-ca.pem", "ETCDCTL_USER": "root:rootpw"]).connection!
        #expect(e.endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
        #expect(e.tls.caFile == "/ca.pem" && e.tls.certFile == "/c.pem" && e.tls.keyFile == "/k.pem" && e.tls.serverName == "etcd.internal")
        #expect(e.user == "reader" && e.password == .file("/pw") && e.warnings.isEmpty)
        // etcdctl's environment alone; ETCDCTL_USER=NAME:PASSWORD splits at the first colon.
        let env = try RegistrySpec(parsing: "etcd:https://h:2379", environment: ["ETCDCTL_CACERT": "/ca", "ETCDCTL_CERT": "/c", "ETCDCTL_KEY": "/k",
                                                                                  "ETCDCTL_USER": "u:p:w"]).connection!
        #expect(env.tls.caFile == "/ca" && env.tls.certFile == "/c" && env.user == "u" && env.password == .inline("p:w", commandLine: false))
        #expect(env.warnings.isEmpty, "the environment is not the command line")
        // A password on the command line works, with a warning.
        let inline = try RegistrySpec(parsing: "etcd:http://h:2379?user=u:secret").connection!
        #expect(inline.password == .inline("secret", commandLine: true) && inline.warnings.contains { $0.contains("/proc/PID/cmdline") })
        // Consul: the token file wins over the token, in the environment as in Consul's client; the URL over both.
        let c = try RegistrySpec(parsing: "consul:", environment: ["CONSUL_HTTP_ADDR": "unix:///run/consul.sock", "CONSUL_HTTP_TOKEN": "t",
                                                                   "CONSUL_HTTP_TOKEN_FILE": "/tok", "CONSUL_HTTP_AUTH": "admin:pw:x"]).connection!
        #expect(c.endpoints == ["unix:///run/consul.sock"] && c.token == .file("/tok") && c.user == "admin" && c.password == .inline("pw:x", commandLine: false))
        let url = try RegistrySpec(parsing: "consul:https://a:8501?token=u", environment: ["CONSUL_HTTP_TOKEN_FILE": "/tok"]).connection!
        #expect(url.token == .inline("u", commandLine: true))
        let ssl = try RegistrySpec(parsing: "consul:", environment: ["CONSUL_HTTP_ADDR": "a:8501", "CONSUL_HTTP_SSL": "true",
                                                                     "CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_TLS_SERVER_NAME": "consul.dc1",
                                                                     "CONSUL_CAPATH": "/cas", "CONSUL_CLIENT_CERT": "/c", "CONSUL_CLIENT_KEY": "/k"]).connection!
        #expect(ssl.endpoints == ["https://a:8501"] && ssl.tls.insecureSkipVerify && ssl.tls.serverName == "consul.dc1" && ssl.tls.caPath == "/cas")
        #expect(ssl.warnings.contains { $0.contains("verification is off") })
        #expect(try RegistrySpec(parsing: "consul:").connection!.endpoints == ["http://127.0.0.1:8500"])
        // No credential in the description, which names logs, /ready and state files.
        let secretive = try RegistrySpec(parsing: "consul:http://a:8500?token=MARKER&dc=dc2")
        #expect(!secretive.description.contains("MARKER") && !"\(secretive.connection!.token!)".contains("MARKER"))
        #expect(try RegistrySpec(parsing: "etcd:https://h:2379?max-response=1MB").connection!.maxResponseBytes == 1 << 20)
    }

    /// A refused URL is quoted with its secrets masked: the message reaches stderr and the reload log.
    @Test(arguments: ["consul:http://h:8500?token=MARKER&bogus=1", "etcd:https://u:MARKER@h:2379", "etcd:https://h:2379?user=reader:MARKER&prefx=/",
                      "consul:http://h:8500?http-auth=admin:MARKER&max-response=1", "etcd:http://h?password=MARKER&insecure-skip-verify=maybe"])
    func refusalsMaskSecrets(text: String) {
        do { _ = try RegistrySpec(parsing: text); Issue.record("accepted \(text)") } catch {
            #expect(!error.description.contains("MARKER") && error.description.contains("***"), "\(error.description)")
        }
    }

    @Test(arguments: ["etcd:https://h:2379?token=x", "consul:http://h:8500?user=u", "etcd:https://h?cert=/c", "etcd:https://h?user=u",
                      "etcd:https://h?insecure-skip-verify=maybe", "etcd:https://h?max-response=10", "consul:ftp://h"])
    func rejectsConnection(text: String) {
        #expect(throws: RegistrySpec.Invalid.self) { try RegistrySpec(parsing: text) }
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

    /// A probe borrows a query's bytes, plain or as wire labels, and finds the stored key it equals in every map
    /// that takes one, case folded; a near miss finds nothing.
    @Test func probesFindStoredKeys() {
        let services = TreeDictionary<NameKey, Int>(uniqueKeysWithValues: [(NameKey("go.micro.srv.greeter"), 1), (NameKey("web"), 2)])
        let wire: [UInt8] = [2, 0x47, 0x6F, 5] + Array("micro".utf8) + [3] + Array("SRV".utf8) + [7] + Array("greeter".utf8)
        wire.withUnsafeBytes { bytes in
            #expect(NameProbe.with(bytes, wire: true) { services.value(at: $0) } == 1)
            #expect(NameProbe.with(UnsafeRawBufferPointer(rebasing: bytes[0..<9]), wire: true) { services.value(at: $0) } == nil)
            #expect(NameProbe.with(bytes, wire: true) { $0.text } == "go.micro.srv.greeter")
        }
        Array("WEB".utf8).withUnsafeBytes { bytes in
            #expect(NameProbe.with(bytes, wire: false) { services.value(at: $0) } == 2)
            #expect(NameProbe.with(bytes, wire: false) { Set<NameKey>(["web"]).contains($0) })
            #expect(NameProbe.with(bytes, wire: false) { $0.matches("web") && !$0.matches("webs") })
            let nodes = TreeDictionary<CatalogSnapshot.NodeKey, Int>(uniqueKeysWithValues: [(CatalogSnapshot.NodeKey(name: "web", datacenter: "dc1"), 3)])
            #expect(NameProbe.with(bytes, wire: false) { n in NameProbe.with("DC1") { nodes.value(name: n, datacenter: $0) } } == 3)
            let selections: [SelectionKey: Int] = [SelectionKey(kind: 1, label: "web", datacenter: "dc1"): 4]
            #expect(NameProbe.with(bytes, wire: false) { l in NameProbe.with("dc1") { selections.value(kind: 1, label: l, datacenter: $0) } } == 4)
            #expect(NameProbe.with(bytes, wire: false) { l in NameProbe.with("dc1") { selections.value(kind: 2, label: l, datacenter: $0) } } == nil)
        }
    }

    @Test(arguments: ["zones/catalog", "zk:http://x", "etcd:127.0.0.1:2379", "etcd:http://x?prefx=/a", "file:", "consul:http://x?wait=11m", "consul:http://x?wait=0s"])
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

    @Test func oneRegistrysOrderedListIsServedWithoutACopy() {
        let ordered = [Self.inst("n1", "192.0.2.1", id: "a"), Self.inst("n1", "192.0.2.1", id: "b"), Self.inst("n2", "192.0.2.2", id: "a")]
        let entry = ServiceEntry.merged(name: "web", [ordered, []])!
        #expect(entry.instances.map(\.id) == ["a", "b", "a"])
        #expect(entry.instances.withUnsafeBufferPointer { $0.baseAddress } == ordered.withUnsafeBufferPointer { $0.baseAddress },
                "the registry's storage, shared")
        // Out of order, or with node names that fold together, it is sorted and deduplicated as before.
        #expect(ServiceEntry.merged(name: "web", [ordered.reversed()])!.instances.map(\.node.name) == ["n1", "n1", "n2"])
        let folded = ServiceEntry.merged(name: "web", [[Self.inst("N1", "192.0.2.1", id: "a"), Self.inst("n1", "192.0.2.1", id: "a")]])!
        #expect(folded.instances.count == 1)
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

/// The registries' own refusals, as they send them, become failures that say what to fix.
@Suite("Registry failures")
struct RegistryFailureTests {
    func status(_ code: UInt, _ body: String, _ registry: ConnectionOption.Registry) -> RegistryFailure {
        RegistryFailure.status(code, body: ByteBuffer(string: body), path: "/p", endpoint: "https://r:1", registry: registry)
    }

    @Test func fromTheRegistrysMessages() {
        // etcd's gateway: {"error","message","code"} with the gRPC status mapped to HTTP.
        #expect(status(401, #"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#, .etcd).kind == .tokenExpired)
        #expect(status(400, #"{"error":"etcdserver: authentication failed, invalid user ID or password","code":3}"#, .etcd).kind == .badCredentials)
        #expect(status(403, #"{"error":"etcdserver: permission denied","code":7}"#, .etcd).kind == .permissionDenied)
        let cn = status(400, #"{"error":"CommonName of client sending a request against gateway will be ignored and not used as expected","code":3}"#, .etcd)
        #expect(cn.kind == .badCredentials && cn.fix?.contains("password-file=") == true)
        #expect(status(400, #"{"error":"etcdserver: authentication is not enabled","code":9}"#, .etcd).kind == .authNotEnabled)
        // Consul: plain text 403s.
        #expect(status(403, "ACL not found", .consul).kind == .aclNotFound)
        let denied = status(403, "Permission denied: token with AccessorID 'x' lacks permission 'service:read'", .consul)
        #expect(denied.kind == .permissionDenied && denied.fix?.contains("service:read") == true)
        #expect(status(500, "rpc error", .consul).kind == .httpStatus)
        #expect(status(500, "rpc error", .consul).description == "https://r:1: /p returned HTTP 500: rpc error")
    }

    @Test func whatCameInsteadOfJSON() {
        func check(_ body: String, _ type: String?) -> String? {
            do { try RegistryConnection.checkJSON(ByteBuffer(string: body), contentType: type, path: "/v1/x", endpoint: "e"); return nil } catch {
                return error.detail
            }
        }
        #expect(check(" [1]", "application/json") == nil && check("{}", nil) == nil)
        #expect(check("<html>502</html>", "text/html; charset=utf-8") == "/v1/x returned HTML, not JSON (a proxy or another service on this address?)")
        #expect(check("", "application/json")?.hasPrefix("/v1/x returned an empty body") == true)
        #expect(check("OK", "text/plain")?.hasPrefix("/v1/x returned text/plain") == true)
    }
}

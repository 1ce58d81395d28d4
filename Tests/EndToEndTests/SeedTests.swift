import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The registrations the Go ecosystem makes, exactly as its frameworks and tutorials write them, found by plain DNS
/// clients through the real binary.
@Suite("End to end: seed registrations", .serialized)
struct SeedTests {
    /// The answer's RDATA over UDP and over TCP; both must agree.
    func data(_ server: Server, _ name: String, _ type: String) throws -> [String] {
        let udp = try server.dig(name, type, "+notcp"), tcp = try server.dig(name, type, "+tcp")
        #expect(udp.status == tcp.status && Set(udp.data(type)) == Set(tcp.data(type)), "\(name) \(type): UDP \(udp) TCP \(tcp)")
        return udp.data(type).sorted()
    }

    func metric(_ server: Server, _ series: String) -> Double? {
        guard let port = server.adminPort else { return nil }
        return sample(httpGet("http://127.0.0.1:\(port)/metrics").body, series)
    }

    // MARK: etcd

    /// The etcd lease tutorial, step by step: a 5 s lease kept alive by `etcdctl lease keep-alive`, and
    /// `g.srv.mail/127.0.0.1:8972` put under it at the root of the keyspace.
    @Test(.enabled(if: etcdAvailable, "etcd-server is not installed"))
    func etcdLeaseTutorialAtTheKeyspaceRoot() throws {
        let etcd = try EtcdCluster()
        let lease = try etcd.grantLease(5)
        let granted = Date()
        let keepAlive = Process()
        keepAlive.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        keepAlive.arguments = ["ETCDCTL_API=3", "etcdctl", "--endpoints", etcd.endpoints, "lease", "keep-alive", lease]
        keepAlive.standardOutput = FileHandle.nullDevice
        keepAlive.standardError = FileHandle.nullDevice
        keepAlive.standardInput = FileHandle.nullDevice
        try keepAlive.run()
        defer { if keepAlive.isRunning { kill(keepAlive.processIdentifier, SIGKILL); keepAlive.waitUntilExit() } }
        try etcd.put("g.srv.mail/127.0.0.1:8972", #"{"Name":"g.srv.mail","IP":"127.0.0.1:8972"}"#, lease: lease)

        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)?prefix="])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("g.srv.mail.service.consul") == ["127.0.0.1"] } != nil, "\(server.log_())")
        #expect(try data(server, "g.srv.mail.service.consul", "A") == ["127.0.0.1"])
        #expect(try data(server, "g.srv.mail.service.consul", "SRV") == ["1 1 8972 7f000001.addr.dc1.consul."])

        // The keep-alive holds the lease past its 5 s: every poll until 6.5 s after the grant finds the instance.
        var missed = 0
        #expect(eventually(within: 10, every: 250_000) {
            if server.socketAddresses("g.srv.mail.service.consul") != ["127.0.0.1"] { missed += 1 }
            return Date().timeIntervalSince(granted) >= 6.5
        } != nil)
        #expect(missed == 0, "the instance was missing from \(missed) answers while the keep-alive ran")
        // The service dies: etcd expires the lease, and the instance is gone within the lease's TTL + 1 s.
        kill(keepAlive.processIdentifier, SIGKILL)
        keepAlive.waitUntilExit()
        let gone = eventually(within: 10, every: 20_000) { server.socketAddresses("g.srv.mail.service.consul").isEmpty }
        #expect(gone != nil && gone! <= 6, "gone after \(String(describing: gone)) s")
        #expect(try server.dig("g.srv.mail.service.consul", "A").status == "NXDOMAIN")
    }

    /// go-micro, go-zero and Kratos, each in its own layout, read from the whole keyspace; a name that can never
    /// be a DNS name and a value in no known format are logged and counted, and the rest is served.
    @Test(.enabled(if: etcdAvailable, "etcd-server is not installed"))
    func etcdFrameworkLayouts() throws {
        let etcd = try EtcdCluster()
        let microKey = "/micro/registry/go.micro.srv.greeter/go.micro.srv.greeter-9b8e2e0c-6a51-4f0e-9a4b-3c1d2e5f7a10"
        try etcd.put(microKey, #"""
            {"name":"go.micro.srv.greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"go.micro.srv.greeter-9b8e2e0c-6a51-4f0e-9a4b-3c1d2e5f7a10","address":"192.0.2.41:40123","metadata":{"registry":"etcd","server":"grpc"}}]}
            """#)
        try etcd.put("dms.rpc/7587864068988009477", "192.0.2.61:8080")
        try etcd.put("/microservices/helloworld/b1a4c3e2-0f6d-11ee-9d1a-0242ac120002", #"""
            {"id":"b1a4c3e2-0f6d-11ee-9d1a-0242ac120002","name":"helloworld","version":"v1.0.0","metadata":null,"endpoints":["grpc://192.0.2.51:9000","http://192.0.2.51:8000"]}
            """#)
        let long = String(repeating: "x", count: 64)
        try etcd.put("\(long)/1", "192.0.2.99:1")
        try etcd.put("config/log-level", "debug")

        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)?prefix=", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("helloworld.service.consul") == ["192.0.2.51"] } != nil, "\(server.log_())")
        #expect(try data(server, "go.micro.srv.greeter.service.consul", "A") == ["192.0.2.41"])
        #expect(try data(server, "go.micro.srv.greeter.service.consul", "SRV") == ["1 1 40123 c0000229.addr.dc1.consul."])
        #expect(try data(server, "dms.rpc.service.consul", "A") == ["192.0.2.61"])
        #expect(try data(server, "dms.rpc.service.consul", "SRV") == ["1 1 8080 c000023d.addr.dc1.consul."])
        #expect(try data(server, "helloworld.service.consul", "SRV") == ["1 1 9000 c0000233.addr.dc1.consul."])
        #expect(try data(server, "_grpc._tcp.helloworld.service.consul", "SRV") == ["1 1 9000 c0000233.addr.dc1.consul."])
        #expect(try data(server, "_http._tcp.helloworld.service.consul", "SRV") == ["1 1 8000 c0000233.addr.dc1.consul."])

        // Nothing vanishes without a word: each skip is logged with its key and reason, and counted.
        let log = server.log_()
        #expect(log.contains("etcd.key=\(long)/1") && log.contains("label of the name is over 63 bytes"), "\(log)")
        #expect(log.contains("config/log-level"), "\(log)")
        #expect(eventually(within: 3) {
            metric(server, #"signpost_registry_skipped_total{registry="etcd",reason="label_too_long"}"#) == 1
                && metric(server, #"signpost_registry_skipped_total{registry="etcd",reason="unknown_format"}"#) == 1
        } != nil, "\(httpGet("http://127.0.0.1:\(server.adminPort ?? 0)/metrics").body)")

        // Deregistering (a delete, as a lease expiry is) removes the answer.
        try etcd.delete(microKey)
        try etcd.delete("dms.rpc/7587864068988009477")
        #expect(eventually(within: 3) {
            server.socketAddresses("go.micro.srv.greeter.service.consul").isEmpty && server.socketAddresses("dms.rpc.service.consul").isEmpty
        } != nil)
        #expect(try server.dig("go.micro.srv.greeter.service.consul", "SRV").status == "NXDOMAIN")
        #expect(try server.dig("dms.rpc.service.consul", "A", "+tcp").status == "NXDOMAIN")
        #expect(try data(server, "helloworld.service.consul", "A") == ["192.0.2.51"], "the rest is untouched")
    }

    /// Several prefixes, comma-separated, are watched together; keys outside them are not read.
    @Test(.enabled(if: etcdAvailable, "etcd-server is not installed"))
    func etcdSeveralPrefixes() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/micro/registry/go.micro.server/n1", #"{"name":"go.micro.server","nodes":[{"id":"n1","address":"192.0.2.42:7000"}]}"#)
        try etcd.put("/microservices/helloworld/k1", #"{"id":"k1","name":"helloworld","endpoints":["grpc://192.0.2.52:9000"]}"#)
        try etcd.put("dms.rpc/1", "192.0.2.62:8080")
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)?prefix=/micro/registry/,/microservices/"])
        defer { server.stop() }
        #expect(eventually(within: 5) {
            server.socketAddresses("go.micro.server.service.consul") == ["192.0.2.42"]
                && server.socketAddresses("helloworld.service.consul") == ["192.0.2.52"]
        } != nil, "\(server.log_())")
        #expect(try server.dig("dms.rpc.service.consul", "A").status == "NXDOMAIN")
        try etcd.put("/microservices/helloworld/k2", #"{"id":"k2","name":"helloworld","endpoints":["grpc://192.0.2.53:9000"]}"#)
        #expect(eventually(within: 3) { server.socketAddresses("helloworld.service.consul") == ["192.0.2.52", "192.0.2.53"] } != nil)
    }

    // MARK: Consul

    /// grpc-go's tutorial service and go-micro's Consul example, registered through the agent API with TTL checks,
    /// as their registrars do: served while the check passes, not while it is critical or after its TTL lapses.
    @Test func consulTTLRegistrations() throws {
        let consul = try ConsulStandIn()
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        // grpc-go + Consul tutorial: a 31 s TTL in the tutorial, 2 s here so the lapse can be watched.
        var (code, _) = try consul.call("PUT", "/v1/agent/service/register", [
            "ID": "hello-1", "Name": "hello.service", "Address": "192.0.2.91", "Port": 50051,
            "Check": ["CheckID": "service:hello-1", "TTL": "2s"]] as [String: Any])
        #expect(code == 200)
        // go-micro's registry: <name>-<uuid> IDs, encoded tags, TTL + DeregisterCriticalServiceAfter, lower-case keys
        // as some clients send.
        let microID = "registry-consul.service-5b0a8b53-0c43-4c5c-9f8e-1b6f2d9e3c77"
        (code, _) = try consul.call("PUT", "/v1/agent/service/register", [
            "id": microID, "name": "registry-consul.service", "address": "192.0.2.92", "port": 8080,
            "tags": ["v-789c2a4a2d0600028001f5", "t-789cab56ca4bcd2b51b252ca28292950aa0500344d05b1"],
            "check": ["ttl": "2s", "deregistercriticalserviceafter": "4s"]] as [String: Any])
        #expect(code == 200)

        // A TTL check starts critical: nothing is served until the service says it is alive.
        #expect(eventually(within: 5) { server.log_().contains("consul loaded") } != nil, "\(server.log_())")
        #expect(try server.dig("hello.service.service.consul", "A").status == "NXDOMAIN")
        try consul.call("PUT", "/v1/agent/check/pass/service:hello-1")
        try consul.call("PUT", "/v1/agent/check/pass/service:\(microID)")
        #expect(eventually(within: 3) {
            server.socketAddresses("hello.service.service.consul") == ["192.0.2.91"]
                && server.socketAddresses("registry-consul.service.service.consul") == ["192.0.2.92"]
        } != nil, "\(server.log_())")
        #expect(try data(server, "hello.service.service.consul", "SRV") == ["1 1 50051 c000025b.addr.dc1.consul."])
        #expect(try data(server, "registry-consul.service.service.consul", "SRV") == ["1 1 8080 c000025c.addr.dc1.consul."])

        // Critical is not served.
        try consul.call("PUT", "/v1/agent/check/fail/service:hello-1")
        #expect(eventually(within: 3) { server.socketAddresses("hello.service.service.consul").isEmpty } != nil)
        #expect(try server.dig("hello.service.service.consul", "A", "+tcp").status == "NXDOMAIN")
        // Passing again comes back; then the service stops reporting and its TTL lapses.
        try consul.call("PUT", "/v1/agent/check/pass/service:hello-1")
        #expect(eventually(within: 3) { server.socketAddresses("hello.service.service.consul") == ["192.0.2.91"] } != nil)
        #expect(eventually(within: 6) { server.socketAddresses("hello.service.service.consul").isEmpty } != nil, "TTL lapse")
        // go-micro's instance lapses too, and is deregistered after DeregisterCriticalServiceAfter: it stays gone.
        #expect(eventually(within: 10) {
            (try? consul.call("GET", "/v1/catalog/services").1).map { String(decoding: $0, as: UTF8.self) }?
                .contains("registry-consul.service") == false
        } != nil)
        // Consul has dropped it; Signpost's catalog watch then removes it (a read paced by the service's churn
        // limit may land up to a second later).
        #expect(eventually(within: 3) { (try? server.dig("registry-consul.service.service.consul", "A").status) == "NXDOMAIN" } != nil)
        (code, _) = try consul.call("PUT", "/v1/agent/service/deregister/hello-1")
        #expect(code == 200)
        #expect(eventually(within: 3) { (try? server.dig("hello.service.service.consul", "SRV").status) == "NXDOMAIN" } != nil)
    }

    /// The three registrars' flows, replayed with Debian's python3-consul (a client nobody here wrote): grpc-go's
    /// `helloserver`, go-micro's `registry-consul.service-<uuid>` with its encoded tags and
    /// DeregisterCriticalServiceAfter, and a gRPC health registrar's `grpc.health.v1.greeter`. TTLs are seconds
    /// here (31 s and 90 s in the real flows) so the lapse can be watched.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/consul/__init__.py"),
                   "python3-consul is not installed"))
    func pythonConsulRegistrarFlows() throws {
        let consul = try ConsulStandIn()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ConsulStandIn/registrar.py").path
        func registrar(_ args: String...) throws { try registrar(args) }
        func registrar(_ args: [String]) throws {
            let r = try run(["/usr/bin/python3", script, "\(consul.port)"] + args)
            #expect(r.status == 0, "registrar \(args): \(r.err)")
        }
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s"])
        defer { server.stop() }
        let micro = "registry-consul.service-5b0a8b53-0c43-4c5c-9f8e-1b6f2d9e3c77"
        let flows: [(name: String, id: String, address: String, register: [String])] = [
            ("helloserver", "helloserver-1", "192.0.2.101", ["2s", "-"]),
            ("registry-consul.service", micro, "192.0.2.102", ["2s", "4s", "v-789c2a4a2d0600028001f5", "t-789cab56ca4bcd2b51b252ca28292950aa0500344d05b1"]),
            ("grpc.health.v1.greeter", "greeter-1", "192.0.2.103", ["2s", "-"]),
        ]
        for f in flows {
            try registrar(["register", f.name, f.id, f.address, "50051"] + f.register)
        }
        #expect(eventually(within: 5) { server.log_().contains("consul loaded") } != nil)
        for f in flows {
            // A TTL check starts critical: not served until the service says it is alive.
            #expect(try server.dig("\(f.name).service.consul", "A").status == "NXDOMAIN", "\(f.name) before its first pass")
            try registrar("pass", "service:\(f.id)")
            #expect(eventually(within: 3) { server.socketAddresses("\(f.name).service.consul") == [f.address] } != nil, "\(f.name) passing")
        }
        // Nobody passes again: each TTL lapses, and the instance goes.
        for f in flows {
            #expect(eventually(within: 8) { server.socketAddresses("\(f.name).service.consul").isEmpty } != nil, "\(f.name) lapsed")
        }
        // go-micro's instance is then deregistered by DeregisterCriticalServiceAfter; the others by their registrars.
        #expect(eventually(within: 10) {
            (try? consul.call("GET", "/v1/catalog/services").1).map { String(decoding: $0, as: UTF8.self) }?.contains("registry-consul") == false
        } != nil)
        try registrar("deregister", "helloserver-1")
        try registrar("deregister", "greeter-1")
        for f in flows {
            #expect(eventually(within: 3) { (try? server.dig("\(f.name).service.consul", "SRV").status) == "NXDOMAIN" } != nil, "\(f.name) stays gone")
        }
    }

    /// A Consul name that can never be a DNS name is logged once and counted; the others load.
    @Test func consulSkipsOnlyImpossibleNames() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "grpc.health.v1.greeter")
        try consul.register(node: "n1", address: "192.0.2.1", service: "bad..name")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("grpc.health.v1.greeter.service.consul") == ["192.0.2.1"] } != nil,
                "\(server.log_())")
        try consul.register(node: "n2", address: "192.0.2.2", service: "grpc.health.v1.greeter")
        #expect(eventually(within: 3) { server.socketAddresses("grpc.health.v1.greeter.service.consul").count == 2 } != nil)
        #expect(server.log_().components(separatedBy: "\"bad..name\" skipped").count == 2, "logged once: \(server.log_())")
        #expect(metric(server, #"signpost_registry_skipped_total{registry="consul",reason="empty_label"}"#) == 1)
    }

    // MARK: Catalog files

    @Test func catalogFileWithDottedAndImpossibleNames() throws {
        let dir = TempDir()
        let long = String(repeating: "y", count: 64)
        dir.write("catalog/seed.json", """
            [{"Node": "h1", "Address": "192.0.2.71", "Service": {"Service": "helloworld.Greeter", "Port": 50051}},
             {"Node": "h2", "Address": "192.0.2.72", "Service": {"Service": "\(long)", "Port": 1}}]
            """)
        let server = try Server(dir: dir, extra: ["--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(try data(server, "helloworld.greeter.service.consul", "A") == ["192.0.2.71"])
        #expect(try data(server, "helloworld.Greeter.service.consul", "SRV") == ["1 1 50051 h1.node.dc1.consul."])
        #expect(try server.dig("h2.node.consul", "A").data("A") == ["192.0.2.72"], "the node of a skipped service stays")
        #expect(server.log_().contains("seed.json:2: service \"\(long)\" skipped"), "\(server.log_())")
        #expect(metric(server, #"signpost_registry_skipped_total{registry="file",reason="label_too_long"}"#) == 1)
    }

    // MARK: gRPC

    /// A real grpc-go client (Debian's grpc-go 1.33, built by `make test`) dials `dns:///hello.service…` with no
    /// service config of its own, against three gRPC health servers. The TXT record alone switches its policy.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: grpcProbe), "make test builds the grpc-go probe"))
    func grpcGoClientTakesItsPolicyFromDNS() throws {
        let port = freePort()
        let backends = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        let servers = Process()
        servers.executableURL = URL(fileURLWithPath: grpcProbe)
        servers.arguments = ["server"] + backends.map { "\($0):\(port)" }
        let ready = Pipe()
        servers.standardOutput = ready
        servers.standardInput = FileHandle.nullDevice
        try servers.run()
        defer { kill(servers.processIdentifier, SIGKILL); servers.waitUntilExit() }
        #expect(String(decoding: ready.fileHandleForReading.availableData, as: UTF8.self).contains("serving"))

        let dir = TempDir()
        dir.write("catalog/hello.json", "[" + backends.enumerated().map { i, ip in
            #"{"Node": "h\#(i)", "Address": "\#(ip)", "Service": {"ID": "h\#(i)", "Service": "hello.service", "Port": \#(port)}}"#
        }.joined(separator: ",") + "]")

        func peers(_ policy: String) throws -> [String: Int] {
            let server = try Server(dir: dir, extra: ["--grpc-lb-policy", policy])
            defer { server.stop() }
            let txt = try data(server, "_grpc_config.hello.service.service.consul", "TXT")
            #expect(txt == (policy == "none" ? [] : [#""grpc_config=[{\"serviceConfig\":{\"loadBalancingConfig\":[{\"\#(policy)\":{}}]}}]""#]),
                    "\(txt)")
            let r = try run([grpcProbe, "client", "dns://127.0.0.1:\(server.port)/hello.service.service.consul:\(port)", "30"])
            #expect(r.status == 0, "\(r.err)\n\(server.log_())")
            var counts: [String: Int] = [:]
            for line in r.out.split(separator: "\n") { counts[String(line.split(separator: ":")[0]), default: 0] += 1 }
            #expect(counts.values.reduce(0, +) == 30, "\(r.out)")
            return counts
        }
        let roundRobin = try peers("round_robin")
        #expect(Set(roundRobin.keys) == Set(backends), "round_robin reaches every backend: \(roundRobin)")
        let none = try peers("none")
        #expect(none.count == 1, "without the TXT record grpc-go picks the first: \(none)")
    }
}

/// The grpc-go probe (Tests/EndToEndTests/GRPCProbe), built by `make test` with Debian's Go and grpc-go.
let grpcProbe = FileManager.default.currentDirectoryPath + "/.build/grpc-probe/grpc-probe"

import DNSWire
import TestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Nearest first, from real client addresses: three network namespaces, each joined to this one by a veth pair in
/// its own subnet, and each subnet mapped to a zone (`--client-zone`). The clients are Python's plain sockets
/// inside the namespaces; the zone of an answer is told by its address.
@Suite("End to end: nearest first from three subnets", .serialized)
struct LocalityEndToEndTests {
    static let zones = ["zone-a", "zone-b", "zone-c"]

    /// Three namespaces, with 10.231.K.1 on our side and 10.231.K.2 on theirs.
    final class Subnets: NetworkNamespaces {
        init() throws { try super.init(prefix: "loc", network: 231, count: 3) }
    }

    /// Instances: three per zone, 192.0.2.<10·zone + k>, the zone in node meta.
    static func catalog(_ dir: TempDir, critical: (String) -> Bool = { _ in false }) {
        for (z, zone) in zones.enumerated() {
            for k in 1...3 {
                let node = "\(zone)-\(k)"
                dir.write("catalog/\(node).json", #"""
                    {"Node": "\#(node)", "Address": "192.0.2.\#(10 * (z + 1) + k)", "NodeMeta": {"zone": "\#(zone)"},
                     "Service": {"ID": "web-\#(node)", "Service": "web", "Port": 80},
                     "Checks": [{"CheckID": "c", "Status": "\#(critical(node) ? "critical" : "passing")", "ServiceID": "web-\#(node)"}]}
                    """#)
            }
        }
    }

    static func zone(of address: String) -> String {
        let last = Int(address.split(separator: ".").last!)!
        return zones[last / 10 - 1]
    }

    /// `count` A queries for web.service.consul from inside `ns`, over one socket: how often each address came
    /// first. One process per batch of queries, bounded by a count and a per-query timeout.
    static func firsts(_ ns: String, server: String, port: Int, count: Int, dir: TempDir) throws -> [String: Int] {
        let script = dir.path + "/firsts.py"
        try #"""
        import json, socket, struct, sys
        server, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        q = b"".join(bytes([len(l)]) + l.encode() for l in "web.service.consul".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
        out = {}
        for i in range(count):
            s.sendto(struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + q, (server, port))
            while True:
                data = s.recv(4096)
                if struct.unpack(">H", data[:2])[0] == i & 0xFFFF: break
            an, p = struct.unpack(">H", data[6:8])[0], 12 + len(q)
            first = None
            for _ in range(an):
                p += 2 if data[p] & 0xC0 == 0xC0 else 0
                rtype, rdlen = struct.unpack(">H", data[p:p + 2])[0], struct.unpack(">H", data[p + 8:p + 10])[0]
                if rtype == 1 and first is None: first = socket.inet_ntoa(data[p + 10:p + 14])
                p += 10 + rdlen
            out[first] = out.get(first, 0) + 1
        print(json.dumps(out))
        """#.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try run(["ip", "netns", "exec", ns, "python3", script, server, "\(port)", "\(count)"])
        guard r.status == 0, let data = r.out.data(using: .utf8), let counts = try JSONSerialization.jsonObject(with: data) as? [String: Int] else {
            throw Server.ServerError(message: "queries from \(ns) failed: \(r.err)")
        }
        return counts
    }

    static func start(_ dir: TempDir, port: Int, extra: [String] = []) throws -> Server {
        let listen = (1...3).flatMap { ["--listen", "10.231.\($0).1:\(port)"] }
        let zonesOfClients = (1...3).flatMap { ["--client-zone", "10.231.\($0).0/24=\(zones[$0 - 1])"] }
        return try Server(dir: dir, extra: listen + zonesOfClients + ["--locality", "zone"] + extra)
    }

    /// A UDP port free on every subnet address.
    static func freePort() -> Int { TestSupport.freePort(on: "10.231.1.1", type: Int32(SOCK_DGRAM.rawValue)) }

    @Test(.enabled(if: namespacesPermitted, "network namespaces are not permitted here (needs root and iproute2)"))
    func everyFirstAnswerIsInTheClientsZoneUntilItGoesCritical() throws {
        let subnets = try Subnets()
        let dir = TempDir()
        Self.catalog(dir)
        let port = Self.freePort()
        let server = try Self.start(dir, port: port)
        defer { server.stop() }
        for k in 0..<3 {
            let counts = try Self.firsts(subnets.names[k], server: "10.231.\(k + 1).1", port: port, count: 1000, dir: dir)
            #expect(counts.values.reduce(0, +) == 1000)
            #expect(counts.keys.allSatisfy { Self.zone(of: $0) == Self.zones[k] }, "from \(Self.zones[k]): \(counts)")
            // Rotated among the zone's three.
            #expect(counts.count == 3, "\(counts)")
        }
        // All of zone-a goes critical: its clients' next answers come from elsewhere. Polled from this process
        // with zone-a's own source address (10.231.1.1) until the catalog change is served; then 100 more from
        // inside zone-a's namespace.
        Self.catalog(dir) { $0.hasPrefix("zone-a") }
        var moved = false
        for _ in 0..<200 where !moved {
            let sock = UDPSocket(port: server.port, source: "10.231.1.1")
            let id = nextQueryID()
            sock.send(queryBytes("web.service.consul", RRType.a, id: id))
            let first = sock.reply(id: id, within: 2)?.answers.first.flatMap { r -> String? in if case .a(let ip) = r.rdata { "\(ip)" } else { nil } }
            moved = first.map { Self.zone(of: $0) != "zone-a" } ?? false
            if !moved { usleep(50_000) }
        }
        #expect(moved, "zone-a's clients still answered from zone-a: \(server.log_())")
        let after = try Self.firsts(subnets.names[0], server: "10.231.1.1", port: port, count: 100, dir: dir)
        #expect(after.keys.allSatisfy { Self.zone(of: $0) != "zone-a" }, "\(after)")
    }

    /// `--locality-min 2` with one healthy instance left in zone-a: no preference, so its clients' first answers
    /// go round every healthy instance.
    /// What applications see: glibc's getaddrinfo (`getent ahostsv4`) and Go's own resolver (`net.Resolver` with
    /// PreferGo), each in its namespace with a resolv.conf naming Signpost on port 53. Both keep the DNS order here:
    /// RFC 6724's rule 9 (longest matching prefix), which both apply, cannot tell the instances apart, as none of
    /// their addresses shares more leading bits with the client's than another (README: which clients keep DNS
    /// order, and gai.conf).
    @Test(.enabled(if: namespacesPermitted && FileManager.default.isExecutableFile(atPath: "/usr/bin/go"),
                   "needs network namespaces and Go"))
    func glibcAndGoApplicationsSeeTheirZoneFirst() throws {
        let subnets = try Subnets()
        let dir = TempDir()
        Self.catalog(dir)
        for k in 0..<3 { try subnets.resolvConf(k, "nameserver 10.231.\(k + 1).1\noptions attempts:1 timeout:2\n") }
        let server = try Self.start(dir, port: 53)
        defer { server.stop() }
        let goDir = TempDir()
        try FileManager.default.createDirectory(atPath: goDir.path + "/src/lookup", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/GoLookup/main.go",
                                         toPath: goDir.path + "/src/lookup/main.go")
        let built = try run(["go", "build", "-o", goDir.path + "/lookup", "lookup"],
                            environment: ["GO111MODULE": "off", "GOPATH": goDir.path, "GOCACHE": goDir.path + "/cache", "HOME": goDir.path])
        try #require(built.status == 0, "go build: \(built.err)")
        for k in 0..<3 {
            let ns = subnets.names[k]
            var glibc: [String] = []
            for _ in 0..<9 {
                let r = try run(["ip", "netns", "exec", ns, "getent", "ahostsv4", "web.service.consul"])
                glibc.append(r.out.split(separator: " ").first.map(String.init) ?? "none")
            }
            #expect(glibc.allSatisfy { $0 != "none" && Self.zone(of: $0) == Self.zones[k] }, "glibc in \(Self.zones[k]): \(glibc)")
            let go = try run(["ip", "netns", "exec", ns, goDir.path + "/lookup", "web.service.consul", "9"])
            let firsts = go.out.split(separator: "\n").map(String.init)
            #expect(firsts.count == 9 && firsts.allSatisfy { !$0.hasPrefix("error") && Self.zone(of: $0) == Self.zones[k] },
                    "Go in \(Self.zones[k]): \(go.out) \(go.err)")
            // Each rotates over its zone's three.
            #expect(Set(glibc).count == 3 && Set(firsts).count == 3, "\(glibc) \(firsts)")
        }
    }

    @Test(.enabled(if: namespacesPermitted, "network namespaces are not permitted here (needs root and iproute2)"))
    func belowTheMinimumThereIsNoPreference() throws {
        let subnets = try Subnets()
        let dir = TempDir()
        Self.catalog(dir) { $0 == "zone-a-2" || $0 == "zone-a-3" }
        let port = Self.freePort()
        let server = try Self.start(dir, port: port, extra: ["--locality-min", "2"])
        defer { server.stop() }
        let counts = try Self.firsts(subnets.names[0], server: "10.231.1.1", port: port, count: 70, dir: dir)
        #expect(counts.count == 7, "every healthy instance comes first in turn: \(counts)")
        #expect(Set(counts.keys.map(Self.zone(of:))) == Set(Self.zones), "\(counts)")
    }
}

/// EDNS Client Subnet (RFC 7871): a trusted resolver's option places its client; an untrusted one's is ignored; both
/// come back with the scope the answer covers. dig is the client.
@Suite("End to end: EDNS Client Subnet")
struct ClientSubnetEndToEndTests {
    static func start(trusting network: String) throws -> Server {
        let dir = TempDir()
        LocalityEndToEndTests.catalog(dir)
        return try Server(dir: dir, extra: ["--locality", "zone", "--client-zone", "10.231.1.0/24=zone-a", "--client-zone", "10.231.2.0/24=zone-b",
                                            "--zone", "zone-c", "--ecs-trusted", network])
    }

    static func first(_ dig: Dig) -> String? { dig.answer.first { $0.count >= 5 && $0[3] == "A" }?[4] }

    @Test func aTrustedResolversSubnetPlacesItsClientAndTheScopeComesBack() throws {
        let server = try Self.start(trusting: "127.0.0.0/8")
        defer { server.stop() }
        for _ in 0..<6 {
            let d = try server.dig("web.service.consul", "A", "+subnet=10.231.2.0/24")
            #expect(d.status == "NOERROR")
            #expect(Self.first(d).map(LocalityEndToEndTests.zone(of:)) == "zone-b", "\(d.raw)")
            // The option echoed: same family, source and address, with the scope of the network that decided.
            #expect(d.raw.contains("CLIENT-SUBNET: 10.231.2.0/24/24"), "\(d.raw)")
        }
        // Source prefix 0 asks that no address be used: Signpost's own zone, scope 0.
        let none = try server.dig("web.service.consul", "A", "+subnet=0.0.0.0/0")
        #expect(Self.first(none).map(LocalityEndToEndTests.zone(of:)) == "zone-c" && none.raw.contains("CLIENT-SUBNET: 0.0.0.0/0/0"), "\(none.raw)")
    }

    @Test func anUntrustedSubnetIsIgnoredAndEchoedWithScopeZero() throws {
        let server = try Self.start(trusting: "10.0.0.0/8")
        defer { server.stop() }
        for _ in 0..<6 {
            let d = try server.dig("web.service.consul", "A", "+subnet=10.231.2.0/24")
            // From 127.0.0.1, no --client-zone network: Signpost's own zone.
            #expect(Self.first(d).map(LocalityEndToEndTests.zone(of:)) == "zone-c", "\(d.raw)")
            #expect(d.raw.contains("CLIENT-SUBNET: 10.231.2.0/24/0"), "\(d.raw)")
        }
    }
}

/// With a Consul registry and no `--zone`, Signpost's own zone is the agent's (its `locality`, which Consul gives
/// its node); instances place themselves with `Service.Locality`, as Consul 1.16+ registers them.
@Suite("End to end: nearest first through Consul")
struct ConsulLocalityEndToEndTests {
    /// A stand-in whose agent is in zone-b, with `web` registered three times in each of three zones.
    static func consulWithThreeZones() throws -> ConsulStandIn {
        let consul = try ConsulStandIn(extra: ["--agent-zone", "zone-b", "--agent-region", "r1"])
        for (z, zone) in LocalityEndToEndTests.zones.enumerated() {
            for k in 1...3 {
                let node = "\(zone)-\(k)", id = "web-\(zone)-\(k)"
                let (code, _) = try consul.call("PUT", "/v1/catalog/register", [
                    "Node": node, "Address": "192.0.2.\(10 * (z + 1) + k)",
                    "Service": ["ID": id, "Service": "web", "Port": 80, "Locality": ["Region": "r1", "Zone": zone]],
                    "Checks": [["CheckID": "c-\(id)", "Status": "passing", "ServiceID": id]]] as [String: Any])
                #expect(code == 200)
            }
        }
        return consul
    }

    /// The zones of the next `count` first answers.
    static func firstZones(_ server: Server, count: Int) throws -> [String] {
        try (0..<count).map { _ in
            let m = try #require(server.socketQuery("web.service.consul", RRType.a))
            guard case .a(let first)? = m.answers.first?.rdata else { Issue.record("no A"); return "" }
            return LocalityEndToEndTests.zone(of: "\(first)")
        }
    }

    @Test func theAgentsZoneIsSignpostsOwnAndServiceLocalityPlacesInstances() throws {
        let consul = try Self.consulWithThreeZones()
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)", "--locality", "zone"])
        defer { server.stop() }
        #expect(eventually(within: 20) { server.socketAddresses("web.service.consul").count == 9 } != nil, "\(server.log_())")
        #expect(server.log_().contains("the Consul agent's zone"), "\(server.log_())")
        #expect(try Self.firstZones(server, count: 9) == Array(repeating: "zone-b", count: 9))
    }

    /// A reload that turns `--locality` on asks the agent for its zone then, as start-up would have.
    @Test func aReloadThatTurnsLocalityOnAsksTheAgentsZone() throws {
        let consul = try Self.consulWithThreeZones()
        let dir = TempDir()
        dir.write("signpost.json", #"{"locality": "off"}"#)
        let server = try Server(dir: dir, catalog: false, extra: ["--registry", "consul:\(consul.url)", "--config", dir.path + "/signpost.json"])
        defer { server.stop() }
        #expect(eventually(within: 20) { server.socketAddresses("web.service.consul").count == 9 } != nil, "\(server.log_())")
        #expect(Set(try Self.firstZones(server, count: 9)).count == 3, "no preference yet: every zone comes first in turn")
        dir.write("signpost.json", #"{"locality": "zone"}"#)
        try ReloadTests().reload(server)
        #expect(server.log_().contains("the Consul agent's zone"), "\(server.log_())")
        #expect(try Self.firstZones(server, count: 9) == Array(repeating: "zone-b", count: 9))
    }
}

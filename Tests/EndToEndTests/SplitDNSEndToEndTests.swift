import DNSWire
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Split DNS (`--forward-zone`) and the locally served zones (RFC 6303, RFC 6761). The clients are glibc's
/// resolver (`getent ahostsv4`, which calls getaddrinfo) in a network namespace whose resolv.conf names Signpost,
/// and dig; the upstreams are two Knot instances serving different zones, and a logging upstream for the rest,
/// whose log shows which names ever left.
@Suite("End to end: split DNS and local zones", .serialized, .enabled(if: knotAvailable, "knot is not installed"))
struct SplitDNSEndToEndTests {
    static func zone(_ origin: String, _ records: String) -> String {
        "$ORIGIN \(origin).\n$TTL 60\n@ SOA ns.\(origin). hostmaster.\(origin). 1 3600 600 86400 60\n@ NS ns.\(origin).\nns A 127.0.0.1\n"
            + records
    }

    /// An upstream that answers every query (A 192.0.2.99) and logs its name.
    static func loggingUpstream() throws -> FakeUpstream {
        let upstream = try FakeUpstream(mode: "hold")
        upstream.release()
        try #require(eventually(within: 5) { upstream.log.contains("released") } != nil)
        return upstream
    }

    @Test(.enabled(if: namespacesPermitted, "network namespaces are not permitted here (needs root and iproute2)"))
    func eachNameGoesToItsZonesUpstreamsFromGlibc() throws {
        let corp = try Knot(zones: ["corp.example": Self.zone("corp.example", "www A 192.0.2.1\nx.eng A 192.0.2.66\n")], probe: "www.corp.example")
        defer { corp.stop() }
        let eng = try Knot(zones: ["eng.corp.example": Self.zone("eng.corp.example", "x A 192.0.2.77\n")], probe: "x.eng.corp.example")
        defer { eng.stop() }
        let fallback = try Self.loggingUpstream()
        let spaces = try NetworkNamespaces(prefix: "split", network: 232, count: 1)
        try spaces.resolvConf(0, "nameserver 10.232.1.1\noptions attempts:1 timeout:2\n")
        let server = try Server(dir: TempDir(), forward: true, extra: [
            "--listen", "10.232.1.1:53", "--upstream", "127.0.0.1:\(fallback.port)",
            "--forward-zone", "corp.example=127.0.0.1:\(corp.port)", "--forward-zone", "eng.corp.example=127.0.0.1:\(eng.port)",
            "--forward-zone", "blocked.example=none", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        // The addresses the application sees, from getaddrinfo inside the namespace.
        func resolve(_ name: String) throws -> [String] {
            let r = try run(["ip", "netns", "exec", spaces.names[0], "getent", "ahostsv4", name])
            return Set(r.out.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }).sorted()
        }
        #expect(try resolve("www.corp.example") == ["192.0.2.1"])
        #expect(try resolve("x.eng.corp.example") == ["192.0.2.77"], "the longer zone wins")
        #expect(try resolve("elsewhere.example") == ["192.0.2.99"], "the rest goes to --upstream")
        #expect(try resolve("www.blocked.example").isEmpty)
        #expect(try server.dig("www.blocked.example", "A").status == "REFUSED")
        // The log shows what reached the default upstream: the one name that belongs there, and no blocked one.
        #expect(fallback.queries.contains("elsewhere.example."), "\(fallback.queries)")
        #expect(!fallback.queries.contains { $0.hasSuffix("blocked.example.") || $0.hasSuffix("corp.example.") }, "\(fallback.queries)")
        // explain names the zone that decided.
        let explained = try run([signpostBinary, "explain", "x.eng.corp.example", "A", "--server", "127.0.0.1:\(try #require(server.adminPort))"])
        #expect(explained.out.contains("--forward-zone eng.corp.example. to 127.0.0.1:\(eng.port)"), "\(explained.out)")
        let blocked = try run([signpostBinary, "explain", "www.blocked.example", "A", "--server", "127.0.0.1:\(try #require(server.adminPort))"])
        #expect(blocked.out.contains("=none"), "\(blocked.out)")
    }

    /// PTR for private addresses and names under localhost are answered here (NXDOMAIN with the zone's SOA, or
    /// loopback), and the upstream sees none of them; `--no-local-zones` forwards them, and a `--forward-zone` for
    /// one of the zones sends it there.
    @Test func localZonesNeverLeaveTheHost() throws {
        let upstream = try Self.loggingUpstream()
        let server = try Server(dir: TempDir(), forward: true, extra: ["--upstream", "127.0.0.1:\(upstream.port)"])
        defer { server.stop() }
        for (address, zone) in [("10.1.2.3", "10.in-addr.arpa."), ("192.168.1.1", "168.192.in-addr.arpa."), ("fd00::1", "d.f.ip6.arpa.")] {
            let d = try server.dig("-x", address)
            #expect(d.status == "NXDOMAIN" && d.flags.contains("aa") && d.authority.first?[0] == zone && d.authority.first?[3] == "SOA", "\(d)")
        }
        #expect(try server.dig("foo.localhost", "A").data("A") == ["127.0.0.1"])
        #expect(try server.dig("localhost", "AAAA").data("AAAA") == ["::1"])
        #expect(try server.dig("-x", "127.0.0.1").data("PTR") == ["localhost."])
        #expect(try server.dig("anything.test", "A").status == "NXDOMAIN")
        #expect(try server.dig("x.invalid", "A").status == "NXDOMAIN")
        #expect(try server.dig("example.net", "A").data("A") == ["192.0.2.99"], "a name outside them is forwarded")
        #expect(upstream.queries == ["example.net."], "only the forwarded name left: \(upstream.queries)")

        let off = try Server(dir: TempDir(), forward: true, extra: ["--upstream", "127.0.0.1:\(upstream.port)", "--no-local-zones"])
        defer { off.stop() }
        #expect(try off.dig("-x", "10.1.2.3").data("A") == ["192.0.2.99"], "--no-local-zones forwards them")
        let covered = try Server(dir: TempDir(), forward: true, extra: ["--upstream", "127.0.0.1:1", "--forward-zone",
                                                                        "10.in-addr.arpa=127.0.0.1:\(upstream.port)"])
        defer { covered.stop() }
        #expect(try covered.dig("-x", "10.9.8.7").data("A") == ["192.0.2.99"], "a --forward-zone for the zone wins")
        #expect(try covered.dig("-x", "192.168.1.1").status == "NXDOMAIN", "the others stay local")
        #expect(upstream.queries.contains("7.8.9.10.in-addr.arpa.") && upstream.queries.contains("3.2.1.10.in-addr.arpa."), "\(upstream.queries)")
        #expect(!upstream.queries.contains("1.1.168.192.in-addr.arpa."))
    }
}

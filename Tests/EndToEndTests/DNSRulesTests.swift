import DNSWire
import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One question over a plain UDP socket from this process: rcode, AA and the section counts.
struct Reply: Equatable, CustomStringConvertible {
    var rcode: Int
    var aa: Bool
    var answer: Int
    var authority: Int
    var additional: Int
    var records: [ResourceRecord] = []
    var tc = false

    static func == (a: Reply, b: Reply) -> Bool {
        a.rcode == b.rcode && a.aa == b.aa && a.answer == b.answer && a.authority == b.authority && a.additional == b.additional
    }

    var description: String { "rcode \(rcode)\(aa ? " aa" : "") an \(answer) ns \(authority) ar \(additional)" }

    /// `edns`: send an OPT record (1232 bytes); without it, the 512-byte classic limit applies.
    static func ask(_ port: Int, _ name: String, _ type: UInt16, edns: Bool = true) -> Reply? {
        let sock = UDPSocket(port: port)
        let id = nextQueryID()
        var bytes = queryBytes(name, type, id: id)
        if edns {
            bytes[11] = 1
            bytes += [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]
        }
        sock.send(bytes)
        guard let m = sock.reply(id: id, within: 5) else { return nil }
        // OPT is not a record of the additional section for these comparisons.
        let additional = m.additional.filter { $0.type != RRType.opt }
        return Reply(rcode: Int(m.header.rcode), aa: m.header.aa, answer: m.answers.count, authority: m.authority.count,
                     additional: additional.count, records: m.answers, tc: m.header.tc)
    }
}

/// The DNS rules that strict validators and every stub resolver hold us to, end to end.
@Suite("End to end: DNS rules", .serialized)
struct DNSRulesTests {
    static let catalog = """
        [{"Node": "web-1", "Address": "192.0.2.11", "NodeMeta": {"rack": "r1"},
          "Service": {"ID": "web-1", "Service": "web", "Port": 8080, "Tags": ["v2"]}},
         {"Node": "web-2", "Address": "192.0.2.12", "Service": {"ID": "web-2", "Service": "web", "Port": 8080, "Tags": ["v2"]}},
         {"Node": "api-1", "Address": "2001:db8::21", "Service": {"ID": "api-1", "Service": "api", "Port": 50051, "Address": "2001:db8::99"}},
         {"Node": "db-1", "Address": "192.0.2.31", "Service": {"ID": "db-1", "Service": "db", "Port": 5432, "Address": "db.example.internal"}}]
        """

    /// What Signpost serves for the catalog above, written as a zone: every name the table asks, with the empty
    /// non-terminals implied, and `db.service` as the CNAME it is.
    static let zone = """
        $ORIGIN consul.
        $TTL 0
        @ SOA ns hostmaster 1 3600 600 86400 0
        @ NS ns
        ns A 127.0.0.1
        web.service A 192.0.2.11
        web.service A 192.0.2.12
        web.service SRV 1 1 8080 web-1.node.dc1
        web.service SRV 1 1 8080 web-2.node.dc1
        web.service.dc1 A 192.0.2.11
        web.service.dc1 A 192.0.2.12
        web.service.dc1 SRV 1 1 8080 web-1.node.dc1
        web.service.dc1 SRV 1 1 8080 web-2.node.dc1
        v2.web.service A 192.0.2.11
        v2.web.service A 192.0.2.12
        v2.web.service SRV 1 1 8080 web-1.node.dc1
        v2.web.service SRV 1 1 8080 web-2.node.dc1
        _web._tcp.service A 192.0.2.11
        _web._tcp.service A 192.0.2.12
        _web._tcp.service SRV 1 1 8080 web-1.node.dc1
        _web._tcp.service SRV 1 1 8080 web-2.node.dc1
        web-1.node.dc1 A 192.0.2.11
        web-1.node.dc1 TXT "rack=r1"
        web-2.node.dc1 A 192.0.2.12
        web-1.node A 192.0.2.11
        web-1.node TXT "rack=r1"
        c000020b.addr.dc1 A 192.0.2.11
        api.service AAAA 2001:db8::99
        api.service SRV 1 1 50051 20010db8000000000000000000000099.addr.dc1
        20010db8000000000000000000000099.addr.dc1 AAAA 2001:db8::99
        db.service CNAME db.example.internal.

        """

    static let names = [
        "consul",                                                       // apex
        "service.consul", "node.consul", "dc1.consul", "node.dc1.consul", "addr.dc1.consul", "service.dc1.consul",  // ENTs
        "web.service.consul", "web.service.dc1.consul", "api.service.consul", "db.service.consul",              // services
        "v2.web.service.consul",                                        // tag
        "_web._tcp.service.consul", "_tcp.service.consul",              // RFC 2782, and its parent
        "web-1.node.consul", "web-1.node.dc1.consul",                   // nodes
        "c000020b.addr.dc1.consul",                                     // addr
        "nope.service.consul", "nope.consul", "x.nope.service.consul", "nope.node.consul",  // unknown
    ]

    static let types: [(String, UInt16)] = [
        ("A", RRType.a), ("AAAA", RRType.aaaa), ("SRV", RRType.srv), ("TXT", RRType.txt), ("CNAME", RRType.cname),
        ("NS", RRType.ns), ("SOA", RRType.soa), ("PTR", RRType.ptr), ("MX", RRType.mx), ("ANY", RRType.any), ("TYPE65000", 65000),
    ]

    /// Where Signpost must differ from a static zone, and why. Rotation (the order of records) and TTLs (the zone's
    /// are 0, like Signpost's defaults) cannot show in what is compared: rcode, AA and the three section counts.
    static func expectedDifference(_ name: String, _ type: String) -> String? {
        switch (name, type) {
        case ("consul", "ANY"):
            // RFC 8482 lets a server answer ANY with any one RRset: Knot picks the NS set (with its glue in the
            // additional section), Signpost the SOA.
            return "minimal ANY"
        default:
            return nil
        }
    }

    @Test(.enabled(if: knotAvailable, "knot is not installed"))
    func negativeAnswersMatchKnotForEveryNameAndType() throws {
        let dir = TempDir()
        dir.write("catalog/demo.json", Self.catalog)
        let server = try Server(dir: dir)
        defer { server.stop() }
        let knot = try Knot(zones: ["consul": Self.zone], probe: "web.service.consul")
        defer { knot.stop() }
        var mismatches: [String] = []
        var compared = 0
        for name in Self.names {
            for (typeName, type) in Self.types {
                guard let ours = Reply.ask(server.port, name, type), let theirs = Reply.ask(knot.port, name, type) else {
                    mismatches.append("\(name) \(typeName): no reply")
                    continue
                }
                #expect(ours.aa || ours.rcode == 2, "\(name) \(typeName): AA must be set on our own data (\(ours))")
                if let why = Self.expectedDifference(name, typeName) {
                    // Still the same rcode; only the answer's size may differ.
                    if ours.rcode != theirs.rcode { mismatches.append("\(name) \(typeName) [\(why)]: ours \(ours), knot \(theirs)") }
                    continue
                }
                compared += 1
                if ours != theirs { mismatches.append("\(name) \(typeName): ours \(ours), knot \(theirs)") }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
        #expect(compared > 200)
        // The same name never flips between NXDOMAIN and NOERROR with the type (dnsviz: INCONSISTENT_NXDOMAIN).
        for name in Self.names {
            let rcodes = Set(Self.types.compactMap { Reply.ask(server.port, name, $0.1)?.rcode })
            #expect(rcodes.count == 1, "\(name): \(rcodes)")
        }
    }

    @Test func cnameQueriesGetTheCNAME() throws {
        let dir = TempDir()
        dir.write("catalog/demo.json", Self.catalog)
        let server = try Server(dir: dir)
        defer { server.stop() }
        for proto in ["+notcp", "+tcp"] {
            let cname = try server.dig("db.service.consul", "CNAME", proto)
            #expect(cname.status == "NOERROR" && cname.data("CNAME") == ["db.example.internal."], "\(cname)")
            #expect(try server.dig("db.service.consul", "A", proto).data("CNAME") == ["db.example.internal."])
            #expect(try server.dig("db.service.consul", "TXT", proto).data("CNAME") == ["db.example.internal."])
            #expect(try server.dig("web.service.consul", "CNAME", proto).answer.isEmpty)
        }
    }

    /// `dig -x` for node and service addresses; what we do not know is forwarded (or REFUSED without forwarding).
    @Test(.enabled(if: knotAvailable, "knot is not installed"))
    func reverseLookups() throws {
        let dir = TempDir()
        dir.write("catalog/demo.json", Self.catalog)
        let plain = try Server(dir: dir, extra: ["--node-ttl", "30s"])
        defer { plain.stop() }
        let node = try plain.dig("-x", "192.0.2.11")
        #expect(node.status == "NOERROR" && node.flags.contains("aa") && node.data("PTR") == ["web-1.node.dc1.consul."], "\(node)")
        #expect(node.answer.first?[1] == "30", "--node-ttl applies: \(node)")
        #expect(try plain.dig("-x", "2001:db8::21", "+tcp").data("PTR") == ["api-1.node.dc1.consul."])
        #expect(try plain.dig("-x", "2001:db8::99").data("PTR") == ["api.service.dc1.consul."], "a service's own address")
        #expect(try plain.dig("-x", "192.0.2.99").status == "REFUSED", "unknown, and forwarding is off")
        #expect(try plain.dig("11.2.0.192.in-addr.arpa", "A").status == "REFUSED", "only PTR is ours at a reverse name")

        // With forwarding, an unknown reverse name goes upstream (knotd serves 2.0.192.in-addr.arpa here), once a
        // --forward-zone takes it from the local zones.
        let knot = try Knot(zones: ["2.0.192.in-addr.arpa": """
            $ORIGIN 2.0.192.in-addr.arpa.
            $TTL 60
            @ SOA ns.example. hostmaster.example. 1 3600 600 86400 60
            @ NS ns.example.
            99 PTR elsewhere.example.
            11 PTR upstream-would-say.example.

            """], probe: "99.2.0.192.in-addr.arpa")
        defer { knot.stop() }
        let forwarding = try Server(dir: dir, forward: true, extra: ["--upstream", "127.0.0.1:\(knot.port)"])
        defer { forwarding.stop() }
        // 2.0.192.in-addr.arpa (TEST-NET-1) is a locally served zone (RFC 6303): answered here unless a
        // --forward-zone names it, or --no-local-zones.
        #expect(try forwarding.dig("-x", "192.0.2.99").status == "NXDOMAIN")
        let split = try Server(dir: dir, forward: true, extra: ["--upstream", "127.0.0.1:\(knot.port)", "--forward-zone", "2.0.192.in-addr.arpa=127.0.0.1:\(knot.port)"])
        defer { split.stop() }
        #expect(try split.dig("-x", "192.0.2.99").data("PTR") == ["elsewhere.example."])
        #expect(try split.dig("-x", "192.0.2.11").data("PTR") == ["web-1.node.dc1.consul."], "what we know is answered by us")
        #expect(try forwarding.dig("-x", "192.0.2.11").data("PTR") == ["web-1.node.dc1.consul."], "what we know is answered by us")
    }

    /// `--answer-limit`: a 1,000-instance service answers 8 at a time over plain UDP (no EDNS, 512 bytes), never
    /// truncated, and 125 successive queries return every instance.
    @Test func answerLimitWalksABigService() throws {
        let dir = TempDir()
        dir.write("catalog/big.json", "[" + (0..<1000).map { i in
            #"{"Node": "big-\#(i)", "Address": "10.1.\#(i / 250).\#(i % 250 + 1)", "Service": {"ID": "big-\#(i)", "Service": "big", "Port": 80}}"#
        }.joined(separator: ",\n") + "]")
        let server = try Server(dir: dir, extra: ["--answer-limit", "8"])
        defer { server.stop() }
        var seen: Set<String> = []
        for i in 0..<125 {
            let r = try #require(Reply.ask(server.port, "big.service.consul", RRType.a, edns: false), "query \(i)")
            #expect(r.answer == 8 && !r.tc && r.rcode == 0, "query \(i): \(r)")
            for case .a(let ip) in r.records.map(\.rdata) { seen.insert("\(ip)") }
        }
        #expect(seen.count == 1000, "\(seen.count) of 1000 instances in 125 answers")
        let srv = try #require(Reply.ask(server.port, "big.service.consul", RRType.srv, edns: false))
        #expect(srv.answer == 8 && !srv.tc, "SRV is capped too: \(srv)")
        // Without the limit the same answer would be truncated.
        let unlimited = try Server(dir: dir)
        defer { unlimited.stop() }
        #expect(Reply.ask(unlimited.port, "big.service.consul", RRType.a, edns: false)?.tc == true)
    }

    /// `--alt-domain`: a second domain answers exactly like the first, and its answers use the name as asked.
    @Test func altDomain() throws {
        let dir = TempDir()
        dir.write("catalog/demo.json", Self.catalog)
        let server = try Server(dir: dir, extra: ["--alt-domain", "internal.example"])
        defer { server.stop() }
        #expect(Set(try server.dig("web.service.internal.example", "A").data("A")) == ["192.0.2.11", "192.0.2.12"])
        #expect(Set(try server.dig("web.service.internal.example", "SRV", "+tcp").data("SRV"))
                == ["1 1 8080 web-1.node.dc1.internal.example.", "1 1 8080 web-2.node.dc1.internal.example."])
        let nx = try server.dig("nope.service.internal.example", "A")
        #expect(nx.status == "NXDOMAIN" && nx.authority.first?.first == "internal.example.", "\(nx)")
        #expect(try server.dig("internal.example", "SOA").data("SOA").first?.hasPrefix("ns.internal.example. hostmaster.internal.example.") == true)
        #expect(Set(try server.dig("web.service.consul", "A").data("A")) == ["192.0.2.11", "192.0.2.12"], "the first domain still answers")
    }

    /// `--node-meta-txt`: node meta as TXT in the additional section of SRV answers; off by default.
    @Test func nodeMetaTXT() throws {
        let dir = TempDir()
        dir.write("catalog/demo.json", Self.catalog)
        let off = try Server(dir: dir)
        defer { off.stop() }
        #expect(try off.dig("web.service.consul", "SRV").additional.allSatisfy { $0[3] != "TXT" })
        let on = try Server(dir: dir, extra: ["--node-meta-txt"])
        defer { on.stop() }
        let srv = try on.dig("web.service.consul", "SRV")
        #expect(srv.additional.contains { $0 == ["web-1.node.dc1.consul.", "0", "IN", "TXT", "\"rack=r1\""] }, "\(srv)")
    }

    /// The upstream socket is connected, so a refusing upstream (nothing on its port) fails over at once.
    @Test(.enabled(if: knotAvailable, "knot is not installed"))
    func refusedUpstreamFailsOverAtOnce() throws {
        let knot = try Knot()
        defer { knot.stop() }
        let closed = freePort()
        let server = try Server(dir: TempDir(), forward: true,
                                extra: ["--upstream", "127.0.0.1:\(closed)", "--upstream", "127.0.0.1:\(knot.port)",
                                        "--upstream-timeout", "5s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        // dig gives up after 2 s; the timeout is 5 s: only a refusal seen at once can answer in time.
        let answer = try server.dig("www.example.org", "A")
        #expect(answer.data("A") == ["192.0.2.80"], "\(answer)\n\(server.log_())")
        let metrics = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/metrics").body
        #expect(sample(metrics, #"signpost_upstream_failures_total{upstream="127.0.0.1:\#(closed)",reason="connection_refused"}"#) == 1,
                "\(metrics)")
        #expect(sample(metrics, #"signpost_upstream_failures_total{upstream="127.0.0.1:\#(closed)",reason="timeout"}"#) == 0)
    }
}

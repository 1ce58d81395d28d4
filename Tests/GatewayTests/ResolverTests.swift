import Catalog
import DNSWire
@testable import Gateway
import Testing

@Suite("Resolver: naming rules")
struct NamingTests {
    let snapshot = Fixture.snapshot(Fixture.standard)
    let resolver = Fixture.resolver()

    func resolve(_ name: String, _ type: UInt16) -> Answer {
        resolver.resolve(Question(name: Fixture.name(name), type: type), in: snapshot)
    }

    func addresses(_ a: Answer) -> Set<String> {
        Set(a.answers.compactMap {
            switch $0.rdata {
            case .a(let v4): return v4.description
            case .aaaa(let v6): return v6.description
            default: return nil
            }
        })
    }

    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var type: UInt16
        var rcode: UInt16
        var addresses: Set<String>
        var description: String { "\(name) \(type)" }
    }

    static let cases: [Case] = [
        // <service>.service[.<dc>].<domain>: healthy instances only (web-3 is warning, so it stays).
        Case(name: "web.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12", "198.51.100.13"]),
        Case(name: "WEB.Service.CONSUL", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12", "198.51.100.13"]),
        Case(name: "web.service.dc1.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12", "198.51.100.13"]),
        Case(name: "web.service.dc2.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.41"]),
        Case(name: "web.service.dc9.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        // <tag>.<service>.service
        Case(name: "v2.web.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12"]),
        Case(name: "Canary.web.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["198.51.100.13"]),
        Case(name: "nosuchtag.web.service.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        // RFC 2782 form
        Case(name: "_web._v2.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12"]),
        Case(name: "_web._tcp.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12", "198.51.100.13"]),
        Case(name: "_web._udp.service.dc1.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11", "192.0.2.12", "198.51.100.13"]),
        // Address families
        Case(name: "api.service.consul", type: RRType.aaaa, rcode: RCode.noError, addresses: ["2001:db8::21"]),
        Case(name: "api.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.22"]),
        // RFC 8482: ANY gets one RRset, A first.
        Case(name: "api.service.consul", type: RRType.any, rcode: RCode.noError, addresses: ["192.0.2.22"]),
        Case(name: "web.service.consul", type: RRType.aaaa, rcode: RCode.noError, addresses: []),  // NODATA
        Case(name: "web.service.consul", type: RRType.txt, rcode: RCode.noError, addresses: []),   // NODATA
        // Nothing healthy, or nothing at all
        Case(name: "dead.service.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        Case(name: "nope.service.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        Case(name: "a.b.web.service.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        Case(name: "v1.2.tagged.service.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.61"]),
        Case(name: "web.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        // Nodes and addr
        Case(name: "web-1.node.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.11"]),
        Case(name: "web-4.node.dc1.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.14"]),
        Case(name: "far-1.node.dc2.consul", type: RRType.a, rcode: RCode.noError, addresses: ["192.0.2.41"]),
        Case(name: "far-1.node.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        Case(name: "api-1.node.consul", type: RRType.a, rcode: RCode.noError, addresses: []),  // NODATA: IPv6 only
        Case(name: "c633640d.addr.dc1.consul", type: RRType.a, rcode: RCode.noError, addresses: ["198.51.100.13"]),
        Case(name: "C633640D.addr.consul", type: RRType.a, rcode: RCode.noError, addresses: ["198.51.100.13"]),
        Case(name: "c633640d.addr.dc1.consul", type: RRType.aaaa, rcode: RCode.noError, addresses: []),
        Case(name: "20010db8000000000000000000000021.addr.dc1.consul", type: RRType.aaaa, rcode: RCode.noError, addresses: ["2001:db8::21"]),
        Case(name: "zz33640d.addr.dc1.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        Case(name: "c63364.addr.dc1.consul", type: RRType.a, rcode: RCode.nxDomain, addresses: []),
        // Empty non-terminals are NODATA (RFC 8020), so resolvers do not cut off the tree.
        Case(name: "service.consul", type: RRType.a, rcode: RCode.noError, addresses: []),
        Case(name: "node.dc1.consul", type: RRType.a, rcode: RCode.noError, addresses: []),
        Case(name: "dc2.consul", type: RRType.a, rcode: RCode.noError, addresses: []),
        // Outside the domain and not a static zone: REFUSED until forwarding exists.
        Case(name: "example.com", type: RRType.a, rcode: RCode.refused, addresses: []),
    ]

    @Test(arguments: cases)
    func nameForm(_ c: Case) {
        let answer = resolve(c.name, c.type)
        #expect(answer.rcode == c.rcode)
        #expect(addresses(answer) == c.addresses)
        // Owners echo the question exactly as asked.
        #expect(answer.answers.allSatisfy { $0.name.wire == Fixture.name(c.name).wire })
        if c.rcode == RCode.refused {
            #expect(!answer.authoritative)
        } else {
            #expect(answer.authoritative)
        }
        // Every negative answer carries the SOA in authority (RFC 2308).
        if c.rcode == RCode.nxDomain || (c.rcode == RCode.noError && c.addresses.isEmpty) {
            #expect(answer.answers.isEmpty)
            #expect(answer.authority.map(\.type) == [RRType.soa])
        }
    }

    @Test func srvTargetsAndGlue() throws {
        let answer = resolve("web.service.consul", RRType.srv)
        #expect(answer.answers.count == 3)
        var byTarget: [String: (UInt16, UInt16)] = [:]
        for (rr, glue) in zip(answer.answers, answer.glue) {
            guard case .srv(let prio, let weight, let port, let target) = rr.rdata else { Issue.record("not SRV"); continue }
            #expect(prio == 1)
            byTarget[target.description] = (weight, port)
            // Each SRV carries exactly its target's address as glue.
            #expect(glue.count == 1)
            #expect(glue.first?.name == target)
        }
        #expect(byTarget["web-1.node.dc1.consul."]! == (1, 8080))
        #expect(byTarget["web-2.node.dc1.consul."]! == (1, 8080))
        // A service address unlike the node's → hex addr target; warning → the Warning weight.
        #expect(byTarget["c633640d.addr.dc1.consul."]! == (3, 9090))
    }

    @Test func hostnameServiceAddress() throws {
        let zone = try staticZone()
        let snap = Fixture.snapshot(Fixture.standard, zones: [zone])
        let a = resolver.resolve(Question(name: Fixture.name("db.service.consul"), type: RRType.a), in: snap)
        #expect(a.answers.first?.rdata == .cname(Fixture.name("db.example.internal")))
        #expect(a.answers.dropFirst().map(\.rdata) == [.a(IPv4("203.0.113.5")!)])
        // A name with a CNAME holds nothing else: SRV follows it too (to NODATA in the zone, which has no SRV).
        let srv = resolver.resolve(Question(name: Fixture.name("db.service.consul"), type: RRType.srv), in: snap)
        #expect(srv.answers.map(\.rdata) == [.cname(Fixture.name("db.example.internal"))] && srv.rcode == RCode.noError)
        // In a service with IP instances too, a hostname instance is an SRV target, with its addresses as glue.
        let mixed = Fixture.snapshot([Fixture.I(node: "m1", address: "192.0.2.91", service: "mixed"),
                                      Fixture.I(node: "m2", address: "192.0.2.92", service: "mixed", serviceAddress: "db.example.internal")],
                                     zones: [zone])
        let both = resolver.resolve(Question(name: Fixture.name("mixed.service.consul"), type: RRType.srv), in: mixed)
        let hostIndex = try #require(both.answers.firstIndex { $0.rdata == .srv(priority: 1, weight: 1, port: 80, target: Fixture.name("db.example.internal")) })
        #expect(both.glue[hostIndex].map(\.rdata) == [.a(IPv4("203.0.113.5")!)])
        // Without data for the hostname, the CNAME alone is the answer.
        let bare = resolver.resolve(Question(name: Fixture.name("db.service.consul"), type: RRType.a), in: snapshot)
        #expect(bare.rcode == RCode.noError && bare.answers.count == 1)
    }

    @Test("ANY gets one RRset (RFC 8482), never the whole name")
    func minimalAny() {
        let any = { (name: String) in self.resolver.resolve(Question(name: Fixture.name(name), type: RRType.any), in: self.snapshot) }
        let web = any("web.service.consul")
        #expect(Set(web.answers.map(\.type)) == [RRType.a] && web.answers.count == 3 && web.additional.isEmpty && web.authority.isEmpty)
        let apex = any("consul")
        #expect(apex.answers.map(\.type) == [RRType.soa] && apex.additional.isEmpty)
        let node = any("web-1.node.consul")  // A and TXT at the name: only A
        #expect(node.answers.map(\.type) == [RRType.a])
        let none = any("nosuch.service.consul")
        #expect(none.rcode == RCode.nxDomain && none.authority.map(\.type) == [RRType.soa])
    }

    @Test func nodeTXTCarriesMeta() {
        let a = resolve("web-1.node.consul", RRType.txt)
        #expect(a.answers.map(\.rdata) == [.txt([Array("rack=r1".utf8)])])
    }

    @Test func apexSOAAndNS() {
        let soa = resolve("consul", RRType.soa)
        guard case .soa(let s)? = soa.answers.first?.rdata else { Issue.record("no SOA"); return }
        #expect(s.mname == Fixture.name("ns.consul") && s.serial == 42)
        let ns = resolve("consul", RRType.ns)
        #expect(ns.answers.map(\.rdata) == [.ns(Fixture.name("ns.consul"))])
        #expect(ns.additional.map(\.rdata) == [.a(IPv4("127.0.0.1")!)])
        #expect(resolve("ns.consul", RRType.a).answers.map(\.rdata) == [.a(IPv4("127.0.0.1")!)])
        // Below the apex, SOA and NS are types like any other (unlike Consul, issue #3439): NODATA with the SOA
        // where the name exists, NXDOMAIN where it does not, exactly as for A.
        for (qname, rcode) in [("web.service.consul", RCode.noError), ("nosuch.service.consul", RCode.nxDomain),
                               ("service.consul", RCode.noError), ("web-1.node.consul", RCode.noError), ("ns.consul", RCode.noError)] {
            for type in [RRType.soa, RRType.ns] {
                let below = resolve(qname, type)
                #expect(below.rcode == rcode && below.answers.isEmpty, "\(qname) \(type)")
                #expect(below.authority.map(\.type) == [RRType.soa] && below.authority.first?.name == Fixture.name("consul"))
            }
        }
    }

    @Test func domainZoneFileSuppliesSOAAndNegativeTTL() throws {
        let zone = try Zone(origin: Fixture.name("consul"), records: [
            ResourceRecord(name: Fixture.name("consul"), ttl: 3600, rdata: .soa(.init(
                mname: Fixture.name("ns1.consul"), rname: Fixture.name("ops.example.org"), serial: 7,
                refresh: 1, retry: 2, expire: 3, minimum: 30))),
            ResourceRecord(name: Fixture.name("consul"), ttl: 3600, rdata: .ns(Fixture.name("ns1.consul"))),
            ResourceRecord(name: Fixture.name("ns1.consul"), ttl: 3600, rdata: .a(IPv4("192.0.2.53")!)),
        ], path: "consul.zone")
        let snap = Fixture.snapshot(Fixture.standard, zones: [zone])
        let nx = resolver.resolve(Question(name: Fixture.name("nope.service.consul"), type: RRType.a), in: snap)
        #expect(nx.rcode == RCode.nxDomain)
        // Negative TTL = min(SOA TTL, SOA minimum) (RFC 2308 §5).
        #expect(nx.authority.first?.ttl == 30)
        guard case .soa(let s)? = nx.authority.first?.rdata else { Issue.record("no SOA"); return }
        #expect(s.mname == Fixture.name("ns1.consul"))
        let nodata = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.aaaa), in: snap)
        #expect(nodata.rcode == RCode.noError && nodata.authority.first?.ttl == 30)
        let ns = resolver.resolve(Question(name: Fixture.name("consul"), type: RRType.ns), in: snap)
        #expect(ns.answers.map(\.rdata) == [.ns(Fixture.name("ns1.consul"))])
        #expect(ns.additional.map(\.rdata) == [.a(IPv4("192.0.2.53")!)])
        let glue = resolver.resolve(Question(name: Fixture.name("ns1.consul"), type: RRType.a), in: snap)
        #expect(glue.answers.map(\.rdata) == [.a(IPv4("192.0.2.53")!)])
    }

    @Test func staticZoneAnswers() throws {
        let snap = Fixture.snapshot([], zones: [try staticZone()])
        func r(_ n: String, _ t: UInt16) -> Answer { resolver.resolve(Question(name: Fixture.name(n), type: t), in: snap) }
        #expect(r("DB.example.internal", RRType.a).answers.map(\.rdata) == [.a(IPv4("203.0.113.5")!)])
        let www = r("www.example.internal", RRType.a)
        #expect(www.answers.map(\.type) == [RRType.cname, RRType.a])
        let mx = r("example.internal", RRType.mx)
        #expect(mx.answers.count == 1 && mx.additional.map(\.rdata) == [.a(IPv4("203.0.113.25")!)])
        #expect(r("nope.example.internal", RRType.a).rcode == RCode.nxDomain)
        #expect(r("db.example.internal", RRType.txt).rcode == RCode.noError)
        #expect(r("db.example.internal", RRType.txt).authority.first?.ttl == 60)
        #expect(r("_tcp.example.internal", RRType.a).rcode == RCode.noError)  // empty non-terminal
    }

    @Test(arguments: [("web.service.consul", 3), ("dead.service.consul", 0)])
    func refusedClassesAndTransfers(name: String, _: Int) {
        #expect(resolver.resolve(Question(name: Fixture.name(name), type: RRType.a, qclass: DNSClass.chaos), in: snapshot).rcode == RCode.refused)
        #expect(resolve(name, RRType.axfr).rcode == RCode.refused)
    }

    func staticZone() throws -> Zone {
        func n(_ s: String) -> DNSName { Fixture.name(s) }
        return try Zone(origin: n("example.internal"), records: [
            ResourceRecord(name: n("example.internal"), ttl: 300, rdata: .soa(.init(
                mname: n("ns.example.internal"), rname: n("hostmaster.example.internal"), serial: 1,
                refresh: 3600, retry: 600, expire: 86400, minimum: 60))),
            ResourceRecord(name: n("example.internal"), ttl: 300, rdata: .mx(preference: 10, exchange: n("mail.example.internal"))),
            ResourceRecord(name: n("mail.example.internal"), ttl: 300, rdata: .a(IPv4("203.0.113.25")!)),
            ResourceRecord(name: n("db.example.internal"), ttl: 300, rdata: .a(IPv4("203.0.113.5")!)),
            ResourceRecord(name: n("www.example.internal"), ttl: 300, rdata: .cname(n("db.example.internal"))),
            ResourceRecord(name: n("_ldap._tcp.example.internal"), ttl: 300, rdata: .srv(priority: 0, weight: 0, port: 389, target: n("db.example.internal"))),
        ], path: "example.internal.zone")
    }
}

@Suite("Resolver: health, rotation, TTLs")
struct HealthRotationTests {
    @Test func onlyPassingDropsWarning() {
        let snap = Fixture.snapshot(Fixture.standard)
        let strict = Fixture.resolver { $0.onlyPassing = true }
        let a = strict.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snap)
        #expect(Set(a.answers.map(\.rdata)) == [.a(IPv4("192.0.2.11")!), .a(IPv4("192.0.2.12")!)])
        // A service whose only healthy instance is warning disappears entirely.
        let canary = strict.resolve(Question(name: Fixture.name("canary.web.service.consul"), type: RRType.a), in: snap)
        #expect(canary.rcode == RCode.nxDomain)
    }

    @Test func cyclicRotationPutsEachInstanceFirstOnce() {
        let instances = (1...5).map { Fixture.I(node: "n\($0)", address: "192.0.2.\($0)", service: "web") }
        let snap = Fixture.snapshot(instances)
        let resolver = Fixture.resolver()
        let before = snap.services["web"]!.instances
        var firsts: [RData] = []
        var orders: [[RData]] = []
        for _ in 0..<5 {
            let a = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snap)
            firsts.append(a.answers[0].rdata)
            orders.append(a.answers.map(\.rdata))
        }
        #expect(Set(firsts).count == 5)
        // Each order is the previous one moved round by one.
        for i in 1..<5 { #expect(orders[i] == Array(orders[i - 1].dropFirst()) + [orders[i - 1][0]]) }
        #expect(snap.services["web"]!.instances == before)
    }

    @Test func srvAdditionalFollowsRotation() {
        let instances = (1...3).map { Fixture.I(node: "n\($0)", address: "192.0.2.\($0)", service: "web") }
        let snap = Fixture.snapshot(instances)
        let resolver = Fixture.resolver()
        for _ in 0..<3 {
            let a = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.srv), in: snap)
            let targets = a.answers.compactMap { rr -> DNSName? in
                if case .srv(_, _, _, let t) = rr.rdata { return t } else { return nil }
            }
            #expect(a.glue.flatMap { $0 }.map(\.name) == targets)
        }
    }

    @Test func randomOrderIsAPermutation() {
        let instances = (1...8).map { Fixture.I(node: "n\($0)", address: "192.0.2.\($0)", service: "web") }
        let snap = Fixture.snapshot(instances)
        let resolver = Fixture.resolver { $0.order = .random }
        var orders = Set<[RData]>()
        for _ in 0..<20 {
            let a = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snap)
            #expect(a.answers.count == 8)
            #expect(Set(a.answers.map(\.rdata)).count == 8)
            orders.insert(a.answers.map(\.rdata))
        }
        #expect(orders.count > 1)
    }

    @Test func ttlPolicy() throws {
        let p = try TTLPolicy.parse(["5s", "web=30s", "db*=1m", "d*=2m"])
        #expect(p.ttl(for: "web") == 30)
        #expect(p.ttl(for: "WEB") == 30)
        #expect(p.ttl(for: "dbx") == 60)
        #expect(p.ttl(for: "dx") == 120)
        #expect(p.ttl(for: "other") == 5)
        #expect(throws: ConfigurationError.self) { try TTLPolicy.parse(["web=soon"]) }
        #expect(parseDuration("1h30m") == 5400)
        #expect(parseDuration("250ms") == 0)
        #expect(parseDuration("10") == 10)
        #expect(parseDuration("") == nil)

        let snap = Fixture.snapshot(Fixture.standard)
        let r = Fixture.resolver { $0.serviceTTL = p; $0.nodeTTL = 7 }
        #expect(r.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.srv), in: snap).answers.allSatisfy { $0.ttl == 30 })
        #expect(r.resolve(Question(name: Fixture.name("api.service.consul"), type: RRType.a), in: snap).answers.allSatisfy { $0.ttl == 5 })
        #expect(r.resolve(Question(name: Fixture.name("web-1.node.consul"), type: RRType.a), in: snap).answers.allSatisfy { $0.ttl == 7 })
    }
}

@Suite("Resolver: before the first load")
struct NotLoadedTests {
    @Test func servfailUntilLoaded() {
        let a = Fixture.resolver().resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: .empty)
        #expect(a.rcode == RCode.servFail)
    }
}

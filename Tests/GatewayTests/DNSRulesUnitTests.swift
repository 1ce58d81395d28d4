import Catalog
import DNSWire
@testable import Gateway
import Testing

/// PTR, CNAME queries, answer limits, the alt domain and node meta TXT, against the resolver alone.
@Suite("Resolver: PTR, CNAME, answer limits, alt domain, node meta TXT")
struct DNSRulesUnitTests {
    let snapshot = Fixture.snapshot(Fixture.standard)

    func resolve(_ name: String, _ type: UInt16, _ configure: (inout ResolverConfiguration) -> Void = { _ in }) -> Answer {
        Fixture.resolver(configure).resolve(Question(name: Fixture.name(name), type: type), in: snapshot)
    }

    @Test(arguments: [
        ("11.2.0.192.in-addr.arpa", ["web-1.node.dc1.consul."]),
        ("13.100.51.198.in-addr.arpa", ["web.service.dc1.consul."]),  // web-3's own address
        ("1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", ["api-1.node.dc1.consul."]),
        ("41.2.0.192.IN-ADDR.ARPA", ["far-1.node.dc2.consul."]),
    ])
    func pointerRecords(name: String, targets: [String]) {
        let a = resolve(name, RRType.ptr) { $0.nodeTTL = 30 }
        #expect(a.rcode == RCode.noError && a.authoritative)
        #expect(a.answers.map { if case .ptr(let t) = $0.rdata { t.description } else { "" } } == targets)
        #expect(a.answers.allSatisfy { $0.ttl == 30 })
    }

    @Test func unknownReverseNamesAreNotOurs() {
        #expect(resolve("99.2.0.192.in-addr.arpa", RRType.ptr).rcode == RCode.refused)
        #expect(resolve("11.2.0.192.in-addr.arpa", RRType.a).rcode == RCode.refused, "only PTR is ours at a reverse name")
        #expect(resolve("2.0.192.in-addr.arpa", RRType.ptr).rcode == RCode.refused)
        #expect(Resolver.reverseAddress(Fixture.name("011.2.0.192.in-addr.arpa")) == nil, "not the canonical form")
        #expect(Resolver.reverseAddress(Fixture.name("256.2.0.192.in-addr.arpa")) == nil)
        #expect(Resolver.reverseAddress(Fixture.name("+1.2.0.192.in-addr.arpa")) == nil)
    }

    @Test func reverseIndexFollowsUpdates() async {
        let store = SnapshotStore()
        let assembler = CatalogAssembler(sources: ["t"], expectsZones: false, localDatacenter: "dc1", store: store, logger: .init(label: "t"))
        let regs = Fixture.standard.prefix(2).flatMap { i in
            try! RegistrationDecoder.decode(bytes: Array(Fixture.json(i).utf8), path: "f", defaultDatacenter: "dc1")
        }
        await assembler.replace(source: 0, with: SourceCatalog(registrations: regs))
        let resolver = Fixture.resolver()
        let q = Question(name: Fixture.name("12.2.0.192.in-addr.arpa"), type: RRType.ptr)
        #expect(resolver.resolve(q, in: store.snapshot).answers.count == 1)
        await assembler.replace(source: 0, with: SourceCatalog(registrations: Array(regs.prefix(1))))
        #expect(resolver.resolve(q, in: store.snapshot).rcode == RCode.refused, "web-2 left, and its PTR with it")
    }

    @Test func cnameQueries() {
        let c = resolve("db.service.consul", RRType.cname)
        #expect(c.rcode == RCode.noError && c.answers.map(\.rdata) == [.cname(Fixture.name("db.example.internal"))])
        for type in [RRType.srv, RRType.txt, RRType.mx] {
            #expect(resolve("db.service.consul", type).answers.first?.rdata == .cname(Fixture.name("db.example.internal")),
                    "a name with a CNAME holds nothing else: type \(type)")
        }
        let none = resolve("web.service.consul", RRType.cname)
        #expect(none.rcode == RCode.noError && none.answers.isEmpty && none.authority.map(\.type) == [RRType.soa])
    }

    @Test func answerLimitWalksTheWholeSet() {
        let big = Fixture.snapshot((0..<20).map { Fixture.I(node: "b\($0)", address: "10.0.0.\($0 + 1)", service: "big") })
        let resolver = Fixture.resolver { $0.answerLimit = 6 }
        var seen: Set<Address> = []
        for _ in 0..<4 {  // ⌈20/6⌉
            let a = resolver.resolve(Question(name: Fixture.name("big.service.consul"), type: RRType.a), in: big)
            #expect(a.answers.count == 6)
            for case .a(let ip) in a.answers.map(\.rdata) { seen.insert(.v4(ip)) }
        }
        #expect(seen.count == 20)
        let srv = resolver.resolve(Question(name: Fixture.name("big.service.consul"), type: RRType.srv), in: big)
        #expect(srv.answers.count == 6 && srv.glue.count == 6, "SRV is capped too")
        // Below the limit, nothing changes, and the templates still serve it.
        let small = Fixture.resolver { $0.answerLimit = 6 }
        #expect(small.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snapshot).answers.count == 3)
        #expect(resolver.encode(big.services["big"]!, .all, datacenter: "dc1", big).a == nil, "a capped service takes the general path")
    }

    @Test func altDomainAnswersLikeTheDomain() {
        let alt: (inout ResolverConfiguration) -> Void = { $0.altDomain = Fixture.name("internal.example") }
        let a = resolve("web.service.internal.example", RRType.a, alt)
        #expect(a.rcode == RCode.noError && a.answers.count == 3 && a.answers.allSatisfy { $0.name == Fixture.name("web.service.internal.example") })
        let srv = resolve("api.service.internal.example", RRType.srv, alt)
        #expect(srv.answers.compactMap { if case .srv(_, _, _, let t) = $0.rdata { t.description } else { nil } }.sorted()
                == ["api-1.node.dc1.internal.example.", "api-2.node.dc1.internal.example."])
        let nx = resolve("nope.service.internal.example", RRType.a, alt)
        #expect(nx.rcode == RCode.nxDomain && nx.authority.first?.name == Fixture.name("internal.example"))
        #expect(resolve("web.service.internal.example", RRType.a).rcode == RCode.refused, "without --alt-domain")
    }

    @Test func nodeMetaTXTInSRVAdditional() {
        let off = resolve("web.service.consul", RRType.srv)
        #expect(off.glue.joined().allSatisfy { $0.type != RRType.txt })
        let on = resolve("web.service.consul", RRType.srv) { $0.nodeMetaTXT = true }
        let txt = on.glue.joined().filter { $0.type == RRType.txt }
        #expect(txt.map(\.name) == [Fixture.name("web-1.node.dc1.consul")] && txt.first?.rdata == .txt([Array("rack=r1".utf8)]))
        #expect(Fixture.resolver { $0.nodeMetaTXT = true }.encode(snapshot.services["web"]!, .all, datacenter: "dc1", snapshot).srv == nil)
    }
}

@Suite("Resolver: TaggedAddresses (dual-stack)")
struct DualStackTests {
    static let catalog = """
        [{"Node": "ds-1", "Address": "192.0.2.50", "TaggedAddresses": {"lan_ipv4": "192.0.2.50", "lan_ipv6": "2001:db8::50"},
          "Service": {"ID": "a1", "Service": "api", "Port": 80}},
         {"Node": "v4-1", "Address": "192.0.2.60",
          "Service": {"ID": "a2", "Service": "api", "Port": 80, "Address": "192.0.2.61",
                      "TaggedAddresses": {"lan_ipv4": {"Address": "192.0.2.61", "Port": 80}, "lan_ipv6": {"Address": "2001:db8::61", "Port": 80}}}}]
        """

    let snapshot = CatalogSnapshot.build(
        registrations: try! RegistrationDecoder.decode(bytes: Array(catalog.utf8), path: "t", defaultDatacenter: "dc1"),
        zones: [], localDatacenter: "dc1", generation: 1)

    func answer(_ name: String, _ type: UInt16) -> Answer {
        Fixture.resolver().resolve(Question(name: Fixture.name(name), type: type), in: snapshot)
    }

    @Test func aAndAAAAFromTaggedAddresses() {
        #expect(Set(answer("api.service.consul", RRType.a).answers.map(\.rdata)) == [.a(IPv4("192.0.2.50")!), .a(IPv4("192.0.2.61")!)])
        #expect(Set(answer("api.service.consul", RRType.aaaa).answers.map(\.rdata)) == [.aaaa(IPv6("2001:db8::50")!), .aaaa(IPv6("2001:db8::61")!)])
        #expect(answer("ds-1.node.consul", RRType.aaaa).answers.map(\.rdata) == [.aaaa(IPv6("2001:db8::50")!)])
    }

    @Test func nodeTargetsCarryBothFamiliesAndTakeTheGeneralPath() {
        let srv = answer("api.service.consul", RRType.srv)
        let ds = srv.answers.firstIndex { if case .srv(_, _, _, let t) = $0.rdata { t == Fixture.name("ds-1.node.dc1.consul") } else { false } }!
        #expect(Set(srv.glue[ds].map(\.type)) == [RRType.a, RRType.aaaa])
        let encoded = Fixture.resolver().encode(snapshot.services["api"]!, .all, datacenter: "dc1", snapshot)
        #expect(encoded.srv == nil && encoded.a != nil && encoded.aaaa != nil)
    }

    @Test func taggedAddressesHavePTR() {
        let ptr = Fixture.resolver().resolve(Question(name: Fixture.name("0.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
                                                      type: RRType.ptr), in: snapshot)
        #expect(ptr.answers.map(\.rdata) == [.ptr(Fixture.name("ds-1.node.dc1.consul"))])
    }
}

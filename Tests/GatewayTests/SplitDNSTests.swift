import Catalog
import DNSWire
@testable import Gateway
import Testing

/// Where names outside our data go with forwarding on: the most specific `--forward-zone` or local zone.
@Suite("Split DNS and local zones")
struct SplitDNSTests {
    static func name(_ s: String) -> DNSName { try! DNSName(s) }

    static let routes = ForwardRoutes(forwardZones: [(name("corp.example"), false), (name("eng.corp.example"), false),
                                                     (name("ads.example"), true), (name("10.in-addr.arpa"), false)],
                                      localZones: true)

    @Test func theMostSpecificZoneDecides() {
        #expect(Self.routes.route(for: Self.name("www.corp.example")) == .forward(zone: Self.name("corp.example")))
        #expect(Self.routes.route(for: Self.name("X.Eng.Corp.Example")) == .forward(zone: Self.name("eng.corp.example")))
        #expect(Self.routes.route(for: Self.name("tracker.ads.example")) == .refuse(zone: Self.name("ads.example")))
        #expect(Self.routes.route(for: Self.name("example.com")) == nil)
        #expect(Self.routes.route(for: Self.name("corp.example.com")) == nil)
        #expect(Self.routes.route(for: .root) == nil)
        // A forward zone of the same name as a local zone wins; the other local zones stay.
        #expect(Self.routes.route(for: Self.name("3.2.1.10.in-addr.arpa")) == .forward(zone: Self.name("10.in-addr.arpa")))
        #expect(Self.routes.route(for: Self.name("1.1.168.192.in-addr.arpa"))?.zone == Self.name("168.192.in-addr.arpa"))
        if case .local? = Self.routes.route(for: Self.name("foo.localhost")) {} else { Issue.record("localhost is local") }
        #expect(ForwardRoutes(localZones: false).route(for: Self.name("foo.localhost")) == nil)
    }

    @Test func theLocalZonesAreUnboundsDefaults() {
        let names = Set(LocalZones.names)
        for zone in ["localhost.", "127.in-addr.arpa.", "10.in-addr.arpa.", "16.172.in-addr.arpa.", "31.172.in-addr.arpa.",
                     "168.192.in-addr.arpa.", "64.100.in-addr.arpa.", "127.100.in-addr.arpa.", "254.169.in-addr.arpa.",
                     "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "b.e.f.ip6.arpa.", "test.", "invalid.", "onion.", "home.arpa."] {
            #expect(names.contains(zone), "\(zone)")
        }
        #expect(!names.contains("32.172.in-addr.arpa.") && !names.contains("128.100.in-addr.arpa."))
        #expect(names.count == LocalZones.all.count)
    }

    static func resolver() -> Resolver { Fixture.resolver { $0.routes = Self.routes } }

    @Test func localZonesAnswerHere() throws {
        let resolver = Self.resolver(), snapshot = Fixture.snapshot(Fixture.standard)
        func ask(_ n: String, _ type: UInt16) -> Answer { resolver.resolve(Question(name: Self.name(n), type: type), in: snapshot) }
        let ptr = ask("1.1.168.192.in-addr.arpa", RRType.ptr)
        #expect(ptr.rcode == RCode.nxDomain && ptr.authoritative && ptr.authority.first?.name == Self.name("168.192.in-addr.arpa"))
        guard case .soa(let soa)? = ptr.authority.first?.rdata else { Issue.record("no SOA"); return }
        #expect(soa.mname == Self.name("localhost") && soa.rname == Self.name("nobody.invalid") && ptr.authority[0].ttl == 10800)
        let host = ask("app.localhost", RRType.a)
        #expect(host.answers.map(\.rdata) == [.a(IPv4("127.0.0.1")!)] && host.answers.first?.name == Self.name("app.localhost"))
        #expect(ask("localhost", RRType.aaaa).answers.map(\.rdata) == [.aaaa(IPv6("::1")!)])
        #expect(ask("app.localhost", RRType.soa).rcode == RCode.noError && ask("app.localhost", RRType.soa).answers.isEmpty)
        #expect(ask("1.0.0.127.in-addr.arpa", RRType.ptr).answers.map(\.rdata) == [.ptr(Self.name("localhost"))])
        #expect(ask("test", RRType.soa).answers.count == 1)
        #expect(ask("www.ads.example", RRType.a).rcode == RCode.refused)
        // A reverse name whose address the catalog holds, in a local zone (2.0.192.in-addr.arpa, TEST-NET-1): its
        // PTR is answered, and every other type is NODATA with the zone's SOA, not NXDOMAIN.
        #expect(!ask("11.2.0.192.in-addr.arpa", RRType.ptr).answers.isEmpty)
        let other = ask("11.2.0.192.in-addr.arpa", RRType.a)
        #expect(other.rcode == RCode.noError && other.answers.isEmpty && other.authority.first?.name == Self.name("2.0.192.in-addr.arpa"),
                "\(other)")
        #expect(ask("99.2.0.192.in-addr.arpa", RRType.a).rcode == RCode.nxDomain)
    }

    @Test func forwardingNamesTheZone() {
        let resolver = Self.resolver(), snapshot = Fixture.snapshot(Fixture.standard)
        func forwarding(_ n: String) -> Resolver.Forwarding { resolver.forwarding(Question(name: Self.name(n), type: RRType.a), in: snapshot) }
        #expect(forwarding("x.eng.corp.example") == .upstreams(zone: Self.name("eng.corp.example")))
        #expect(forwarding("example.com") == .upstreams(zone: nil))
        #expect(forwarding("www.ads.example") == .local)
        #expect(forwarding("app.localhost") == .local)
        #expect(forwarding("web.service.consul") == .local)
    }
}

/// `--upstream` and `--forward-zone` upstream syntax: plain `HOST[:PORT]`, or DNS over TLS `tls://IP[:PORT]@NAME`.
@Suite("Upstream syntax")
struct UpstreamSyntaxTests {
    @Test func plainAndTLSForms() throws {
        #expect(try Upstream(parsing: "192.0.2.53").description == "192.0.2.53:53")
        #expect(try Upstream(parsing: "[2001:db8::53]:5353").description == "2001:db8::53:5353")
        let tls = try Upstream(parsing: "tls://192.0.2.53@dns.example")
        #expect(tls.isTLS && tls.tlsName == "dns.example" && tls.address.port == 853 && tls.description == "tls://192.0.2.53:853@dns.example")
        #expect(try Upstream(parsing: "TLS://192.0.2.53:8853@dns.example").address.port == 8853)
        for bad in ["tls://192.0.2.53", "tls://192.0.2.53@", "dns.example", "tls://dns.example@dns.example", "192.0.2.53:99999"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try Upstream(parsing: bad) }
        }
    }
}

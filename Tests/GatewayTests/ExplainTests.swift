import Catalog
import DNSWire
import Foundation
@testable import Gateway
import Logging
import NIOHTTP1
import Testing

/// `QueryHandler.explain` and the operator view's JSON: every reason an instance is left out, and the parse.
@Suite("Explain and the operator view")
struct ExplainTests {
    static func handler(_ configure: (inout ResolverConfiguration) -> Void = { _ in },
                        instances: [Fixture.I] = Fixture.standard) -> QueryHandler {
        QueryHandler(resolver: Fixture.resolver(configure), store: SnapshotStore(Fixture.snapshot(instances)), logger: Logger(label: "test"))
    }

    static func instance(_ e: Explanation, _ id: String) -> Explanation.Instance? { e.instances.first { $0.id == id } }

    @Test("A service-level critical check, a node-level one and maintenance are named with their level")
    func healthReasons() throws {
        let e = try #require(Self.handler().explain(name: "web.service.consul", type: "SRV"))
        #expect(e.parse.kind == "service" && e.parse.service == "web" && e.parse.rule == "service name")
        #expect(e.answer.rcode == "NOERROR")
        let web4 = try #require(Self.instance(e, "web-web-4"))
        #expect(!web4.answered)
        #expect(web4.reasons == ["check svc-web-4 is critical at service level"])
        #expect(web4.checks.first?.excludes == true && web4.checks.first?.level == "service")
        let web6 = try #require(Self.instance(e, "web-web-6"))
        #expect(web6.reasons == ["check node-web-6 is critical at node level"])
        #expect(web6.checks.contains { $0.level == "node" && $0.excludes })
        #expect(web6.checks.contains { $0.level == "service" && !$0.excludes })
        let web5 = try #require(Self.instance(e, "web-web-5"))
        #expect(web5.reasons == ["check svc-web-5 is maintenance at service level"])
        // Answered: passing and warning (without --only-passing), in dc1.
        #expect(Set(e.instances.filter(\.answered).map(\.id)) == ["web-web-1", "web-web-2", "web-web-3"])
        #expect(e.answer.answers.count == 3 && e.answer.answers.allSatisfy { $0.type == "SRV" })
        #expect(web4.origin.hasPrefix("fixture:"), "a catalog file's instance says its file and line")
    }

    @Test("Warning is a reason only with --only-passing")
    func onlyPassing() throws {
        let e = try #require(Self.handler { $0.onlyPassing = true }.explain(name: "web.service.consul", type: "A"))
        #expect(Self.instance(e, "web-web-3")?.reasons == ["check svc-web-3 is warning at service level"])
        #expect(Set(e.instances.filter(\.answered).map(\.id)) == ["web-web-1", "web-web-2"])
    }

    @Test("A tag that is not present, and a datacenter that is not local or not the one asked for")
    func tagAndDatacenter() throws {
        let e = try #require(Self.handler().explain(name: "v2.web.service.consul", type: "A"))
        #expect(e.parse.tag == "v2")
        #expect(Self.instance(e, "web-web-3")?.reasons == ["tag v2 not present"])
        #expect(Self.instance(e, "web-far-1")?.reasons.contains("datacenter dc2 not local (dc1)") == true)
        // Critical and without the tag: both reasons.
        #expect(Self.instance(e, "web-web-5")?.reasons.count == 2)
        let dc2 = try #require(Self.handler().explain(name: "web.service.dc2.consul", type: "A"))
        #expect(dc2.parse.datacenter == "dc2")
        #expect(Self.instance(dc2, "web-web-1")?.reasons == ["datacenter dc1, not dc2 as asked"])
        #expect(Self.instance(dc2, "web-far-1")?.answered == true)
    }

    @Test("The answer limit leaves out served instances, and says so")
    func answerLimit() throws {
        let h = Self.handler { $0.answerLimit = 1 }
        let e = try #require(h.explain(name: "web", type: "A"))
        #expect(e.name == "web.service.consul.", "a bare service name is read in the service domain")
        #expect(e.answer.answers.count == 1)
        let served = e.instances.filter { $0.reasons.first?.hasPrefix("answer limit") == true }
        #expect(served.count == 2 && e.instances.filter(\.answered).count == 1)
    }

    @Test("The parse names the rule: dotted services, RFC 2782, named ports, NXDOMAIN, NODATA, nodes")
    func rules() throws {
        let h = Self.handler(instances: Fixture.standard + [Fixture.I(node: "g-1", address: "192.0.2.91", service: "go.micro.srv.greeter")])
        #expect(h.explain(name: "go.micro.srv.greeter.service.consul", type: "A")?.parse.rule
                == "the longest existing service name (go.micro.srv.greeter)")
        #expect(h.explain(name: "_web._tcp.service.consul", type: "SRV")?.parse.rule == "RFC 2782 _<service>._tcp|_udp: every instance")
        #expect(h.explain(name: "_web._v2.service.consul", type: "SRV")?.parse.rule == "RFC 2782 _<service>._<tag>: the tag v2")
        #expect(h.explain(name: "nothing.service.consul", type: "A")?.answer.rcode == "NXDOMAIN")
        #expect(h.explain(name: "nothing.service.consul", type: "A")?.parse.kind == "nxdomain")
        #expect(h.explain(name: "greeter.service.consul", type: "A")?.parse.kind == "nodata")
        #expect(h.explain(name: "web-1.node.consul", type: "A")?.parse.kind == "node")
        #expect(h.explain(name: "web.service.consul", type: "BOGUS") == nil)
    }

    @Test("Only an IP, localhost or the --admin host may be the Host: a rebound name is refused")
    func hostHeader() {
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.0.0.5", "admin.internal:9000", nil] {
            #expect(AdminHandler.trusted(host: ok, named: "admin.internal"), "\(String(describing: ok))")
        }
        for bad in ["evil.example:8080", "127.0.0.1.evil.example", "[not-an-ip]:80", "localhost.evil.example"] {
            #expect(!AdminHandler.trusted(host: bad, named: "admin.internal"), "\(bad)")
        }
    }

    @Test("An instance the answer leaves out for the answer's own reason says so: SERVFAIL, a type services do not answer")
    func notHeldReasons() throws {
        let h = Self.handler()
        let txt = try #require(h.explain(name: "web.service.consul", type: "MX"))
        #expect(Self.instance(txt, "web-web-1")?.reasons == ["a MX question gets no instance records"])
        let store = SnapshotStore(Fixture.snapshot(Fixture.standard))
        store.setStale(since: Int64(Uptime.nanoseconds) - 10_000_000_000)
        let stale = QueryHandler(resolver: Fixture.resolver(), store: store, logger: Logger(label: "test"), maxStale: .seconds(1))
        let e = try #require(stale.explain(name: "web.service.consul", type: "A"))
        #expect(e.answer.rcode == "SERVFAIL")
        #expect(Self.instance(e, "web-web-1")?.reasons == ["the answer is SERVFAIL (registry data older than --max-stale)"])
    }

    @Test("The services page counts healthy, warning and excluded instances, filters and pages")
    func servicesPage() throws {
        let h = Self.handler(instances: Fixture.standard + (0..<250).map { Fixture.I(node: "n\($0)", address: "192.0.2.1", service: String(format: "svc%03d", $0)) })
        let view = OperatorView(slot: QueryHandlerSlot(h), metrics: { [] })
        let web = try #require(view.services(["q": "WEB"]).services.first)
        // far-1 (dc2) counts as excluded, as a plain query for web leaves it out.
        #expect(web.name == "web" && web.instances == 7 && web.healthy == 2 && web.warning == 1 && web.excluded == 4)
        let first = view.services(["q": "svc", "limit": "100"])
        #expect(first.matching == 250 && first.services.count == 100 && first.services.first?.name == "svc000")
        let last = view.services(["q": "svc", "offset": "200", "limit": "100"])
        #expect(last.services.count == 50 && last.services.last?.name == "svc249")
    }

    @Test("Traffic is read from the Prometheus text, summed by rcode, as rates between samples")
    func traffic() {
        let first = #"signpost_dns_requests_total{qtype="A",protocol="udp",rcode="NOERROR"} 10"# + "\n"
            + #"signpost_dns_requests_total{qtype="SRV",protocol="tcp",rcode="NOERROR"} 5"# + "\n"
            + #"signpost_dns_requests_total{qtype="A",protocol="udp",rcode="NXDOMAIN"} 1"# + "\n# HELP other\n"
        #expect(OperatorView.requestsByRcode(Array(first.utf8)) == ["NOERROR": 15, "NXDOMAIN": 1])
        let texts = [first, first.replacingOccurrences(of: "} 10", with: "} 30")]
        let box = Box()
        let view = OperatorView(slot: QueryHandlerSlot(Self.handler()), metrics: { Array(texts[min(box.next(), 1)].utf8) })
        view.sample(now: 1000)
        view.sample(now: 1002)
        let series = view.trafficSeries()
        #expect(series.points.count == 1)
        #expect(series.points[0].qps[0] == 10, "20 more NOERROR over 2 s")
        #expect(series.points[0].qps[3] == 0)
    }

    final class Box: @unchecked Sendable {
        private var n = 0
        func next() -> Int { defer { n += 1 }; return n }
    }

    @Test("The status page is self-contained and puts registry text in the page as text only")
    func page() throws {
        let view = OperatorView(slot: QueryHandlerSlot(Self.handler()), metrics: { [] })
        let (status, type, body) = try #require(view.page("/ui", [:]))
        #expect(status == .ok && type.hasPrefix("text/html"))
        let html = String(decoding: body, as: UTF8.self)
        #expect(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external assets")
        #expect(!html.contains("innerHTML") && !html.contains("insertAdjacentHTML") && !html.contains("document.write"))
        #expect(view.page("/v1/explain", [:])?.0 == .badRequest)
        #expect(view.page("/v1/nothing", [:]) == nil)
    }
}

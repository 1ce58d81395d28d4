import Catalog
import DNSWire
@testable import Gateway
import NIOCore
import Testing

@Suite("Forwarding cache and ACL")
struct ForwardCacheTests {
    static func key(_ name: String, _ type: UInt16 = RRType.a, dnssecOK: Bool = false) -> ForwardCache.Key {
        ForwardCache.Key(name: try! DNSName(name), type: type, qclass: DNSClass.inet, dnssecOK: dnssecOK)
    }

    static func reply(_ name: String, ttl: UInt32, rcode: UInt8 = 0, soa: (ttl: UInt32, minimum: UInt32)? = nil, tc: Bool = false) -> Message {
        var h = DNSHeader(id: 1)
        h.qr = true
        h.rcode = rcode
        h.tc = tc
        let n = try! DNSName(name)
        var m = Message(header: h, questions: [Question(name: n, type: RRType.a)])
        if rcode == 0 && soa == nil { m.answers = [ResourceRecord(name: n, ttl: ttl, rdata: .a(IPv4("192.0.2.1")!))] }
        if let soa {
            m.authority = [ResourceRecord(name: try! DNSName("example.test"), ttl: soa.ttl, rdata: .soa(.init(
                mname: try! DNSName("ns.example.test"), rname: try! DNSName("h.example.test"), serial: 1, refresh: 1, retry: 1,
                expire: 1, minimum: soa.minimum)))]
        }
        return m
    }

    @Test func ttlsClampAndCountDown() {
        let cache = ForwardCache(capacity: 10, minTTL: 60, maxTTL: 600, staleTTL: 100)
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 5)) == 60)
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 5000)) == 600)
        // Negative: min(SOA TTL, SOA minimum) (RFC 2308), not raised by the positive minimum.
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 0, rcode: 3, soa: (300, 30))) == 30)
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 0, rcode: 0, soa: (20, 90))) == 20)
        // Not cached: negative without SOA, SERVFAIL, truncated.
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 0, rcode: 3)) == nil)
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 0, rcode: 2)) == nil)
        #expect(cache.ttl(for: Self.reply("a.test", ttl: 100, tc: true)) == nil)

        let t0: UInt64 = 1_000_000_000_000
        cache.store(Self.reply("a.test", ttl: 120), for: Self.key("a.test"), now: t0)
        guard case .fresh(let a) = cache.lookup(Self.key("A.TEST"), now: t0 + 20_000_000_000) else { Issue.record("miss"); return }
        #expect(a.answers.first?.ttl == 100)
        // Past the TTL: stale (TTL 30) for staleTTL more, then gone.
        guard case .stale(let s) = cache.lookup(Self.key("a.test"), now: t0 + 150_000_000_000) else { Issue.record("not stale"); return }
        #expect(s.answers.first?.ttl == 30)
        guard case .miss = cache.lookup(Self.key("a.test"), now: t0 + 230_000_000_000) else { Issue.record("kept too long"); return }
    }

    @Test func keysAreExact() {
        let cache = ForwardCache(capacity: 10, minTTL: 0, maxTTL: 600, staleTTL: 0)
        cache.store(Self.reply("a.test", ttl: 60), for: Self.key("a.test"))
        guard case .miss = cache.lookup(Self.key("a.test", RRType.aaaa)) else { Issue.record("type"); return }
        guard case .miss = cache.lookup(Self.key("a.test", dnssecOK: true)) else { Issue.record("DO"); return }
        guard case .miss = cache.lookup(Self.key("b.test")) else { Issue.record("name"); return }
    }

    @Test func leastRecentlyUsedGoesFirst() {
        let cache = ForwardCache(capacity: 3, minTTL: 0, maxTTL: 600, staleTTL: 0)
        for n in ["a", "b", "c"] { cache.store(Self.reply("\(n).test", ttl: 60), for: Self.key("\(n).test")) }
        _ = cache.lookup(Self.key("a.test"))  // a is now the most recent
        cache.store(Self.reply("d.test", ttl: 60), for: Self.key("d.test"))
        #expect(cache.count == 3)
        guard case .miss = cache.lookup(Self.key("b.test")) else { Issue.record("b should be evicted"); return }
        guard case .fresh = cache.lookup(Self.key("a.test")) else { Issue.record("a evicted"); return }
        // Many more: still bounded.
        for i in 0..<1000 { cache.store(Self.reply("x\(i).test", ttl: 60), for: Self.key("x\(i).test")) }
        #expect(cache.count == 3)
    }

    @Test func acl() throws {
        let acl = AccessControl()
        func addr(_ s: String) throws -> SocketAddress { try SocketAddress(ipAddress: s, port: 5353) }
        for allowed in ["127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.9", "100.64.1.1", "169.254.3.3", "::1", "fd00::1", "fe80::9",
                        "::ffff:192.168.1.1"] {
            #expect(acl.mayRecurse(try addr(allowed)), "\(allowed)")
        }
        for denied in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            #expect(!acl.mayRecurse(try addr(denied)), "\(denied)")
        }
        #expect(throws: ConfigurationError.self) { try CIDR("10.0.0.0/33") }
        #expect(try CIDR("192.0.2.77/24").contains([192, 0, 2, 1]))
        // One address parser (DNSWire's) for every address: no leading zeros, no signs, in either family.
        for bad in ["010.1.1.1/8", "+1.2.3.4/8", "1.2.3.+4", "1.2.3", "+1::/64", "fd00::+1", "::g/64", "1.2.3.4.5"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try CIDR(bad) }
        }
        #expect(try CIDR("::ffff:10.0.0.1/104").contains(try #require(IPv6("::ffff:10.9.9.9")).bytes))
    }

    @Test func policiesOrderUpstreams() throws {
        var config = Forwarder.Configuration(upstreams: try (1...3).map { try SocketAddress(ipAddress: "127.0.0.\($0)", port: 53) })
        config.policy = .round_robin
        let group = NIOSingletons.posixEventLoopGroup
        let rr = Forwarder(configuration: config, group: group, logger: .init(label: "t"))
        #expect((0..<3).map { _ in rr.order().first! } == [0, 1, 2])
        config.policy = .sequential
        #expect(Forwarder(configuration: config, group: group, logger: .init(label: "t")).order() == [0, 1, 2])
    }
}

@Suite("Default upstreams")
struct DefaultUpstreamTests {
    @Test func fromResolvConfWithoutOurselves() {
        let conf = "# comment\nsearch example.org\nnameserver 127.0.0.1\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\noptions ndots:1\n"
        #expect(defaultUpstreams(resolvConf: conf, listen: [ListenAddress(host: "127.0.0.1", port: 53)])
                == [ListenAddress(host: "192.0.2.53", port: 53), ListenAddress(host: "fe80::1", port: 53)])
        // Listening on 8600 does not make 127.0.0.1:53 ourselves.
        #expect(defaultUpstreams(resolvConf: conf, listen: [ListenAddress(host: "127.0.0.1", port: 8600)]).count == 3)
        // A wildcard listener on 53 answers on loopback too, but a remote nameserver is still an upstream.
        #expect(defaultUpstreams(resolvConf: "nameserver 127.0.0.53\nnameserver 192.0.2.53\n", listen: [ListenAddress(host: "0.0.0.0", port: 53)])
                == [ListenAddress(host: "192.0.2.53", port: 53)])
    }
}

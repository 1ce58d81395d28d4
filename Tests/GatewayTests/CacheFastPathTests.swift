import Catalog
import DNSWire
@testable import Gateway
import Logging
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// A fresh forwarding-cache hit answered from encoded bytes must be byte for byte what the general path encodes,
/// and anything it does not cover must fall through.
@Suite("Fast path for forwarding-cache hits")
struct CacheFastPathTests {
    static let client = try! SocketAddress(ipAddress: "127.0.0.1", port: 5353)
    static let stranger = try! SocketAddress(ipAddress: "203.0.113.9", port: 5353)

    static func name(_ s: String) -> DNSName { try! DNSName(s) }

    /// Upstream replies worth caching: compressible names in mixed case, several sections, negatives.
    static func replies() -> [(Question, Message)] {
        func message(_ q: Question, rcode: UInt8 = 0, answers: [ResourceRecord] = [], authority: [ResourceRecord] = [],
                     additional: [ResourceRecord] = []) -> (Question, Message) {
            var h = DNSHeader(id: 9)
            h.qr = true
            h.rcode = rcode
            return (q, Message(header: h, questions: [q], answers: answers, authority: authority, additional: additional))
        }
        let www = name("www.Example.test"), zone = name("example.test")
        let soa = ResourceRecord(name: zone, ttl: 600, rdata: .soa(.init(mname: name("ns1.example.test"), rname: name("hostmaster.example.test"),
                                                                           serial: 7, refresh: 1, retry: 1, expire: 1, minimum: 120)))
        let ns = ResourceRecord(name: zone, ttl: 900, rdata: .ns(name("ns1.example.test")))
        let glue = ResourceRecord(name: name("ns1.example.test"), ttl: 900, rdata: .a(IPv4("192.0.2.53")!))
        return [
            message(Question(name: www, type: RRType.a), answers: [
                ResourceRecord(name: www, ttl: 300, rdata: .a(IPv4("192.0.2.80")!)),
                ResourceRecord(name: www, ttl: 200, rdata: .a(IPv4("192.0.2.81")!)),
            ], authority: [ns], additional: [glue, glue]),
            message(Question(name: name("alias.example.test"), type: RRType.aaaa), answers: [
                ResourceRecord(name: name("alias.example.test"), ttl: 100, rdata: .cname(www)),
                ResourceRecord(name: www, ttl: 100, rdata: .aaaa(IPv6("2001:db8::80")!)),
            ]),
            message(Question(name: name("nx.example.test"), type: RRType.a), rcode: 3, authority: [soa]),
            message(Question(name: www, type: RRType.txt), authority: [soa]),
            message(Question(name: name("big.example.test"), type: RRType.txt), answers: (0..<12).map {
                ResourceRecord(name: name("big.example.test"), ttl: 60, rdata: .txt([Array(repeating: UInt8(65 + $0), count: 60)]))
            }),
        ]
    }

    /// Two handlers, each with a forwarder whose cache holds `replies`, stored `age` and a half seconds before
    /// the forwarders' clock, which stands still: the fast and the general path read the same now, however long
    /// the test takes, so they compute the same age.
    static func pair(age: UInt64) -> (fast: QueryHandler, slow: QueryHandler) {
        let storedAt: UInt64 = 1_000_000_000_000
        let now = storedAt + age * 1_000_000_000 + 500_000_000
        func make() -> QueryHandler {
            let forwarder = Forwarder(configuration: .init(upstreams: [try! SocketAddress(ipAddress: "127.0.0.1", port: 9)]),
                                      group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"), clock: { now })
            for (q, m) in replies() {
                for dnssecOK in [false, true] {
                    forwarder.cache.store(m, for: ForwardCache.Key(name: q.name, type: q.type, qclass: q.qclass, dnssecOK: dnssecOK),
                                          now: storedAt)
                }
            }
            return QueryHandler(resolver: Fixture.resolver(), store: SnapshotStore(Fixture.snapshot(Fixture.standard)),
                                logger: Logger(label: "test"), forwarder: forwarder)
        }
        return (make(), make())
    }

    static func fast(_ h: QueryHandler, _ packet: ByteBuffer, _ transport: QueryHandler.Transport = .udp,
                     client: SocketAddress = client) -> ByteBuffer? {
        h.fastResponse(packet, transport: transport, client: client, allocator: ByteBufferAllocator())
    }

    static func general(_ h: QueryHandler, _ packet: ByteBuffer, _ transport: QueryHandler.Transport = .udp) -> ByteBuffer? {
        guard case .now(let r) = h.handleWithoutFastPath(packet, transport: transport, client: client,
                                                         eventLoop: MultiThreadedEventLoopGroup.singleton.next()) else { return nil }
        return r
    }

    static func query(_ name: String, _ type: UInt16, edns: UInt16? = nil, dnssecOK: Bool = false, cd: Bool = false) -> ByteBuffer {
        var q = Fixture.query(name, type, id: nextQueryID(), edns: edns)
        if dnssecOK { q.setInteger(UInt8(0x80), at: q.writerIndex - 4) }
        if cd { q.setInteger(q.getInteger(at: 3, as: UInt8.self)! | 0x10, at: 3) }
        return q
    }

    @Test("Hits answer as the general path does, TTLs counted down", arguments: [0, 7, 59])
    func hits(age: UInt64) throws {
        let pair = Self.pair(age: age)
        let cases: [(String, UInt16)] = [("www.example.test", RRType.a), ("WWW.EXAMPLE.TEST", RRType.a), ("alias.example.test", RRType.aaaa),
                                         ("nx.example.test", RRType.a), ("www.example.test", RRType.txt), ("big.example.test", RRType.txt)]
        for (name, type) in cases {
            for (edns, dnssecOK, cd) in [(nil, false, false), (1232, false, true), (4096, true, false)] as [(UInt16?, Bool, Bool)] {
                for transport in [QueryHandler.Transport.udp, .tcp] {
                    let q = Self.query(name, type, edns: edns, dnssecOK: dnssecOK, cd: cd)
                    let slow = try #require(Self.general(pair.slow, q, transport))
                    // 12 TXT records of 72 bytes do not fit in 512: TC, from the general path.
                    let fits = !(name == "big.example.test" && edns == nil && transport == .udp)
                    let fast = Self.fast(pair.fast, q, transport)
                    #expect((fast != nil) == fits, "\(name) \(type) \(String(describing: edns)) \(transport)")
                    if let fast { #expect(fast == slow, "\(name) \(type) \(String(describing: edns)) \(transport)") }
                }
            }
        }
        let m = try Message(from: #require(Self.fast(pair.fast, Self.query("www.example.test", RRType.a))))
        #expect(m.answers.map(\.ttl) == [300 - UInt32(age), 200 - UInt32(age)] && m.header.ra && !m.header.aa)
    }

    @Test func leftToTheGeneralPath() {
        // Stale (past 100 s for the CNAME reply), expiring (a record at 0 is the general path's), refused, missing.
        let old = Self.pair(age: 150)
        #expect(Self.fast(old.fast, Self.query("alias.example.test", RRType.aaaa)) == nil)
        #expect(Self.fast(old.fast, Self.query("www.example.test", RRType.a)) != nil)
        let expiring = Self.pair(age: 200)
        #expect(Self.fast(expiring.fast, Self.query("www.example.test", RRType.a)) == nil)
        let fresh = Self.pair(age: 1)
        #expect(Self.fast(fresh.fast, Self.query("www.example.test", RRType.a), client: Self.stranger) == nil)
        #expect(Self.fast(fresh.fast, Self.query("other.example.test", RRType.a)) == nil)
        #expect(Self.fast(fresh.fast, Self.query("www.example.test", RRType.mx)) == nil)
        // Names in the service domain never come from the cache.
        #expect(Self.fast(fresh.fast, Self.query("nosuch.service.consul", RRType.a)) == nil)
    }

    @Test func theRawACLMatchesTheSocketAddressOne() throws {
        let acl = AccessControl(allowed: [try CIDR("10.0.0.0/8"), try CIDR("fd00::/8")])
        for (text, allowed) in [("10.1.2.3", true), ("11.1.2.3", false), ("fd00::1", true), ("fe80::1", false), ("::ffff:10.9.9.9", true)] {
            let address = try SocketAddress(ipAddress: text, port: 53)
            #expect(acl.mayRecurse(address) == allowed, "\(text)")
            let raw: Bool
            switch address {
            case .v4(let a): raw = withUnsafeBytes(of: a.address) { acl.mayRecurse(sockaddr: $0.baseAddress!) }
            case .v6(let a): raw = withUnsafeBytes(of: a.address) { acl.mayRecurse(sockaddr: $0.baseAddress!) }
            default: raw = !allowed
            }
            #expect(raw == allowed, "\(text)")
        }
    }
}

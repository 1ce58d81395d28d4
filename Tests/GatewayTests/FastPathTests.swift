import Catalog
import DNSWire
@testable import Gateway
import Logging
import NIOCore
import TestSupport
import Testing

/// The pre-encoded fast path must answer byte for byte as the general path does, rotation by rotation,
/// and must step aside for everything it does not cover.
@Suite("Fast path against the general path")
struct FastPathTests {
    /// Two instances share a service address (one glue record, one target name); a third shares the first
    /// one's node address. So A answers and SRV glue both need deduplication in rotated order.
    static let instances = Fixture.standard + [
        Fixture.I(node: "dup-1", address: "192.0.2.71", service: "dup", serviceAddress: "198.51.100.7", port: 1),
        Fixture.I(node: "dup-2", address: "192.0.2.72", service: "dup", serviceAddress: "198.51.100.7", port: 2),
        Fixture.I(node: "dup-3", address: "198.51.100.7", service: "dup", port: 3),
        Fixture.I(node: "six-1", address: "2001:db8::61", service: "six", port: 6),
        Fixture.I(node: "six-2", address: "2001:db8::62", service: "six", port: 6, status: "warning"),
        // Names over 15 bytes (a Swift String that size is on the heap): a dotted service, a tag, a node.
        Fixture.I(node: "a-node-name-over-fifteen-bytes", address: "192.0.2.81", service: "go.micro.srv.greeter-with-a-long-name",
                  port: 9, tags: ["a-rather-long-tag-over-15"]),
        Fixture.I(node: "lg-2", address: "192.0.2.82", service: "go.micro.srv.greeter-with-a-long-name", port: 9),
    ] + (1...40).map { Fixture.I(node: "big-\($0)", address: "192.0.2.\(100 + $0)", service: "big", port: 7) }

    /// Two handlers over two separate snapshots of the same catalog, so each has its own rotation counters.
    static func pair(_ configure: @escaping (inout ResolverConfiguration) -> Void = { _ in }) -> (fast: QueryHandler, slow: QueryHandler) {
        func make() -> QueryHandler {
            QueryHandler(resolver: Fixture.resolver(configure), store: SnapshotStore(Fixture.snapshot(instances)), logger: Logger(label: "test"))
        }
        return (make(), make())
    }

    static func takesFastPath(_ h: QueryHandler, _ packet: ByteBuffer, _ transport: QueryHandler.Transport) -> Bool {
        packet.withUnsafeReadableBytes { h.fastPlan($0, transport: transport) != nil }
    }

    static func query(_ name: String, _ type: UInt16, edns: UInt16? = nil, dnssecOK: Bool = false, cd: Bool = false,
                      rd: Bool = true) -> ByteBuffer {
        var q = Fixture.query(name, type, id: nextQueryID(), edns: edns, rd: rd)
        if dnssecOK { q.setInteger(UInt8(0x80), at: q.writerIndex - 4) }
        if cd { q.setInteger(q.getInteger(at: 3, as: UInt8.self)! | 0x10, at: 3) }
        return q
    }

    /// Runs every rotation (and one more) through both handlers and compares the bytes.
    static func compare(_ pair: (fast: QueryHandler, slow: QueryHandler), _ packet: ByteBuffer, _ transport: QueryHandler.Transport,
                        rounds: Int = 7) {
        for _ in 0..<rounds {
            let fast = pair.fast.respond(to: packet, transport: transport, allocator: ByteBufferAllocator())
            let slow = pair.slow.respondWithoutFastPath(to: packet, transport: transport, allocator: ByteBufferAllocator())
            #expect(fast == slow, "\(packet.readableBytesView.map { $0 })")
        }
    }

    @Test("The covered queries take the fast path and answer as the general path does", arguments: [
        ("web.service.consul", RRType.a), ("WeB.SeRvIcE.CoNsUl", RRType.a), ("web.service.consul", RRType.srv),
        ("api.service.consul", RRType.a), ("api.service.consul", RRType.aaaa), ("api.service.consul", RRType.srv),
        ("dup.service.consul", RRType.a), ("dup.service.consul", RRType.srv),
        ("six.service.consul", RRType.aaaa), ("six.service.consul", RRType.srv),
        ("tagged.service.consul", RRType.a),
        // Every other service form: datacenter, tag (dotted too), RFC 2782, names of any length.
        ("web.service.dc1.consul", RRType.a), ("web.service.DC1.consul", RRType.srv), ("web.service.dc2.consul", RRType.a),
        ("v2.web.service.consul", RRType.a), ("v2.web.service.consul", RRType.srv), ("v2.web.service.dc1.consul", RRType.srv),
        ("v1.2.tagged.service.consul", RRType.a), ("_web._tcp.service.consul", RRType.srv), ("_web._v2.service.consul", RRType.srv),
        ("_web._v2.service.dc1.consul", RRType.a),
        ("go.micro.srv.greeter-with-a-long-name.service.consul", RRType.a),
        ("go.micro.srv.greeter-with-a-long-name.service.consul", RRType.srv),
        ("a-rather-long-tag-over-15.go.micro.srv.greeter-with-a-long-name.service.consul", RRType.srv),
        // Node and addr names.
        ("web-1.node.consul", RRType.a), ("web-1.node.dc1.consul", RRType.a), ("api-1.node.consul", RRType.aaaa),
        ("a-node-name-over-fifteen-bytes.node.consul", RRType.a), ("c000020b.addr.consul", RRType.a),
        ("c000020b.addr.dc1.consul", RRType.a), ("20010db8000000000000000000000021.addr.consul", RRType.aaaa),
    ])
    func covered(_ name: String, _ type: UInt16) {
        let pair = Self.pair()
        for (edns, dnssecOK) in [(nil, false), (1232, false), (4096, true), (512, false)] as [(UInt16?, Bool)] {
            for transport in [QueryHandler.Transport.udp, .tcp] {
                let q = Self.query(name, type, edns: edns, dnssecOK: dnssecOK, cd: dnssecOK, rd: edns != 512)
                #expect(Self.takesFastPath(pair.fast, q, transport), "\(name) \(type) \(String(describing: edns)) \(transport)")
                Self.compare(pair, q, transport)
            }
        }
    }

    @Test("Everything else is left to the general path", arguments: [
        ("web.service.consul", RRType.any), ("nosuchtag.web.service.consul", RRType.a), ("web.service.dc9.consul", RRType.a),
        ("web-1.node.consul", RRType.srv), ("web-1.node.consul", RRType.aaaa), ("c000020b.addr.consul", RRType.aaaa),
        ("c000020x.addr.consul", RRType.a), ("_grpc_config.web.service.consul", RRType.txt), ("greeter-with-a-long-name.service.consul", RRType.a), ("web.service.consul", RRType.txt), ("web.service.consul", RRType.aaaa),
        ("db.service.consul", RRType.a), ("db.service.consul", RRType.srv), ("dead.service.consul", RRType.a),
        ("nosuch.service.consul", RRType.a), ("six.service.consul", RRType.a), ("web.service.consul.example", RRType.a),
        ("web.node.consul", RRType.a), ("service.consul", RRType.a), ("web.service.consulx", RRType.a),
    ])
    func uncovered(_ name: String, _ type: UInt16) {
        let pair = Self.pair()
        let q = Self.query(name, type, edns: 1232)
        #expect(!Self.takesFastPath(pair.fast, q, .udp))
        Self.compare(pair, q, .udp, rounds: 2)
    }

    @Test("--alt-domain: A and AAAA from the templates; SRV (whose targets name the domain) by the general path")
    func altDomain() {
        // "global" has the length of "consul", so nothing but the name itself tells the two apart.
        for alt in ["global", "sd.example"] {
            let pair = Self.pair { $0.altDomain = try! DNSName(alt) }
            let a = Self.query("web.service.\(alt)", RRType.a, edns: 1232)
            #expect(Self.takesFastPath(pair.fast, a, .udp))
            Self.compare(pair, a, .udp)
            let srv = Self.query("web.service.\(alt)", RRType.srv, edns: 1232)
            #expect(!Self.takesFastPath(pair.fast, srv, .udp))
            Self.compare(pair, srv, .udp)
            // The primary domain's SRV, asked after the alt one, still names the primary domain.
            Self.compare(pair, Self.query("web.service.consul", RRType.srv, edns: 1232), .udp)
        }
    }

    @Test func truncationIsLeftToTheGeneralPath() {
        let pair = Self.pair()
        // 40 A records do not fit in 512 bytes, but do in 1232 and over TCP.
        let plain = Self.query("big.service.consul", RRType.a)
        #expect(!Self.takesFastPath(pair.fast, plain, .udp))
        #expect(Self.takesFastPath(pair.fast, plain, .tcp))
        #expect(Self.takesFastPath(pair.fast, Self.query("big.service.consul", RRType.a, edns: 1232), .udp))
        for q in [plain, Self.query("big.service.consul", RRType.srv, edns: 1232)] {
            Self.compare(pair, q, .udp, rounds: 3)
            Self.compare(pair, q, .tcp, rounds: 3)
        }
    }

    @Test("Configurations change the templates as they change the general answers")
    func configurations() {
        let configs: [(inout ResolverConfiguration) -> Void] = [
            { $0.onlyPassing = true },
            { $0.serviceTTL = TTLPolicy(defaultTTL: 30, exact: ["web": 5]) },
            { $0.domain = try! DNSName("sd.example.") },
            { $0.datacenter = "DC2" },
            { $0.maxUDPSize = 600 },
        ]
        for configure in configs {
            let pair = Self.pair(configure)
            let domain = pair.fast.resolver.configuration.domain.description
            for name in ["web", "dup", "big", "api"] {
                for type in [RRType.a, RRType.srv] {
                    Self.compare(pair, Self.query("\(name).service.\(domain)", type, edns: 4096), .udp, rounds: 4)
                }
            }
        }
        // Random order is the general path's (a shuffle per query), except for a single instance.
        let random = Self.pair { $0.order = .random }
        #expect(!Self.takesFastPath(random.fast, Self.query("web.service.consul", RRType.a), .udp))
        #expect(Self.takesFastPath(random.fast, Self.query("tagged.service.consul", RRType.a), .udp))
    }

    @Test("Templates belong to the resolver that encoded them: another configuration re-encodes, the same resolver keeps them")
    func resolversAndTemplates() throws {
        let store = SnapshotStore(Fixture.snapshot(Self.instances))
        let resolver = Fixture.resolver()
        let first = QueryHandler(resolver: resolver, store: store, logger: Logger(label: "test"))
        let q = Self.query("web.service.consul", RRType.a)
        #expect(Self.takesFastPath(first, q, .udp))
        _ = first.respond(to: q, transport: .udp, allocator: ByteBufferAllocator())
        let entry = try #require(store.snapshot.services["web"])
        let encoded = try #require(entry.attachment(owner: resolver.identity))
        // A new handler around the same resolver (a reload that left the resolver's settings alone) keeps them.
        let kept = QueryHandler(resolver: resolver, store: store, logger: Logger(label: "test"), maxStale: .seconds(5))
        #expect(Self.takesFastPath(kept, q, .udp))
        #expect(entry.attachment(owner: resolver.identity) === encoded)
        // Another configuration encodes its own, with its own TTL, on the fast path still.
        let second = QueryHandler(resolver: Fixture.resolver { $0.serviceTTL = TTLPolicy(defaultTTL: 99) }, store: store,
                                  logger: Logger(label: "test"))
        #expect(Self.takesFastPath(second, q, .udp))
        let answer = try? Message(from: #require(second.respond(to: q, transport: .udp, allocator: ByteBufferAllocator())))
        #expect(answer?.answers.count == 3 && answer?.answers.allSatisfy { $0.ttl == 99 } == true)
        #expect(entry.attachment(owner: second.resolver.identity) != nil && entry.attachment(owner: resolver.identity) === encoded,
                "the first resolver's stay in their slot")
        // A third configuration replaces the second's, and the second encodes again when it next asks.
        let third = QueryHandler(resolver: Fixture.resolver { $0.nodeTTL = 3 }, store: store, logger: Logger(label: "test"))
        _ = third.respond(to: q, transport: .udp, allocator: ByteBufferAllocator())
        #expect(entry.attachment(owner: second.resolver.identity) == nil && entry.attachment(owner: third.resolver.identity) != nil)
        #expect(Self.takesFastPath(second, q, .udp))
        let again = try? Message(from: #require(second.respond(to: q, transport: .udp, allocator: ByteBufferAllocator())))
        #expect(again?.answers.count == 3 && again?.answers.allSatisfy { $0.ttl == 99 } == true)
        #expect(entry.attachment(owner: second.resolver.identity) != nil)
    }

    @Test("Random tags do not grow an entry's templates without bound")
    func templateLimit() throws {
        let pair = Self.pair()
        for k in 0..<200 {
            let q = Self.query("t\(k).web.service.consul", RRType.a)
            Self.compare(pair, q, .udp, rounds: 1)
        }
        let entry = try #require(pair.fast.store.snapshot.services["web"])
        let attached = try #require(entry.attachment(owner: pair.fast.resolver.identity))
        let templates = unsafeDowncast(attached.object, to: EntryTemplates.self)
        #expect(templates.others.load(ordering: .acquiring).map.isEmpty, "tags no instance has are never kept")
        for tag in ["v2", "primary", "canary"] { _ = pair.fast.respond(to: Self.query("\(tag).web.service.consul", RRType.a), transport: .udp, allocator: ByteBufferAllocator()) }
        #expect(templates.others.load(ordering: .acquiring).map.count == 3)
    }

    @Test("Mutated packets: whenever the fast path answers, the general path gives the same bytes")
    func mutations() {
        let pair = Self.pair()
        var generator = seededGenerator()
        var fastCount = 0
        let seeds = [Self.query("web.service.consul", RRType.srv, edns: 1232), Self.query("dup.service.consul", RRType.a),
                     Self.query("api.service.consul", RRType.aaaa, edns: 4096, dnssecOK: true)]
        for i in 0..<6000 {
            var bytes = Array(seeds[i % seeds.count].readableBytesView)
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes[Int.random(in: 0..<bytes.count, using: &generator)] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
                case 2: bytes.removeLast(Int.random(in: 0...min(4, bytes.count - 1), using: &generator))
                default: bytes.append(UInt8.random(in: 0...255, using: &generator))
                }
            }
            let packet = ByteBuffer(bytes: bytes)
            if Self.takesFastPath(pair.fast, packet, .udp) { fastCount += 1 }
            let fast = pair.fast.respond(to: packet, transport: .udp, allocator: ByteBufferAllocator())
            let slow = pair.slow.respondWithoutFastPath(to: packet, transport: .udp, allocator: ByteBufferAllocator())
            #expect(fast == slow, "\(bytes) (\(seedNote))")
        }
        // Flipped ID, flag and case bits keep many mutants on the fast path; the rest must fall through.
        #expect(fastCount > 300, "\(fastCount) on the fast path (\(seedNote))")
    }
}

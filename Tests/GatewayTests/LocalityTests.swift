import Catalog
import DNSWire
@testable import Gateway
import Logging
import Testing

/// Nearest-first answers (`--locality`): the client's zone first, rotated among itself, then the rest of its
/// region, then the rest; SRV priorities 1 and 2; the overload guard; where a client's zone comes from.
@Suite("Locality: nearest first")
struct LocalityTests {
    /// `web` in three zones of us-east-1 (three instances each, zone and region in node meta, as Kubernetes labels
    /// carry them) and two in eu-west-1.
    static func instances(criticalZone: String? = nil) -> [Fixture.I] {
        var out: [Fixture.I] = []
        for (z, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"].enumerated() {
            for k in 1...3 {
                out.append(Fixture.I(node: "web-\(zone)-\(k)", address: "10.0.\(z + 1).\(k)", service: "web", status: zone == criticalZone ? "critical" : "passing",
                                     meta: ["topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": "us-east-1"]))
            }
        }
        for k in 1...2 {
            out.append(Fixture.I(node: "web-eu-\(k)", address: "10.9.0.\(k)", service: "web", meta: ["zone": "eu-west-1a", "region": "eu-west-1"]))
        }
        return out
    }

    static func resolver(_ mode: LocalityMode = .zone, minimum: Int = 1, answerLimit: Int = 0) throws -> Resolver {
        var c = ResolverConfiguration(answerLimit: answerLimit)
        c.locality.mode = mode
        c.locality.minimum = minimum
        c.locality.clientZones = [(try CIDR("10.1.0.0/16"), "us-east-1a"), (try CIDR("10.1.2.0/24"), "us-east-1b"),
                                  (try CIDR("10.2.0.0/16"), "eu-west-1a")]
        c.locality.zone = "us-east-1c"
        return Resolver(configuration: c)
    }

    static func client(_ resolver: Resolver, _ address: String?) -> ClientLocality? {
        guard let address else { return resolver.clientLocality(address: nil) }
        return IPv4(address)!.array.withUnsafeBytes { resolver.clientLocality(address: $0) }
    }

    /// The zone an answer's address is in (by the fixture's numbering).
    static func zone(_ address: String) -> String {
        let p = address.split(separator: ".")
        if p[1] == "9" { return "eu-west-1a" }
        return ["", "us-east-1a", "us-east-1b", "us-east-1c"][Int(p[2])!]
    }

    static func answer(_ resolver: Resolver, _ snapshot: CatalogSnapshot, _ type: UInt16, from address: String?) -> Answer {
        resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: type), in: snapshot, client: client(resolver, address))
    }

    static func addresses(_ a: Answer) -> [String] {
        a.answers.compactMap { if case .a(let v4) = $0.rdata { return v4.description } else { return nil } }
    }

    @Test func theClientsZoneComesFirstRotatedThenItsRegionThenTheRest() throws {
        let resolver = try Self.resolver(), snapshot = Fixture.snapshot(Self.instances())
        var firsts: [String: Int] = [:]
        for _ in 0..<300 {
            let zones = Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7")).map(Self.zone)
            #expect(zones.count == 11)
            #expect(Array(zones.prefix(3)) == Array(repeating: "us-east-1a", count: 3), "\(zones)")
            #expect(Set(zones[3..<9]) == ["us-east-1b", "us-east-1c"] && Set(zones[9...]) == ["eu-west-1a"], "\(zones)")
            firsts[Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7"))[0], default: 0] += 1
        }
        // Rotated among the zone's own three, evenly.
        #expect(firsts.count == 3 && firsts.values.allSatisfy { $0 == 100 }, "\(firsts)")
    }

    @Test func whereTheClientsZoneComesFrom() throws {
        let resolver = try Self.resolver()
        #expect(Self.client(resolver, "10.1.2.9") == ClientLocality(zone: "us-east-1b", source: .network(try CIDR("10.1.2.0/24"))))  // the most specific
        #expect(Self.client(resolver, "10.1.3.9")?.zone == "us-east-1a")
        #expect(Self.client(resolver, "192.0.2.1") == ClientLocality(zone: "us-east-1c", source: .own))
        #expect(Self.client(resolver, nil)?.zone == "us-east-1c")
        #expect(Self.client(try Self.resolver(.off), "10.1.2.9") == nil)
    }

    @Test func srvGivesTheNearestGroupPriorityOne() throws {
        let resolver = try Self.resolver(), snapshot = Fixture.snapshot(Self.instances())
        let answer = Self.answer(resolver, snapshot, RRType.srv, from: "10.2.0.5")
        let priorities = answer.answers.compactMap { if case .srv(let p, _, _, _) = $0.rdata { return p } else { return nil } }
        #expect(priorities == [1, 1] + Array(repeating: 2, count: 9), "\(priorities)")
    }

    @Test func aZoneThatGoesCriticalSendsItsClientsElsewhere() throws {
        let resolver = try Self.resolver(), snapshot = Fixture.snapshot(Self.instances(criticalZone: "us-east-1a"))
        for _ in 0..<20 {
            let zones = Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7")).map(Self.zone)
            #expect(zones.count == 8 && !zones.contains("us-east-1a"))
        }
    }

    /// With `--locality-min 4`, a zone of three is too small: no preference, every SRV priority 1, and the first
    /// answers go round every instance.
    @Test func theGuardDropsThePreferenceForASmallZone() throws {
        let resolver = try Self.resolver(minimum: 4), snapshot = Fixture.snapshot(Self.instances())
        var firsts: Set<String> = []
        for _ in 0..<11 { firsts.insert(Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7"))[0]) }
        #expect(firsts.count == 11)
        let srv = Self.answer(resolver, snapshot, RRType.srv, from: "10.1.7.7")
        #expect(srv.answers.allSatisfy { if case .srv(let p, _, _, _) = $0.rdata { return p == 1 } else { return false } })
        // The share guard: one healthy instance left of three zones' eleven is under half an even share.
        let thin = Fixture.snapshot(Self.instances().filter { !$0.node.hasPrefix("web-us-east-1a-") || $0.node.hasSuffix("-1") })
        let first = Set((0..<9).map { _ in Self.zone(Self.addresses(Self.answer(try! Self.resolver(), thin, RRType.a, from: "10.1.7.7"))[0]) })
        #expect(first.count > 1, "\(first)")
    }

    @Test func theAnswerLimitTakesTheNearestFirst() throws {
        let resolver = try Self.resolver(answerLimit: 2), snapshot = Fixture.snapshot(Self.instances())
        for _ in 0..<9 {
            #expect(Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7")).map(Self.zone) == ["us-east-1a", "us-east-1a"])
        }
    }

    @Test func regionModeKeepsTheWholeRegionFirst() throws {
        let resolver = try Self.resolver(.region), snapshot = Fixture.snapshot(Self.instances())
        for _ in 0..<12 {
            let zones = Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7")).map(Self.zone)
            #expect(!zones.prefix(9).contains("eu-west-1a") && Set(zones.suffix(2)) == ["eu-west-1a"], "\(zones)")
        }
    }

    /// The client's region is what its zone's instances say, healthy or not: with the whole zone critical, region
    /// mode still puts the rest of the region first (it knew the region only from healthy instances before).
    @Test func regionModeKnowsTheRegionOfAZoneThatIsAllCritical() throws {
        let resolver = try Self.resolver(.region), snapshot = Fixture.snapshot(Self.instances(criticalZone: "us-east-1a"))
        for _ in 0..<12 {
            let answer = Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7")
            let zones = Self.addresses(answer).map(Self.zone)
            #expect(zones.count == 8 && !zones.prefix(6).contains("eu-west-1a") && Set(zones.suffix(2)) == ["eu-west-1a"], "\(zones)")
            #expect(answer.dependsOnClient)
        }
    }

    /// A Client Subnet option's zone and the scope its reply gets (RFC 7871 §7.2.1), from a trusted resolver.
    @Test func clientSubnetZonesAndScopes() throws {
        var c = ResolverConfiguration()
        c.locality.mode = .zone
        c.locality.clientZones = [(try CIDR("10.1.0.0/16"), "a"), (try CIDR("10.1.0.0/24"), "b"), (try CIDR("10.2.0.0/16"), "eu")]
        c.locality.zone = "own"
        c.locality.ecsTrusted = [try CIDR("127.0.0.0/8")]
        let resolver = Resolver(configuration: c)
        func located(_ address: [UInt8], _ source: UInt8) throws -> (String?, UInt8) {
            let subnet = try ClientSubnet(option: [0, 1, source, 0] + address)
            let (l, scope) = IPv4("127.0.0.1")!.array.withUnsafeBytes { resolver.clientLocality(address: $0, subnet: subnet) }
            return (l?.zone, scope)
        }
        // The network that decided, when nothing more specific lies inside it.
        #expect(try located([10, 2, 3], 24) == ("eu", 16))
        // A /16 with a /24 of another zone inside it holds only for the source network.
        #expect(try located([10, 1, 7], 24) == ("a", 24))
        // Sixteen bits cannot tell whether the client is in the /24: its padding does not place it there.
        #expect(try located([10, 1], 16) == ("a", 16))
        #expect(try located([10, 1, 0], 24) == ("b", 24))
        // No network holds it: Signpost's own zone, for the source network only (others would get another).
        #expect(try located([192, 0, 2], 24) == ("own", 24))
        // An untrusted resolver's option is ignored: its own address decides, and the scope is 0.
        let subnet = try ClientSubnet(option: [0, 1, 24, 0, 10, 2, 3])
        let (l, scope) = IPv4("10.1.0.9")!.array.withUnsafeBytes { resolver.clientLocality(address: $0, subnet: subnet) }
        #expect(l?.zone == "b" && scope == 0)
    }

    @Test func offAnswersAsBefore() throws {
        let resolver = try Self.resolver(.off), snapshot = Fixture.snapshot(Self.instances())
        var firsts: Set<String> = []
        for _ in 0..<11 { firsts.insert(Self.addresses(Self.answer(resolver, snapshot, RRType.a, from: "10.1.7.7"))[0]) }
        #expect(firsts.count == 11)
    }
}

/// Weighted first position (smooth weighted round robin over Consul's weights): over 10,000 A queries each
/// instance comes first in proportion to its weight, within ±3% of its share, with and without an answer limit.
@Suite("Weighted first position")
struct WeightedFirstTests {
    static let weights = [1, 2, 3, 4]

    static func snapshot() -> CatalogSnapshot {
        Fixture.snapshot(weights.enumerated().map { k, w in
            Fixture.I(node: "w-\(k)", address: "10.5.0.\(k + 1)", service: "web", weights: (w, 1))
        })
    }

    static func firsts(answerLimit: Int) -> [String: Int] {
        let resolver = Fixture.resolver { $0.answerLimit = answerLimit }
        let snapshot = snapshot()
        var counts: [String: Int] = [:]
        for _ in 0..<10_000 {
            let answer = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snapshot)
            guard case .a(let first)? = answer.answers.first?.rdata else { Issue.record("no A"); continue }
            counts[first.description, default: 0] += 1
        }
        return counts
    }

    @Test(arguments: [0, 2])
    func firstPositionsFollowTheWeights(answerLimit: Int) {
        let counts = Self.firsts(answerLimit: answerLimit)
        let total = Self.weights.reduce(0, +)
        for (k, w) in Self.weights.enumerated() {
            let share = Double(counts["10.5.0.\(k + 1)", default: 0]) / 10_000, want = Double(w) / Double(total)
            #expect(abs(share - want) <= 0.03 * want, "weight \(w): \(share) of first positions, want \(want) (limit \(answerLimit))")
        }
    }

    /// glibc and Go ask A and AAAA together for every lookup: each type keeps its own turn, so A's first positions
    /// still follow the weights (a shared counter gave A every other turn of the sequence only).
    @Test func aAndAAAAAskedTogetherEachFollowTheWeights() {
        let resolver = Fixture.resolver { _ in }
        let snapshot = Self.snapshot()
        var counts: [String: Int] = [:]
        for _ in 0..<10_000 {
            let answer = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.a), in: snapshot)
            _ = resolver.resolve(Question(name: Fixture.name("web.service.consul"), type: RRType.aaaa), in: snapshot)
            guard case .a(let first)? = answer.answers.first?.rdata else { Issue.record("no A"); continue }
            counts[first.description, default: 0] += 1
        }
        let total = Self.weights.reduce(0, +)
        for (k, w) in Self.weights.enumerated() {
            let share = Double(counts["10.5.0.\(k + 1)", default: 0]) / 10_000, want = Double(w) / Double(total)
            #expect(abs(share - want) <= 0.03 * want, "weight \(w): \(share) of first positions, want \(want)")
        }
    }

    @Test func theSequenceIsSmoothAndPlainWhenWeightsAreEqual() {
        #expect(Resolver.weightedSequence([1, 1, 1]) == nil)
        // nginx's example: weights 5, 1, 1 give a, a, b, a, c, a, a.
        #expect(Resolver.weightedSequence([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0])
        // Large weights are scaled to a cycle of about 4,096, keeping the proportions.
        let big = Resolver.weightedSequence([65_535, 21_845])!
        #expect(big.count <= 4096 && abs(Double(big.filter { $0 == 0 }.count) / Double(big.count) - 0.75) < 0.001)
    }
}

/// Nearest-first answers on the fast path: the templates of a client's zone, each group rotated on its own, are
/// byte for byte what the general path answers, turn after turn, with weights in play.
@Suite("Locality: the fast path")
struct LocalityFastPathTests {
    static func pair(zone: String, mode: LocalityMode = .zone) -> (fast: QueryHandler, slow: QueryHandler) {
        var instances = LocalityTests.instances()
        for k in instances.indices where k % 4 == 0 { instances[k].weights = (3, 1) }
        func make() -> QueryHandler {
            let resolver = Fixture.resolver { c in
                c.locality.mode = mode
                c.locality.zone = zone
            }
            return QueryHandler(resolver: resolver, store: SnapshotStore(Fixture.snapshot(instances)), logger: Logger(label: "test"))
        }
        return (make(), make())
    }

    @Test(arguments: ["us-east-1a", "us-east-1b", "eu-west-1a", "nowhere"])
    func theFastPathAnswersAsTheGeneralPath(zone: String) {
        for mode in [LocalityMode.zone, .region] {
            let pair = Self.pair(zone: zone, mode: mode)
            for type in [RRType.a, RRType.srv] {
                let packet = FastPathTests.query("web.service.consul", type, edns: 4096)
                #expect(FastPathTests.takesFastPath(pair.fast, packet, .udp), "\(zone) \(mode) \(type)")
                FastPathTests.compare(pair, packet, .udp, rounds: 25)
            }
        }
    }
}

@Suite("Locality: explain")
struct LocalityExplainTests {
    @Test func explainShowsTheClientsZoneItsSourceAndEachInstancesGroup() throws {
        let handler = QueryHandler(resolver: try LocalityTests.resolver(), store: SnapshotStore(Fixture.snapshot(LocalityTests.instances())),
                                   logger: Logger(label: "test"))
        let e = try #require(handler.explain(name: "web", type: "A", client: "10.1.7.7"))
        let client = try #require(e.client)
        #expect(client.zone == "us-east-1a" && client.source.contains("--client-zone 10.1.0.0/16") && client.preference == "the client's zone first")
        for i in e.instances {
            let want = i.node.contains("us-east-1a") ? "zone" : i.node.contains("us-east-1") ? "region" : "elsewhere"
            #expect(i.group == want, "\(i.node): \(i.group ?? "none")")
            #expect(i.locality == (i.node.contains("eu") ? "eu-west-1/eu-west-1a" : "us-east-1/" + i.node.split(separator: "-").dropFirst().prefix(3).joined(separator: "-")))
        }
        // No address: Signpost's own zone.
        #expect(try #require(handler.explain(name: "web", type: "A")).client?.zone == "us-east-1c")
    }
}

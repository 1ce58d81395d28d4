import Atomics
import Catalog
import DNSWire

/// What the resolver decided; the encoder turns it into bytes and applies truncation.
public struct Answer: Sendable, Equatable {
    public var rcode: UInt16
    public var authoritative: Bool
    public var answers: [ResourceRecord]
    /// `glue[i]` belongs to `answers[i]` (the SRV target's address); it goes in the additional
    /// section and is dropped together with its answer when the response must be truncated.
    public var glue: [[ResourceRecord]]
    public var authority: [ResourceRecord]
    public var additional: [ResourceRecord]
    /// Whether the answer depends on where the client is (nearest first put its group first): only then does a
    /// reply's Client Subnet option get a scope other than 0 (RFC 7871 §7.2.1).
    public var dependsOnClient = false

    public init(rcode: UInt16, authoritative: Bool, answers: [ResourceRecord] = [], glue: [[ResourceRecord]]? = nil,
                authority: [ResourceRecord] = [], additional: [ResourceRecord] = []) {
        self.rcode = rcode
        self.authoritative = authoritative
        self.answers = answers
        self.glue = glue ?? Array(repeating: [], count: answers.count)
        self.authority = authority
        self.additional = additional
    }

    static let refused = Answer(rcode: RCode.refused, authoritative: false)
}

/// The pure part of the gateway: (question, snapshot, configuration) → answer.
/// The only state it touches is a service's rotation counters (and the templates it keeps with an entry), which
/// never change the snapshot.
public struct Resolver: Sendable {
    public let configuration: ResolverConfiguration
    /// Tells apart the templates this resolver encoded from another configuration's (tests run several).
    public let identity: Int
    private static let identities = ManagedAtomic<Int>(1)
    /// How many selections besides the plain one an entry keeps encoded (`EntryTemplates`): 64 for each zone a
    /// client can be placed in (the `--client-zone` zones and `--zone`), and 64 for clients with none, so that
    /// nearest-first answers do not crowd out tags.
    let templateLimit: Int

    public init(configuration: ResolverConfiguration) {
        self.configuration = configuration
        self.identity = Self.identities.loadThenWrappingIncrement(ordering: .relaxed)
        let l = configuration.locality
        let zones = l.mode == .off ? 0 : Set(l.clientZones.map { $0.zone.lowercased() } + [l.zone?.lowercased()].compactMap { $0 }).count
        templateLimit = 64 * (zones + 1)
    }

    /// `client`: where the query comes from, for nearest-first answers (`clientLocality`).
    public func resolve(_ question: Question, in snapshot: CatalogSnapshot, client: ClientLocality? = nil) -> Answer {
        let answer = resolve(question.name, question.type, qclass: question.qclass, in: snapshot, depth: 0, client: client)
        return question.type == RRType.any ? Self.minimalAny(answer) : answer
    }

    /// RFC 8482: ANY gets one RRset, not everything at the name, so it cannot be used for amplification.
    /// The RRset is the A set if there is one, else AAAA, else the first the full answer holds (SOA at the apex).
    /// Negative answers are unchanged.
    static func minimalAny(_ full: Answer) -> Answer {
        guard let first = full.answers.first(where: { $0.type == RRType.a }) ?? full.answers.first(where: { $0.type == RRType.aaaa })
            ?? full.answers.first else { return full }
        var answer = Answer(rcode: full.rcode, authoritative: full.authoritative,
                            answers: full.answers.filter { $0.type == first.type && $0.name == first.name })
        answer.authority = []
        answer.dependsOnClient = full.dependsOnClient
        return answer
    }

    /// The general path: the name's plan (`classify`, the naming rules), answered in full.
    func resolve(_ name: DNSName, _ type: UInt16, qclass: UInt16, in snapshot: CatalogSnapshot, depth: Int,
                 client: ClientLocality? = nil) -> Answer {
        guard qclass == DNSClass.inet || qclass == DNSClass.any else { return .refused }
        guard type != RRType.axfr && type != RRType.ixfr else { return .refused }
        return name.wire.withUnsafeBytes { wire -> Answer in
            let plan = classify(wire, in: snapshot) { zone in zone.records[name.lowercased] != nil }
            return answer(plan, name, wire, type, snapshot, depth: depth, client: client)
        }
    }

    private func answer(_ plan: NamePlan, _ name: DNSName, _ wire: UnsafeRawBufferPointer, _ type: UInt16,
                        _ snapshot: CatalogSnapshot, depth: Int, client: ClientLocality?) -> Answer {
        let domain = self.domain(of: plan)
        switch plan.kind {
        case .outside:
            switch outsideSource(name, type, in: snapshot) {
            case .zone(let zone): return resolveStatic(name, type, zone: zone, in: snapshot, depth: depth)
            case .pointer(let answer): return answer
            case .local(let zone): return resolveLocal(name, type, zone: zone, in: snapshot)
            case .refusedZone, .forwarded: return .refused
            }
        case .notLoaded:
            return Answer(rcode: RCode.servFail, authoritative: false)
        case .domainZone:
            return resolveStatic(name, type, zone: snapshot.zone(for: domain)!, in: snapshot, depth: depth)
        case .apex:
            return apex(name, type, snapshot, zone: snapshot.zone(for: domain), domain: domain)
        case .nameserver:
            let records = addressRecords(configuration.nameserverAddresses, owner: name, type: type, ttl: configuration.nodeTTL)
            return records.isEmpty ? negative(RCode.noError, snapshot, plan) : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        case .nxdomain:
            return negative(RCode.nxDomain, snapshot, plan)
        case .nodata:
            return negative(RCode.noError, snapshot, plan)
        case .service(let entry, let selector):
            // The order comes with the selection's templates (built once, as the fast path's), whichever path answers.
            let order = templates(entry, selector, datacenter: plan.datacenter, name: wire, in: snapshot, client: client).order
            return service(name, type, entry: entry, selector: selector.selector(wire), order: order, snapshot, plan, depth: depth)
        case .grpcConfig(let entry):
            return grpcConfig(name, type, policy: grpcPolicy(for: entry)!, entry: entry, snapshot, plan)
        case .node(let node):
            return nodeAnswer(name, type, node, snapshot, plan, depth: depth)
        case .addr(let span):
            let records = Self.address(span, in: wire).map { addressRecords([$0], owner: name, type: type, ttl: configuration.nodeTTL) } ?? []
            return records.isEmpty ? negative(RCode.noError, snapshot, plan) : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        }
    }

    /// Where a question goes with forwarding on: answered here (our data, a zone file, a local zone, a `none`
    /// zone's REFUSED), or to upstreams: a `--forward-zone`'s (`zone`), or else `--upstream`'s (nil).
    public enum Forwarding: Equatable { case local, upstreams(zone: DNSName?) }

    public func forwarding(_ question: Question, in snapshot: CatalogSnapshot) -> Forwarding {
        if servedDomain(containing: question.name) != nil { return .local }
        if case .forwarded(let zone) = outsideSource(question.name, question.type, in: snapshot) { return .upstreams(zone: zone) }
        return .local
    }

    // MARK: Negative answers

    func soa(_ snapshot: CatalogSnapshot, zone: Zone?, domain d: DNSName) -> (record: ResourceRecord, negativeTTL: UInt32) {
        if let zone {
            var rr = zone.soa
            rr.ttl = zone.negativeTTL
            return (rr, zone.negativeTTL)
        }
        let t = ResolverConfiguration.defaultSOATimers
        let soa = RData.SOA(mname: (try? DNSName("ns").appending(d)) ?? d, rname: (try? DNSName("hostmaster").appending(d)) ?? d,
                            serial: snapshot.generation, refresh: t.refresh, retry: t.retry, expire: t.expire,
                            minimum: t.minimum)
        return (ResourceRecord(name: d, ttl: t.minimum, rdata: .soa(soa)), t.minimum)
    }

    /// NXDOMAIN or NODATA in the served domain, with its SOA (RFC 2308).
    func negative(_ rcode: UInt16, _ snapshot: CatalogSnapshot, _ plan: NamePlan) -> Answer {
        let domain = self.domain(of: plan)
        return Answer(rcode: rcode, authoritative: true, authority: [soa(snapshot, zone: snapshot.zone(for: domain), domain: domain).record])
    }

}

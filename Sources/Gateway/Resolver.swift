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
/// The only state it touches is a service's rotation counter, which never changes the snapshot.
public struct Resolver: Sendable {
    public let configuration: ResolverConfiguration
    /// Tells apart the templates this resolver encoded from another configuration's (tests run several).
    let identity: Int
    private static let identities = ManagedAtomic<Int>(1)

    private static let kinds: Set<String> = ["service", "node", "addr"]

    public init(configuration: ResolverConfiguration) {
        self.configuration = configuration
        self.identity = Self.identities.loadThenWrappingIncrement(ordering: .relaxed)
    }

    public func resolve(_ question: Question, in snapshot: CatalogSnapshot) -> Answer {
        let answer = resolve(question.name, question.type, qclass: question.qclass, in: snapshot, depth: 0)
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
        return answer
    }

    private func resolve(_ name: DNSName, _ type: UInt16, qclass: UInt16, in snapshot: CatalogSnapshot, depth: Int) -> Answer {
        guard qclass == DNSClass.inet || qclass == DNSClass.any else { return .refused }
        guard type != RRType.axfr && type != RRType.ixfr else { return .refused }
        if let domain = servedDomain(containing: name) {
            // Until the first snapshot has loaded we know nothing: SERVFAIL, not a false NXDOMAIN.
            guard snapshot.isLoaded else { return Answer(rcode: RCode.servFail, authoritative: false) }
            return resolveDomain(name, type, domain: domain, in: snapshot, depth: depth)
        }
        if let zone = snapshot.zone(containing: name) {
            return resolveStatic(name, type, zone: zone, in: snapshot, depth: depth)
        }
        return pointer(name, type, in: snapshot) ?? .refused
    }

    /// The service domain, or `--alt-domain`, that holds `name` (the longer, when both do).
    public func servedDomain(containing name: DNSName) -> DNSName? {
        let primary = name.isSubdomain(of: configuration.domain) ? configuration.domain : nil
        guard let alt = configuration.altDomain, name.isSubdomain(of: alt) else { return primary }
        guard let primary else { return alt }
        return alt.wire.count > primary.wire.count ? alt : primary
    }

    /// Whether the question is answered from our own data; anything else is forwarded, or REFUSED without forwarding.
    public func answersLocally(_ question: Question, in snapshot: CatalogSnapshot) -> Bool {
        servedDomain(containing: question.name) != nil || snapshot.zone(containing: question.name) != nil
            || pointer(question.name, question.type, in: snapshot) != nil
    }

    // MARK: Reverse names

    /// PTR for an address we know: every node that has it, or else every service whose instances have it as their
    /// own address, named `<node>.node.<dc>.<domain>` and `<service>.service.<dc>.<domain>` as Consul names them,
    /// with `--node-ttl`. Nil for addresses we do not know and for other types at the name: those are not ours,
    /// so they are forwarded (or REFUSED without forwarding).
    func pointer(_ name: DNSName, _ type: UInt16, in snapshot: CatalogSnapshot) -> Answer? {
        guard type == RRType.ptr || type == RRType.any, let ip = Self.reverseAddress(name) else { return nil }
        let domain = configuration.domain
        var targets: [DNSName] = (snapshot.reverse.nodes[ip] ?? []).compactMap { key in
            snapshot.nodes[key].flatMap { try? DNSName(prefix: $0.name, "node", $0.datacenter, suffix: domain) }
        }
        if targets.isEmpty {
            targets = (snapshot.reverse.services[ip] ?? [:]).keys.compactMap { at in
                snapshot.services[at.service].flatMap { try? DNSName(prefix: $0.name, "service", at.datacenter, suffix: domain) }
            }
        }
        guard !targets.isEmpty else { return nil }
        targets.sort { $0.description < $1.description }
        return Answer(rcode: RCode.noError, authoritative: true,
                      answers: targets.map { ResourceRecord(name: name, ttl: configuration.nodeTTL, rdata: .ptr($0)) })
    }

    /// The address a `<reversed IPv4>.in-addr.arpa` or `<32 nibbles>.ip6.arpa` name stands for.
    static func reverseAddress(_ name: DNSName) -> Address? {
        let labels = name.lowercasedLabels
        if labels.count == 6, labels[4] == "in-addr", labels[5] == "arpa" {
            var bytes: [UInt8] = []
            for label in labels[0..<4].reversed() {
                guard (1...3).contains(label.utf8.count), label.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      label == "0" || !label.hasPrefix("0"), let b = UInt8(label) else { return nil }
                bytes.append(b)
            }
            return .v4(IPv4(bytes: bytes))
        }
        if labels.count == 34, labels[32] == "ip6", labels[33] == "arpa" {
            var nibbles: [UInt8] = []
            for label in labels[0..<32].reversed() {
                guard label.utf8.count == 1, let n = UInt8(label, radix: 16) else { return nil }
                nibbles.append(n)
            }
            return .v6(IPv6(bytes: stride(from: 0, to: 32, by: 2).map { nibbles[$0] << 4 | nibbles[$0 + 1] }))
        }
        return nil
    }

    // MARK: The service domain

    private func soa(_ snapshot: CatalogSnapshot, zone: Zone?, domain d: DNSName) -> (record: ResourceRecord, negativeTTL: UInt32) {
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

    private func negative(_ rcode: UInt16, _ snapshot: CatalogSnapshot, zone: Zone?, domain: DNSName) -> Answer {
        Answer(rcode: rcode, authoritative: true, authority: [soa(snapshot, zone: zone, domain: domain).record])
    }

    private func resolveDomain(_ name: DNSName, _ type: UInt16, domain: DNSName, in snapshot: CatalogSnapshot, depth: Int) -> Answer {
        let zone = snapshot.zones.first { $0.origin == domain }
        let labels = name.lowercasedLabels
        let rel = Array(labels.dropLast(domain.labelCount))
        let nxdomain = { negative(RCode.nxDomain, snapshot, zone: zone, domain: domain) }
        let nodata = { negative(RCode.noError, snapshot, zone: zone, domain: domain) }

        // Records a zone file gives for the domain take precedence at their own names.
        if let zone, !rel.isEmpty, zone.records[name.lowercased] != nil {
            return resolveStatic(name, type, zone: zone, in: snapshot, depth: depth)
        }
        // The apex holds the SOA and NS. Below it they are types like any other: NODATA where the name exists and
        // NXDOMAIN where it does not, as for A (RFC 2308). Consul answers the apex's records at every name, which
        // validators and resolvers reject (Consul issue #3439).
        if rel.isEmpty { return apex(name, type, snapshot, zone: zone, domain: domain) }
        if zone == nil, rel == ["ns"] {
            let records = addressRecords(configuration.nameserverAddresses, owner: name, type: type, ttl: configuration.nodeTTL)
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        }

        // [rest].<kind>[.<dc>]: find the kind label from the right, as Consul does.
        let kinds = Self.kinds
        var kind: String
        var dc: String? = nil
        var rest: ArraySlice<String>
        if kinds.contains(rel[rel.count - 1]) {
            kind = rel[rel.count - 1]
            rest = rel.dropLast()
        } else if rel.count >= 2, kinds.contains(rel[rel.count - 2]) {
            kind = rel[rel.count - 2]
            dc = rel[rel.count - 1]
            rest = rel.dropLast(2)
        } else {
            // `<dc>.<domain>` is an empty non-terminal: NODATA, not NXDOMAIN (RFC 8020).
            return rel.count == 1 && snapshot.datacenters.contains(rel[0]) ? nodata() : nxdomain()
        }
        if let dc, !snapshot.datacenters.contains(dc) { return nxdomain() }
        // `service.<domain>`, `node.dc1.<domain>` …: empty non-terminals too.
        if rest.isEmpty { return nodata() }
        let datacenter = dc ?? configuration.datacenter.lowercased()

        switch kind {
        case "service":
            return service(name, type, rest: rest, datacenter: datacenter, domain: domain, snapshot, zone: zone, depth: depth)
        case "node":
            let key = CatalogSnapshot.NodeKey(name: rest.joined(separator: "."), datacenter: datacenter)
            guard let node = snapshot.nodes[key], !node.name.isEmpty else { return nxdomain() }
            var records: [ResourceRecord] = []
            if case .hostname(let host) = node.address {
                // The CNAME an address query follows; a CNAME query gets it as it is (RFC 1034 §3.6.2).
                if type == RRType.cname { return Answer(rcode: RCode.noError, authoritative: true,
                                                        answers: [ResourceRecord(name: name, ttl: configuration.nodeTTL, rdata: .cname(host))]) }
                if type == RRType.a || type == RRType.aaaa {
                    return cname(from: name, to: host, type: type, ttl: configuration.nodeTTL, snapshot, depth: depth)
                }
            }
            if type == RRType.a || type == RRType.aaaa || type == RRType.any {
                records += addressRecords([node.address] + node.lanAddresses, owner: name, type: type, ttl: configuration.nodeTTL)
            }
            if type == RRType.txt || type == RRType.any {
                records += metaTXT(node, owner: name, ttl: configuration.nodeTTL)
            }
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        default:  // addr
            guard rest.count == 1, let address = Self.address(hex: rest.first!) else { return nxdomain() }
            let records = addressRecords([address], owner: name, type: type, ttl: configuration.nodeTTL)
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        }
    }

    /// SOA/NS at the domain's apex; the owner echoes the question.
    private func apex(_ name: DNSName, _ type: UInt16, _ snapshot: CatalogSnapshot, zone: Zone?, domain: DNSName) -> Answer {
        let soaRecord = soa(snapshot, zone: zone, domain: domain).record
        var answer = Answer(rcode: RCode.noError, authoritative: true)
        var ns: [ResourceRecord]
        var glue: [ResourceRecord] = []
        if let zone {
            ns = zone.nsRecords
            for case .ns(let target) in ns.map(\.rdata) {
                glue += zone.rrset(target, RRType.a) + zone.rrset(target, RRType.aaaa)
            }
        } else {
            let target = (try? DNSName("ns").appending(domain)) ?? domain
            ns = [ResourceRecord(name: domain, ttl: configuration.nodeTTL, rdata: .ns(target))]
            glue = addressRecords(configuration.nameserverAddresses, owner: target, type: RRType.any, ttl: configuration.nodeTTL)
        }
        ns = ns.map { var r = $0; r.name = name; return r }
        var soaAnswer = soaRecord
        soaAnswer.name = name
        if case .soa(let s) = soaRecord.rdata { soaAnswer.ttl = zone?.soa.ttl ?? s.minimum }
        switch type {
        case RRType.soa:
            answer.answers = [soaAnswer]
        case RRType.ns:
            answer.answers = ns
            answer.additional = glue
        case RRType.any:
            answer.answers = [soaAnswer] + ns
            answer.additional = glue
        default:
            if let zone, zone.records[name.lowercased] != nil {
                return resolveStatic(name, type, zone: zone, in: snapshot, depth: 0)
            }
            answer.authority = [soaRecord]
        }
        answer.glue = Array(repeating: [], count: answer.answers.count)
        return answer
    }

    private func service(_ name: DNSName, _ type: UInt16, rest: ArraySlice<String>, datacenter: String, domain: DNSName,
                         _ snapshot: CatalogSnapshot, zone: Zone?, depth: Int) -> Answer {
        let nxdomain = { negative(RCode.nxDomain, snapshot, zone: zone, domain: domain) }
        let nodata = { negative(RCode.noError, snapshot, zone: zone, domain: domain) }
        guard let query = Self.serviceQuery(rest, in: snapshot) else {
            return Self.isEmptyNonTerminal(rest, in: snapshot) ? nodata() : nxdomain()
        }
        let entry = query.entry
        if case .tag("_grpc_config") = query.selector, let policy = grpcPolicy(for: entry) {
            return grpcConfig(name, type, policy: policy, entry: entry, snapshot, zone: zone, domain: domain)
        }
        let onlyPassing = configuration.onlyPassing
        let healthy = entry.instances.filter { inst in
            inst.health.isServed(onlyPassing: onlyPassing) && inst.node.datacenter.equalsIgnoringASCIICase(datacenter)
                && query.selector.matches(inst)
        }
        guard !healthy.isEmpty else {
            // `b.web` under a tag `a.b` is an empty non-terminal: `a.b.web` exists below it.
            if case .tag(let t) = query.selector,
               entry.instances.contains(where: { $0.tags.contains { $0.lowercased().hasSuffix("." + t) } }) { return nodata() }
            return nxdomain()
        }
        let ordered = rotate(healthy, entry: entry)
        let ttl = configuration.serviceTTL.ttl(for: entry.name)

        // Only hostname instances: the name is one CNAME (an owner may hold just one), to the first in rotated
        // order, and a name with a CNAME holds nothing else (RFC 1034 §3.6.2, RFC 2181 §10.1). A CNAME query gets
        // it as it is; every other type, SRV included, follows it. (Consul answers SRV there too, which validators
        // report as CNAME_WITH_OTHER_DATA, and which a caching resolver that holds the CNAME never asks for.)
        if let host = Self.cnameTarget(ordered) {
            if type == RRType.cname {
                return Answer(rcode: RCode.noError, authoritative: true, answers: [ResourceRecord(name: name, ttl: ttl, rdata: .cname(host))])
            }
            return cname(from: name, to: host, type: type, ttl: ttl, snapshot, depth: depth)
        }
        switch type {
        case RRType.a, RRType.aaaa, RRType.any:
            let records = addressRecords(Self.answerAddresses(ordered, type), owner: name, type: type, ttl: ttl)
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        case RRType.srv:
            var answers: [ResourceRecord] = []
            var glue: [[ResourceRecord]] = []
            for inst in ordered {
                let (target, targetGlue) = srvTarget(inst, ttl: ttl, domain: domain, snapshot, depth: depth)
                answers.append(ResourceRecord(name: name, ttl: ttl,
                                              rdata: .srv(priority: 1, weight: inst.weight, port: query.selector.port(of: inst),
                                                          target: target)))
                glue.append(targetGlue)
            }
            return Answer(rcode: RCode.noError, authoritative: true, answers: answers, glue: glue)
        default:
            return nodata()
        }
    }

    /// The addresses A, AAAA or ANY answers give for these instances, each picked as Consul picks it
    /// (`Instance.address(v6:)`: tagged LAN addresses first, the service's, then the node's).
    static func answerAddresses(_ instances: [Instance], _ type: UInt16) -> [Address] {
        switch type {
        case RRType.a: return instances.compactMap { $0.address(v6: false) }
        case RRType.aaaa: return instances.compactMap { $0.address(v6: true) }
        default: return instances.flatMap { [$0.address(v6: false), $0.address(v6: true)].compactMap { $0 } }
        }
    }

    /// The CNAME target of a service whose healthy instances all have hostnames: the first, in answer order.
    static func cnameTarget(_ ordered: [Instance]) -> DNSName? {
        var first: DNSName? = nil
        for inst in ordered {
            guard case .hostname(let h) = inst.address else { return nil }
            if first == nil { first = h }
        }
        return first
    }

    // MARK: Service names

    /// What the labels in front of `service[.<dc>]` select: a service, and which of its instances.
    struct ServiceQuery {
        let entry: ServiceEntry
        let selector: ServiceSelector
    }

    /// The naming rule for services, in one place. Service names may contain dots, so the labels are read as
    /// **the longest service name that exists** in the snapshot, and whatever is left in front selects instances:
    /// - nothing: every instance;
    /// - `_<name>._tcp` or `_<name>._udp`: the named port `<name>` (a Kratos endpoint's scheme), or else the tag;
    /// - anything else: a tag, which may itself contain dots (`a.b.web` is the tag `a.b` on `web`, as in Consul).
    /// When no suffix names a service, the RFC 2782 form `_<service>._<tag|tcp|udp>` is tried.
    /// Consul reads every label but the last as a tag; the two differ only when a dotted service exists.
    static func serviceQuery(_ rest: ArraySlice<String>, in snapshot: CatalogSnapshot) -> ServiceQuery? {
        // A label holding a dot (escaped in the query) can never match: dots separate labels in service names.
        guard !rest.contains(where: { $0.utf8.contains(UInt8(ascii: ".")) }) else { return nil }
        for start in rest.indices {
            let candidate = start == rest.index(before: rest.endIndex) ? rest[start] : rest[start...].joined(separator: ".")
            guard let entry = snapshot.services[candidate] else { continue }
            let front = rest[..<start]
            if front.isEmpty { return ServiceQuery(entry: entry, selector: .all) }
            if front.count == 2, let first = front.first, first.hasPrefix("_"), ["_tcp", "_udp"].contains(front.last!) {
                return ServiceQuery(entry: entry, selector: .named(String(first.dropFirst())))
            }
            return ServiceQuery(entry: entry, selector: .tag(front.joined(separator: ".")))
        }
        if rest.count == 2, let first = rest.first, let second = rest.last, first.hasPrefix("_"), second.hasPrefix("_"),
           let entry = snapshot.services[String(first.dropFirst())] {
            let tag = String(second.dropFirst())
            return ServiceQuery(entry: entry, selector: tag == "tcp" || tag == "udp" ? .all : .tag(tag))
        }
        return nil
    }

    /// Names in front of `service` that no service matches, but that exist because something below them does:
    /// a proper suffix of a dotted service name (`greeter` under `go.micro.srv.greeter`), or the `_<tag>`,
    /// `_tcp` and `_udp` parents of RFC 2782 names. NODATA there, not NXDOMAIN, which would deny the names
    /// below (RFC 8020; dnsviz's INCONSISTENT_NXDOMAIN_ANCESTOR).
    static func isEmptyNonTerminal(_ rest: ArraySlice<String>, in snapshot: CatalogSnapshot) -> Bool {
        if snapshot.names.serviceSuffixes[rest.joined(separator: ".")] != nil { return true }
        guard rest.count == 1, let only = rest.first, only.hasPrefix("_") else { return false }
        let tag = String(only.dropFirst())
        return tag == "tcp" || tag == "udp" ? !snapshot.services.isEmpty : snapshot.names.tags[tag] != nil
    }

    // MARK: gRPC service config

    /// The load-balancing policy the service's `_grpc_config` TXT record announces; nil for none.
    /// Service meta `grpc_lb_policy` (on the first instance, in base order, that has it) overrides the flag.
    func grpcPolicy(for entry: ServiceEntry) -> GRPCLBPolicy? {
        var policy = configuration.grpcLBPolicy
        if let text = entry.instances.lazy.compactMap({ $0.meta["grpc_lb_policy"] }).first,
           let own = GRPCLBPolicy(rawValue: text.lowercased()) {
            policy = own
        }
        return policy == .none ? nil : policy
    }

    /// `_grpc_config.<service>.service[.<dc>].<domain>`: the TXT record grpc-go's `dns` resolver reads on every
    /// resolution, so clients pick the policy with no code of their own. Other types get NODATA.
    private func grpcConfig(_ name: DNSName, _ type: UInt16, policy: GRPCLBPolicy, entry: ServiceEntry,
                            _ snapshot: CatalogSnapshot, zone: Zone?, domain: DNSName) -> Answer {
        guard type == RRType.txt || type == RRType.any else { return negative(RCode.noError, snapshot, zone: zone, domain: domain) }
        let text = Array(policy.serviceConfigTXT.utf8)
        let record = ResourceRecord(name: name, ttl: configuration.serviceTTL.ttl(for: entry.name), rdata: .txt(chunks(text)))
        return Answer(rcode: RCode.noError, authoritative: true, answers: [record])
    }

    // MARK: Pre-encoded answers

    /// The entry's answers to `<name>.service.<domain>`, encoded on first use and kept with the entry.
    /// Nil when another configuration encoded them first (only tests run two resolvers over one snapshot).
    public func encodedAnswers(for entry: ServiceEntry, in snapshot: CatalogSnapshot) -> EncodedAnswers? {
        if let e = entry.encoded.load() { return e.owner == identity ? e : nil }
        let e = entry.encoded.storeIfNilThenLoad(encode(entry, snapshot))
        return e.owner == identity ? e : nil
    }

    /// The same records `service(…)` gives for the plain name, in base order, one per healthy instance.
    /// Hostname instances (a CNAME, or glue found by chasing our data) and random order are left to the general path.
    func encode(_ entry: ServiceEntry, _ snapshot: CatalogSnapshot) -> EncodedAnswers {
        let datacenter = configuration.datacenter.lowercased()
        let onlyPassing = configuration.onlyPassing
        let healthy = entry.instances.filter {
            $0.health.isServed(onlyPassing: onlyPassing) && $0.node.datacenter.equalsIgnoringASCIICase(datacenter)
        }
        let none = EncodedAnswers(owner: identity, count: healthy.count, a: nil, aaaa: nil, srv: nil)
        // An answer limit below the instance count walks the set in windows, which templates do not do.
        guard !healthy.isEmpty, configuration.order == .cyclic || healthy.count == 1,
              configuration.answerLimit == 0 || healthy.count <= configuration.answerLimit,
              !healthy.contains(where: { if case .hostname = $0.address { true } else { false } }),
              let name = try? DNSName(labels: entry.name.split(separator: ".", omittingEmptySubsequences: false) + ["service"])
                .appending(configuration.domain) else { return none }
        let ttl = configuration.serviceTTL.ttl(for: entry.name)
        func template(_ type: UInt16) -> AnswerTemplate? {
            var moreGlue = false
            let entries = healthy.map { inst -> AnswerTemplate.Entry in
                switch (type, Self.answerAddresses([inst], type).first) {
                case (RRType.a, .v4(let v4)?): return .init(answer: ResourceRecord(name: name, ttl: ttl, rdata: .a(v4)), glue: nil)
                case (RRType.aaaa, .v6(let v6)?): return .init(answer: ResourceRecord(name: name, ttl: ttl, rdata: .aaaa(v6)), glue: nil)
                case (RRType.srv, _):
                    let (target, glue) = srvTarget(inst, ttl: ttl, domain: configuration.domain, snapshot, depth: 0)
                    if glue.count > 1 { moreGlue = true }
                    return .init(answer: ResourceRecord(name: name, ttl: ttl,
                                                        rdata: .srv(priority: 1, weight: inst.weight, port: inst.port, target: target)),
                                 glue: glue.first)
                default: return .init(answer: nil, glue: nil)
                }
            }
            // A template entry holds one glue record: a dual-stack target (A and AAAA) or node meta TXT takes the
            // general path.
            if moreGlue { return nil }
            return AnswerTemplate(question: Question(name: name, type: type, qclass: DNSClass.inet), entries: entries,
                                  dedupeAnswers: type != RRType.srv)
        }
        return EncodedAnswers(owner: identity, count: healthy.count, a: template(RRType.a), aaaa: template(RRType.aaaa),
                              srv: template(RRType.srv))
    }

    /// Starts the healthy set one position further round for each query (or shuffles it), then applies
    /// `--answer-limit`. With a limit below the count, each query starts a whole window further round, so
    /// ⌈M/N⌉ successive queries return every one of the M instances. Works on a copy: the snapshot's array is
    /// never reordered.
    func rotate(_ instances: [Instance], entry: ServiceEntry) -> [Instance] {
        guard instances.count > 1 else { return instances }
        let limit = configuration.answerLimit
        let capped = limit > 0 && instances.count > limit
        switch configuration.order {
        case .random:
            let shuffled = instances.shuffled()
            return capped ? Array(shuffled.prefix(limit)) : shuffled
        case .cyclic:
            let offset = (entry.nextRotation() % instances.count) * (capped ? limit : 1) % instances.count
            let rotated = Array(instances[offset...] + instances[..<offset])
            return capped ? Array(rotated.prefix(limit)) : rotated
        }
    }

    /// A node's meta as TXT records, `key=value`, one per key in key order (RFC 1464 style, as Consul writes them).
    private func metaTXT(_ node: Node, owner: DNSName, ttl: UInt32) -> [ResourceRecord] {
        node.meta.keys.sorted().map { key in
            ResourceRecord(name: owner, ttl: ttl, rdata: .txt(chunks(Array("\(key)=\(node.meta[key]!)".utf8))))
        }
    }

    /// SRV target and its glue: the node name when the service uses the node's address,
    /// `<hex>.addr.<dc>.<domain>` when it has its own IP, or the hostname itself. With `--node-meta-txt`, the
    /// node's meta TXT records join the glue (Consul's `enable_additional_node_meta_txt`).
    private func srvTarget(_ inst: Instance, ttl: UInt32, domain: DNSName, _ snapshot: CatalogSnapshot, depth: Int) -> (DNSName, [ResourceRecord]) {
        let dc = inst.node.datacenter
        var meta: [ResourceRecord] = []
        if configuration.nodeMetaTXT, !inst.node.name.isEmpty, !inst.node.meta.isEmpty,
           let owner = try? DNSName(prefix: inst.node.name, "node", dc, suffix: domain) {
            meta = metaTXT(inst.node, owner: owner, ttl: ttl)
        }
        if case .hostname(let host) = inst.address {
            return (host, chase(host, snapshot, depth: depth) + meta)
        }
        let target: DNSName
        do {
            target = inst.serviceAddress == nil
                ? try DNSName(prefix: inst.node.name, "node", dc, suffix: domain)
                : try DNSName(prefix: inst.address.hexLabel!, "addr", dc, suffix: domain)
        } catch { return (domain, []) }
        // A node-name target's glue is every address the node's name answers; a <hex>.addr target is one IP.
        let glueAddresses = inst.serviceAddress == nil ? Self.answerAddresses([inst], RRType.any) : [inst.address]
        return (target, addressRecords(glueAddresses, owner: target, type: RRType.any, ttl: ttl) + meta)
    }

    /// A/AAAA glue for a hostname we are authoritative for, if any.
    private func chase(_ host: DNSName, _ snapshot: CatalogSnapshot, depth: Int) -> [ResourceRecord] {
        guard depth < 8 else { return [] }
        var out: [ResourceRecord] = []
        for t in [RRType.a, RRType.aaaa] {
            let a = resolve(host, t, qclass: DNSClass.inet, in: snapshot, depth: depth + 1)
            if a.rcode == RCode.noError { out += a.answers.filter { $0.type == t } }
        }
        return out
    }

    /// A CNAME, followed inside our own data when we can (RFC 1034 §4.3.2 step 3a).
    private func cname(from name: DNSName, to target: DNSName, type: UInt16, ttl: UInt32,
                       _ snapshot: CatalogSnapshot, depth: Int) -> Answer {
        var answer = Answer(rcode: RCode.noError, authoritative: true,
                            answers: [ResourceRecord(name: name, ttl: ttl, rdata: .cname(target))])
        guard depth < 8 else { return answer }
        let next = resolve(target, type, qclass: DNSClass.inet, in: snapshot, depth: depth + 1)
        if next.rcode != RCode.refused {
            answer.rcode = next.rcode
            answer.answers += next.answers
            answer.authority = next.authority
            answer.additional = next.additional
        }
        answer.glue = Array(repeating: [], count: answer.answers.count)
        return answer
    }

    /// A/AAAA records for the addresses of the asked family, without duplicates, in order.
    private func addressRecords(_ addresses: [Address], owner: DNSName, type: UInt16, ttl: UInt32) -> [ResourceRecord] {
        var seen = Set<Address>()
        var out: [ResourceRecord] = []
        for a in addresses where seen.insert(a).inserted {
            switch a {
            case .v4(let v4) where type == RRType.a || type == RRType.any:
                out.append(ResourceRecord(name: owner, ttl: ttl, rdata: .a(v4)))
            case .v6(let v6) where type == RRType.aaaa || type == RRType.any:
                out.append(ResourceRecord(name: owner, ttl: ttl, rdata: .aaaa(v6)))
            default:
                break
            }
        }
        return out
    }

    /// `<hex>.addr`: 8 hex digits for IPv4, 32 for IPv6.
    static func address(hex: String) -> Address? {
        let digits = Array(hex.utf8)
        guard digits.count == 8 || digits.count == 32 else { return nil }
        var bytes: [UInt8] = []
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let b = UInt8(String(decoding: digits[i...(i + 1)], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(b)
        }
        return bytes.count == 4 ? .v4(IPv4(bytes: bytes)) : .v6(IPv6(bytes: bytes))
    }

    /// TXT strings hold at most 255 bytes each.
    private func chunks(_ text: [UInt8]) -> [[UInt8]] {
        guard !text.isEmpty else { return [[]] }
        return stride(from: 0, to: text.count, by: 255).map { Array(text[$0..<min($0 + 255, text.count)]) }
    }

    // MARK: Static zones

    private func resolveStatic(_ name: DNSName, _ type: UInt16, zone: Zone, in snapshot: CatalogSnapshot, depth: Int) -> Answer {
        let key = name.lowercased
        let negativeSOA: ResourceRecord = { var r = zone.soa; r.ttl = zone.negativeTTL; return r }()
        guard let rrs = zone.records[key] else {
            let rcode = zone.names.contains(key) ? RCode.noError : RCode.nxDomain
            return Answer(rcode: rcode, authoritative: true, authority: [negativeSOA])
        }
        let owned = { (r: ResourceRecord) -> ResourceRecord in var c = r; c.name = name; return c }
        let matching = rrs.filter { type == RRType.any || $0.type == type }
        if matching.isEmpty {
            if type != RRType.cname, let c = rrs.first(where: { $0.type == RRType.cname }), case .cname(let target) = c.rdata {
                var answer = cname(from: name, to: target, type: type, ttl: c.ttl, snapshot, depth: depth)
                answer.answers[0].ttl = c.ttl
                return answer
            }
            return Answer(rcode: RCode.noError, authoritative: true, authority: [negativeSOA])
        }
        let answers = matching.map(owned)
        var additional: [ResourceRecord] = []
        for rr in matching {
            switch rr.rdata {
            case .mx(_, let t), .ns(let t), .srv(_, _, _, let t):
                if t.isSubdomain(of: zone.origin) { additional += zone.rrset(t, RRType.a) + zone.rrset(t, RRType.aaaa) }
            default: break
            }
        }
        return Answer(rcode: RCode.noError, authoritative: true, answers: answers, additional: additional)
    }
}

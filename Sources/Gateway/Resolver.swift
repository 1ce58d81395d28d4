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
    private let domainLabelCount: Int
    /// Tells apart the templates this resolver encoded from another configuration's (tests run several).
    let identity: Int
    private static let identities = ManagedAtomic<Int>(1)

    private static let kinds: Set<String> = ["service", "node", "addr"]

    public init(configuration: ResolverConfiguration) {
        self.configuration = configuration
        self.domainLabelCount = configuration.domain.labelCount
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
        if name.isSubdomain(of: configuration.domain) {
            // Until the first snapshot has loaded we know nothing: SERVFAIL, not a false NXDOMAIN.
            guard snapshot.isLoaded else { return Answer(rcode: RCode.servFail, authoritative: false) }
            return resolveDomain(name, type, in: snapshot, depth: depth)
        }
        if let zone = snapshot.zone(containing: name) {
            return resolveStatic(name, type, zone: zone, in: snapshot, depth: depth)
        }
        return .refused
    }

    // MARK: The service domain

    private func soa(_ snapshot: CatalogSnapshot, zone: Zone?) -> (record: ResourceRecord, negativeTTL: UInt32) {
        if let zone {
            var rr = zone.soa
            rr.ttl = zone.negativeTTL
            return (rr, zone.negativeTTL)
        }
        let d = configuration.domain
        let t = ResolverConfiguration.defaultSOATimers
        let soa = RData.SOA(mname: (try? DNSName("ns").appending(d)) ?? d, rname: (try? DNSName("hostmaster").appending(d)) ?? d,
                            serial: snapshot.generation, refresh: t.refresh, retry: t.retry, expire: t.expire,
                            minimum: t.minimum)
        return (ResourceRecord(name: d, ttl: t.minimum, rdata: .soa(soa)), t.minimum)
    }

    private func negative(_ rcode: UInt16, _ snapshot: CatalogSnapshot, zone: Zone?) -> Answer {
        Answer(rcode: rcode, authoritative: true, authority: [soa(snapshot, zone: zone).record])
    }

    private func resolveDomain(_ name: DNSName, _ type: UInt16, in snapshot: CatalogSnapshot, depth: Int) -> Answer {
        let zone = snapshot.zones.first { $0.origin == configuration.domain }
        let labels = name.lowercasedLabels
        let rel = Array(labels.dropLast(domainLabelCount))
        let nxdomain = { negative(RCode.nxDomain, snapshot, zone: zone) }
        let nodata = { negative(RCode.noError, snapshot, zone: zone) }

        // Records a zone file gives for the domain take precedence at their own names.
        if let zone, !rel.isEmpty, zone.records[name.lowercased] != nil {
            return resolveStatic(name, type, zone: zone, in: snapshot, depth: depth)
        }
        // SOA and NS at any name in the domain answer with the domain's own records, as Consul does.
        if rel.isEmpty || type == RRType.soa || type == RRType.ns { return apex(name, type, snapshot, zone: zone, atApex: rel.isEmpty) }
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
            return service(name, type, rest: rest, datacenter: datacenter, snapshot, zone: zone, depth: depth)
        case "node":
            let key = CatalogSnapshot.NodeKey(name: rest.joined(separator: "."), datacenter: datacenter)
            guard let node = snapshot.nodes[key] else { return nxdomain() }
            var records: [ResourceRecord] = []
            if type == RRType.a || type == RRType.aaaa || type == RRType.any {
                if case .hostname(let host) = node.address, type != RRType.any {
                    return cname(from: name, to: host, type: type, ttl: configuration.nodeTTL, snapshot, depth: depth)
                }
                records += addressRecords([node.address], owner: name, type: type, ttl: configuration.nodeTTL)
            }
            if type == RRType.txt || type == RRType.any {
                for key in node.meta.keys.sorted() {
                    let text = Array("\(key)=\(node.meta[key]!)".utf8)
                    records.append(ResourceRecord(name: name, ttl: configuration.nodeTTL, rdata: .txt(chunks(text))))
                }
            }
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        default:  // addr
            guard rest.count == 1, let address = Self.address(hex: rest.first!) else { return nxdomain() }
            let records = addressRecords([address], owner: name, type: type, ttl: configuration.nodeTTL)
            return records.isEmpty ? nodata() : Answer(rcode: RCode.noError, authoritative: true, answers: records)
        }
    }

    /// SOA/NS for the domain. At the apex the owner echoes the question; below it the owner is the
    /// apex, the SOA answer carries the NS set in authority, and glue goes in additional (Consul's shape).
    private func apex(_ question: DNSName, _ type: UInt16, _ snapshot: CatalogSnapshot, zone: Zone?, atApex: Bool) -> Answer {
        let name = atApex ? question : configuration.domain
        let soaRecord = soa(snapshot, zone: zone).record
        var answer = Answer(rcode: RCode.noError, authoritative: true)
        var ns: [ResourceRecord]
        var glue: [ResourceRecord] = []
        if let zone {
            ns = zone.nsRecords
            for case .ns(let target) in ns.map(\.rdata) {
                glue += zone.rrset(target, RRType.a) + zone.rrset(target, RRType.aaaa)
            }
        } else {
            let target = (try? DNSName("ns").appending(configuration.domain)) ?? configuration.domain
            ns = [ResourceRecord(name: configuration.domain, ttl: configuration.nodeTTL, rdata: .ns(target))]
            glue = addressRecords(configuration.nameserverAddresses, owner: target, type: RRType.any, ttl: configuration.nodeTTL)
        }
        ns = ns.map { var r = $0; r.name = name; return r }
        var soaAnswer = soaRecord
        soaAnswer.name = name
        if case .soa(let s) = soaRecord.rdata { soaAnswer.ttl = zone?.soa.ttl ?? s.minimum }
        switch type {
        case RRType.soa:
            answer.answers = [soaAnswer]
            if !atApex {
                answer.authority = ns
                answer.additional = glue
            }
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

    private func service(_ name: DNSName, _ type: UInt16, rest: ArraySlice<String>, datacenter: String,
                         _ snapshot: CatalogSnapshot, zone: Zone?, depth: Int) -> Answer {
        let nxdomain = { negative(RCode.nxDomain, snapshot, zone: zone) }
        guard let query = Self.serviceQuery(rest, in: snapshot) else { return nxdomain() }
        let entry = query.entry
        if case .tag("_grpc_config") = query.selector, let policy = grpcPolicy(for: entry) {
            return grpcConfig(name, type, policy: policy, entry: entry, snapshot, zone: zone)
        }
        let onlyPassing = configuration.onlyPassing
        let healthy = entry.instances.filter { inst in
            inst.health.isServed(onlyPassing: onlyPassing) && inst.node.datacenter.equalsIgnoringASCIICase(datacenter)
                && query.selector.matches(inst)
        }
        guard !healthy.isEmpty else { return nxdomain() }
        let ordered = rotate(healthy, entry: entry)
        let ttl = configuration.serviceTTL.ttl(for: entry.name)

        switch type {
        case RRType.a, RRType.aaaa, RRType.any:
            let records = addressRecords(ordered.map(\.address), owner: name, type: type, ttl: ttl)
            if !records.isEmpty { return Answer(rcode: RCode.noError, authoritative: true, answers: records) }
            // Only hostname instances: one CNAME (an owner may hold just one), to the first in rotated order.
            if let host = ordered.lazy.compactMap({ inst -> DNSName? in
                if case .hostname(let h) = inst.address { return h } else { return nil }
            }).first {
                return cname(from: name, to: host, type: type, ttl: ttl, snapshot, depth: depth)
            }
            return negative(RCode.noError, snapshot, zone: zone)
        case RRType.srv:
            var answers: [ResourceRecord] = []
            var glue: [[ResourceRecord]] = []
            for inst in ordered {
                let (target, targetGlue) = srvTarget(inst, ttl: ttl, snapshot, depth: depth)
                answers.append(ResourceRecord(name: name, ttl: ttl,
                                              rdata: .srv(priority: 1, weight: inst.weight, port: query.selector.port(of: inst),
                                                          target: target)))
                glue.append(targetGlue)
            }
            return Answer(rcode: RCode.noError, authoritative: true, answers: answers, glue: glue)
        default:
            return negative(RCode.noError, snapshot, zone: zone)
        }
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
                            _ snapshot: CatalogSnapshot, zone: Zone?) -> Answer {
        guard type == RRType.txt || type == RRType.any else { return negative(RCode.noError, snapshot, zone: zone) }
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
        guard !healthy.isEmpty, configuration.order == .cyclic || healthy.count == 1,
              !healthy.contains(where: { if case .hostname = $0.address { true } else { false } }),
              let name = try? DNSName(labels: entry.name.split(separator: ".", omittingEmptySubsequences: false) + ["service"])
                .appending(configuration.domain) else { return none }
        let ttl = configuration.serviceTTL.ttl(for: entry.name)
        func template(_ type: UInt16) -> AnswerTemplate? {
            let entries = healthy.map { inst -> AnswerTemplate.Entry in
                switch (type, inst.address) {
                case (RRType.a, .v4(let v4)): return .init(answer: ResourceRecord(name: name, ttl: ttl, rdata: .a(v4)), glue: nil)
                case (RRType.aaaa, .v6(let v6)): return .init(answer: ResourceRecord(name: name, ttl: ttl, rdata: .aaaa(v6)), glue: nil)
                case (RRType.srv, _):
                    let (target, glue) = srvTarget(inst, ttl: ttl, snapshot, depth: 0)
                    return .init(answer: ResourceRecord(name: name, ttl: ttl,
                                                        rdata: .srv(priority: 1, weight: inst.weight, port: inst.port, target: target)),
                                 glue: glue.first)
                default: return .init(answer: nil, glue: nil)
                }
            }
            return AnswerTemplate(question: Question(name: name, type: type, qclass: DNSClass.inet), entries: entries,
                                  dedupeAnswers: type != RRType.srv)
        }
        return EncodedAnswers(owner: identity, count: healthy.count, a: template(RRType.a), aaaa: template(RRType.aaaa),
                              srv: template(RRType.srv))
    }

    /// Starts the healthy set one position further round for each query (or shuffles it).
    /// Works on a copy: the snapshot's array is never reordered.
    func rotate(_ instances: [Instance], entry: ServiceEntry) -> [Instance] {
        guard instances.count > 1 else { return instances }
        switch configuration.order {
        case .random:
            return instances.shuffled()
        case .cyclic:
            let offset = entry.nextRotation() % instances.count
            return Array(instances[offset...] + instances[..<offset])
        }
    }

    /// SRV target and its glue: the node name when the service uses the node's address,
    /// `<hex>.addr.<dc>.<domain>` when it has its own IP, or the hostname itself.
    private func srvTarget(_ inst: Instance, ttl: UInt32, _ snapshot: CatalogSnapshot, depth: Int) -> (DNSName, [ResourceRecord]) {
        let dc = inst.node.datacenter
        let domain = configuration.domain
        if case .hostname(let host) = inst.address {
            return (host, chase(host, snapshot, depth: depth))
        }
        let target: DNSName
        do {
            target = inst.serviceAddress == nil
                ? try DNSName(prefix: inst.node.name, "node", dc, suffix: domain)
                : try DNSName(prefix: inst.address.hexLabel!, "addr", dc, suffix: domain)
        } catch { return (domain, []) }
        return (target, addressRecords([inst.address], owner: target, type: RRType.any, ttl: ttl))
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

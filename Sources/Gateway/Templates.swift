import Atomics
import Catalog
import DNSWire
import Metrics

/// A service's answers for one selection (all instances, a tag, a named port; a datacenter), pre-encoded for one
/// resolver configuration. A nil template means that query type takes the general path (no such records, or a
/// shape templates do not cover).
public final class EncodedAnswers: Sendable {
    /// The healthy instances in their groups, and which comes first turn by turn: what both paths order by.
    let order: SelectionOrder
    public let a: AnswerTemplate?
    public let aaaa: AnswerTemplate?
    public let srv: AnswerTemplate?

    /// How many instances the answers rotate over.
    public let count: Int
    /// How many groups the order has (more than one only for nearest-first answers).
    let groupCount: Int

    init(order: SelectionOrder, a: AnswerTemplate? = nil, aaaa: AnswerTemplate? = nil, srv: AnswerTemplate? = nil) {
        self.order = order
        self.a = a
        self.aaaa = aaaa
        self.srv = srv
        count = order.instances.count
        groupCount = order.groups.count
    }

    /// Writes `template` (one of this selection's) for the entry's next `type` turn, in the order the general
    /// path's `ordered` gives for the same turn; returns the end offset. Reads the order in place, so the fast path
    /// copies none of its arrays.
    @inline(__always)
    func write(_ template: AnswerTemplate, turn: () -> Int, type: UInt16, into out: UnsafeMutableRawBufferPointer, at p: Int) -> Int {
        if groupCount > 1 {
            return template.write(groups: order.ends, offsets: order.offsets(turn(), type: type), into: out, at: p)
        }
        let rotation = count > 1 ? order.offset(0, turn: turn(), type: type) : 0
        return template.write(rotation: rotation, into: out, at: p)
    }

    func template(_ type: UInt16) -> AnswerTemplate? {
        switch type {
        case RRType.a: return a
        case RRType.aaaa: return aaaa
        case RRType.srv: return srv
        default: return nil
        }
    }
}

/// What one resolver has encoded for one service entry: the plain selection, and a bounded number of others (tags,
/// named ports, datacenters, client zones; `Resolver.templateLimit`), so that a client asking for random tags cannot
/// make an entry grow without bound.
final class EntryTemplates: Sendable {

    final class Others: AtomicReference, Sendable {
        let map: [SelectionKey: EncodedAnswers]
        init(_ map: [SelectionKey: EncodedAnswers]) { self.map = map }
    }

    let local = ManagedAtomicLazyReference<EncodedAnswers>()
    let others = ManagedAtomic<Others>(Others([:]))
}

/// `signpost_answers_encoded_total`: how many selections have been encoded. Flat while the catalog and the
/// resolver's settings stand still, whatever the query rate (a reload that keeps the resolver keeps it flat too).
let encodedCounter = Counter(label: "signpost_answers_encoded_total")

extension Resolver {
    /// The encoded answers a service plan selects, built on first use and kept with the entry (so they live as
    /// long as the service is unchanged, and across reloads that keep this resolver). `name` is the query name
    /// the plan's spans point into. Allocates only when it encodes.
    /// With nearest-first answers, each client zone has its own (`client`).
    func templates(_ entry: ServiceEntry, _ selector: NamePlan.Selector, datacenter: NameSpan?,
                   name: UnsafeRawBufferPointer, in snapshot: CatalogSnapshot, client: ClientLocality? = nil) -> EncodedAnswers {
        let cache = entryTemplates(entry)
        let kind: UInt8
        let label: NameSpan?
        switch selector {
        case .all:
            let local = datacenter.map { span in span.probe(name) { $0.matches(configuration.datacenterKey) } } ?? true
            if local && client == nil {
                if let e = cache.local.load() { return e }
                return cache.local.storeIfNilThenLoad(encode(entry, .all, datacenter: configuration.datacenterKey.text, snapshot))
            }
            (kind, label) = (0, nil)
        case .tag(let span): (kind, label) = (1, span)
        case .named(let span): (kind, label) = (2, span)
        }
        let zone = client.map { NameKey($0.zone) } ?? ""
        let current = cache.others.load(ordering: .acquiring)
        let found = withDatacenter(datacenter, name) { dc in
            guard let label else { return NameProbe.with("") { current.map.value(kind: kind, label: $0, datacenter: dc, zone: zone) } }
            return label.probe(name) { current.map.value(kind: kind, label: $0, datacenter: dc, zone: zone) }
        }
        if let found { return found }
        let dc = datacenter?.text(name) ?? configuration.datacenterKey.text
        let encoded = encode(entry, selector.selector(name), datacenter: dc, snapshot, client: client)
        // Keep it only if it answers something; the key owns its text (the probe's bytes are the query's).
        guard encoded.count > 0, current.map.count < templateLimit else { return encoded }
        var map = current.map
        map[SelectionKey(kind: kind, label: label?.text(name) ?? "", datacenter: dc, zone: client?.zone ?? "")] = encoded
        // A lost race only means encoding again later.
        _ = cache.others.compareExchange(expected: current, desired: EntryTemplates.Others(map), ordering: .acquiringAndReleasing)
        return encoded
    }

    /// This resolver's templates for the entry; another resolver's (before a reload that changed the
    /// configuration) are replaced.
    private func entryTemplates(_ entry: ServiceEntry) -> EntryTemplates {
        let attached = entry.attachment(owner: identity) ?? entry.attach(EntryAttachment(owner: identity, object: EntryTemplates()))
        // Only this resolver attaches under its identity, and always an EntryTemplates; unsafeDowncast checks that
        // in debug builds and costs nothing in release ones.
        return unsafeDowncast(attached.object, to: EntryTemplates.self)
    }

    /// The same records `service(…)` gives for the selection, in the order's base order (its groups, nearest first),
    /// one per instance `selected` keeps, with the order itself. Templates are left out (nil) for hostname
    /// instances (a CNAME, or glue found by chasing our data), random order and an answer limit below the count:
    /// the general path answers those, with the same order.
    func encode(_ entry: ServiceEntry, _ selector: ServiceSelector, datacenter: String, _ snapshot: CatalogSnapshot,
                client: ClientLocality? = nil) -> EncodedAnswers {
        encodedCounter.increment()
        let order = answerOrder(selected(entry, selector, datacenter: datacenter), client: client, known: entry.instances)
        let healthy = order.instances
        guard !healthy.isEmpty, configuration.order == .cyclic || healthy.count == 1,
              configuration.answerLimit == 0 || healthy.count <= configuration.answerLimit,
              !healthy.contains(where: { if case .hostname = $0.address { true } else { false } }),
              let name = try? DNSName(labels: entry.name.split(separator: ".", omittingEmptySubsequences: false) + ["service"])
                .appending(configuration.domain) else { return EncodedAnswers(order: order) }
        let ttl = configuration.serviceTTL.ttl(for: entry.name)
        func template(_ type: UInt16) -> AnswerTemplate? {
            let entries: [AnswerTemplate.Entry]
            if type == RRType.srv {
                let (answers, glue) = srvRecords(healthy, owner: name, selector: selector, ttl: ttl, domain: configuration.domain,
                                                 snapshot, depth: 0, preferred: order.preferred ? order.groups[0].size : 0)
                // A template entry holds one glue record: a dual-stack target (A and AAAA) or node meta TXT takes
                // the general path.
                if glue.contains(where: { $0.count > 1 }) { return nil }
                entries = zip(answers, glue).map { AnswerTemplate.Entry(answer: $0, glue: $1.first) }
            } else {
                entries = healthy.map { inst in
                    let record = Self.answerAddresses([inst], type).first.flatMap { a -> ResourceRecord? in
                        switch a {
                        case .v4(let v4): return ResourceRecord(name: name, ttl: ttl, rdata: .a(v4))
                        case .v6(let v6): return ResourceRecord(name: name, ttl: ttl, rdata: .aaaa(v6))
                        case .hostname: return nil
                        }
                    }
                    return AnswerTemplate.Entry(answer: record, glue: nil)
                }
            }
            return AnswerTemplate(question: Question(name: name, type: type, qclass: DNSClass.inet), entries: entries,
                                  dedupeAnswers: type != RRType.srv)
        }
        return EncodedAnswers(order: order, a: template(RRType.a), aaaa: template(RRType.aaaa), srv: template(RRType.srv))
    }
}

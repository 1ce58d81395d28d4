import Catalog
import DNSWire
import Foundation

/// Why a name gets the answer it gets: how the naming rules read it, the answer, every instance of the service
/// with the reason it is left out (the check that excludes it, a missing tag, another datacenter, the answer
/// limit), where each came from and when it last changed, and the registries' state. `signpost explain` and
/// `GET /v1/explain` show it.
public struct Explanation: Codable, Sendable {
    public struct Parse: Codable, Sendable {
        /// service, node, addr, nxdomain, nodata, apex, nameserver, zone, grpc-config, outside, not-loaded.
        public var kind: String
        public var service: String?
        public var tag: String?
        /// `_<name>._tcp`: the named port (or else tag) asked for.
        public var namedPort: String?
        public var datacenter: String?
        /// Which rule decided.
        public var rule: String
    }

    public struct Record: Codable, Sendable, Equatable {
        public var name: String
        public var ttl: UInt32
        public var type: String
        public var data: String
    }

    public struct Reply: Codable, Sendable {
        public var rcode: String
        public var answers: [Record]
        public var additional: [Record]
        public var authority: [Record]
    }

    public struct Check: Codable, Sendable {
        public var id: String
        public var name: String
        public var status: String
        public var output: String
        /// `node` or `service`.
        public var level: String
        /// Whether this check keeps the instance out of answers.
        public var excludes: Bool
    }

    public struct Instance: Codable, Sendable {
        public var service: String
        public var id: String
        public var node: String
        public var datacenter: String
        public var address: String
        public var port: UInt16
        public var tags: [String]
        public var health: String
        /// In the answer given now.
        public var answered: Bool
        /// Why it is left out (empty when answered).
        public var reasons: [String]
        public var checks: [Check]
        /// `file`, `etcd` or `consul`.
        public var registry: String
        /// File and line, etcd key and revision, or Consul service and index.
        public var origin: String
        /// When it last changed, in seconds since the epoch.
        public var changed: Double?
        /// Where it runs (region/zone), and its group from the client with nearest-first answers: `zone`
        /// (the client's), `region` (the rest of the client's region), `elsewhere`; nil without a preference.
        public var locality: String?
        public var group: String?
    }

    /// Where the query is taken to come from, with `--locality`: the client's zone and what said so.
    public struct Client: Codable, Sendable {
        public var address: String?
        public var zone: String?
        public var source: String
        /// Whether the answer prefers the client's group; why not, when it does not.
        public var preference: String
    }

    public var name: String
    public var type: String
    public var parse: Parse
    public var answer: Reply
    public var instances: [Instance]
    public var registries: [Activity.Registry]
    /// How old the data is, in seconds, while a registry is out of contact.
    public var staleness: Double?
    /// Registrations left out that this name may have meant.
    public var skipped: [Activity.Skip]
    /// With `--locality`: where the client is taken to be.
    public var client: Client? = nil
}

extension QueryHandler {
    /// Explains `name` (a bare service name is read as `<name>.service.<domain>`) for `type` (a mnemonic or a
    /// number), answering it as a query would be answered now. Nil for a name or type that cannot be asked.
    /// `client`: the address to answer as if the query came from (for `--locality`); none: Signpost's own zone.
    public func explain(name text: String, type typeText: String, client clientText: String? = nil) -> Explanation? {
        let config = resolver.configuration
        let bare = !text.contains(".") && !text.isEmpty
        guard let type = Self.typeCode(typeText), !text.isEmpty else { return nil }
        let name: DNSName
        do { name = try DNSName(bare ? "\(text).service.\(config.domain)" : text) } catch {
            // No query can ask for it; a registry may still have registered it, and Signpost then left it out.
            return Explanation(
                name: text, type: Self.typeName(type),
                parse: Explanation.Parse(kind: "not-a-name", rule: "cannot be asked for: it is not a DNS name (\(error))"),
                answer: Explanation.Reply(rcode: "-", answers: [], additional: [], authority: []), instances: [],
                registries: store.activity.registries(), staleness: store.staleness().map { Double($0.components.seconds) },
                skipped: store.activity.recentSkips().filter { $0.name.lowercased() == text.lowercased() })
        }
        let snapshot = store.snapshot
        let question = Question(name: name, type: type)
        let address = clientText.flatMap { t in IPv4(t)?.array ?? IPv6(t)?.bytes }
        let located = address.map { a in a.withUnsafeBytes { resolver.clientLocality(address: $0) } } ?? resolver.clientLocality(address: nil)
        let answer = tooStale(question) ? Answer(rcode: RCode.servFail, authoritative: false) : resolver.resolve(question, in: snapshot, client: located)
        let plan = name.wire.withUnsafeBytes { wire in
            resolver.classify(wire, in: snapshot) { zone in zone.records[name.lowercased] != nil }
        }
        var explanation = Explanation(
            name: name.description, type: Self.typeName(type), parse: parse(plan, name, outside: { resolver.outsideSource(name, type, in: snapshot) }), answer: Self.reply(answer),
            instances: [], registries: store.activity.registries(), staleness: store.staleness().map { Double($0.components.seconds) },
            skipped: [])
        if case .service(let entry, let selector) = plan.kind {
            let datacenter = name.wire.withUnsafeBytes { plan.datacenter?.text($0) } ?? config.datacenter
            let chosen = name.wire.withUnsafeBytes { selector.selector($0) }
            let held = Held(answer)
            explanation.instances = entry.instances.map {
                report($0, selector: chosen, datacenter: datacenter, asked: plan.datacenter != nil, answer: answer, held: held, type: type)
            }
            // Where each instance runs, with or without --locality (the status page counts healthy ones per zone).
            for (k, inst) in entry.instances.enumerated() {
                let place = resolver.locality(of: inst)
                if !place.isEmpty { explanation.instances[k].locality = place.description }
            }
            if config.locality.mode != .off {
                let (groups, labels, preferred) = resolver.labelledGroups(resolver.selected(entry, chosen, datacenter: datacenter), client: located, known: entry.instances)
                let names = config.locality.mode == .zone ? ["zone", "region", "elsewhere"] : ["region", "elsewhere", "elsewhere"]
                for (k, inst) in entry.instances.enumerated() {
                    guard preferred, let g = groups.firstIndex(where: { $0.contains { $0.identity == inst.identity } }) else { continue }
                    explanation.instances[k].group = names[labels[g].rawValue]
                }
                explanation.client = Explanation.Client(
                    address: clientText, zone: located?.zone, source: located?.source.description ?? "none: no --client-zone network holds it and no --zone",
                    preference: preferred ? "the client's \(names[0]) first" : located == nil ? "none: the client's zone is unknown"
                        : "none: too few healthy instances near the client (--locality-min, --locality-min-share)")
            }
        }
        if answer.rcode == RCode.nxDomain || explanation.instances.isEmpty {
            let wanted = (bare ? text : name.description).lowercased()
            explanation.skipped = store.activity.recentSkips().filter {
                let n = $0.name.lowercased()
                return !n.isEmpty && (wanted.contains(n) || n.contains(wanted.split(separator: ".").first.map(String.init) ?? wanted))
            }
        }
        return explanation
    }

    /// How the naming rules read the name, and which rule decided.
    /// `outside`: where a name outside the served domains is answered from (asked only for those).
    private func parse(_ plan: NamePlan, _ name: DNSName, outside: () -> Resolver.OutsideSource) -> Explanation.Parse {
        let dc = name.wire.withUnsafeBytes { plan.datacenter?.text($0) }
        func p(_ kind: String, _ rule: String) -> Explanation.Parse {
            Explanation.Parse(kind: kind, datacenter: dc, rule: rule)
        }
        switch plan.kind {
        case .outside:
            switch outside() {
            case .zone(let zone): return p("outside", "outside the service domain: the zone file for \(zone.origin)")
            case .pointer: return p("outside", "outside the service domain: a reverse name for an address in the catalog, its PTR")
            case .local(let zone):
                return p("outside", "outside the service domain: the locally served zone \(zone.origin) (RFC 6303, RFC 6761), answered here, never forwarded")
            case .refusedZone(let zone): return p("outside", "outside the service domain: --forward-zone \(zone)=none, REFUSED, never forwarded")
            case .forwarded(let zone):
                let upstreams = forwarder?.upstreams(for: zone).map { "\($0)" }.joined(separator: ", ") ?? ""
                guard !upstreams.isEmpty else { return p("outside", "outside the service domain, and not forwarded: REFUSED") }
                return p("outside", "outside the service domain: forwarded by \(zone.map { "--forward-zone \($0)" } ?? "--upstream") to \(upstreams)")
            }
        case .notLoaded: return p("not-loaded", "the registries have not loaded yet: SERVFAIL, never a false NXDOMAIN")
        case .apex: return p("apex", "the domain's apex: SOA and NS")
        case .nameserver: return p("nameserver", "ns.<domain>: this server's addresses")
        case .domainZone: return p("zone", "a zone file for the domain holds records at this name; they take precedence")
        case .nxdomain: return p("nxdomain", "no service, tag, node, address or datacenter by this name")
        case .nodata: return p("nodata", "an empty non-terminal: names exist below it, none at it (RFC 8020)")
        case .grpcConfig(let entry):
            var out = p("grpc-config", "_grpc_config: the gRPC service config TXT of the service")
            out.service = entry.name
            return out
        case .node(let node): return p("node", "<node>.node[.<dc>]: the node \(node.name)")
        case .addr: return p("addr", "<hex>.addr[.<dc>]: the address the label encodes")
        case .service(let entry, let selector):
            var out = p("service", "")
            out.service = entry.name
            let dotted = entry.name.contains(".")
            let underscored = name.labels.first?.first == UInt8(ascii: "_")
            switch name.wire.withUnsafeBytes({ selector.selector($0) }) {
            case .all:
                out.rule = underscored ? "RFC 2782 _<service>._tcp|_udp: every instance"
                    : dotted ? "the longest existing service name (\(entry.name))" : "service name"
            case .tag(let t):
                out.tag = t
                out.rule = underscored ? "RFC 2782 _<service>._<tag>: the tag \(t)"
                    : "the labels in front of the longest existing service name (\(entry.name)) are a tag"
            case .named(let n):
                out.namedPort = n
                out.rule = "_<name>._tcp in front of a service: the named port \(n), or else the tag \(n)"
            }
            return out
        }
    }

    /// One instance of the service, with why it is out of the answer.
    private func report(_ inst: Catalog.Instance, selector: ServiceSelector, datacenter: String, asked: Bool, answer: Answer,
                        held: Held, type: UInt16) -> Explanation.Instance {
        let why = resolver.exclusions(inst, selector, datacenter: datacenter)
        let onlyPassing = resolver.configuration.onlyPassing
        var reasons: [String] = []
        let checks = inst.checks.map { c in
            Explanation.Check(id: c.id, name: c.name, status: c.status.description, output: c.output, level: c.nodeLevel ? "node" : "service",
                              excludes: why.contains(.health) && !c.status.isServed(onlyPassing: onlyPassing))
        }
        if why.contains(.health) {
            let culprits = checks.filter(\.excludes)
            if culprits.isEmpty {
                // A registry without checks (an etcd value's Status) sets the health itself.
                reasons.append("status \(inst.health)" + (inst.checks.isEmpty ? " in the registry's value" : ""))
            }
            for c in culprits {
                reasons.append("check \(c.id)\(c.name.isEmpty || c.name == c.id ? "" : " (\(c.name))") is \(c.status) at \(c.level) level"
                    + (c.output.isEmpty ? "" : ": \(c.output)"))
            }
        }
        if why.contains(.datacenter) {
            reasons.append(asked ? "datacenter \(inst.node.datacenter), not \(datacenter) as asked" : "datacenter \(inst.node.datacenter) not local (\(datacenter))")
        }
        if why.contains(.selector) {
            switch selector {
            case .tag(let t): reasons.append("tag \(t) not present")
            case .named(let n): reasons.append("no named port or tag \(n)")
            case .all: break
            }
        }
        let answered = why.isEmpty && held.holds(inst, type: type)
        if why.isEmpty && !answered { reasons.append(notHeld(inst, answer: answer, held: held, type: type)) }
        return Explanation.Instance(
            service: inst.service, id: inst.id, node: inst.node.name, datacenter: inst.node.datacenter, address: inst.address.description,
            port: inst.port, tags: inst.tags, health: inst.health.description, answered: answered, reasons: reasons, checks: checks,
            registry: inst.origin.registry, origin: inst.origin.description, changed: store.activity.changedAt(inst))
    }

    /// Why an instance that every rule lets in is not in the answer.
    private func notHeld(_ inst: Catalog.Instance, answer: Answer, held: Held, type: UInt16) -> String {
        if answer.rcode != RCode.noError {
            return "the answer is \(Self.rcodeName(answer.rcode))" + (answer.rcode == RCode.servFail ? " (registry data older than --max-stale)" : "")
        }
        guard [RRType.a, RRType.aaaa, RRType.srv, RRType.any, RRType.cname].contains(type) else {
            return "a \(Self.typeName(type)) question gets no instance records"
        }
        if case .hostname = inst.address, held.hasCNAME {
            return "a name holds one CNAME: to the first hostname instance in answer order"
        }
        let limit = resolver.configuration.answerLimit
        if limit > 0 { return "answer limit (\(limit) per answer; answers rotate through the rest)" }
        return "no \(Self.typeName(type)) record for its address \(inst.address)"
    }

    /// What an answer holds, gathered once: the addresses (and hostnames) among its records, and its SRV ports.
    struct Held {
        var addresses: Set<Address> = []
        var ports: Set<UInt16> = []
        var hasCNAME = false

        init(_ answer: Answer) {
            for rr in answer.answers + answer.glue.flatMap({ $0 }) + answer.additional {
                switch rr.rdata {
                case .a(let a): addresses.insert(.v4(a))
                case .aaaa(let a): addresses.insert(.v6(a))
                case .cname(let n): addresses.insert(.hostname(n)); hasCNAME = true
                case .srv(_, _, let port, let target): addresses.insert(.hostname(target)); ports.insert(port)
                default: break
                }
            }
        }

        /// Its address (or hostname) among the records, and for SRV its port. Instances that share an address are
        /// all held when it is.
        func holds(_ inst: Catalog.Instance, type: UInt16) -> Bool {
            let mine = [inst.address(v6: false), inst.address(v6: true), inst.address].compactMap { $0 }
            guard mine.contains(where: addresses.contains) else { return false }
            return type != RRType.srv || ports.contains(inst.port) || inst.namedPorts.values.contains(where: ports.contains)
        }
    }

    static func reply(_ answer: Answer) -> Explanation.Reply {
        Explanation.Reply(rcode: rcodeName(answer.rcode), answers: answer.answers.map(record),
                          additional: (answer.glue.flatMap { $0 } + answer.additional).map(record), authority: answer.authority.map(record))
    }

    static func record(_ rr: ResourceRecord) -> Explanation.Record {
        let data: String
        switch rr.rdata {
        case .a(let a): data = a.description
        case .aaaa(let a): data = a.description
        case .ns(let n), .cname(let n), .ptr(let n): data = n.description
        case .mx(let p, let e): data = "\(p) \(e)"
        case .txt(let chunks): data = chunks.map { "\"\(String(decoding: $0, as: UTF8.self))\"" }.joined(separator: " ")
        case .srv(let p, let w, let port, let t): data = "\(p) \(w) \(port) \(t)"
        case .soa(let s): data = "\(s.mname) \(s.rname) \(s.serial) \(s.refresh) \(s.retry) \(s.expire) \(s.minimum)"
        case .unknown(let bytes): data = "\\# \(bytes.count)"
        }
        return Explanation.Record(name: rr.name.description, ttl: rr.ttl, type: typeName(rr.type), data: data)
    }

    static let typeNames: [(UInt16, String)] = [(RRType.a, "A"), (RRType.aaaa, "AAAA"), (RRType.srv, "SRV"), (RRType.txt, "TXT"),
                                                 (RRType.ptr, "PTR"), (RRType.cname, "CNAME"), (RRType.ns, "NS"), (RRType.soa, "SOA"),
                                                 (RRType.mx, "MX"), (RRType.any, "ANY")]

    static func typeName(_ type: UInt16) -> String { typeNames.first { $0.0 == type }?.1 ?? "TYPE\(type)" }

    static func typeCode(_ text: String) -> UInt16? {
        let upper = text.uppercased()
        if let known = typeNames.first(where: { $0.1 == upper }) { return known.0 }
        if upper.hasPrefix("TYPE") { return UInt16(upper.dropFirst(4)) }
        return UInt16(upper)
    }

    static func rcodeName(_ rcode: UInt16) -> String {
        rcode < QueryObserver.rcodes.count ? QueryObserver.rcodes[Int(rcode)] : "RCODE\(rcode)"
    }
}

import Catalog
import DNSWire

/// What leaves an instance out of a service's answers (besides `--answer-limit`).
struct Exclusions: OptionSet {
    let rawValue: UInt8
    /// Critical or in maintenance; or warning, with `--only-passing`.
    static let health = Exclusions(rawValue: 1)
    /// In another datacenter than the one asked for (the local one, when the name gives none).
    static let datacenter = Exclusions(rawValue: 2)
    /// Without the tag, or the named port, that the name asks for.
    static let selector = Exclusions(rawValue: 4)
}

/// Answers for services: address and SRV records, CNAMEs for hostname instances, the gRPC service config.
extension Resolver {
    /// The instances a service plan selects, healthy and in the datacenter, as A, AAAA or SRV records, in the
    /// selection's `order` (nearest first, rotated).
    func service(_ name: DNSName, _ type: UInt16, entry: ServiceEntry, selector: ServiceSelector, order: SelectionOrder,
                 _ snapshot: CatalogSnapshot, _ plan: NamePlan, depth: Int) -> Answer {
        guard !order.instances.isEmpty else {
            // `b.web` under a tag `a.b` is an empty non-terminal: `a.b.web` exists below it.
            if case .tag(let t) = selector,
               entry.instances.contains(where: { $0.tags.contains { $0.lowercased().hasSuffix("." + t) } }) {
                return negative(RCode.noError, snapshot, plan)
            }
            return negative(RCode.nxDomain, snapshot, plan)
        }
        let (ordered, preferred) = self.ordered(order, entry: entry, type: type)
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
        var answer: Answer
        switch type {
        case RRType.a, RRType.aaaa, RRType.any:
            let records = addressRecords(Self.answerAddresses(ordered, type), owner: name, type: type, ttl: ttl)
            guard !records.isEmpty else { return negative(RCode.noError, snapshot, plan) }
            answer = Answer(rcode: RCode.noError, authoritative: true, answers: records)
        case RRType.srv:
            let (answers, glue) = srvRecords(ordered, owner: name, selector: selector, ttl: ttl, domain: domain(of: plan), snapshot, depth: depth,
                                             preferred: preferred)
            answer = Answer(rcode: RCode.noError, authoritative: true, answers: answers, glue: glue)
        default:
            return negative(RCode.noError, snapshot, plan)
        }
        answer.dependsOnClient = order.preferred
        return answer
    }

    /// The instances an answer may hold: served by health (`--only-passing`), in the datacenter, and selected.
    /// The one health rule both paths use (and `explain`, through `exclusions`).
    func selected(_ entry: ServiceEntry, _ selector: ServiceSelector, datacenter: String) -> [Instance] {
        entry.instances.filter { exclusions($0, selector, datacenter: datacenter).isEmpty }
    }

    /// Why an answer for `selector` in `datacenter` leaves `inst` out; empty when it may hold it.
    func exclusions(_ inst: Instance, _ selector: ServiceSelector, datacenter: String) -> Exclusions {
        var out: Exclusions = []
        if !inst.health.isServed(onlyPassing: configuration.onlyPassing) { out.insert(.health) }
        if !inst.node.datacenter.equalsIgnoringASCIICase(datacenter) { out.insert(.datacenter) }
        if !selector.matches(inst) { out.insert(.selector) }
        return out
    }

    /// SRV records in the given order, with each target's glue. The first `preferred` (the client's nearest group)
    /// have priority 1 and the rest 2, so an RFC 2782 client fails over to them by itself; with no preference,
    /// every record has priority 1.
    func srvRecords(_ ordered: [Instance], owner: DNSName, selector: ServiceSelector, ttl: UInt32, domain: DNSName,
                    _ snapshot: CatalogSnapshot, depth: Int, preferred: Int = 0) -> ([ResourceRecord], [[ResourceRecord]]) {
        var answers: [ResourceRecord] = []
        var glue: [[ResourceRecord]] = []
        for (k, inst) in ordered.enumerated() {
            let (target, targetGlue) = srvTarget(inst, ttl: ttl, domain: domain, snapshot, depth: depth)
            let priority: UInt16 = preferred == 0 || k < preferred ? 1 : 2
            answers.append(ResourceRecord(name: owner, ttl: ttl,
                                          rdata: .srv(priority: priority, weight: inst.weight, port: selector.port(of: inst), target: target)))
            glue.append(targetGlue)
        }
        return (answers, glue)
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
    func grpcConfig(_ name: DNSName, _ type: UInt16, policy: GRPCLBPolicy, entry: ServiceEntry,
                    _ snapshot: CatalogSnapshot, _ plan: NamePlan) -> Answer {
        guard type == RRType.txt || type == RRType.any else { return negative(RCode.noError, snapshot, plan) }
        let text = Array(policy.serviceConfigTXT.utf8)
        let record = ResourceRecord(name: name, ttl: configuration.serviceTTL.ttl(for: entry.name), rdata: .txt(chunks(text)))
        return Answer(rcode: RCode.noError, authoritative: true, answers: [record])
    }

    // MARK: Order, targets and records

    /// A node's meta as TXT records, `key=value`, one per key in key order (RFC 1464 style, as Consul writes them).
    func metaTXT(_ node: Node, owner: DNSName, ttl: UInt32) -> [ResourceRecord] {
        node.meta.keys.sorted().map { key in
            ResourceRecord(name: owner, ttl: ttl, rdata: .txt(chunks(Array("\(key)=\(node.meta[key]!)".utf8))))
        }
    }

    /// SRV target and its glue: the node name when the service uses the node's address,
    /// `<hex>.addr.<dc>.<domain>` when it has its own IP, or the hostname itself. With `--node-meta-txt`, the
    /// node's meta TXT records join the glue (Consul's `enable_additional_node_meta_txt`).
    func srvTarget(_ inst: Instance, ttl: UInt32, domain: DNSName, _ snapshot: CatalogSnapshot, depth: Int) -> (DNSName, [ResourceRecord]) {
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

    /// A/AAAA records for the addresses of the asked family, without duplicates, in order.
    func addressRecords(_ addresses: [Address], owner: DNSName, type: UInt16, ttl: UInt32) -> [ResourceRecord] {
        var out: [ResourceRecord] = []
        Self.eachDistinctAddress(count: addresses.count, { addresses[$0] }, type: type) { a in
            switch a {
            case .v4(let v4): out.append(ResourceRecord(name: owner, ttl: ttl, rdata: .a(v4)))
            case .v6(let v6): out.append(ResourceRecord(name: owner, ttl: ttl, rdata: .aaaa(v6)))
            case .hostname: break
            }
        }
        return out
    }

    /// The addresses of the asked family (A: IPv4, AAAA: IPv6, ANY: both), each once, in order: the one rule for
    /// address answers, which the fast path (a node's addresses, written in place) calls too. Allocates only for
    /// long lists, where a set beats comparing each address with those before it.
    static func eachDistinctAddress(count: Int, _ address: (Int) -> Address, type: UInt16, _ body: (Address) -> Void) {
        var seen: Set<Address>? = count > 16 ? [] : nil
        next: for k in 0..<count {
            let a = address(k)
            switch (a, type) {
            case (.v4, RRType.a), (.v6, RRType.aaaa), (.v4, RRType.any), (.v6, RRType.any): break
            default: continue
            }
            if seen != nil {
                guard seen!.insert(a).inserted else { continue }
            } else {
                for j in 0..<k where address(j) == a { continue next }
            }
            body(a)
        }
    }

    /// TXT strings hold at most 255 bytes each.
    func chunks(_ text: [UInt8]) -> [[UInt8]] {
        guard !text.isEmpty else { return [[]] }
        return stride(from: 0, to: text.count, by: 255).map { Array(text[$0..<min($0 + 255, text.count)]) }
    }
}

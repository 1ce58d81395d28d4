import Catalog
import DNSWire

/// The apex, `ns`, node and addr names, and reverse (PTR) names.
extension Resolver {
    /// SOA/NS at the domain's apex; the owner echoes the question.
    func apex(_ name: DNSName, _ type: UInt16, _ snapshot: CatalogSnapshot, zone: Zone?, domain: DNSName) -> Answer {
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

    /// `<node>.node[.<dc>].<domain>`: the node's addresses; a hostname node is a CNAME; TXT is the node's meta.
    func nodeAnswer(_ name: DNSName, _ type: UInt16, _ node: Node, _ snapshot: CatalogSnapshot, _ plan: NamePlan, depth: Int) -> Answer {
        let ttl = configuration.nodeTTL
        if case .hostname(let host) = node.address {
            // The CNAME an address query follows; a CNAME query gets it as it is (RFC 1034 §3.6.2).
            if type == RRType.cname {
                return Answer(rcode: RCode.noError, authoritative: true, answers: [ResourceRecord(name: name, ttl: ttl, rdata: .cname(host))])
            }
            if type == RRType.a || type == RRType.aaaa { return cname(from: name, to: host, type: type, ttl: ttl, snapshot, depth: depth) }
        }
        var records: [ResourceRecord] = []
        if type == RRType.a || type == RRType.aaaa || type == RRType.any {
            records += addressRecords([node.address] + node.lanAddresses, owner: name, type: type, ttl: ttl)
        }
        if type == RRType.txt || type == RRType.any { records += metaTXT(node, owner: name, ttl: ttl) }
        return records.isEmpty ? negative(RCode.noError, snapshot, plan) : Answer(rcode: RCode.noError, authoritative: true, answers: records)
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

}

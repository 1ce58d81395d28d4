import Catalog
import DNSWire

/// Zone files, and CNAMEs followed inside our own data.
extension Resolver {
    func resolveStatic(_ name: DNSName, _ type: UInt16, zone: Zone, in snapshot: CatalogSnapshot, depth: Int) -> Answer {
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

    /// A locally served zone's answer (`LocalZones`): as a zone file's, but under `localhost` every name answers
    /// as the apex does (RFC 6761 §6.3), with its own name as the owner.
    func resolveLocal(_ name: DNSName, _ type: UInt16, zone: Zone, in snapshot: CatalogSnapshot) -> Answer {
        // A reverse name whose address we hold exists (its PTR is answered before the local zone is asked): every
        // other type is NODATA there, not the local zone's NXDOMAIN.
        if pointer(name, RRType.ptr, in: snapshot) != nil {
            var soa = zone.soa
            soa.ttl = zone.negativeTTL
            return Answer(rcode: RCode.noError, authoritative: true, authority: [soa])
        }
        guard LocalZones.redirects(zone), name.lowercased != zone.origin.lowercased else {
            return resolveStatic(name, type, zone: zone, in: snapshot, depth: 0)
        }
        var answer = resolveStatic(zone.origin, type, zone: zone, in: snapshot, depth: 0)
        for k in answer.answers.indices { answer.answers[k].name = name }
        // Below the apex there is no SOA or NS: those types get NODATA, as every other type the apex lacks.
        if type == RRType.soa || type == RRType.ns {
            var soa = zone.soa
            soa.ttl = zone.negativeTTL
            answer = Answer(rcode: RCode.noError, authoritative: true, authority: [soa])
        }
        return answer
    }

    /// A/AAAA glue for a hostname we are authoritative for, if any.
    func chase(_ host: DNSName, _ snapshot: CatalogSnapshot, depth: Int) -> [ResourceRecord] {
        guard depth < 8 else { return [] }
        var out: [ResourceRecord] = []
        for t in [RRType.a, RRType.aaaa] {
            let a = resolve(host, t, qclass: DNSClass.inet, in: snapshot, depth: depth + 1)
            if a.rcode == RCode.noError { out += a.answers.filter { $0.type == t } }
        }
        return out
    }

    /// A CNAME, followed inside our own data when we can (RFC 1034 §4.3.2 step 3a).
    func cname(from name: DNSName, to target: DNSName, type: UInt16, ttl: UInt32,
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
}

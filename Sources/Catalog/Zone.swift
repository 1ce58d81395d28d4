internal import CLDNS
import DNSWire
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Authoritative data from one RFC 1035 master file, parsed with ldns.
public struct Zone: Sendable {
    public let origin: DNSName
    public let soa: ResourceRecord
    /// Records by lower-cased owner name.
    public let records: [DNSName: [ResourceRecord]]
    /// Every owner name and every empty non-terminal between an owner and the origin.
    public let names: Set<DNSName>
    public let path: String

    public var negativeTTL: UInt32 {
        guard case .soa(let s) = soa.rdata else { return 0 }
        return min(soa.ttl, s.minimum)
    }

    public var nsRecords: [ResourceRecord] { records[origin.lowercased]?.filter { $0.type == RRType.ns } ?? [] }

    public func rrset(_ name: DNSName, _ type: UInt16) -> [ResourceRecord] {
        records[name.lowercased]?.filter { $0.type == type } ?? []
    }

    public init(origin: DNSName, records list: [ResourceRecord], path: String) throws(CatalogProblem) {
        self.origin = origin
        self.path = path
        var byName: [DNSName: [ResourceRecord]] = [:]
        var names: Set<DNSName> = [origin.lowercased]
        var soa: ResourceRecord? = nil
        for rr in list {
            guard rr.name.isSubdomain(of: origin) else {
                throw CatalogProblem(path: path, line: 0, reason: "\(rr.name) is outside the zone \(origin)")
            }
            if rr.type == RRType.soa {
                guard rr.name == origin else {
                    throw CatalogProblem(path: path, line: 0, reason: "SOA at \(rr.name), not at the origin \(origin)")
                }
                if soa != nil { continue }
                soa = rr
            }
            let key = rr.name.lowercased
            byName[key, default: []].append(rr)
            var n = key
            while n != origin.lowercased && !names.contains(n) {
                names.insert(n)
                guard let up = n.parent else { break }
                n = up
            }
        }
        guard let soa else { throw CatalogProblem(path: path, line: 0, reason: "no SOA record for \(origin)") }
        self.soa = soa
        self.records = byName
        self.names = names
    }
}

public enum ZoneLoader {
    /// Parses a master file with `ldns_zone_new_frm_fp_l`, so errors carry line numbers.
    /// Without `$ORIGIN` or an absolute SOA owner, the origin comes from the file name
    /// (`example.internal.zone` → `example.internal.`).
    public static func load(path: String) throws(CatalogProblem) -> Zone {
        let base = path.split(separator: "/").last.map(String.init) ?? path
        let originText = base.hasSuffix(".zone") ? String(base.dropLast(5)) : base
        guard let defaultOrigin = try? DNSName(originText) else {
            throw CatalogProblem(path: path, line: 0, reason: "cannot derive a zone origin from the file name")
        }
        guard let fp = fopen(path, "r") else {
            throw CatalogProblem(path: path, line: 0, reason: String(cString: strerror(errno)))
        }
        defer { fclose(fp) }
        let origin = ldns_dname_new_frm_str(defaultOrigin.description)
        defer { ldns_rdf_deep_free(origin) }
        var zone: UnsafeMutablePointer<ldns_zone>? = nil
        var line: Int32 = 0
        let status = ldns_zone_new_frm_fp_l(&zone, fp, origin, 3600, LDNS_RR_CLASS_IN, &line)
        guard status == LDNS_STATUS_OK, let z = zone else {
            throw CatalogProblem(path: path, line: Int(max(line, 1)), reason: String(cString: ldns_get_errorstr_by_id(status)))
        }
        defer { ldns_zone_deep_free(z) }

        var records: [ResourceRecord] = []
        if let soa = ldns_zone_soa(z) { records.append(try convert(soa, path: path)) }
        let list = ldns_zone_rrs(z)
        for i in 0..<ldns_rr_list_rr_count(list) {
            guard let rr = ldns_rr_list_rr(list, i) else { continue }
            records.append(try convert(rr, path: path))
        }
        guard let soa = records.first(where: { $0.type == RRType.soa }) else {
            throw CatalogProblem(path: path, line: 0, reason: "no SOA record")
        }
        return try Zone(origin: soa.name, records: records, path: path)
    }

    /// ldns → uncompressed wire → our decoder. Unknown types stay opaque.
    static func convert(_ rr: UnsafeMutablePointer<ldns_rr>, path: String) throws(CatalogProblem) -> ResourceRecord {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var size = 0
        let status = ldns_rr2wire(&out, rr, Int32(LDNS_SECTION_ANSWER.rawValue), &size)
        guard status == LDNS_STATUS_OK, let out else {
            throw CatalogProblem(path: path, line: 0, reason: String(cString: ldns_get_errorstr_by_id(status)))
        }
        defer { free(out) }
        let buffer = ByteBuffer(bytes: UnsafeBufferPointer(start: out, count: size))
        do {
            return try ResourceRecord.read(from: buffer, at: 0).0
        } catch {
            throw CatalogProblem(path: path, line: 0, reason: "cannot use record: \(error)")
        }
    }
}

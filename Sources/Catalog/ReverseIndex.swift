import HashTreeCollections

/// IP address → what is there, for PTR answers: the nodes with that address, and the services whose instances
/// have it as their own address (one that differs from their node's, as Consul indexes them).
/// The assembler keeps it up to date change by change, so a PTR query is a lookup and an update costs work
/// proportional to what changed; `CatalogSnapshot.build` fills it the same way.
public struct ReverseIndex: Sendable {
    /// A service in a datacenter, both lower-cased.
    public struct ServiceAt: Hashable, Sendable {
        public var service: String
        public var datacenter: String
    }

    public private(set) var nodes = TreeDictionary<Address, Set<CatalogSnapshot.NodeKey>>()
    /// How many instances of each service have the address.
    public private(set) var services = TreeDictionary<Address, [ServiceAt: Int]>()

    public init() {}

    /// A node's entry moved from `old` to `new` (either may be nil).
    mutating func replace(node old: Node?, with new: Node?) {
        if let old, !old.name.isEmpty {
            let key = CatalogSnapshot.NodeKey(name: old.name, datacenter: old.datacenter)
            for ip in ([old.address] + old.lanAddresses).compactMap(Self.indexable) {
                nodes[ip]?.remove(key)
                if nodes[ip]?.isEmpty == true { nodes[ip] = nil }
            }
        }
        if let new, !new.name.isEmpty {
            for ip in ([new.address] + new.lanAddresses).compactMap(Self.indexable) {
                nodes[ip, default: []].insert(CatalogSnapshot.NodeKey(name: new.name, datacenter: new.datacenter))
            }
        }
    }

    /// A service's entry moved from `old` to `new` (either may be nil).
    mutating func replace(service old: ServiceEntry?, with new: ServiceEntry?) {
        for inst in old?.instances ?? [] { adjust(inst, by: -1) }
        for inst in new?.instances ?? [] { adjust(inst, by: 1) }
    }

    private mutating func adjust(_ inst: Instance, by delta: Int) {
        let at = ServiceAt(service: ServiceName.key(inst.service), datacenter: inst.node.datacenter.lowercased())
        for ip in ((inst.serviceAddress.map { [$0] } ?? []) + inst.serviceLanAddresses).compactMap(Self.indexable) {
            var counts = services[ip] ?? [:]
            counts[at, default: 0] += delta
            if counts[at] == 0 { counts[at] = nil }
            services[ip] = counts.isEmpty ? nil : counts
        }
    }

    private static func indexable(_ address: Address) -> Address? {
        if case .hostname = address { return nil }
        return address
    }
}

/// Names that exist only because something below them does (empty non-terminals), for the naming rules:
/// the proper label suffixes of dotted service names (`srv.greeter` and `greeter` for `go.srv.greeter`), and
/// every tag (for `_<tag>.service.<domain>`, the parent of the RFC 2782 `_<service>._<tag>`). Kept by the
/// assembler change by change, like `ReverseIndex`, so that answering NODATA there, rather than a false
/// NXDOMAIN (RFC 8020), is one lookup.
public struct NameIndex: Sendable {
    public private(set) var serviceSuffixes = TreeDictionary<NameKey, Int>()
    /// Lower-cased tags, with how many instances carry each.
    public private(set) var tags = TreeDictionary<NameKey, Int>()

    public init() {}

    mutating func replace(service old: ServiceEntry?, with new: ServiceEntry?) {
        if let old { adjust(old, by: -1) }
        if let new { adjust(new, by: 1) }
    }

    private mutating func adjust(_ entry: ServiceEntry, by delta: Int) {
        var labels = ServiceName.key(entry.name).split(separator: ".", omittingEmptySubsequences: false).dropFirst()
        while !labels.isEmpty {
            Self.count(&serviceSuffixes, labels.joined(separator: "."), delta)
            labels = labels.dropFirst()
        }
        for inst in entry.instances {
            for tag in Set(inst.tags.map { $0.lowercased() }) { Self.count(&tags, tag, delta) }
        }
    }

    private static func count(_ map: inout TreeDictionary<NameKey, Int>, _ key: String, _ delta: Int) {
        let n = (map[key] ?? 0) + delta
        map[key] = n > 0 ? n : nil
    }
}

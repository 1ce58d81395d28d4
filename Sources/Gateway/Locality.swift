import Catalog
import DNSWire

/// `--locality`: which nearness orders answers. Off by default, as Consul's DNS and CoreDNS spread evenly.
public enum LocalityMode: String, Sendable, Equatable, CaseIterable, Codable {
    case off, zone, region
}

/// Nearest-first answers: where instances and clients are, and when to prefer the near ones.
public struct LocalityConfiguration: Sendable, Equatable {
    public var mode: LocalityMode = .off
    /// Meta keys that give an instance's zone and region when its registration has no `Locality` (service meta
    /// first, then node meta; the first key present wins). `--locality-key zone=KEY` / `region=KEY`.
    public var zoneKeys = ["zone", "topology.kubernetes.io/zone"]
    public var regionKeys = ["region", "topology.kubernetes.io/region"]
    /// Client networks and their zones (`--client-zone CIDR=ZONE`); the most specific network holding a client wins.
    public var clientZones: [(network: CIDR, zone: String)] = []
    /// Signpost's own zone (`--zone`): the zone of clients no network names (the host's own resolver).
    public var zone: String? = nil
    /// Networks whose EDNS Client Subnet options are believed (`--ecs-trusted`): a resolver there asks on behalf of
    /// the client the option names. From anywhere else the option is ignored (and echoed with scope 0).
    public var ecsTrusted: [CIDR] = []
    /// The overload guard, as Envoy's zone-aware routing has one: the client's group must hold at least this many
    /// healthy instances (`--locality-min`)…
    public var minimum = 1
    /// …and at least this fraction of an even share of them (the healthy count over the number of zones that
    /// hold a healthy one), else the answer is as if there were no preference. An even share assumes clients spread
    /// over zones as the instances are; a zone with half of that would take twice its load.
    public var minimumShare = 0.5

    public init() {}

    public static func == (a: Self, b: Self) -> Bool {
        a.mode == b.mode && a.zoneKeys == b.zoneKeys && a.regionKeys == b.regionKeys && a.zone == b.zone && a.minimum == b.minimum
            && a.minimumShare == b.minimumShare
            && a.clientZones.map(\.zone) == b.clientZones.map(\.zone) && a.clientZones.map(\.network) == b.clientZones.map(\.network)
            && a.ecsTrusted == b.ecsTrusted
    }
}

/// Where a query comes from: its zone, and what said so.
public struct ClientLocality: Sendable, Equatable {
    public enum Source: Sendable, Equatable, CustomStringConvertible {
        /// A `--client-zone` network that holds the client's address.
        case network(CIDR)
        /// A `--client-zone` network that holds the address of a trusted resolver's Client Subnet option.
        case clientSubnet(CIDR)
        /// Signpost's own `--zone`.
        case own

        public var description: String {
            switch self {
            case .network(let n): return "--client-zone \(n), from the client's address"
            case .clientSubnet(let n): return "--client-zone \(n), from the query's EDNS Client Subnet"
            case .own: return "--zone"
            }
        }

        /// The prefix length a reply's Client Subnet scope gives: how far the answer holds.
        var prefix: Int? {
            switch self {
            case .network(let n), .clientSubnet(let n): return n.prefix
            case .own: return nil
            }
        }
    }

    public var zone: String
    public var source: Source
}

extension Resolver {
    /// The zone of a client at `address` (4 or 16 bytes): the most specific `--client-zone` network holding it, or
    /// else Signpost's own `--zone`; nil when locality is off or neither applies. `longest`: only networks no longer
    /// than this count (a Client Subnet option's address holds that many bits; the rest is padding).
    public func clientLocality(address: UnsafeRawBufferPointer?, longest: Int = 128) -> ClientLocality? {
        let l = configuration.locality
        guard l.mode != .off else { return nil }
        if let address {
            // The most specific network that holds the address (no allocation: the fast path asks this per query).
            var best: (network: CIDR, zone: String)? = nil
            for candidate in l.clientZones where candidate.network.prefix <= longest && candidate.network.contains(address)
                && candidate.network.prefix > (best?.network.prefix ?? -1) {
                best = candidate
            }
            if let best { return ClientLocality(zone: best.zone, source: .network(best.network)) }
        }
        return l.zone.map { ClientLocality(zone: $0, source: .own) }
    }

    /// The zone of a query: from its Client Subnet option when the client (`address`) is in an `--ecs-trusted`
    /// network, else from the client's own address (`clientLocality(address:)`). Also the scope a reply's Client
    /// Subnet option gets when the answer depends on the zone (RFC 7871 §7.2.1: how many leading bits of the
    /// address the answer holds for):
    /// - the length of the `--client-zone` network that decided, when no more specific one lies inside it;
    /// - else the option's own source prefix (a nested network, or `--zone` for an address no network names, means
    ///   a shorter scope would claim the answer for addresses that get another);
    /// - 0 when no network names a zone at all, or the option was ignored.
    public func clientLocality(address: UnsafeRawBufferPointer?, subnet: ClientSubnet?) -> (ClientLocality?, scope: UInt8) {
        let l = configuration.locality
        guard l.mode != .off else { return (nil, 0) }
        guard let subnet, let address, l.ecsTrusted.contains(where: { $0.contains(address) }) else {
            return (clientLocality(address: address), 0)
        }
        // Source prefix 0: the resolver asks that no address be used (§7.1.2).
        guard subnet.sourcePrefix > 0 else { return (clientLocality(address: nil), 0) }
        let located = subnet.fullAddress.withUnsafeBytes { clientLocality(address: $0, longest: Int(subnet.sourcePrefix)) }
        guard let located else { return (nil, 0) }
        guard case .network(let n) = located.source else { return (located, l.clientZones.isEmpty ? 0 : subnet.sourcePrefix) }
        let nested = l.clientZones.contains { $0.network.prefix > n.prefix && n.contains($0.network.network) }
        return (ClientLocality(zone: located.zone, source: .clientSubnet(n)), nested ? subnet.sourcePrefix : UInt8(n.prefix))
    }

    /// An instance's locality: its registration's, else the first `--locality-key` present in its service meta,
    /// then its node meta.
    public func locality(of instance: Instance) -> Locality {
        let keys = configuration.locality
        func lookup(_ names: [String]) -> String {
            for name in names {
                if let v = instance.meta[name] ?? instance.node.meta[name], !v.isEmpty { return v }
            }
            return ""
        }
        var out = instance.locality ?? Locality()
        if out.zone.isEmpty { out.zone = lookup(keys.zoneKeys) }
        if out.region.isEmpty { out.region = lookup(keys.regionKeys) }
        return out
    }

    /// Where an instance stands from a client: 0 in its zone (or its region, with `--locality region`), 1 in its
    /// region, 2 elsewhere.
    enum Nearness: Int, Comparable, CaseIterable {
        case zone = 0, region, elsewhere
        static func < (a: Nearness, b: Nearness) -> Bool { a.rawValue < b.rawValue }
    }

    /// The order of a selection's healthy instances for `client`: nearest-first groups, each rotated on its own
    /// (`SelectionOrder`). `known`: every instance of the service, whatever its health, which tells the client's
    /// region when none of its own zone is healthy.
    func answerOrder(_ instances: [Instance], client: ClientLocality?, known: [Instance]) -> SelectionOrder {
        let (groups, _, preferred) = labelledGroups(instances, client: client, known: known)
        return SelectionOrder(groups: groups, preferred: preferred)
    }

    /// The healthy instances split into nearest-first groups for `client`, with each group's nearness (`explain`
    /// names them): its zone, the rest of its region, and everything else (with `--locality region`: its region,
    /// then everything else). Empty groups are left out. One group, in the given order, when locality is off, the
    /// client's zone is unknown, or the guard says the client's group is too small to take its clients' load
    /// (`preferred` false). `known`: every instance of the service, whatever its health.
    func labelledGroups(_ instances: [Instance], client: ClientLocality?, known: [Instance])
        -> (groups: [[Instance]], labels: [Nearness], preferred: Bool)
    {
        let config = configuration.locality
        guard config.mode != .off, let client, instances.count > 1 else { return ([instances], [.elsewhere], false) }
        let places = instances.map(locality(of:))
        // The client's region: what the instances in its zone say theirs is, the healthy ones first, then any (so a
        // zone that is all critical still has its region preferred).
        let inZone = { (place: Locality) in place.zone.equalsIgnoringASCIICase(client.zone) && !place.region.isEmpty }
        let region = places.first(where: inZone)?.region ?? known.lazy.map(locality(of:)).first(where: inZone)?.region
        func nearness(_ place: Locality) -> Nearness {
            let sameZone = !place.zone.isEmpty && place.zone.equalsIgnoringASCIICase(client.zone)
            let sameRegion = region.map { !place.region.isEmpty && place.region.equalsIgnoringASCIICase($0) } ?? false
            switch config.mode {
            case .zone: return sameZone ? .zone : sameRegion ? .region : .elsewhere
            case .region: return sameZone || sameRegion ? .zone : .elsewhere
            case .off: return .elsewhere
            }
        }
        var groups: [[Instance]] = [[], [], []]
        for (instance, place) in zip(instances, places) { groups[nearness(place).rawValue].append(instance) }
        // The guard: enough instances near the client, and at least a set fraction of an even share.
        let zones = Set(places.map { (config.mode == .region ? $0.region : $0.zone).lowercased() }).count
        let evenShare = Double(instances.count) / Double(max(zones, 1))
        guard groups[0].count >= max(config.minimum, 1), Double(groups[0].count) >= config.minimumShare * evenShare else {
            return ([instances], [.elsewhere], false)
        }
        let kept = Nearness.allCases.filter { !groups[$0.rawValue].isEmpty }
        return (kept.map { groups[$0.rawValue] }, kept, true)
    }
}

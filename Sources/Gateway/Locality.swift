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
    /// hold any), else the answer is as if there were no preference. An even share assumes clients spread
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
    /// else Signpost's own `--zone`; nil when locality is off or neither applies.
    public func clientLocality(address: UnsafeRawBufferPointer?) -> ClientLocality? {
        let l = configuration.locality
        guard l.mode != .off else { return nil }
        if let address {
            // The most specific network that holds the address (no allocation: the fast path asks this per query).
            var best: (network: CIDR, zone: String)? = nil
            for candidate in l.clientZones where candidate.network.contains(address) && candidate.network.prefix > (best?.network.prefix ?? -1) {
                best = candidate
            }
            if let best { return ClientLocality(zone: best.zone, source: .network(best.network)) }
        }
        return l.zone.map { ClientLocality(zone: $0, source: .own) }
    }

    /// The zone of a query: from its Client Subnet option when the client (`address`) is in an `--ecs-trusted`
    /// network, else from the client's own address (`clientLocality(address:)`). Also the scope a reply's Client
    /// Subnet option gets (RFC 7871 §7.2.1): the length of the network that decided, 0 when the answer does not
    /// depend on where the client is.
    public func clientLocality(address: UnsafeRawBufferPointer?, subnet: ClientSubnet?) -> (ClientLocality?, scope: UInt8) {
        let l = configuration.locality
        guard l.mode != .off else { return (nil, 0) }
        if let subnet, let address, l.ecsTrusted.contains(where: { $0.contains(address) }) {
            // Source prefix 0: the resolver asks that no address be used (§7.1.2).
            guard subnet.sourcePrefix > 0 else { return (clientLocality(address: nil), 0) }
            let located = subnet.fullAddress.withUnsafeBytes { clientLocality(address: $0) }
            guard case .network(let n)? = located?.source else { return (located, located == nil ? 0 : subnet.sourcePrefix) }
            return (ClientLocality(zone: located!.zone, source: .clientSubnet(n)), UInt8(n.prefix))
        }
        return (clientLocality(address: address), 0)
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

    /// The healthy instances split into nearest-first groups for `client`: its zone, the rest of its region, and
    /// everything else (with `--locality region`: its region, then everything else). Empty groups are left out.
    /// One group, in the given order, when locality is off, the client's zone is unknown, or the guard says the
    /// client's group is too small to take its clients' load (`preferred` false).
    func nearestGroups(_ instances: [Instance], client: ClientLocality?) -> (groups: [[Instance]], preferred: Bool) {
        let (groups, _, preferred) = labelledGroups(instances, client: client)
        return (groups, preferred)
    }

    /// The same, with each group's nearness (`explain` names them).
    func labelledGroups(_ instances: [Instance], client: ClientLocality?) -> (groups: [[Instance]], labels: [Nearness], preferred: Bool) {
        let config = configuration.locality
        guard config.mode != .off, let client, instances.count > 1 else { return ([instances], [.elsewhere], false) }
        let places = instances.map(locality(of:))
        // The client's region: what the instances in its zone say theirs is.
        let region = places.first { $0.zone.equalsIgnoringASCIICase(client.zone) && !$0.region.isEmpty }?.region
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

extension Resolver {
    /// Weighted first position for A and AAAA answers: the order in which instances of these SRV weights
    /// (`Instance.weight`, Consul's `Weights.Passing` or `.Warning` by health) come first, by smooth weighted round
    /// robin (nginx's: each turn, every instance's current weight grows by its weight, the largest is picked and
    /// loses the total). Over one cycle of the sequence an instance of weight 3 comes first three times as often as
    /// one of weight 1, spread out rather than in runs. Nil when the weights are all equal: plain rotation is then
    /// the same thing. A cycle longer than 4,096 is scaled down in proportion (weights may reach 65,535 each).
    /// Built once per selection (with its templates), so a query only indexes it with the rotation counter.
    public static func weightedSequence(_ weights: [Int]) -> [UInt16]? {
        guard weights.count > 1, weights.count <= Int(UInt16.max), Set(weights).count > 1 else { return nil }
        var w = weights.map { max($0, 0) }
        let total = w.reduce(0, +)
        guard total > 0 else { return nil }
        if total > 4096 { w = w.map { $0 == 0 ? 0 : max(1, Int((Double($0) * 4096 / Double(total)).rounded())) } }
        let cycle = w.reduce(0, +)
        var current = [Int](repeating: 0, count: w.count)
        var out: [UInt16] = []
        out.reserveCapacity(cycle)
        for _ in 0..<cycle {
            var best = 0
            for i in w.indices {
                current[i] += w[i]
                if current[i] > current[best] { best = i }
            }
            current[best] -= cycle
            out.append(UInt16(best))
        }
        return out
    }
}

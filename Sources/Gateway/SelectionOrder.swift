import Catalog
import DNSWire

/// How one selection's healthy instances are ordered for one client zone: the nearest-first groups (one group when
/// there is no preference), each rotated on its own, and each group's weighted first-position sequence. Built once
/// per selection and zone and kept with its templates (`EncodedAnswers.order`), so that a query only indexes it
/// with its turn. Both paths ask it which instance comes first, so they agree.
struct SelectionOrder: Sendable {
    /// One group: its size, and which of its instances comes first turn by turn when their weights differ
    /// (`Resolver.weightedSequence`; nil for plain rotation).
    struct Group: Sendable {
        let size: Int
        let firstByWeight: [UInt16]?
    }

    /// The healthy instances, nearest group first, each group in base order.
    let instances: [Instance]
    /// At most three groups (the client's zone, the rest of its region, elsewhere), none empty.
    let groups: [Group]
    /// Whether the first group is the client's own (nearest first applies): SRV gives its records priority 1, and
    /// the reply's Client Subnet option a scope.
    let preferred: Bool
    /// Where each group ends in `instances` (the last end repeated for missing groups).
    let ends: (Int, Int, Int)

    init(groups members: [[Instance]], preferred: Bool) {
        let kept = members.filter { !$0.isEmpty }
        instances = kept.flatMap { $0 }
        groups = kept.map { Group(size: $0.count, firstByWeight: Resolver.weightedSequence($0.map { Int($0.weight) })) }
        self.preferred = preferred && kept.count > 0
        let sizes = kept.map(\.count) + [0, 0, 0]
        ends = (sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2])
    }

    /// Whether a `type` answer's first instance is chosen by weight: for A, AAAA and ANY, where the records carry no
    /// weight of their own. SRV records carry theirs, and RFC 2782 clients choose by them, so SRV is rotated in turn.
    @inline(__always)
    static func weighsFirst(_ type: UInt16) -> Bool { type != RRType.srv }

    /// Group `k`'s first instance (an offset in the group) for `turn` of a `type` query. With `--answer-limit N`
    /// below the group's size (`window` N), plain rotation starts each turn a whole window further round, so
    /// ⌈M/N⌉ successive queries return every one of the M instances.
    @inline(__always)
    func offset(_ k: Int, turn: Int, type: UInt16, window: Int = 1) -> Int {
        guard k < groups.count else { return 0 }
        let group = groups[k]
        if Self.weighsFirst(type), let sequence = group.firstByWeight { return Int(sequence[turn % sequence.count]) }
        return window == 1 ? turn % group.size : (turn % group.size) * window % group.size
    }

    /// Every group's first instance for this turn.
    @inline(__always)
    func offsets(_ turn: Int, type: UInt16, window: Int = 1) -> (Int, Int, Int) {
        (offset(0, turn: turn, type: type, window: window), offset(1, turn: turn, type: type, window: window),
         offset(2, turn: turn, type: type, window: window))
    }

    /// The ranges of `instances` the groups hold.
    var ranges: [Range<Int>] {
        let bounds = [0, ends.0, ends.1, ends.2]
        return groups.indices.map { bounds[$0]..<bounds[$0 + 1] }
    }
}

extension Resolver {
    /// A selection's healthy instances in answer order for the next `type` query: each group rotated (or
    /// shuffled, with `--order random`) on its own, nearest first, then `--answer-limit`, which so takes the
    /// nearest groups first. Works on a copy: the snapshot's arrays are never reordered. `preferred` is how many of
    /// the returned instances are in the client's group (0 without a preference): SRV gives those priority 1.
    func ordered(_ order: SelectionOrder, entry: ServiceEntry, type: UInt16) -> (ordered: [Instance], preferred: Int) {
        let all = order.instances
        guard all.count > 1 else { return (all, order.preferred ? all.count : 0) }
        let limit = configuration.answerLimit
        let capped = limit > 0 && all.count > limit
        var out: [Instance] = []
        out.reserveCapacity(all.count)
        switch configuration.order {
        case .random:
            for range in order.ranges { out += all[range].shuffled() }
        case .cyclic:
            let turn = entry.nextRotation(type)
            for (k, range) in order.ranges.enumerated() {
                let split = range.lowerBound + order.offset(k, turn: turn, type: type, window: capped ? limit : 1)
                out += all[split..<range.upperBound]
                out += all[range.lowerBound..<split]
            }
        }
        let kept = capped ? Array(out.prefix(limit)) : out
        return (kept, order.preferred ? min(order.groups[0].size, kept.count) : 0)
    }

    /// Weighted first position for A and AAAA answers: the order in which instances of these SRV weights
    /// (`Instance.weight`, Consul's `Weights.Passing` or `.Warning` by health) come first, by smooth weighted round
    /// robin (nginx's: each turn, every instance's current weight grows by its weight, the largest is picked and
    /// loses the total). Over one cycle of the sequence an instance of weight 3 comes first three times as often as
    /// one of weight 1, spread out rather than in runs. Nil when the weights are all equal: plain rotation is then
    /// the same thing. Weights summing to more than 4,096 are scaled down in proportion (each may reach 65,535), so
    /// a cycle is at most about 4,096 turns plus one per instance.
    /// Built once per selection and zone (`SelectionOrder`), so a query only indexes it with its turn.
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

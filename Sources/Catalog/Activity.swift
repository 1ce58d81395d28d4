import Foundation
import Synchronization

/// What the operator view shows besides the snapshot itself: each registry's state, the last instance-level
/// changes, when each instance last changed, and the registrations left out. The assembler and the watchers write
/// it; the admin endpoint (`/ui`, `/v1/*`) reads it. Everything is bounded: the rings hold `capacity` entries, and
/// the change times hold one entry per instance in the snapshot.
public final class Activity: Sendable {
    /// One instance-level change: appeared, its health moved, something else about it changed, or removed.
    public struct Change: Sendable, Hashable, Codable {
        /// Seconds since the epoch.
        public var time: Double
        public var registry: String
        public var service: String
        public var instance: String
        public var node: String
        public var what: String
    }

    /// A registry as the operator sees it.
    public struct Registry: Sendable, Hashable, Codable {
        /// `file`, `etcd`, `consul` or `zones`.
        public var kind: String
        /// The directory, endpoints or agent address.
        public var target: String
        /// `loading`, `connected`, `stale` (out of contact, or serving its state file), or `problem`.
        public var state: String
        /// How old the data is, in seconds, while stale.
        public var staleness: Double?
        /// Serving the data of its state file, confirmed at this time (seconds since the epoch).
        public var fromState: Double?
        /// When its data last changed (seconds since the epoch).
        public var lastChange: Double?
        public var restarts: Int
        public var problem: String?
        /// The last connection failure, while it lasts.
        public var lastError: String? = nil
        public var warnings: [String]? = nil
    }

    /// A registration left out of the snapshot, when and why.
    public struct Skip: Sendable, Hashable, Codable {
        public var time: Double
        public var registry: String
        public var location: String
        public var name: String
        public var reason: String
    }

    struct RegistryRecord {
        var description: String
        var loaded = false
        var staleSince: Double? = nil
        var fromState: Double? = nil
        var lastChange: Double? = nil
        var restarts = 0
        var problem: String? = nil
        var lastError: String? = nil
        var warnings: [String] = []
    }

    struct State {
        var changes: [Change] = []
        var nextChange = 0
        var skips: [Skip] = []
        var nextSkip = 0
        var changedAt: [String: Double] = [:]
        var registries: [RegistryRecord] = []
    }

    public let capacity: Int
    private let state = Mutex(State())

    public init(capacity: Int = 200) { self.capacity = capacity }

    /// The key `changedAt` uses for an instance.
    public static func key(_ inst: Instance) -> String {
        "\(ServiceName.key(inst.service))\u{0}" + inst.identity.joined(separator: "\u{0}")
    }

    // MARK: Written by the assembler and the watchers

    func setRegistries(_ descriptions: [String]) {
        state.withLock { $0.registries = descriptions.map { RegistryRecord(description: $0) } }
    }

    func updateRegistry(_ index: Int, _ change: (inout RegistryRecord) -> Void) {
        state.withLock { s in
            if s.registries.indices.contains(index) { change(&s.registries[index]) }
        }
    }

    /// Records changes (oldest first), and when each instance last changed (`removed` forgets it).
    func record(_ changes: [Change], keys: [String]) {
        guard !changes.isEmpty else { return }
        state.withLock { s in
            for (change, key) in zip(changes, keys) {
                if change.what == "removed" { s.changedAt[key] = nil } else { s.changedAt[key] = change.time }
                Self.push(change, into: &s.changes, next: &s.nextChange, capacity: capacity)
            }
        }
    }

    /// A watch that had to start again (its connection broke, or the registry compacted).
    public func noteRestart(registry index: Int) {
        updateRegistry(index) { $0.restarts += 1 }
    }

    /// A registration left out (already logged and counted by the watcher).
    public func noteSkipped(registry: String, location: String, name: String, reason: String) {
        let skip = Skip(time: Date().timeIntervalSince1970, registry: registry, location: location, name: name, reason: reason)
        state.withLock { s in
            // The same skip again (a bad value read on every poll) only moves its time, so it cannot push others out.
            if let i = s.skips.firstIndex(where: { ($0.registry, $0.location, $0.name, $0.reason) == (registry, location, name, reason) }) {
                s.skips[i].time = skip.time
            } else {
                Self.push(skip, into: &s.skips, next: &s.nextSkip, capacity: capacity)
            }
        }
    }

    private static func push<T>(_ item: T, into ring: inout [T], next: inout Int, capacity: Int) {
        if ring.count < capacity { ring.append(item) } else { ring[next] = item }
        next = (next + 1) % capacity
    }

    private static func ordered<T>(_ ring: [T], next: Int, capacity: Int) -> [T] {
        ring.count < capacity ? ring : Array(ring[next...] + ring[..<next])
    }

    // MARK: Read by the admin endpoint

    /// The last changes, newest first.
    public func recentChanges() -> [Change] {
        state.withLock { Self.ordered($0.changes, next: $0.nextChange, capacity: capacity).reversed() }
    }

    /// The last registrations left out, newest first.
    public func recentSkips() -> [Skip] {
        state.withLock { Self.ordered($0.skips, next: $0.nextSkip, capacity: capacity).reversed() }
    }

    /// When the instance last changed (appeared, or changed since), in seconds since the epoch.
    public func changedAt(_ inst: Instance) -> Double? {
        let key = Self.key(inst)
        return state.withLock { $0.changedAt[key] }
    }

    public func registries(now: Double = Date().timeIntervalSince1970) -> [Registry] {
        state.withLock { s in
            s.registries.map { r in
                let (kind, target) = Self.split(r.description)
                let stateName: String
                var staleness: Double? = nil
                if r.problem != nil {
                    stateName = "problem"
                } else if let since = r.fromState ?? r.staleSince {
                    stateName = "stale"
                    staleness = max(0, now - since)
                } else {
                    stateName = r.loaded ? "connected" : "loading"
                }
                return Registry(kind: kind, target: target, state: stateName, staleness: staleness, fromState: r.fromState,
                                lastChange: r.lastChange, restarts: r.restarts, problem: r.problem, lastError: r.lastError,
                                warnings: r.warnings.isEmpty ? nil : r.warnings)
            }
        }
    }

    /// `etcd:http://…` → (`etcd`, `http://…`); `zones:DIR` for the zone files.
    static func split(_ description: String) -> (String, String) {
        guard let colon = description.firstIndex(of: ":") else { return (description, "") }
        return (String(description[..<colon]), String(description[description.index(after: colon)...]))
    }
}

extension Activity {
    /// The changes between a service's instances before and after a merge, as the status page lists them:
    /// appeared (with its health), health `a → b`, changed (which fields), removed. Where an instance came from
    /// (a catalog line, an etcd revision) is not a change of its own.
    static func changes(service: String, before: [Instance], after: [Instance], registry: String, now: Double) -> ([Change], [String]) {
        var old: [String: Instance] = [:]
        for inst in before { old[key(inst)] = inst }
        var changes: [Change] = [], keys: [String] = []
        func add(_ inst: Instance, _ what: String) {
            changes.append(Change(time: now, registry: registry, service: inst.service, instance: inst.id, node: inst.node.name, what: what))
            keys.append(key(inst))
        }
        for inst in after {
            let k = key(inst)
            guard let was = old.removeValue(forKey: k) else {
                add(inst, "appeared (\(inst.health))")
                continue
            }
            let fields = differences(was, inst)
            if was.health != inst.health {
                add(inst, "health \(was.health) → \(inst.health)" + (fields.isEmpty ? "" : "; changed: " + fields.joined(separator: ", ")))
            } else if !fields.isEmpty {
                add(inst, "changed: " + fields.joined(separator: ", "))
            }
        }
        for inst in before where old[key(inst)] != nil { add(inst, "removed") }
        return (changes, keys)
    }

    /// The served fields that differ (health apart).
    static func differences(_ a: Instance, _ b: Instance) -> [String] {
        var out: [String] = []
        if a.address != b.address || a.serviceLanAddresses != b.serviceLanAddresses || a.node.lanAddresses != b.node.lanAddresses {
            out.append("address \(a.address) → \(b.address)")
        }
        if a.port != b.port || a.namedPorts != b.namedPorts { out.append("port \(a.port) → \(b.port)") }
        if a.tags != b.tags { out.append("tags") }
        if a.meta != b.meta || a.node.meta != b.node.meta { out.append("meta") }
        if a.weightPassing != b.weightPassing || a.weightWarning != b.weightWarning { out.append("weights") }
        if a.checks.map(\.status) != b.checks.map(\.status) || a.checks.map(\.id) != b.checks.map(\.id) { out.append("checks") }
        return out
    }
}

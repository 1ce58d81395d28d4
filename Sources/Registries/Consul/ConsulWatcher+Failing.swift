import Catalog
import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix

/// The failing lists (`/v1/health/state/critical` and `/warning`) against the data: what differs, and the patch
/// that applies a difference without a read.
extension ConsulWatcher {
    /// The two check lists watched, each holding only checks not passing.
    enum FailingStatus: String, CaseIterable, Sendable { case critical, warning }

    /// A check in a failing list: its service's key (empty for a node-level check) and its node (lower-cased).
    struct CheckMark: Equatable, Sendable {
        var service: String
        var node: String
    }

    /// The failing checks the data holds, for one status: each check (by node and check ID) with the services
    /// whose instances carry it (a node-level check: every service on its node). Kept from every read, so that a
    /// failing list is compared with the data, not with the previous list: a check that failed and recovered
    /// between two lists, while its service was read in between, still shows as a difference.
    struct HeldChecks: Sendable {
        private(set) var services: [String: Set<String>] = [:]
        private var keysByService: [String: [String]] = [:]

        static func key(node: String, check: String) -> String { node.lowercased() + "\u{0}" + check }

        /// What `service`'s instances now carry in this status.
        mutating func hold(_ service: String, _ keys: [String]) {
            for key in keysByService[service] ?? [] {
                services[key]?.remove(service)
                if services[key]?.isEmpty == true { services[key] = nil }
            }
            for key in keys { services[key, default: []].insert(service) }
            keysByService[service] = keys.isEmpty ? nil : keys
        }

        /// Where a failing list and the data disagree: the services of checks that only one of them has, and the
        /// nodes of node-level checks in the list that the data lacks (every service on them).
        func differences(_ list: [String: CheckMark]) -> (services: Set<String>, nodes: Set<String>) {
            var out: Set<String> = [], nodes: Set<String> = []
            for (key, mark) in list where services[key] == nil {
                if mark.service.isEmpty { nodes.insert(mark.node) } else { out.insert(mark.service) }
            }
            for (key, holders) in services where list[key] == nil { out.formUnion(holders) }
            return (out, nodes)
        }
    }

    /// One entry of `/v1/health/state/<status>`: a check (`HealthEntry.Check`, Consul's `structs.HealthCheck`) that
    /// names its node and its ID, which the diff keys on; a list with an entry that does not is refused whole.
    struct FailingCheck: Decodable {
        let Node: String
        let CheckID: String
        let check: HealthEntry.Check

        init(from decoder: any Decoder) throws {
            check = try HealthEntry.Check(from: decoder)
            guard let node = check.Node, let id = check.CheckID else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "a check without Node or CheckID"))
            }
            (Node, CheckID) = (node, id)
        }

        var Name: String? { check.Name }
        var Status: String? { check.Status }
        var Output: String? { check.Output }
        var Notes: String? { check.Notes }
        var ServiceID: String? { check.ServiceID }
        var ServiceName: String? { check.ServiceName }
    }

    /// A failing list by node and check ID.
    static func listed(_ checks: [FailingCheck]) -> [String: FailingCheck] {
        var out: [String: FailingCheck] = [:]
        for c in checks { out[HeldChecks.key(node: c.Node, check: c.CheckID)] = c }
        return out
    }

    /// What the diff needs of each listed check: its service's key (empty for a node-level check) and its node.
    static func marks(_ list: [String: FailingCheck]) -> [String: CheckMark] {
        list.mapValues { CheckMark(service: ($0.ServiceID ?? "").isEmpty ? "" : ServiceName.key($0.ServiceName ?? ""), node: $0.Node.lowercased()) }
    }

    /// The services where this status's list and the data disagree.
    func failingChanges(_ status: FailingStatus, _ list: [String: FailingCheck]) -> Set<String> {
        let (services, nodes) = held[status, default: HeldChecks()].differences(Self.marks(list))
        var changed = services
        for node in nodes { changed.formUnion(servicesByNode[node] ?? []) }
        return changed.intersection(known)
    }

    /// Brings `services` in line with a failing list without reading them: a listed check the data lacks takes the
    /// list's status and output (a node-level one, on every instance on its node); a check the data holds in this
    /// status that the list lacks is passing (or gone, which serves the same). The list carries all a check's DNS
    /// answer depends on, so an isolated flip costs the list alone. A service the list names but the data cannot
    /// place (an instance not read yet) is returned, to be read.
    func patch(_ status: FailingStatus, _ list: [String: FailingCheck], services: Set<String>) async -> Set<String> {
        let heldNow = held[status, default: HeldChecks()]
        var patched: [String: [Instance]] = [:]
        var unread: Set<String> = []
        func apply(_ service: String, node: String, serviceID: String?, _ change: (inout Instance) -> Bool) {
            guard services.contains(service) else { return }
            // Being read: that read may have left Consul before this change; it is read again when it ends.
            if reading.contains(service) { readAgain.insert(service); return }
            guard var instances = patched[service] ?? published[service] else { unread.insert(service); return }
            var placed = false
            for i in instances.indices where instances[i].node.name.lowercased() == node && (serviceID == nil || instances[i].id == serviceID) {
                if change(&instances[i]) { placed = true }
            }
            if placed { patched[service] = instances } else { unread.insert(service) }
        }
        for (key, check) in list where heldNow.services[key] == nil {
            let node = check.Node.lowercased(), serviceID = check.ServiceID ?? ""
            guard let state = try? RegistrationRules.check(.init(id: check.CheckID, name: check.Name, status: check.Status, output: check.Output,
                                                                 notes: check.Notes, nodeLevel: serviceID.isEmpty)) else { continue }
            let targets = serviceID.isEmpty ? (servicesByNode[node] ?? []) : [ServiceName.key(check.ServiceName ?? "")]
            for service in targets {
                apply(service, node: node, serviceID: serviceID.isEmpty ? nil : serviceID) { Self.setCheck(state, on: &$0); return true }
            }
        }
        for (key, holders) in heldNow.services where list[key] == nil {
            guard let split = key.firstIndex(of: "\u{0}") else { continue }
            let node = String(key[..<split]), checkID = String(key[key.index(after: split)...])
            for service in holders {
                apply(service, node: node, serviceID: nil) { instance in
                    guard let j = instance.checks.firstIndex(where: { $0.id == checkID }) else { return false }
                    var check = instance.checks[j]
                    check.status = .passing
                    check.output = ""
                    Self.setCheck(check, on: &instance)
                    return true
                }
            }
        }
        var changes: [String: [Instance]] = [:]
        for (service, instances) in patched where !unread.contains(service) {
            hold(service, instances)
            if !Instance.sameServing(published[service], instances) { changes[service] = instances }
            published[service] = instances
        }
        patches.increment(by: Int64(patched.count - unread.intersection(patched.keys).count))
        if !changes.isEmpty { await publish(changes, [:]) }
        return unread
    }

    /// A check's new state on an instance (added when the instance lacks it), and the instance's health folded again.
    static func setCheck(_ check: CheckState, on instance: inout Instance) {
        if let j = instance.checks.firstIndex(where: { $0.id == check.id && $0.nodeLevel == check.nodeLevel }) {
            instance.checks[j] = check
        } else {
            instance.checks.append(check)
        }
        instance.health = RegistrationRules.fold(instance.checks)
    }

    /// Records the failing checks a service's data now carries (none, for a service that went).
    func hold(_ service: String, _ instances: [Instance]) {
        var keys: [FailingStatus: [String]] = [:]
        for instance in instances {
            for check in instance.checks {
                let status: FailingStatus
                switch check.status {
                case .critical, .maintenance: status = .critical
                case .warning: status = .warning
                case .passing: continue
                }
                keys[status, default: []].append(HeldChecks.key(node: instance.node.name, check: check.id))
            }
        }
        for status in FailingStatus.allCases where held[status] != nil || keys[status] != nil {
            held[status, default: HeldChecks()].hold(service, keys[status] ?? [])
        }
    }
}

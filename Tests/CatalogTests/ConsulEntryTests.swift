@testable import Catalog
@testable import Registries
import DNSWire
import Foundation
import Testing

/// How one `/v1/health/service/<name>` entry becomes an instance, as Consul's own DNS would read it.
@Suite("Consul entries")
struct ConsulEntryTests {
    func entry(serviceAddress: String = "", weights: [String: Int]? = nil, statuses: [String?] = ["passing"]) -> [String: Any] {
        var service: [String: Any] = ["ID": "web-1", "Service": "web", "Address": serviceAddress, "Port": 8080, "Meta": NSNull()]
        if let weights { service["Weights"] = weights }
        let checks: [[String: Any]] = statuses.enumerated().map { i, s in
            var c: [String: Any] = ["CheckID": "c\(i)", "ServiceID": "web-1"]
            if let s { c["Status"] = s }
            return c
        }
        return ["Node": ["Node": "n1", "Address": "192.0.2.1", "Datacenter": "dc1", "Meta": NSNull()], "Service": service, "Checks": checks]
    }

    /// An entry as Consul sends it: JSON text, decoded as the watcher decodes it.
    func instance(_ e: [String: Any]) throws -> Instance {
        let entry = try JSONDecoder().decode(ConsulWatcher.HealthEntry.self, from: JSONSerialization.data(withJSONObject: e))
        return try ConsulWatcher.instance(from: entry, localDatacenter: "dc1")
    }

    @Test func aServiceIPEqualToTheNodesIsStillTheServices() throws {
        // Consul's DNS names the SRV target <hex>.addr whenever Service.Address is an IP.
        #expect(try instance(entry(serviceAddress: "192.0.2.1")).serviceAddress == .v4(IPv4("192.0.2.1")!))
        #expect(try instance(entry()).serviceAddress == nil)
    }

    @Test(arguments: [
        (["passing"], Health.passing), (["warning"], .warning), (["critical"], .critical), (["passing", "maintenance"], .maintenance),
        // A status Consul's DNS does not know is served (but not with --only-passing); a missing one is critical.
        (["sleepy"], .warning), ([nil], .critical),
    ] as [([String?], Health)])
    func statuses(statuses: [String?], health: Health) throws {
        #expect(try instance(entry(statuses: statuses)).health == health)
    }

    @Test(arguments: [
        (["Passing": 5, "Warning": 2], 5, 2), (["Passing": 0, "Warning": 2], 1, 1), (["Passing": -3, "Warning": 1], 1, 1),
        (["Passing": 3, "Warning": -1], 1, 1), (["Passing": 70000, "Warning": 1], 1, 1),
    ] as [([String: Int], Int, Int)])
    func invalidWeightsAreOneAndOne(weights: [String: Int], passing: Int, warning: Int) throws {
        let i = try instance(entry(weights: weights))
        #expect(Int(i.weightPassing) == passing && Int(i.weightWarning) == warning)
    }

    @Test func anEntryThatDoesNotDecodeIsSkippedAndTheOthersServe() throws {
        var bad = entry()
        bad["Service"] = ["ID": "web-2", "Service": "web", "Port": "8080"]
        let list = try JSONDecoder().decode([Lenient<ConsulWatcher.HealthEntry>].self,
                                            from: JSONSerialization.data(withJSONObject: [entry(), bad, 7]))
        #expect(list.count == 3 && list[1].wrappedValue == nil && list[2].wrappedValue == nil)
        let good = try ConsulWatcher.instance(from: try #require(list[0].wrappedValue), localDatacenter: "dc1")
        #expect(good.id == "web-1" && good.port == 8080 && good.health == .passing)
        var noAddress = entry()
        noAddress["Node"] = ["Node": "n1"]
        #expect(throws: ConsulWatcher.EntryError.self) { try instance(noAddress) }
    }

    @Test func leaderContact() {
        #expect(ConsulWatcher.LeaderContact(knownLeader: "true", lastContact: "0").dataAge == nil)
        #expect(ConsulWatcher.LeaderContact(knownLeader: "true", lastContact: "250").dataAge == nil, "normal follower lag")
        #expect(ConsulWatcher.LeaderContact(knownLeader: "true", lastContact: "4000").dataAge == .seconds(4))
        #expect(ConsulWatcher.LeaderContact(knownLeader: "false", lastContact: "12000").dataAge == .seconds(12))
        #expect(ConsulWatcher.LeaderContact(knownLeader: nil, lastContact: nil).dataAge == nil)
    }

    @Test func aclFilteringIsDetected() {
        // Anonymous: no header ever comes, so a catalog without the `consul` service is the sign.
        #expect(ConsulWatcher.filteredByACLs(services: [], token: false, header: false))
        #expect(ConsulWatcher.filteredByACLs(services: ["web"], token: false, header: false))
        #expect(!ConsulWatcher.filteredByACLs(services: ["consul", "web"], token: false, header: false))
        // With a token, the header tells (a token may rightly not see `consul`).
        #expect(!ConsulWatcher.filteredByACLs(services: ["web"], token: true, header: false))
        #expect(ConsulWatcher.filteredByACLs(services: ["consul", "web"], token: true, header: true))
    }

    /// Consul's own documented responses (Resources/consul, from its API docs), not the stand-in's.
    func golden(_ name: String) throws -> Any {
        let url = try #require(Bundle.module.url(forResource: "Resources/consul/\(name)", withExtension: nil))
        return try JSONSerialization.jsonObject(with: Data(contentsOf: url))
    }

    @Test func documentedHealthServiceResponse() throws {
        let entries = try #require(try golden("health-service.json") as? [[String: Any]])
        let i = try instance(try #require(entries.first))
        #expect(i.id == "redis" && i.service == "redis" && i.port == 8000 && i.tags == ["primary"])
        #expect(i.node.name == "foobar" && i.node.datacenter == "dc1" && i.node.meta == ["instance_type": "t2.medium"])
        #expect(i.serviceAddress == .v4(IPv4("10.1.10.12")!), "an IP Service.Address is the service's own, as Consul's DNS reads it")
        #expect(i.weightPassing == 10 && i.weightWarning == 1 && i.meta == ["redis_version": "4.0"] && i.health == .passing)
        #expect(i.node.lanAddresses.isEmpty && i.serviceLanAddresses.isEmpty, "only lan_ipv4/lan_ipv6 add addresses")
    }

    /// Consul's documented `/v1/health/state/<status>` body decodes into the failing-list entries (no ModifyIndex
    /// there: it counts as 0), keyed by node and check ID, a node-level check with no service.
    @Test func documentedHealthStateResponse() throws {
        let url = try #require(Bundle.module.url(forResource: "Resources/consul/health-state.json", withExtension: nil))
        let checks = try JSONDecoder().decode([ConsulWatcher.FailingCheck].self, from: Data(contentsOf: url))
        let marks = ConsulWatcher.marks(ConsulWatcher.listed(checks))
        #expect(marks.count == 2)
        #expect(marks["foobar\u{0}service:redis"]?.service == "redis" && marks["foobar\u{0}serfHealth"]?.service == "")
        #expect(marks.values.allSatisfy { $0.node == "foobar" })
    }

    /// A check set from a failing list: replaced by ID (a node-level one apart from a service's of the same ID),
    /// added when new, and the instance's health is its worst check again.
    @Test func aPatchedCheckRefoldsHealth() throws {
        let entries = try #require(try golden("health-service.json") as? [[String: Any]])
        var i = try instance(try #require(entries.first))
        #expect(i.health == .passing && i.checks.count == 2)
        ConsulWatcher.setCheck(CheckState(id: "service:redis", name: "Service 'redis' check", status: .critical, output: "down", nodeLevel: false), on: &i)
        #expect(i.health == .critical && i.checks.count == 2 && i.checks.first { $0.id == "service:redis" }?.output == "down")
        ConsulWatcher.setCheck(CheckState(id: "service:redis", name: "", status: .passing, output: "", nodeLevel: false), on: &i)
        #expect(i.health == .passing)
        ConsulWatcher.setCheck(CheckState(id: "_node_maintenance", name: "Node Maintenance Mode", status: .critical, output: "", nodeLevel: true), on: &i)
        #expect(i.health == .critical && i.checks.count == 3)
    }

    /// A failing list against the data: a check the list has and the data lacks (it failed), one the data holds
    /// and the list lacks (back to passing, or deregistered while failing), and a node-level check (its node, so
    /// every service on it). A check that failed and recovered between two lists, while its service was read,
    /// shows as long as the data still holds it.
    @Test func failingListAgainstTheData() {
        typealias Mark = ConsulWatcher.CheckMark
        let key = ConsulWatcher.HeldChecks.key
        var held = ConsulWatcher.HeldChecks()
        held.hold("web", [key("N1", "a")])
        held.hold("db", [key("n2", "b")])
        held.hold("api", [key("n4", "serfHealth")])
        held.hold("cache", [key("n4", "serfHealth")])
        let list: [String: Mark] = [key("n2", "b"): Mark(service: "db", node: "n2"),
                                    key("n5", "d"): Mark(service: "queue", node: "n5"),
                                    key("n6", "serfHealth"): Mark(service: "", node: "n6")]
        let (services, nodes) = held.differences(list)
        #expect(services == ["web", "queue", "api", "cache"] && nodes == ["n6"])
        // The data catches up: no difference left; a service that went holds nothing.
        held.hold("web", [])
        held.hold("api", [])
        held.hold("cache", [])
        held.hold("queue", [key("n5", "d")])
        #expect(held.differences(list).services.isEmpty && held.differences(list).nodes == ["n6"])
        #expect(held.services[key("n4", "serfHealth")] == nil)
    }
}

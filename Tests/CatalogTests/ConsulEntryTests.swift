@testable import Catalog
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

    func instance(_ e: [String: Any]) throws -> Instance { try ConsulWatcher.instance(from: e, localDatacenter: "dc1") }

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
        let marks = ConsulWatcher.marks(checks)
        #expect(marks.count == 2)
        #expect(marks["foobar\u{0}service:redis"]?.service == "redis" && marks["foobar\u{0}serfHealth"]?.service == "")
        #expect(marks.values.allSatisfy { $0.node == "foobar" })
    }

    /// What a change between two failing lists names: a check that entered, one that left (back to passing, or
    /// deregistered), one whose ModifyIndex moved, and a node-level check (its node, for every service on it).
    @Test func failingListDifferences() {
        typealias Mark = ConsulWatcher.CheckMark
        let before: [String: Mark] = ["n1\u{0}a": Mark(index: 5, service: "web", node: "n1"),
                                      "n2\u{0}b": Mark(index: 6, service: "db", node: "n2"),
                                      "n3\u{0}c": Mark(index: 7, service: "api", node: "n3"),
                                      "n4\u{0}serfHealth": Mark(index: 8, service: "", node: "n4")]
        var now = before
        now["n1\u{0}a"] = nil                                      // left the list
        now["n2\u{0}b"]!.index = 9                                  // changed inside it
        now["n5\u{0}d"] = Mark(index: 10, service: "cache", node: "n5")  // entered it
        now["n6\u{0}serfHealth"] = Mark(index: 11, service: "", node: "n6")
        let (services, nodes) = ConsulWatcher.differences(before, now)
        #expect(services == ["web", "db", "cache"] && nodes == ["n6"])
        #expect(ConsulWatcher.differences(before, before) == ([], []))
    }
}

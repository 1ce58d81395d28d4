@testable import Catalog
@testable import Registries
import DNSWire
import Foundation
import Testing

/// One registration rule set for every registry (`RegistrationRules`): the same logical registration, written as a
/// catalog file, an etcd value (native layout), a Consul health entry and a state-file record, becomes the same
/// instance through each, or is refused for the same reason. A format that cannot say a row skips it.
@Suite("Registration rules, through every format")
struct RegistrationRulesTests {
    /// A registration as a person would describe it; each format writes it in its own words.
    struct Row: CustomTestStringConvertible, Sendable {
        var label: String
        var service = "web"
        var id = "web-1"
        var node: String? = "n1"
        var nodeAddress = "192.0.2.1"
        var datacenter = ""
        var address = ""
        var port: Int? = 8080
        var tags = ["v1"]
        var meta = ["a": "x"]
        var weights: (passing: Int?, warning: Int?)? = nil
        /// The instance's one status (a check of its own in Consul's formats); nil: no check at all.
        var status: String?? = .some("passing")
        var locality: Locality? = nil
        var nodeLocality: Locality? = nil
        var expected: Expected

        enum Expected: Sendable {
            /// What the served instance is, beyond the row's own fields: its health and weights.
            case serves(Health, passing: UInt16, warning: UInt16)
            case refused(RegistrationProblem)
        }

        var testDescription: String { label }
    }

    static let rows: [Row] = [
        Row(label: "a plain registration", expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "a hostname as the node's address", nodeAddress: "db.example.internal", expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "no node: the instance's own address", node: nil, address: "192.0.2.9", expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "another datacenter", datacenter: "dc2", expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "no port is 0, and no tags or meta", port: nil, tags: [], meta: [:], expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "weights", weights: (5, 2), expected: .serves(.passing, passing: 5, warning: 2)),
        Row(label: "a weight left out is 0", weights: (3, nil), expected: .serves(.passing, passing: 3, warning: 0)),
        Row(label: "Passing 0 makes both 1", weights: (0, 2), expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "a weight over 65535 makes both 1", weights: (70000, 1), expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "warning", status: "warning", expected: .serves(.warning, passing: 1, warning: 1)),
        Row(label: "critical", status: "critical", expected: .serves(.critical, passing: 1, warning: 1)),
        Row(label: "an empty status is critical", status: "", expected: .serves(.critical, passing: 1, warning: 1)),
        Row(label: "an unknown status is served as warning", status: "sleepy", expected: .serves(.warning, passing: 1, warning: 1)),
        Row(label: "statuses ignore case", status: "Critical", expected: .serves(.critical, passing: 1, warning: 1)),
        Row(label: "no checks is passing", status: .none, expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "the service's locality", locality: Locality(region: "us-east-1", zone: "us-east-1a"),
            nodeLocality: Locality(region: "us-east-1", zone: "us-east-1b"), expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "a locality with its zone alone", locality: Locality(zone: "us-east-1a"), expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "the node's locality, when the service has none", nodeLocality: Locality(region: "eu-west-1", zone: "eu-west-1c"),
            expected: .serves(.passing, passing: 1, warning: 1)),
        Row(label: "a service name that cannot be a DNS name", service: "we..b", expected: .refused(.serviceName("we..b", .emptyLabel))),
        Row(label: "a node name that cannot be a DNS name", node: "n..1", expected: .refused(.nodeName("n..1"))),
        Row(label: "a node address that is no address", nodeAddress: "not an address!",
            expected: .refused(.address(field: "Address", text: "not an address!"))),
        Row(label: "the unspecified address as the service's", address: "0.0.0.0", expected: .refused(.unspecifiedAddress("0.0.0.0"))),
        Row(label: "a port over 65535", port: 70000, expected: .refused(.port(70000))),
    ]

    // MARK: The formats

    enum Outcome {
        case instance(Instance)
        /// The format's own report of a refusal (an error's text, or a skipped name's).
        case refused(String)
    }

    static func json(_ object: Any) -> [UInt8] { Array(try! JSONSerialization.data(withJSONObject: object)) }

    /// Consul's `Locality`, its empty fields left out (`omitempty`).
    static func locality(_ l: Locality) -> [String: String] { ["Region": l.region, "Zone": l.zone].filter { !$0.value.isEmpty } }

    /// A catalog file: a catalog-register body, its status as the instance's own check.
    static func file(_ r: Row) -> Outcome? {
        guard let node = r.node else { return nil }
        var service: [String: Any] = ["ID": r.id, "Service": r.service, "Address": r.address, "Tags": r.tags, "Meta": r.meta]
        if let port = r.port { service["Port"] = port }
        if let w = r.weights { service["Weights"] = [("Passing", w.passing), ("Warning", w.warning)].reduce(into: [String: Int]()) { $0[$1.0] = $1.1 } }
        if let l = r.locality { service["Locality"] = locality(l) }
        var body: [String: Any] = ["Node": node, "Address": r.nodeAddress, "Datacenter": r.datacenter, "Service": service]
        if let l = r.nodeLocality { body["Locality"] = locality(l) }
        if case .some(let status) = r.status {
            var check: [String: Any] = ["CheckID": "c1", "ServiceID": r.id]
            if let status { check["Status"] = status }
            body["Checks"] = [check]
        }
        var skipped: [SkippedName] = []
        do {
            let registrations = try RegistrationDecoder.decode(bytes: json(body), path: "t.json", defaultDatacenter: "dc1", skipped: &skipped)
            if let s = skipped.first { return .refused("\(s.name): \(s.reason)") }
            return .instance(SourceCatalog(registrations: registrations).services.values.first!.first!)
        } catch {
            return .refused(error.description)
        }
    }

    /// An etcd value in the native layout, at `<prefix><service>/<id>`.
    static func etcd(_ r: Row) -> Outcome? {
        // With a node, Address is the node's; the native layout has no separate service address then.
        if r.node != nil && !r.address.isEmpty { return nil }
        // A value has one locality, the instance's own.
        if r.nodeLocality != nil && r.locality == nil { return nil }
        var value: [String: Any] = ["ID": r.id, "Tags": r.tags, "Meta": r.meta, "Datacenter": r.datacenter,
                                    "Address": r.node == nil ? r.address : r.nodeAddress]
        if let node = r.node { value["Node"] = node }
        if let port = r.port { value["Port"] = port }
        if let w = r.weights { value["Weights"] = [("Passing", w.passing), ("Warning", w.warning)].reduce(into: [String: Int]()) { $0[$1.0] = $1.1 } }
        if case .some(let status) = r.status { value["Status"] = status ?? "" }
        if let l = r.locality { value["Locality"] = locality(l) }
        do {
            return .instance(try EtcdValue.parse(key: "/services/\(r.service)/\(r.id)", value: json(value), prefix: "/services/", localDatacenter: "dc1")!.first!)
        } catch {
            return .refused(error.description)
        }
    }

    /// A `/v1/health/service/<name>` entry.
    static func consul(_ r: Row) -> Outcome? {
        guard let node = r.node else { return nil }
        var service: [String: Any] = ["ID": r.id, "Service": r.service, "Address": r.address, "Tags": r.tags, "Meta": r.meta]
        if let port = r.port { service["Port"] = port }
        if let w = r.weights { service["Weights"] = [("Passing", w.passing), ("Warning", w.warning)].reduce(into: [String: Int]()) { $0[$1.0] = $1.1 } }
        var checks: [[String: Any]] = []
        if case .some(let status) = r.status {
            var check: [String: Any] = ["CheckID": "c1", "ServiceID": r.id]
            if let status { check["Status"] = status }
            checks.append(check)
        }
        if let l = r.locality { service["Locality"] = locality(l) }
        var nodePart: [String: Any] = ["Node": node, "Address": r.nodeAddress, "Datacenter": r.datacenter]
        if let l = r.nodeLocality { nodePart["Locality"] = locality(l) }
        let entry: [String: Any] = ["Node": nodePart, "Service": service, "Checks": checks]
        do {
            let decoded = try JSONDecoder().decode(ConsulWatcher.HealthEntry.self, from: Data(json(entry)))
            return .instance(try ConsulWatcher.instance(from: decoded, localDatacenter: "dc1"))
        } catch {
            return .refused("\(error)")
        }
    }

    /// A state-file record. The file holds instances as the rules made them: a port past 65535 or a status word
    /// other than the four cannot be written, and its health is the folded one.
    static func state(_ r: Row) -> Outcome? {
        let health: [String?: Int] = ["passing": 0, "warning": 1, "critical": 2, "maintenance": 3, "": 2, "Critical": 2]
        guard r.port.map({ (0...65535).contains($0) }) ?? true else { return nil }
        var record: [String: Any] = ["id": r.id, "s": r.service, "n": 0, "p": r.port ?? 0, "t": r.tags, "m": r.meta]
        switch r.status {
        case .none: break
        case .some(let status):
            guard let h = health[status] else { return nil }
            record["h"] = h
        }
        if let w = r.weights {
            guard let p = w.passing, let q = w.warning, (0...65535).contains(p), (0...65535).contains(q) else { return nil }
            record["w"] = [p, q]
        }
        if let l = r.locality ?? r.nodeLocality { record["lo"] = ["region": l.region, "zone": l.zone] }
        let datacenter = r.datacenter.isEmpty ? "dc1" : r.datacenter
        if r.node == nil { record["sa"] = r.address } else if !r.address.isEmpty { record["sa"] = r.address }
        let node: [String: Any] = ["n": r.node ?? "", "a": r.node == nil ? r.address : r.nodeAddress, "dc": datacenter]
        let body: [String: Any] = ["registry": "test", "confirmed": 0, "resume": [String: String](), "nodes": [node], "entries": [r.service.lowercased(): [record]]]
        do {
            // A record the rules refuse is left out of the state and reported with why; the rest of the file serves.
            let state = try JSONDecoder().decode(RegistryState.Body.self, from: Data(json(body))).state()
            if let why = state.refused.first { return .refused(why) }
            return .instance(try #require(state.entries.values.first?.first))
        } catch {
            return .refused("\(error)")
        }
    }

    /// What decides an answer: the instance without its checks (a status is a check in some formats and the
    /// instance's own in others) and without where it came from.
    static func served(_ i: Instance) -> Instance {
        var out = i
        out.checks = []
        out.origin = Origin()
        return out
    }

    static func expectedInstance(_ r: Row, health: Health, passing: UInt16, warning: UInt16) -> Instance {
        let serviceAddress = r.address.isEmpty ? nil : Address(r.address)
        let nodeAddress = r.node == nil ? serviceAddress! : Address(r.nodeAddress)!
        let node = Node(name: r.node ?? "", address: nodeAddress, datacenter: r.datacenter.isEmpty ? "dc1" : r.datacenter, meta: [:])
        var i = Instance(id: r.id, service: r.service, node: node, serviceAddress: serviceAddress, port: UInt16(r.port ?? 0), tags: r.tags,
                         meta: r.meta, weightPassing: passing, weightWarning: warning, health: health)
        i.locality = r.locality ?? r.nodeLocality
        return i
    }

    @Test(arguments: rows)
    func sameInstanceOrSameRefusalThroughEveryFormat(row: Row) {
        let formats: [(String, (Row) -> Outcome?)] = [("catalog file", Self.file), ("etcd", Self.etcd), ("Consul", Self.consul), ("state file", Self.state)]
        var said = 0
        for (name, format) in formats {
            guard let outcome = format(row) else { continue }
            said += 1
            switch (row.expected, outcome) {
            case (.serves(let health, let passing, let warning), .instance(let got)):
                #expect(Self.served(got) == Self.expectedInstance(row, health: health, passing: passing, warning: warning), "\(name)")
            case (.refused(let problem), .refused(let text)):
                // The service-name refusal is a skip, reported by name and reason; the others say the rule's words.
                if case .serviceName(let service, let reason) = problem {
                    #expect(text.contains(service) && text.contains(reason.description), "\(name): \(text)")
                } else {
                    #expect(text.contains(problem.description), "\(name): \(text)")
                }
            case (.serves, .refused(let text)):
                Issue.record("\(name) refused it: \(text)")
            case (.refused(let problem), .instance):
                Issue.record("\(name) served it, where the rules say \(problem)")
            }
        }
        // Every row goes through at least two formats, so that it compares something.
        #expect(said >= 2, "only \(said) format(s) can say this row")
    }
}

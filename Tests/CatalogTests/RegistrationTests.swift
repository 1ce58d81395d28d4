@testable import Catalog
@testable import Registries
import DNSWire
import Testing

@Suite("Catalog files")
struct RegistrationTests {
    func decode(_ text: String) throws(CatalogProblem) -> [Registration] {
        try RegistrationDecoder.decode(bytes: Array(text.utf8), path: "t.json", defaultDatacenter: "dc1")
    }

    func problem(_ text: String) -> CatalogProblem? {
        do { _ = try decode(text); return nil } catch { return error }
    }

    @Test func fullRegistration() throws {
        let regs = try decode("""
        {
          "Node": "web-1", "Address": "192.0.2.1", "Datacenter": "dc2", "NodeMeta": {"rack": "r1"},
          "Service": {"ID": "web-a", "Service": "web", "Tags": ["v1", "Primary"], "Address": "2001:db8::1", "Port": 8080,
                      "Meta": {"version": "1"}, "Weights": {"Passing": 5, "Warning": 2}},
          "Checks": [
            {"CheckID": "serf", "Name": "Serf", "Status": "passing"},
            {"CheckID": "svc", "Name": "HTTP", "Status": "warning", "ServiceID": "web-a"}
          ]
        }
        """)
        let r = try #require(regs.first)
        #expect(r.node == Node(name: "web-1", address: .v4(IPv4("192.0.2.1")!), datacenter: "dc2", meta: ["rack": "r1"]))
        let s = try #require(r.service)
        #expect(s.id == "web-a" && s.service == "web" && s.port == 8080)
        #expect(s.serviceAddress == .v6(IPv6("2001:db8::1")!))
        #expect(s.hasTag("primary") && s.hasTag("V1") && !s.hasTag("v2"))
        #expect(s.weightPassing == 5 && s.weightWarning == 2)
        #expect(r.checks.count == 2)
        // Health is folded in from the node's checks when the catalog is built (a check may be in another body).
        let folded = try #require(SourceCatalog(registrations: regs).services["web"]?.first)
        #expect(folded.health == .warning && folded.weight == 2)
    }

    @Test func defaultsAndCaseInsensitiveKeys() throws {
        let r = try #require(try decode("""
        [{"node": "n1", "address": "n1.example.internal", "service": {"service": "db"}, "check": {"name": "ping"}}]
        """).first)
        #expect(r.node.datacenter == "dc1")
        #expect(r.node.address == .hostname(try DNSName("n1.example.internal")))
        #expect(r.service?.id == "db")
        #expect(r.service?.port == 0)
        #expect(r.service?.weightPassing == 1 && r.service?.weightWarning == 1)
        // A check with no status is critical, as in Consul; it is node-level (no ServiceID).
        #expect(r.checks == [Check(id: "ping", name: "ping", status: .critical, serviceID: "")])
    }

    /// As in Consul: a service IP equal to the node's is still the service's own (its SRV target is <hex>.addr).
    @Test func serviceAddressEqualToNodeAddressIsKept() throws {
        let r = try #require(try decode(#"{"Node":"a","Address":"192.0.2.1","Service":{"Service":"x","Address":"192.0.2.1"}}"#).first)
        #expect(r.service?.serviceAddress == .v4(IPv4("192.0.2.1")!))
        let none = try #require(try decode(#"{"Node":"a","Address":"192.0.2.1","Service":{"Service":"x"}}"#).first)
        #expect(none.service?.serviceAddress == nil)
    }

    @Test(arguments: [
        ("{\n  \"Node\": \"a\",\n  \"Address\": \"192.0.2.1\",\n}", 4, "invalid JSON"),
        ("{\"Node\": \"a\"}", 1, "Address: required"),
        ("{\n\"Node\": \"a\",\n\"Address\": \"not an address!\"}", 3, "neither an IP address nor a hostname"),
        ("{\"Node\": \"a\", \"Address\": \"192.0.2.1\",\n \"Service\": {\"Service\": \"web\",\n \"Port\": 70000}}", 3, "Service.Port: 70000 is not from 0 to 65535"),
        ("{\"Node\": \"a\", \"Address\": \"192.0.2.1\",\n \"Service\": {\"Port\": 80}}", 2, "Service.Service: required"),
        ("{\"Node\": \"a\", \"Address\": \"192.0.2.1\", \"Service\": {\"Service\": \"web\", \"Tags\": \"v1\"}}", 1, "Service.Tags: expected an array of strings"),
        ("\"just a string\"", 1, "expected an object or an array of objects"),
    ])
    func problemsNameLineAndReason(text: String, line: Int, reason: String) throws {
        let p = try #require(problem(text))
        #expect(p.path == "t.json")
        #expect(p.line == line, "\(p)")
        #expect(p.reason.contains(reason), "\(p)")
        #expect(p.description.hasPrefix("t.json:\(line): "))
    }
}

/// Registrations Consul accepts load as Consul would load them.
@Suite("Catalog files as Consul reads them")
struct ConsulAcceptsTests {
    func decode(_ text: String) throws -> [Registration] {
        try RegistrationDecoder.decode(bytes: Array(text.utf8), path: "t.json", defaultDatacenter: "dc1")
    }

    @Test func unknownStatusesAndInvalidWeights() throws {
        let regs = try decode(#"""
            {"Node": "a", "Address": "192.0.2.1", "Service": {"ID": "w", "Service": "web", "Weights": {"Passing": 0, "Warning": 3}},
             "Checks": [{"CheckID": "c", "Status": "sleepy", "ServiceID": "w"}]}
            """#)
        let web = try #require(SourceCatalog(registrations: regs).services["web"]?.first)
        #expect(web.health == .warning, "an unknown status is served, but not with --only-passing")
        #expect(web.weightPassing == 1 && web.weightWarning == 1, "invalid weights are 1/1")
    }

    @Test func aCheckMayNameAnotherBodysService() throws {
        let regs = try decode(#"""
            [{"Node": "a", "Address": "192.0.2.1", "Service": {"ID": "w", "Service": "web"}},
             {"Node": "a", "Address": "192.0.2.1", "Checks": [{"CheckID": "later", "Status": "critical", "ServiceID": "w"}]},
             {"Node": "b", "Address": "192.0.2.2", "Checks": [{"CheckID": "orphan", "Status": "passing", "ServiceID": "ghost"}]}]
            """#)
        #expect(SourceCatalog(registrations: regs).services["web"]?.first?.health == .critical)
        let unmatched = SourceCatalog.unmatchedChecks(regs)
        #expect(unmatched.map(\.node) == ["b"] && unmatched.map(\.check.id) == ["orphan"])
    }
}

@Suite("Service names in catalog files")
struct ServiceNameTests {
    @Test func dottedNamesLoad() throws {
        let regs = try RegistrationDecoder.decode(bytes: Array(#"""
            [{"Node": "a", "Address": "192.0.2.1", "Service": {"Service": "hello.service", "Port": 50051}},
             {"Node": "a", "Address": "192.0.2.1", "Service": {"Service": "grpc.health.v1.greeter"}}]
            """#.utf8), path: "t.json", defaultDatacenter: "dc1")
        #expect(regs.compactMap(\.service?.service) == ["hello.service", "grpc.health.v1.greeter"])
    }

    /// A name that can never be a DNS name loses only its own service (and the checks on it), with where and why.
    @Test func aBadNameIsSkippedAndTheRestLoads() throws {
        let long = String(repeating: "x", count: 64)
        var skipped: [SkippedName] = []
        let regs = try RegistrationDecoder.decode(bytes: Array("""
            [{"Node": "a", "Address": "192.0.2.1", "Service": {"Service": "web"}},
             {"Node": "b", "Address": "192.0.2.2",
              "Service": {"ID": "bad-1", "Service": "\(long).svc"},
              "Checks": [{"CheckID": "c", "Status": "passing", "ServiceID": "bad-1"}, {"CheckID": "serfHealth", "Status": "passing"}]},
             {"Node": "c", "Address": "192.0.2.3", "Service": {"Service": "a..b"}}]
            """.utf8), path: "t.json", defaultDatacenter: "dc1", skipped: &skipped)
        #expect(regs.count == 3 && regs.compactMap(\.service?.service) == ["web"])
        #expect(regs[1].checks.map(\.id) == ["serfHealth"], "the node and its own checks stay")
        #expect(skipped == [SkippedName(location: "t.json:3", name: "\(long).svc", reason: .labelTooLong),
                            SkippedName(location: "t.json:5", name: "a..b", reason: .emptyLabel)])
        #expect(skipped[0].description.hasPrefix("t.json:3: service"))
    }
}

@Suite("JSON reader")
struct JSONTests {
    @Test func parsesValues() throws {
        let node = try JSONParser.parse(Array(#"{"a": [1, -2.5e3, true, false, null, "x\u00e9\n\ud83d\ude00"]}"#.utf8))
        guard case .object(let d, _) = node.value, case .array(let items)? = d["a"]?.value else {
            Issue.record("shape"); return
        }
        #expect(items.count == 6)
        if case .number(let n) = items[1].value { #expect(n == -2500) } else { Issue.record("number") }
        if case .string(let s) = items[5].value { #expect(s == "xé\n😀") } else { Issue.record("string") }
    }

    @Test(arguments: ["{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "tru", "{} x", "\"a\nb\"", "\"\\ud800\""])
    func rejects(text: String) {
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(Array(text.utf8)) }
    }

    @Test func reportsLines() {
        do {
            _ = try JSONParser.parse(Array("[\n1,\n2,\n@]".utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.line == 4)
        }
    }
}

@Suite("ASCII case-insensitive comparison")
struct CaseTests {
    @Test(arguments: [("dc1", "DC1", true), ("Web", "wEB", true), ("dc1", "dc2", false), ("dc", "dc1", false), ("", "", true),
                      ("@", "`", false), ("[", "{", false), ("é", "É", false), ("v2", "V2", true)])
    func equality(a: String, b: String, equal: Bool) {
        #expect(a.equalsIgnoringASCIICase(b) == equal)
    }
}

import DNSWire
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The Consul stand-in (Tests/EndToEndTests/ConsulStandIn): Consul's documented HTTP API and blocking-query
/// semantics, since Consul itself cannot be installed here.
final class ConsulStandIn: @unchecked Sendable {
    let process = Process()
    let log: String
    private(set) var port = 0
    let dir = TempDir()

    /// `extra`: more of the stand-in's flags (`--tls-cert`, `--verify-incoming`, `--unix`, `--token-file`, …).
    /// `scheme`: https when it serves TLS.
    init(port requested: Int = 0, token: String? = nil, limitedToken: String? = nil, datacenter: String = "dc1",
         extra: [String] = [], scheme: String = "http") throws {
        self.scheme = scheme
        log = dir.path + "/standin.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ConsulStandIn/consul_standin.py").path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--port", "\(requested)", "--dc", datacenter] + (token.map { ["--token", $0] } ?? [])
            + (limitedToken.map { ["--limited-token", $0] } ?? []) + extra
        process.standardOutput = FileHandle(forWritingAtPath: log)
        process.standardError = process.standardOutput
        try process.run()
        guard let _ = eventually(within: 10, {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            guard let p = text.split(separator: "listening on 127.0.0.1:").last.flatMap({ Int($0.prefix { $0.isNumber }) }) else { return false }
            port = p
            if scheme == "https" {
                guard let c = text.split(separator: "plain on 127.0.0.1:").last.flatMap({ Int($0.prefix { $0.isNumber }) }) else { return false }
                controlPort = c
            } else {
                controlPort = p
            }
            return true
        }) else { throw Server.ServerError(message: "stand-in did not start") }
    }

    /// Where the tests' own requests go: the plain listener beside an https one.
    private(set) var controlPort = 0

    let scheme: String
    var url: String { "\(scheme)://127.0.0.1:\(port)" }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }

    @discardableResult
    func call(_ method: String, _ path: String, _ body: Any? = nil, token: String? = nil) throws -> (Int, Data) {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(controlPort)" + path)!)
        request.httpMethod = method
        if let body { request.httpBody = try JSONSerialization.data(withJSONObject: body) }
        if let token { request.setValue(token, forHTTPHeaderField: "X-Consul-Token") }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Int, Data) = (0, Data())
        URLSession.shared.dataTask(with: request) { data, response, _ in
            result = ((response as? HTTPURLResponse)?.statusCode ?? 0, data ?? Data())
            done.signal()
        }.resume()
        done.wait()
        return result
    }

    /// A GET's response headers.
    func headers(_ method: String, _ path: String) throws -> [String: String] {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(controlPort)" + path)!)
        request.httpMethod = method
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: [String: String] = [:]
        URLSession.shared.dataTask(with: request) { _, response, _ in
            for (k, v) in (response as? HTTPURLResponse)?.allHeaderFields ?? [:] { result["\(k)"] = "\(v)" }
            done.signal()
        }.resume()
        done.wait()
        return result
    }

    func register(node: String, address: String, service: String, id: String? = nil, port: Int = 80, status: String = "passing",
                  serviceAddress: String? = nil, nodeStatus: String? = nil, token: String? = nil) throws {
        var svc: [String: Any] = ["ID": id ?? "\(service)-\(node)", "Service": service, "Port": port, "Tags": ["v1"]]
        if let serviceAddress { svc["Address"] = serviceAddress }
        var checks: [[String: Any]] = [["CheckID": "service:\(id ?? "\(service)-\(node)")", "Name": "check", "Status": status,
                                        "ServiceID": id ?? "\(service)-\(node)"]]
        if let nodeStatus { checks.append(["CheckID": "serfHealth", "Name": "Serf", "Status": nodeStatus]) }
        let (code, _) = try call("PUT", "/v1/catalog/register", ["Node": node, "Address": address, "Service": svc, "Checks": checks], token: token)
        #expect(code == 200)
    }

    func deregister(node: String, serviceID: String) throws {
        try call("PUT", "/v1/catalog/deregister", ["Node": node, "ServiceID": serviceID])
    }

    /// The most connections at once, how many were refused with a 429, and the bytes sent for /v1/ (total and by
    /// endpoint, `/v1/health/service/` for every service's).
    func stats() throws -> (peak: Int, rejected: Int, bytes: Int, byPath: [String: (bytes: Int, requests: Int)], current: Int) {
        let object = try JSONSerialization.jsonObject(with: call("GET", "/_test/stats").1) as? [String: Any] ?? [:]
        var byPath: [String: (bytes: Int, requests: Int)] = [:]
        for (path, v) in object["by_path"] as? [String: [String: Int]] ?? [:] { byPath[path] = (v["bytes"] ?? 0, v["requests"] ?? 0) }
        return (object["peak"] as? Int ?? -1, object["rejected"] as? Int ?? -1, object["bytes"] as? Int ?? -1, byPath,
                object["current"] as? Int ?? -1)
    }

    /// Requests the stand-in has seen, as (path, query).
    func requests() throws -> [(path: String, query: [String: String], token: String?, time: Double)] {
        let (_, data) = try call("GET", "/_test/requests")
        let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] ?? []
        return list.map { ($0["path"] as? String ?? "", $0["query"] as? [String: String] ?? [:], $0["token"] as? String,
                           ($0["time"] as? NSNumber)?.doubleValue ?? 0) }
    }
}

@Suite("End to end: Consul registry (against the stand-in)", .serialized)
struct ConsulTests {
    /// Asked over a socket from this process, not with dig: the polls below time the server, and spawning a
    /// process per probe would time process start-up on a loaded machine instead.
    func addresses(_ server: Server, _ name: String) -> Set<String> {
        server.socketAddresses(name)
    }

    func server(_ consul: ConsulStandIn, query: String = "", env: [String: String] = [:]) throws -> Server {
        try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s\(query.isEmpty ? "" : "&" + query.dropFirst())"],
                   environment: env)
    }

    @Test func followsRegistrationsAndHealth() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "web-1", address: "192.0.2.1", service: "web", port: 8080)
        try consul.register(node: "web-2", address: "192.0.2.2", service: "web", port: 8080, nodeStatus: "critical")
        try consul.register(node: "web-3", address: "192.0.2.3", service: "web", port: 9090, serviceAddress: "198.51.100.3")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1", "198.51.100.3"] } != nil,
                "\(server.log_())")
        #expect(Set(try server.dig("web.service.consul", "SRV").data("SRV"))
                == ["1 1 8080 web-1.node.dc1.consul.", "1 1 9090 c6336403.addr.dc1.consul."])
        #expect(try server.dig("web-2.node.consul", "A").data("A") == ["192.0.2.2"])

        // A blocking query returns on change: a new instance, a new service, a failing check, a deregistration.
        try consul.register(node: "web-4", address: "192.0.2.4", service: "web")
        let t = eventually(within: 3, every: 10_000) { addresses(server, "web.service.consul").contains("192.0.2.4") }
        #expect(t != nil && t! < 1, "change visible after \(String(describing: t)) s")
        try consul.register(node: "db-1", address: "192.0.2.10", service: "db")
        #expect(eventually(within: 3) { addresses(server, "db.service.consul") == ["192.0.2.10"] } != nil)
        try consul.register(node: "web-1", address: "192.0.2.1", service: "web", port: 8080, status: "critical")
        #expect(eventually(within: 3) { !addresses(server, "web.service.consul").contains("192.0.2.1") } != nil)
        try consul.deregister(node: "db-1", serviceID: "db-db-1")
        #expect(eventually(within: 3) { server.socketRCode("db.service.consul") == RCode.nxDomain } != nil)
    }

    @Test func aclTokenFromTheURLOrTheEnvironment() throws {
        let consul = try ConsulStandIn(token: "s3cret")
        try consul.register(node: "n1", address: "192.0.2.1", service: "web", token: "s3cret")
        let fromURL = try server(consul, query: "?token=s3cret")
        defer { fromURL.stop() }
        #expect(eventually(within: 5) { addresses(fromURL, "web.service.consul") == ["192.0.2.1"] } != nil)
        let fromEnv = try server(consul, env: ["CONSUL_HTTP_TOKEN": "s3cret"])
        defer { fromEnv.stop() }
        #expect(eventually(within: 5) { addresses(fromEnv, "web.service.consul") == ["192.0.2.1"] } != nil)
        #expect(try consul.requests().filter { $0.path.hasPrefix("/v1/") }.allSatisfy { $0.token == "s3cret" })
        // Without a token, Consul answers 200 with everything filtered away (and no header saying so): the
        // registry stays not loaded (SERVFAIL, not NXDOMAIN for everything), the log names the fix once, and
        // /ready and the gauge say why.
        let none = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0"])
        defer { none.stop() }
        #expect(eventually(within: 5) { none.log_().contains("service:read and node:read") } != nil, "\(none.log_())")
        #expect(try none.dig("web.service.consul", "A").status == "SERVFAIL")
        let admin = "http://127.0.0.1:\(try #require(none.adminPort))"
        let ready = httpGet(admin + "/ready")
        #expect(ready.status == 503 && ready.body.contains("ACLs filter the catalog for the anonymous token"), "\(ready)")
        #expect(sample(httpGet(admin + "/metrics").body, #"signpost_registry_acl_filtered{registry="consul"}"#) == 1)
        #expect(none.log_().components(separatedBy: "service:read and node:read").count == 2, "logged once")
    }

    /// A token that lacks some permission: Consul filters and says so in a header; what it shows is served,
    /// and /ready says why it is not ready.
    @Test func aLimitedTokenIsReported() throws {
        let consul = try ConsulStandIn(token: "s3cret", limitedToken: "partial")
        try consul.register(node: "n1", address: "192.0.2.1", service: "web", token: "s3cret")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s&token=partial", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        let ready = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/ready")
        #expect(ready.status == 503 && ready.body.contains("the watcher's token"), "\(ready)")
    }

    @Test func datacenterAndStaleOptions() throws {
        let consul = try ConsulStandIn(datacenter: "dc2")
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        // --datacenter dc1: the local datacenter is not the agent's here, so plain names look in dc1.
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "consul:\(consul.url)?wait=2s&dc=dc2&stale=true", "--datacenter", "dc1"])
        defer { server.stop() }
        // The instances are dc2's: found under that datacenter's name, not the local dc1.
        #expect(eventually(within: 5) { addresses(server, "web.service.dc2.consul") == ["192.0.2.1"] } != nil)
        #expect(try server.dig("web.service.consul", "A").status == "NXDOMAIN")
        let queries = try consul.requests().filter { $0.path.hasPrefix("/v1/") }
        #expect(!queries.isEmpty && queries.allSatisfy { $0.query["dc"] == "dc2" && $0.query["stale"] != nil })
    }

    @Test func blockingQueryRules() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1"] } != nil)
        // Blocking: every query after the first carries ?index and a jittered ?wait of 2–2.125 s. Wait until the
        // stand-in has seen one, rather than for a fixed time.
        func blockingQueries() -> [(path: String, query: [String: String], token: String?, time: Double)] {
            ((try? consul.requests()) ?? []).filter { $0.path == "/v1/catalog/services" && $0.query["index"] != nil }
        }
        #expect(eventually(within: 5) { !blockingQueries().isEmpty } != nil, "no blocking catalog query: \((try? consul.requests().map { $0.query }) ?? [])")
        let blocking = blockingQueries()
        #expect(!blocking.isEmpty)
        for r in blocking {
            let ms = Int(r.query["wait"]!.dropLast(2))!
            #expect(ms >= 2000 && ms <= 2125, "wait \(r.query["wait"]!)")
        }

        // The index goes backwards (to 0): the next query resets to 0 (no ?index), then 0 counts as 1.
        try consul.call("POST", "/_test/reset-requests", [:])
        try consul.call("POST", "/_test/index", ["index": 0])
        #expect(eventually(within: 6) {
            let seen = (try? consul.requests().filter { $0.path == "/v1/catalog/services" }) ?? []
            guard let reset = seen.firstIndex(where: { $0.query["index"] == nil }) else { return false }
            return seen[(reset + 1)...].contains { $0.query["index"] == "1" }
        } != nil, "\((try? consul.requests().map { $0.query }) ?? [])")
        // Data stays served throughout.
        #expect(addresses(server, "web.service.consul") == ["192.0.2.1"])
    }

    @Test func queriesThatReturnAtOnceAreRateLimited() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1"] } != nil)
        try consul.call("POST", "/_test/noblock", ["on": true])
        try consul.call("POST", "/_test/reset-requests", [:])
        // Wait until both watches have queried the misbehaving server several times (they keep querying), then
        // check their pace against the stand-in's own arrival times, not against a window the test timed: at
        // most one query per 250 ms per watch. A hot loop would make thousands in the same span.
        let enough = 16
        func seen(_ path: String) -> [Double] { ((try? consul.requests()) ?? []).filter { $0.path == path }.map(\.time) }
        let flowing = eventually(within: 15) {
            seen("/v1/catalog/services").count >= enough && seen("/v1/health/state/critical").count >= enough
        }
        let services = seen("/v1/catalog/services"), health = seen("/v1/health/state/critical")
        try consul.call("POST", "/_test/noblock", ["on": false])
        #expect(flowing != nil, "queries stopped: \(services.count) catalog, \(health.count) health in 15 s")
        for (name, times) in [("catalog", services), ("health", health)] where times.count >= 2 {
            let span = times.max()! - times.min()!
            // n queries at least 250 ms apart span (n - 1) × 250 ms from start to start; the arrival times may
            // shrink that by however late the first one arrived, allowed up to 1 s here. A watch at twice the
            // rate would make 16 queries in under 2 s and fail this.
            #expect(times.count <= Int((span + 1) / 0.25) + 1, "\(times.count) \(name) queries in \(span) s")
        }
    }

    @Test func servesThroughAnOutage() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1"] } != nil)
        let port = consul.port
        consul.stop()
        for _ in 0..<8 {
            #expect(addresses(server, "web.service.consul") == ["192.0.2.1"])
            usleep(200_000)
        }
        #expect(eventually(within: 3) { server.log_().contains("registry unreachable") } != nil)
        // Consul comes back (agents re-register), with a change made meanwhile.
        let again = try ConsulStandIn(port: port)
        try again.register(node: "n1", address: "192.0.2.1", service: "web")
        try again.register(node: "n2", address: "192.0.2.2", service: "web")
        #expect(eventually(within: 10) { addresses(server, "web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil,
                "\(server.log_())")
    }

    /// One service whose reads fail (a 500 here; a 429 or a 403 in real life) does not keep the others from
    /// loading; its own watch retries it.
    @Test func oneFailingServiceDoesNotHoldBackTheOthers() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        try consul.register(node: "n2", address: "192.0.2.2", service: "db")
        try consul.call("POST", "/_test/fail-service", ["name": "db", "code": 500])
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        #expect(server.log_().contains("consul service not read; retrying it"))
        try consul.call("POST", "/_test/fail-service", ["name": "db", "code": 0])
        #expect(eventually(within: 10) { server.socketAddresses("db.service.consul") == ["192.0.2.2"] } != nil, "\(server.log_())")
    }

    /// A follower cut off from its leader still answers stale reads; their age (X-Consul-LastContact) counts
    /// toward --max-stale.
    @Test func aFollowerWithoutLeaderCountsTowardMaxStale() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "consul:\(consul.url)?wait=2s", "--max-stale", "3s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil)
        #expect(try consul.requests().contains { $0.path == "/v1/catalog/services" && $0.query["stale"] != nil }, "stale reads by default")
        try consul.call("POST", "/_test/leader", ["known": false, "last_contact_ms": 5000])
        #expect(eventually(within: 5) { server.socketRCode("web.service.consul") == RCode.servFail } != nil, "\(server.log_())")
        let admin = "http://127.0.0.1:\(try #require(server.adminPort))"
        #expect(eventually(within: 5) { (sample(httpGet(admin + "/metrics").body, "signpost_registry_staleness_seconds") ?? 0) >= 5 } != nil)
        try consul.call("POST", "/_test/leader", ["known": true, "last_contact_ms": 0])
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil)
    }

    /// Consul names the SRV target <hex>.addr whenever Service.Address is an IP, even the node's own.
    @Test func serviceAddressEqualToTheNodesIsAnAddrTarget() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web", port: 8080, serviceAddress: "192.0.2.1")
        try consul.register(node: "n2", address: "192.0.2.2", service: "web", port: 8080)
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul").count == 2 } != nil)
        #expect(Set(try server.dig("web.service.consul", "SRV").data("SRV")) == ["1 1 8080 c0000201.addr.dc1.consul.", "1 1 8080 n2.node.dc1.consul."])
    }

    /// Without --datacenter, plain names look in the agent's own datacenter (`/v1/agent/self`), as Consul's DNS.
    @Test func plainNamesUseTheAgentsDatacenter() throws {
        let consul = try ConsulStandIn(datacenter: "us-east-1")
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        #expect(try server.dig("web.service.us-east-1.consul", "A").data("A") == ["192.0.2.1"])
        #expect(server.log_().contains("local datacenter from the Consul agent"))
    }

    /// A flapping check: the blocking-query docs ask watchers to rate-limit per watch. Two updates at once, then
    /// one a second; the changes in between are folded into the next read, and the last state is served.
    @Test func aFlappingCheckIsRateLimited() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil)
        try consul.call("POST", "/_test/reset-requests", [:])
        // 40 changes, 50 ms apart: 2 s of flapping, done by the stand-in itself.
        try consul.call("POST", "/_test/flap", ["node": "n1", "check": "service:web-n1", "times": 40, "every_ms": 50])
        #expect(eventually(within: 10) { String(decoding: (try? consul.call("POST", "/_test/flaps-done", [:]).1) ?? Data(), as: UTF8.self) == "true" } != nil)
        let reads = try consul.requests().filter { $0.path == "/v1/health/service/web" }
        let span = try #require(reads.last.map { $0.time - reads.first!.time })
        // A tight loop would read about 40 times; the bucket allows 2 + one a second (and one more for the end).
        #expect(reads.count <= 2 + Int(span.rounded(.up)) + 2, "\(reads.count) reads in \(span) s")
        let metrics = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/metrics").body
        #expect((sample(metrics, #"signpost_registry_updates_delayed_total{registry="consul"}"#) ?? 0) >= 1, "\(metrics)")
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "the last state is served")
    }

    /// A dual-stack node (TaggedAddresses lan_ipv4/lan_ipv6): A and AAAA both answer, as Consul's DNS answers them.
    @Test func dualStackInstancesAnswerAAndAAAA() throws {
        let consul = try ConsulStandIn()
        let (code, _) = try consul.call("PUT", "/v1/catalog/register", [
            "Node": "ds-1", "Address": "192.0.2.50", "TaggedAddresses": ["lan_ipv4": "192.0.2.50", "lan_ipv6": "2001:db8::50"],
            "Service": ["ID": "api-1", "Service": "api", "Port": 50051],
            "Checks": [["CheckID": "service:api-1", "Status": "passing", "ServiceID": "api-1"]]] as [String: Any])
        #expect(code == 200)
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("api.service.consul") == ["192.0.2.50"] } != nil, "\(server.log_())")
        #expect(try server.dig("api.service.consul", "AAAA", "+tcp").data("AAAA") == ["2001:db8::50"])
        #expect(try server.dig("ds-1.node.consul", "AAAA").data("AAAA") == ["2001:db8::50"])
        let srv = try server.dig("api.service.consul", "SRV")
        #expect(Set(srv.additional.map { $0[3] }).isSuperset(of: ["A", "AAAA"]), "the node target's glue has both: \(srv)")
        #expect(try server.dig("-x", "2001:db8::50").data("PTR") == ["ds-1.node.dc1.consul."])
    }

    /// 2,000 services × 5 instances against the stand-in with Consul's 200-connections-per-client cap: every service
    /// is served, a change shows within 1 s, and the watcher holds a handful of connections and never gets a 429.
    @Test func twoThousandServicesUnderTheConnectionCap() throws {
        let consul = try ConsulStandIn()
        try consul.call("POST", "/_test/bulk", ["services": 2000, "instances": 5])
        // The release build where make test has built it: a release-only crash once hid behind the debug binary.
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0"], binary: signpostReleaseBinary ?? signpostBinary)
        defer { server.stop() }
        let loaded = eventually(within: 90, every: 200_000) { server.log_().contains("consul loaded") }
        #expect(loaded != nil, "\(server.log_())")
        let admin = "http://127.0.0.1:\(try #require(server.adminPort))"
        // Every instance (and the agent's own `consul` service) is in the catalog.
        #expect(eventually(within: 15) { sample(httpGet(admin + "/metrics").body, #"signpost_instances{health="passing"}"#) == 10_001 } != nil,
                "\(httpGet(admin + "/metrics").body)")
        for i in [0, 777, 1999] { #expect(server.socketAddresses("svc\(i).service.consul").count == 5, "svc\(i)") }
        // Ten changes, one at a time, each timed from the write to the answer that no longer has the instance.
        var slowest = 0.0
        for k in 0..<10 {
            let i = k * 199
            try consul.call("POST", "/_test/set-status", ["node": "bulk-\(i)-0", "check": "service:svc\(i)-0", "status": "critical"])
            let seen = eventually(within: 5, every: 10_000) { !server.socketAddresses("svc\(i).service.consul").contains("10.\(i / 250).\(i % 250).1") }
            #expect(seen != nil, "svc\(i)")
            slowest = max(slowest, seen ?? 99)
        }
        #expect(slowest <= 1, "slowest change seen after \(slowest) s")
        let stats = try consul.stats()
        #expect(stats.rejected == 0 && stats.peak <= 64, "\(stats)")
        print("consul at 2,000 services x 5: loaded after \(loaded ?? -1) s, slowest change \(slowest) s, connections peak \(stats.peak)")
    }

    /// Issue 22's watch: the failing lists, the catalog sweep and the nodes wake each notice what they must, and an
    /// isolated flip costs the short failing list, not a read of the service (nor the catalog).
    @Test func eachChangeIsSeenAndAFlipCostsTheListAlone() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        try consul.register(node: "n2", address: "192.0.2.2", service: "web")
        try consul.register(node: "n2", address: "192.0.2.2", service: "db")
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "\(server.log_())")
        #expect(eventually(within: 5) { addresses(server, "db.service.consul") == ["192.0.2.2"] } != nil)

        // A check fails and comes back: each seen, from the critical list alone (no service read, a few hundred bytes).
        try consul.call("POST", "/_test/reset-stats", [:])
        try consul.call("POST", "/_test/set-status", ["node": "n1", "check": "service:web-n1", "status": "critical"])
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.2"] } != nil)
        try consul.call("POST", "/_test/set-status", ["node": "n1", "check": "service:web-n1", "status": "passing"])
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "back to passing")
        let stats = try consul.stats()
        #expect(stats.byPath["/v1/health/service/"] == nil, "no service read for a flip: \(stats.byPath)")
        #expect(stats.bytes < 64 * 1024, "\(stats.bytes) bytes for two flips")
        #expect(stats.byPath["/v1/health/state/critical"].map { $0.requests >= 2 } == true, "\(stats.byPath)")

        // Warning is served (as Consul's DNS serves it), and leaves the warning list again.
        try consul.call("POST", "/_test/set-status", ["node": "n1", "check": "service:web-n1", "status": "warning"])
        try consul.call("POST", "/_test/set-status", ["node": "n1", "check": "service:web-n1", "status": "critical"])
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.2"] } != nil, "warning, then critical")
        // A check deregistered while critical: the instance has no failing check left, and is served.
        try consul.call("PUT", "/v1/catalog/deregister", ["Node": "n1", "CheckID": "service:web-n1"])
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "deregistered while critical")

        // A node-level check takes out every service on its node, and gives them back.
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n2", "Address": "192.0.2.2",
                                                         "Check": ["CheckID": "serfHealth", "Name": "Serf", "Status": "critical"]] as [String: Any])
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.1"] && addresses(server, "db.service.consul").isEmpty } != nil)
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n2", "Address": "192.0.2.2",
                                                         "Check": ["CheckID": "serfHealth", "Name": "Serf", "Status": "passing"]] as [String: Any])
        #expect(eventually(within: 3) { addresses(server, "db.service.consul") == ["192.0.2.2"] } != nil, "node check back to passing")

        // Only the services table moves (a second instance on a node already there, a port change): the sweep finds
        // which service, by its own index, and reads that one.
        try consul.call("POST", "/_test/reset-stats", [:])
        try consul.register(node: "n1", address: "192.0.2.1", service: "db", id: "db-2", port: 5433)
        #expect(eventually(within: 5) { addresses(server, "db.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "\(server.log_())")
        #expect(eventually(within: 3) { (try? consul.stats().byPath["/v1/health/service/"]?.requests ?? 0) ?? 0 >= 3 } != nil)
        #expect(try consul.requests().filter { $0.path == "/v1/health/service/web" && $0.query["filter"] == nil }.isEmpty == false,
                "web was read at load")
        try consul.call("POST", "/_test/reset-requests", [:])
        try consul.register(node: "n1", address: "192.0.2.1", service: "db", id: "db-2", port: 6000)
        #expect(eventually(within: 5) { ((try? server.dig("db.service.consul", "SRV").data("SRV")) ?? []).contains("1 1 6000 n1.node.dc1.consul.") } != nil)
        // db is read; consul (the agent's own service, which never moved) is only probed. (web may be read too: the
        // node check's flips above were applied from the lists, so its own index has moved since its last read.)
        let reads = try consul.requests().filter { $0.path.hasPrefix("/v1/health/service/") && $0.query["filter"] == nil }.map(\.path)
        #expect(reads.contains("/v1/health/service/db") && !reads.contains("/v1/health/service/consul"), "only services that moved are read: \(reads)")
        #expect(try consul.requests().contains { $0.path == "/v1/health/service/consul" && $0.query["filter"] != nil }, "consul was probed")

        // A node's address changes (the nodes table alone): every service on it follows.
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n1", "Address": "192.0.2.11"] as [String: Any])
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.11", "192.0.2.2"] && addresses(server, "db.service.consul") == ["192.0.2.11", "192.0.2.2"] } != nil,
                "\(server.log_())")

        // A node that disappears takes its instances with it.
        try consul.call("PUT", "/v1/catalog/deregister", ["Node": "n2"])
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.11"] && addresses(server, "db.service.consul") == ["192.0.2.11"] } != nil)
        #expect(try server.dig("n2.node.consul", "A").status == "NXDOMAIN")
    }

    /// Consul's wake rules for what the watcher uses, as its state store has them: `/v1/health/state/critical`
    /// blocks through writes that do not touch the critical set (a passing check's output), though its index is
    /// the whole checks table's; a filter never narrows a wake and leaves the index as it was.
    @Test func theStandInWakesAsConsulDoes() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.1", service: "web")
        try consul.register(node: "n2", address: "192.0.2.2", service: "db")
        func index(_ path: String) throws -> Int { Int(try consul.headers("GET", path)["X-Consul-Index"] ?? "") ?? -1 }
        let before = try index("/v1/health/state/critical")
        #expect(before == (try index("/v1/health/state/any")), "the checks table's index")
        // A passing check's output changes: the table's index moves, the critical list's wake does not.
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n1", "Address": "192.0.2.1",
                                                         "Checks": [["CheckID": "service:web-n1", "Name": "check", "Status": "passing",
                                                                     "ServiceID": "web-n1", "Output": "HTTP 200"]]] as [String: Any])
        let moved = try index("/v1/health/state/critical")
        #expect(moved > before)
        let started = Date()
        let (code, body) = try consul.call("GET", "/v1/health/state/critical?index=\(moved)&wait=1s")
        #expect(code == 200 && String(decoding: body, as: UTF8.self) == "[]")
        #expect(Date().timeIntervalSince(started) >= 0.9, "blocked until its wait ran out")
        // A check that fails wakes it; the critical list has it, with its service.
        let waiter = DispatchQueue(label: "waiter")
        nonisolated(unsafe) var woken: (Int, Data) = (0, Data())
        let done = DispatchSemaphore(value: 0)
        waiter.async { woken = (try? consul.call("GET", "/v1/health/state/critical?index=\(moved)&wait=30s")) ?? (0, Data()); done.signal() }
        try consul.call("POST", "/_test/set-status", ["node": "n2", "check": "service:db-n2", "status": "critical"])
        #expect(done.wait(timeout: .now() + 10) == .success)
        let listed = try JSONSerialization.jsonObject(with: woken.1) as? [[String: Any]] ?? []
        #expect(listed.count == 1 && listed.first?["ServiceName"] as? String == "db" && listed.first?["Status"] as? String == "critical")
        // The per-service index under a filter that matches nothing: an empty body, the same index.
        let plain = try index("/v1/health/service/db")
        let filtered = "/v1/health/service/db?filter=" + "Node.Node == \"\"".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        #expect(try index(filtered) == plain && String(decoding: try consul.call("GET", filtered).1, as: UTF8.self) == "[]")
        #expect(plain > (try index("/v1/health/service/web")), "db's own index moved with its check; web's did not")
        #expect(try consul.call("GET", "/v1/health/service/db?filter=" + "Nope ~ 1".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!).0 == 400)
        // catalog/nodes: the nodes table's index; a node re-registered unchanged writes nothing.
        let nodes = try index("/v1/catalog/nodes")
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n2", "Address": "192.0.2.2"] as [String: Any])
        #expect(try index("/v1/catalog/nodes") == nodes)
        try consul.call("PUT", "/v1/catalog/register", ["Node": "n2", "Address": "192.0.2.22"] as [String: Any])
        #expect(try index("/v1/catalog/nodes") > nodes && (try index("/v1/health/service/db")) > plain, "a node's write moves its services' index")
    }

    /// The stand-in answers as Consul's own source does where the watcher could be fooled (each line names the
    /// Consul function it follows), and the watcher copes with every shape.
    @Test func theStandInBehavesLikeConsul() throws {
        let consul = try ConsulStandIn()
        // catalog register decodes keys case-insensitively (python-consul sends lower-case ones).
        var (code, _) = try consul.call("PUT", "/v1/catalog/register", ["node": "n1", "address": "192.0.2.1",
                                                                         "service": ["id": "web-1", "service": "web"]] as [String: Any])
        #expect(code == 200)
        // vetRegisterWithACL: a check may name a service an earlier body registered on the node…
        (code, _) = try consul.call("PUT", "/v1/catalog/register", ["Node": "n1", "Address": "192.0.2.1",
                                                                     "Checks": [["CheckID": "later", "ServiceID": "web-1", "Status": "warning"]]] as [String: Any])
        #expect(code == 200)
        // …and a service's own index moves with its checks (Consul keeps one per service name).
        let before = Int(try consul.headers("GET", "/v1/health/service/web")["X-Consul-Index"] ?? "") ?? 0
        // …but a check on a service the node does not have is refused.
        (code, _) = try consul.call("PUT", "/v1/catalog/register", ["Node": "n1", "Address": "192.0.2.1",
                                                                     "Checks": [["CheckID": "c", "ServiceID": "ghost", "Status": "passing"]]] as [String: Any])
        #expect(code == 500)
        // parseWait (time.ParseDuration: no unit is an error) and parseConsistency.
        #expect(try consul.call("GET", "/v1/catalog/services?index=1&wait=5").0 == 400)
        #expect(try consul.call("GET", "/v1/catalog/services?stale&consistent").0 == 400)
        // Service names match case-insensitively; the shapes: a UUID node ID, Meta null, Port omitted when 0.
        let (status, body) = try consul.call("GET", "/v1/health/service/WEB")
        let entries = try JSONSerialization.jsonObject(with: body) as? [[String: Any]] ?? []
        #expect(status == 200 && entries.count == 1)
        let node = entries.first?["Node"] as? [String: Any], service = entries.first?["Service"] as? [String: Any]
        #expect(UUID(uuidString: node?["ID"] as? String ?? "") != nil && node?["Meta"] is NSNull)
        #expect(service?["Port"] == nil && service?["Meta"] is NSNull && service?["Proxy"] != nil && service?["Kind"] as? String == "")
        (code, _) = try consul.call("PUT", "/v1/catalog/register", ["Node": "n1", "Address": "192.0.2.1",
                                                                     "Checks": [["CheckID": "later", "ServiceID": "web-1", "Status": "passing"]]] as [String: Any])
        #expect(Int(try consul.headers("GET", "/v1/health/service/web")["X-Consul-Index"] ?? "") ?? 0 > before)
        // The watcher reads all of it: port 0 in SRV, and the instance served.
        let server = try server(consul)
        defer { server.stop() }
        #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        #expect(try server.dig("web.service.consul", "SRV").data("SRV") == ["1 1 0 n1.node.dc1.consul."])
    }
}

import DNSWire
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Debian's knotd serving a test zone on a free loopback port, started and stopped by PID.
final class Knot: @unchecked Sendable {
    let dir = TempDir()
    let port: Int
    var process: Process?

    /// The name whose answer shows knotd is up.
    let probe: String

    /// Serves `zones` (origin → master-file text); by default the example.org zone.
    init(zones: [String: String] = ["example.org": Knot.defaultZone], probe: String = "www.example.org") throws {
        port = freePort()
        self.probe = probe
        var conf = """
        server:
            rundir: "\(dir.path)"
            listen: 127.0.0.1@\(port)
        database:
            storage: "\(dir.path)"
        zone:

        """
        for (origin, text) in zones.sorted(by: { $0.key < $1.key }) {
            dir.write("\(origin).zone", text)
            conf += "  - domain: \(origin)\n    storage: \"\(dir.path)\"\n    file: \"\(origin).zone\"\n"
        }
        dir.write("knot.conf", conf)
        try start()
    }

    convenience init(zone: String) throws { try self.init(zones: ["example.org": zone]) }

    static let defaultZone: String = {
        var z = """
        $ORIGIN example.org.
        $TTL 300
        @ IN SOA ns hostmaster 1 3600 600 86400 60
        @ IN NS ns
        ns IN A 127.0.0.1
        www IN A 192.0.2.80
        short 1 IN A 192.0.2.81

        """
        for i in 1...100 { z += "big IN A 198.51.100.\(i)\n" }
        return z
    }()

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/knotd")
        p.arguments = ["-c", dir.path + "/knot.conf"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        let ok = eventually(within: 10) {
            (try? run(["dig", "@127.0.0.1", "-p", "\(port)", "+time=1", "+tries=1", probe]))?.out.contains("status: NOERROR") == true
        }
        if ok == nil { throw Server.ServerError(message: "knotd did not start") }
    }

    func stop() { terminate(&process) }

    deinit { stop() }
}

/// A Python upstream that misbehaves on purpose (Tests/EndToEndTests/FakeUpstream).
final class FakeUpstream: @unchecked Sendable {
    let process: Process
    let dir = TempDir()
    let port: Int

    var log: String { (try? String(contentsOfFile: dir.path + "/helper.log", encoding: .utf8)) ?? "" }

    /// The names of the queries it has received (modes blackhole and hold), in order.
    var queries: [String] {
        log.split(separator: "\n").filter { $0.hasPrefix("query ") }.map { String($0.dropFirst("query ".count)) }
    }

    /// Mode hold: sends the held answers, and answers at once from now on.
    func release() {
        UDPSocket(port: port).send(Array("release".utf8))
    }

    init(mode: String) throws {
        (process, port) = try startHelper("FakeUpstream/fake_upstream.py", ["--mode", mode], in: dir, within: 5)
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }
}

let knotAvailable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/knotd")

@Suite("End to end: forwarding through real upstreams", .serialized, .enabled(if: knotAvailable, "knot is not installed"))
struct ForwardingTests {
    func server(_ upstreams: [Int], extra: [String] = []) throws -> Server {
        try Server(dir: TempDir(), forward: true, extra: upstreams.flatMap { ["--upstream", "127.0.0.1:\($0)"] } + extra)
    }

    @Test func forwardsCachesAndServesThroughAnOutage() throws {
        let knot = try Knot()
        let server = try server([knot.port], extra: ["--admin", "127.0.0.1:0"])
        defer { server.stop() }
        let first = try server.dig("www.example.org", "A")
        #expect(first.status == "NOERROR" && first.data("A") == ["192.0.2.80"])
        #expect(first.flags.contains("ra") && !first.flags.contains("aa"))
        // Our own names are still ours, and RA is set there too now.
        #expect(try server.dig("consul", "SOA").flags.contains("ra"))
        // The DO bit is copied into the reply (RFC 3225), for forwarded and for our own answers.
        #expect(try server.dig("+dnssec", "www.example.org", "A").raw.contains("flags: do;"))
        #expect(try server.dig("+dnssec", "consul", "SOA").raw.contains("flags: do;"))
        let negative = try server.dig("nope.example.org", "A")
        #expect(negative.status == "NXDOMAIN" && negative.authority.first?[3] == "SOA")

        // Waits for the cached answer's TTL to have counted down by two seconds (TTLs are whole seconds).
        var second = try server.dig("www.example.org", "A")
        func ttl(_ d: Dig) -> Int { Int(d.answer.first?[1] ?? "") ?? 0 }
        try eventually(within: 15, every: 250_000) {
            second = try server.dig("www.example.org", "A")
            return ttl(second) <= 298
        }
        #expect(ttl(second) <= 298 && ttl(second) >= 290, "TTL counts down in cached answers: \(second)")

        knot.stop()
        #expect(try server.dig("www.example.org", "A").data("A") == ["192.0.2.80"], "served from the cache")
        let cachedNegative = try server.dig("nope.example.org", "A")
        #expect(cachedNegative.status == "NXDOMAIN" && cachedNegative.authority.first?[3] == "SOA")
        // Two names went upstream (the DO query may be a third); the rest, at least three, came from the cache.
        let metrics = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/metrics").body
        let misses = sample(metrics, #"signpost_cache_requests_total{result="miss"}"#) ?? 0
        #expect(misses >= 2 && misses <= 3, "\(metrics)")
        #expect((sample(metrics, #"signpost_cache_requests_total{result="hit"}"#) ?? 0) >= 3, "\(metrics)")
        let upstream = "127.0.0.1:\(knot.port)"
        #expect(sample(metrics, #"signpost_upstream_duration_seconds_count{upstream="\#(upstream)"}"#) == misses, "\(metrics)")
        #expect(metrics.contains(#"signpost_upstream_duration_seconds_bucket{upstream="\#(upstream)",le="0.001"}"#))
    }

    @Test func staleEntriesServeWhenEveryUpstreamIsDown() throws {
        let knot = try Knot()
        let server = try server([knot.port], extra: ["--upstream-timeout", "300ms"])
        defer { server.stop() }
        #expect(try server.dig("short.example.org", "A").data("A") == ["192.0.2.81"])
        knot.stop()
        // Once the 1 s TTL has run out, the answer is the stale one (until then, the cached one, counting down).
        var stale = try server.dig("short.example.org", "A")
        try eventually(within: 15, every: 250_000) {
            stale = try server.dig("short.example.org", "A")
            return stale.answer.first?[1] == "30"
        }
        #expect(stale.data("A") == ["192.0.2.81"], "\(stale)")
        #expect(stale.answer.first?[1] == "30", "stale answers carry TTL 30 (RFC 8767)")
        // A name never cached: SERVFAIL.
        #expect(try server.dig("www.example.org", "A").status == "SERVFAIL")
    }

    @Test func failsOverPastADeadUpstream() throws {
        let knot = try Knot()
        let dead = try FakeUpstream(mode: "blackhole")
        let server = try server([dead.port, knot.port], extra: ["--upstream-timeout", "400ms", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        // dig gives up after 2 s, so an answer at all means the 400 ms timeout, not the 2 s default, moved us on.
        #expect(try server.dig("www.example.org", "A").data("A") == ["192.0.2.80"])
        // The timeout is counted against the dead upstream, by reason, and the live one has none.
        let metrics = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/metrics").body
        #expect(sample(metrics, #"signpost_upstream_failures_total{upstream="127.0.0.1:\#(dead.port)",reason="timeout"}"#) == 1, "\(metrics)")
        #expect((sample(metrics, #"signpost_upstream_failures_total{upstream="127.0.0.1:\#(knot.port)",reason="timeout"}"#) ?? 0) == 0)
    }

    @Test func identicalQueriesInFlightShareOneUpstreamQuery() throws {
        // The upstream holds its answer until the test releases it, and the upstream timeout is far longer than
        // the test could take: all five queries are in flight together however slowly they arrive.
        let upstream = try FakeUpstream(mode: "hold")
        let server = try server([upstream.port], extra: ["--upstream-timeout", "30s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        let clients = (1...5).map { _ in UDPSocket(port: server.port) }
        let ids = clients.map { sock in
            let id = nextQueryID()
            sock.send(queryBytes("same.example.org", RRType.a, id: id))
            return id
        }
        // Every query has reached the forwarder (each counts a cache miss on its way to the in-flight table) and
        // the upstream holds the first; only then does the answer come.
        let misses = #"signpost_cache_requests_total{result="miss"}"#
        #expect(eventually(within: 10) { (sample((try? server.metrics()) ?? "", misses) ?? 0) >= 5 } != nil,
                "the server never saw five queries: \((try? server.metrics()) ?? "")")
        #expect(eventually(within: 10) { !upstream.queries.isEmpty } != nil, "the upstream never got the query: \(upstream.log)")
        upstream.release()
        for (sock, id) in zip(clients, ids) {
            let reply = sock.reply(id: id, within: 10)
            let addresses = reply?.answers.compactMap { record in if case .a(let ip) = record.rdata { "\(ip)" } else { nil } }
            #expect(addresses == ["192.0.2.99"], "client \(id): \(String(describing: reply))")
        }
        #expect(sample(try server.metrics(), misses) == 5)
        #expect(upstream.queries == ["same.example.org."], "upstream saw: \(upstream.log)")
    }

    @Test func aFailingUpstreamIsMarkedDownAndSkipped() throws {
        let knot = try Knot()
        let dead = try FakeUpstream(mode: "blackhole")
        let server = try server([dead.port, knot.port], extra: ["--upstream-timeout", "300ms", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        for i in 1...3 { _ = try server.dig("n\(i).example.org", "A") }  // each waits out the dead one first
        #expect(server.log_().contains("upstream marked down"), "\(server.log_())")
        // Counted by the server rather than timed by the test: a query that tried the dead upstream first would
        // add a fourth timeout against it. (The background probe's failures are not client exchanges.)
        let admin = "http://127.0.0.1:\(try #require(server.adminPort))/metrics"
        let deadTimeouts = #"signpost_upstream_failures_total{upstream="127.0.0.1:\#(dead.port)",reason="timeout"}"#
        #expect(sample(httpGet(admin).body, deadTimeouts) == 3)
        for name in ["www", "short", "ns"] {
            #expect(try server.dig("\(name).example.org", "A").status == "NOERROR")
        }
        #expect(sample(httpGet(admin).body, deadTimeouts) == 3, "the dead upstream is no longer tried first")
    }

    @Test func aDownUpstreamComesBackThroughTheProbe() throws {
        let first = try Knot()
        let second = try Knot()
        let server = try server([first.port, second.port], extra: ["--upstream-timeout", "300ms"])
        defer { server.stop() }
        first.stop()
        for i in 1...3 { _ = try server.dig("m\(i).example.org", "A") }
        #expect(server.log_().contains("upstream marked down"))
        try first.start()
        // The background probe (every 2 s) finds it answering again; no client traffic is needed.
        #expect(eventually(within: 6) { server.log_().contains("upstream up again") } != nil, "\(server.log_())")
    }

    @Test func upstreamTCPConnectionsAreReused() throws {
        let upstream = try FakeUpstream(mode: "tcp")
        let server = try server([upstream.port])
        defer { server.stop() }
        for i in 1...5 {
            #expect(try server.dig("t\(i).example.org", "A").data("A") == ["192.0.2.99"])
        }
        #expect(upstream.log.components(separatedBy: "connection").count - 1 == 1, "connections: \(upstream.log)")
    }

    @Test func largeAnswersComeOverTCP() throws {
        let knot = try Knot()
        let server = try server([knot.port])
        defer { server.stop() }
        // Knot truncates 100 A records over UDP; Signpost retries over TCP and has them all.
        let tcp = try server.dig("+tcp", "big.example.org", "A")
        #expect(tcp.data("A").count == 100 && !tcp.flags.contains("tc"), "\(tcp)")
        // To a UDP client the same truncation rules apply as for our own answers.
        let udp = try server.dig("+ignore", "+bufsize=1232", "big.example.org", "A")
        #expect(udp.flags.contains("tc") && udp.data("A").count < 100)
    }

    @Test func repliesWithTheWrongIDOrQuestionAreDropped() throws {
        let bad = try FakeUpstream(mode: "mismatch")
        let server = try server([bad.port], extra: ["--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(try server.dig("anything.example.org", "A").data("A") == ["192.0.2.99"])
        let metrics = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/metrics").body
        #expect((sample(metrics, "signpost_upstream_mismatched_replies_total") ?? 0) >= 2, "\(metrics)")
    }

    @Test func recursionACL() throws {
        let knot = try Knot()
        let server = try server([knot.port], extra: ["--allow-recursion", "10.0.0.0/8"])
        defer { server.stop() }
        #expect(try server.dig("www.example.org", "A").status == "REFUSED")
        #expect(try server.dig("web.service.consul", "A").status == "NXDOMAIN", "service answers still come")
        let open = try self.server([knot.port], extra: ["--allow-recursion", "127.0.0.0/8"])
        defer { open.stop() }
        #expect(try open.dig("www.example.org", "A").data("A") == ["192.0.2.80"])
    }

    @Test func maxConcurrentIsEnforced() throws {
        let hole = try FakeUpstream(mode: "blackhole")
        let server = try server([hole.port], extra: ["--max-concurrent", "2", "--upstream-timeout", "20s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        // Two distinct names occupy both slots: a slot is taken before the upstream exchange starts, so once the
        // upstream has received both queries, both slots are held (for the 20 s timeout, as it never answers).
        let busy = (1...2).map { i in
            let sock = UDPSocket(port: server.port)
            sock.send(queryBytes("slow\(i).example.org", RRType.a, id: nextQueryID()))
            return sock
        }
        #expect(eventually(within: 10) { Set(hole.queries).isSuperset(of: ["slow1.example.org.", "slow2.example.org."]) } != nil,
                "the upstream did not get both queries: \(hole.log)")
        // Rejected at once: a query that took a slot would wait out the 20 s timeout, past the 5 s allowed here.
        let rejected = server.socketQuery("fast.example.org", RRType.a, within: 5)
        #expect(rejected?.rcode == RCode.servFail, "\(String(describing: rejected))")
        let metrics = try server.metrics()
        #expect(metrics.contains("signpost_forward_overload_total 1"), "\(metrics)")
        #expect(!hole.queries.contains("fast.example.org."), "the rejected query went upstream: \(hole.log)")
        withExtendedLifetime(busy) {}  // the two clients stay until here
    }
}

import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fleet: two Signposts on a 3-member etcd cluster, each with every endpoint and a `--state-dir` of its own,
/// checked every 20 ms against the ground truth while members fail, quorum is lost, and one Signpost restarts.
@Suite("End to end: a fleet through etcd member failures", .serialized, .enabled(if: etcdAvailable, "etcd-server is not installed"))
struct FleetTests {
    static let services = 50, instances = 4

    /// What etcd has acknowledged, per service, with when; services whose last write failed are uncertain (the
    /// write may still commit) until the writer reads them back.
    final class Truth: @unchecked Sendable {
        private let lock = NSLock()
        private var history: [String: [(since: Date, addresses: Set<String>)]] = [:]
        private var uncertain: Set<String> = []

        func set(_ service: String, _ addresses: Set<String>, at time: Date = Date()) {
            lock.withLock { history[service, default: []].append((time, addresses)); uncertain.remove(service) }
        }
        func markUncertain(_ service: String) { lock.withLock { _ = uncertain.insert(service) } }
        func current(_ service: String) -> Set<String> { lock.withLock { history[service]?.last?.addresses ?? [] } }

        /// From a second before quorum was lost until both Signposts have converged again.
        private var outages: [(start: Date, end: Date)] = []
        func beginOutage(at time: Date = Date()) { lock.withLock { outages.append((time.addingTimeInterval(-1), .distantFuture)) } }
        func endOutage(at time: Date = Date()) { lock.withLock { if !outages.isEmpty { outages[outages.count - 1].end = time } } }

        /// Whether `answer`, seen at `time`, was the truth at some moment in the second before (the propagation window).
        /// In an outage, at some moment since it began: the member left can give only what it had applied, and a write
        /// the leader acknowledged just before it went may not have reached that member until quorum is back. The
        /// Signposts serve such answers as stale, and say so; after the outage they must converge (`Scenario.run`).
        func accepts(_ service: String, _ answer: Set<String>, at time: Date) -> Bool {
            lock.withLock {
                if uncertain.contains(service) { return true }
                let from = outages.last { $0.start <= time && time <= $0.end }?.start ?? time.addingTimeInterval(-1)
                let versions = history[service] ?? []
                for (k, v) in versions.enumerated() where v.addresses == answer {
                    let end = k + 1 < versions.count ? versions[k + 1].since : .distantFuture
                    if v.since <= time && end >= from { return true }
                }
                return false
            }
        }
    }

    /// Tallies of what the checker saw, per Signpost slot.
    struct Tally { var answers = 0, wrong = 0, nxdomain = 0, servfail = 0, noReply = 0; var examples: [String] = [] }

    /// etcd's JSON gateway from this process: a put or delete is acknowledged when etcd answers 200.
    static func etcdRequest(_ endpoint: String, _ path: String, _ body: [String: Any]) -> [String: Any]? {
        let r = http("POST", endpoint + path, body: Array((try? JSONSerialization.data(withJSONObject: body)) ?? Data()))
        guard r.status == 200 else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any]
    }

    static func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    @Test func twoSignpostsStayRightWhileMembersFail() throws {
        let etcd = try EtcdCluster(size: 3)
        let truth = Truth()
        func address(_ s: Int, _ i: Int) -> String { "10.\(s).0.\(i + 1)" }
        for s in 0..<Self.services {
            for i in 0..<Self.instances {
                try #require(Self.etcdRequest(etcd.members[0].url, "/v3/kv/put",
                                              ["key": Self.b64("/services/svc\(s)/\(i)"), "value": Self.b64(#"{"Address": "\#(address(s, i))"}"#)]) != nil)
            }
            truth.set("svc\(s)", Set((0..<Self.instances).map { address(s, $0) }))
        }
        let states = [TempDir(), TempDir()]
        func start(_ k: Int) throws -> Server {
            try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", states[k].path,
                                                              "--admin", "127.0.0.1:0", "--max-stale", "10m", "--log-level", "debug"])
        }
        let slots = Slots([try start(0), try start(1)])
        defer { slots.all.forEach { $0.stop() } }
        for server in slots.all {
            try #require(eventually(within: 10) { (0..<Self.services).allSatisfy { server.socketAddresses("svc\($0).service.consul") == truth.current("svc\($0)") } } != nil)
        }
        let checker = Checker(slots: slots, truth: truth)
        let churn = Churn(endpoints: etcd.members.map(\.url), truth: truth)
        let scenario = Scenario(etcd: etcd, slots: slots, checker: checker, churn: churn, truth: truth, start: start)
        let oldLog = scenario.oldLog
        /// On a failure, what each Signpost said about etcd (which member, from which revision, when).
        func dump() {
            let logs = slots.all.map { $0.log_() } + [oldLog.value]
            for (k, log) in logs.enumerated() {
                let lines = log.split(separator: "\n").filter { $0.contains("[Registries]") || $0.contains("[Catalog]") }
                print("--- \(k < slots.all.count ? "Signpost \(k + 1)" : "Signpost 2 before its restart"): registry log\n"
                      + lines.suffix(60).joined(separator: "\n"))
            }
        }
        let report: [String]
        do { report = try scenario.run() } catch { dump(); throw error }
        checker.stop()
        churn.stop()
        let tallies = checker.tallies
        let lines = report + tallies.enumerated().map { k, t in
            "Signpost \(k + 1): \(t.answers) answers checked, \(t.wrong) wrong, \(t.nxdomain) NXDOMAIN for a registered service, "
                + "\(t.servfail) SERVFAIL, \(t.noReply) without reply (\(k == 1 ? "its restart included" : "none expected"))"
        } + ["churn: \(churn.acknowledged) writes acknowledged, \(churn.failed) failed (quorum lost), longest stale-but-served window "
             + String(format: "%.1f s", checker.longestStale) + " (the staleness gauge's highest value, \(checker.staleSamples) samples)"]
        print(lines.joined(separator: "\n"))
        FleetTests.save(lines)
        if tallies.contains(where: { $0.wrong > 0 }) { dump() }
        for (k, t) in tallies.enumerated() {
            #expect(t.wrong == 0 && t.nxdomain == 0 && t.servfail == 0, "Signpost \(k + 1): \(t.examples.prefix(5))")
            #expect(t.answers > 1000)
        }
        #expect(tallies[0].noReply == 0)
    }

    static func save(_ lines: [String]) {
        let day = ISO8601DateFormatter().string(from: Date()).prefix(10)
        let text = "# Fleet test, \(day)\n\n`make test` (FleetTests): two Signposts, a 3-member etcd cluster, 50 services × 4 instances checked "
            + "every 20 ms through both.\n\n" + lines.map { "- " + $0 }.joined(separator: "\n") + "\n"
        try? text.write(toFile: resultsDirectory + "/fleet-\(day).md", atomically: true, encoding: .utf8)
        print(text)
    }
}

/// The two Signposts the checker asks; slot 2's server is replaced when it restarts.
final class Slots: @unchecked Sendable {
    private let lock = NSLock()
    private var servers: [Server?]
    init(_ servers: [Server]) { self.servers = servers }
    var all: [Server] { lock.withLock { servers.compactMap { $0 } } }
    func server(_ k: Int) -> Server? { lock.withLock { servers[k] } }
    func set(_ k: Int, _ s: Server?) { lock.withLock { servers[k] = s } }
}

/// Every 20 ms, all 50 services through both Signposts over UDP from this process, compared with the truth; and
/// the staleness gauge, for the longest window in which stale data was served.
final class Checker: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private var results = [FleetTests.Tally(), FleetTests.Tally()]
    private(set) var longestStale = 0.0
    private let thread: Thread
    /// Signalled when the thread's loop has ended.
    private let finished: DispatchSemaphore

    init(slots: Slots, truth: FleetTests.Truth) {
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        finished = done
        thread = Thread {
            defer { done.signal() }
            var lastMetrics = Date.distantPast
            while box.checker?.isRunning ?? false {
                let round = Date()
                for k in 0..<2 {
                    guard let server = slots.server(k) else { box.checker?.count(k) { $0.noReply += FleetTests.services }; continue }
                    for s in 0..<FleetTests.services { box.checker?.check(server, k, "svc\(s)", truth) }
                }
                if Date().timeIntervalSince(lastMetrics) > 0.2, let server = slots.server(0), let port = server.adminPort {
                    lastMetrics = Date()
                    let text = httpGet("http://127.0.0.1:\(port)/metrics").body
                    box.checker?.noteStale(sample(text, "signpost_registry_staleness_seconds"))
                }
                let left = 0.02 - Date().timeIntervalSince(round)
                if left > 0 { usleep(useconds_t(left * 1e6)) }
            }
        }
        box.checker = self
        thread.start()
    }

    final class Box: @unchecked Sendable { weak var checker: Checker? }

    var isRunning: Bool { lock.withLock { running } }
    var tallies: [FleetTests.Tally] { lock.withLock { results } }
    /// Ends the loop and waits until it has (its last round counted).
    func stop() {
        lock.withLock { running = false }
        _ = finished.wait(timeout: .now() + 10)
    }
    func count(_ k: Int, _ change: (inout FleetTests.Tally) -> Void) { lock.withLock { change(&results[k]) } }
    private(set) var staleSamples = 0
    func noteStale(_ age: Double?) { lock.withLock { staleSamples += 1; longestStale = max(longestStale, age ?? -1) } }

    func check(_ server: Server, _ k: Int, _ service: String, _ truth: FleetTests.Truth) {
        guard let m = server.socketQuery("\(service).service.consul", RRType.a, within: 1) else {
            count(k) { $0.noReply += 1 }
            return
        }
        let seen = Date()
        let answer = Set(m.answers.compactMap { if case .a(let ip) = $0.rdata { "\(ip)" } else { nil } })
        count(k) { t in
            t.answers += 1
            switch m.rcode {
            case RCode.nxDomain: t.nxdomain += 1; t.examples.append("\(service) NXDOMAIN")
            case RCode.servFail: t.servfail += 1; t.examples.append("\(service) SERVFAIL")
            default:
                if !truth.accepts(service, answer, at: seen) { t.wrong += 1; t.examples.append("\(service) \(answer.sorted()) vs \(truth.current(service).sorted())") }
            }
        }
    }
}

/// 20 writes a second: a fifth instance of a service appears, then goes, round the services. A write etcd does not
/// acknowledge (no quorum) makes its service uncertain until it is read back.
final class Churn: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private var paused = true
    private(set) var acknowledged = 0, failed = 0
    /// Services whose last write failed and that have not been read back yet.
    private var unsettled = 0
    private let thread: Thread
    private let finished: DispatchSemaphore

    init(endpoints: [String], truth: FleetTests.Truth) {
        final class Me: @unchecked Sendable { weak var churn: Churn? }
        let me = Me()
        let done = DispatchSemaphore(value: 0)
        finished = done
        thread = Thread {
            defer { done.signal() }
            var n = 0
            var pending: Set<Int> = []
            while let churn = me.churn, churn.isRunning {
                let started = Date()
                if !churn.isPaused {
                    let s = n / 2 % FleetTests.services, add = n % 2 == 0
                    let key = FleetTests.b64("/services/svc\(s)/extra")
                    let body: [String: Any] = add ? ["key": key, "value": FleetTests.b64(#"{"Address": "10.\#(s).9.9"}"#)] : ["key": key]
                    let endpoint = endpoints[n % endpoints.count]
                    // In flight, either answer is right: etcd may apply the write before its reply reaches us.
                    truth.markUncertain("svc\(s)")
                    if FleetTests.etcdRequest(endpoint, add ? "/v3/kv/put" : "/v3/kv/deleterange", body) != nil {
                        var set = truth.current("svc\(s)")
                        if add { set.insert("10.\(s).9.9") } else { set.remove("10.\(s).9.9") }
                        truth.set("svc\(s)", set)
                        churn.tally(ok: true)
                    } else {
                        truth.markUncertain("svc\(s)")
                        pending.insert(s)
                        churn.tally(ok: false)
                    }
                    n += 1
                    // Uncertain services are settled by reading them back once etcd answers again.
                    for p in pending {
                        if let got = FleetTests.etcdRequest(endpoint, "/v3/kv/range", ["key": FleetTests.b64("/services/svc\(p)/extra")]) {
                            var set = Set((0..<FleetTests.instances).map { "10.\(p).0.\($0 + 1)" })
                            if ((got["kvs"] as? [Any]) ?? []).isEmpty == false { set.insert("10.\(p).9.9") }
                            truth.set("svc\(p)", set)
                            pending.remove(p)
                        }
                    }
                    churn.setUnsettled(pending.count)
                }
                let left = 0.05 - Date().timeIntervalSince(started)
                if left > 0 { usleep(useconds_t(left * 1e6)) }
            }
        }
        me.churn = self
        thread.start()
    }

    var isRunning: Bool { lock.withLock { running } }
    var isPaused: Bool { lock.withLock { paused } }
    func resume() { lock.withLock { paused = false } }
    /// Ends the loop and waits until it has (no write left in flight).
    func stop() {
        lock.withLock { running = false }
        _ = finished.wait(timeout: .now() + 10)
    }
    /// Every write that failed has been read back: the truth holds what etcd holds.
    var isSettled: Bool { lock.withLock { unsettled == 0 } }
    func setUnsettled(_ n: Int) { lock.withLock { unsettled = n } }
    func tally(ok: Bool) { lock.withLock { if ok { acknowledged += 1 } else { failed += 1 } } }
}

/// The failure scenario, step by step; returns what it measured.
struct Scenario {
    let etcd: EtcdCluster, slots: Slots, checker: Checker, churn: Churn, truth: FleetTests.Truth
    let start: (Int) throws -> Server
    final class Text: @unchecked Sendable { var value = "" }
    let oldLog = Text()

    func everyAnswerRight(_ server: Server) -> Bool {
        (0..<FleetTests.services).allSatisfy { server.socketAddresses("svc\($0).service.consul") == truth.current("svc\($0)") }
    }

    /// Every service answered with what the checker accepts now (in the outage: any version since it began).
    func everyAnswerAccepted(_ server: Server) -> Bool {
        (0..<FleetTests.services).allSatisfy { truth.accepts("svc\($0)", server.socketAddresses("svc\($0).service.consul"), at: Date()) }
    }

    func readyBody(_ server: Server) -> String {
        server.adminPort.map { httpGet("http://127.0.0.1:\($0)/ready").body } ?? ""
    }

    /// Each phase lasts a number of the checker's rounds over every service on both Signposts (and, while etcd has
    /// quorum, of acknowledged writes), not a time: a busy machine makes the phases longer, never thinner.
    func phase(rounds: Int, writes: Int = 0) throws {
        func checked() -> [Int] { checker.tallies.map { $0.answers + $0.wrong + $0.nxdomain + $0.servfail + $0.noReply } }
        let (checks0, writes0) = (checked(), churn.acknowledged)
        let done = eventually(within: 60, every: 20_000) {
            zip(checked(), checks0).allSatisfy { $0 - $1 >= rounds * FleetTests.services } && churn.acknowledged - writes0 >= writes
        }
        try #require(done != nil, "a phase of \(rounds) rounds and \(writes) writes did not end within 60 s: \(checker.tallies), \(churn.acknowledged) writes")
    }

    func run() throws -> [String] {
        var report: [String] = []
        try phase(rounds: 40)  // 1. steady state
        churn.resume()  // 2. churn
        try phase(rounds: 60, writes: 30)
        // 3. Both watch the first endpoint: kill it; both move on.
        etcd.kill(0)
        try #require(eventually(within: 10) { slots.all.allSatisfy { $0.log_().contains("registry unreachable") } } != nil)
        try phase(rounds: 60, writes: 30)
        // 4. A second member: quorum is lost. Both keep serving, and say they are stale.
        truth.beginOutage()
        etcd.kill(1)
        let lost = Date()
        // The watch moves to the last member, which ends it with "no leader" once it notices (etcd's require-leader):
        // both Signposts then serve their data as stale, and say so.
        let stale = eventually(within: 20) {
            slots.all.allSatisfy { (sample(httpGet("http://127.0.0.1:\($0.adminPort ?? 0)/metrics").body, "signpost_registry_staleness_seconds") ?? 0) >= 1 }
        }
        #expect(stale != nil, "/ready: \(slots.all.map(readyBody))")
        let bodies = slots.all.map(readyBody)
        #expect(bodies.allSatisfy { $0.hasPrefix("ready\n") && $0.contains("stale") }, "\(bodies)")
        report.append("quorum lost: both Signposts knew (staleness over 1 s, /ready 200 and saying stale) \(String(format: "%.1f", stale ?? -1)) s later")
        try phase(rounds: 40)
        // 5. Restart the second Signpost while there is no quorum: it answers from its state file.
        let old = try #require(slots.server(1))
        slots.set(1, nil)
        old.stop()
        oldLog.value = old.log_()
        let launched = Date()
        let fresh = try start(1)
        let served = eventually(within: 5, every: 10_000) { everyAnswerAccepted(fresh) }
        slots.set(1, fresh)
        let restartTime = served.map { _ in Date().timeIntervalSince(launched) } ?? -1
        #expect(served != nil && restartTime <= 1.0, "restarted Signpost served all 50 services from its state file in \(restartTime) s")
        report.append(String(format: "restart during the outage: all 50 services answered from the state file %.2f s after launch", restartTime))
        try phase(rounds: 40)
        // 6. The members come back: both converge.
        try etcd.start(0)
        try etcd.start(1)
        try etcd.waitHealthy()
        let healthy = Date()
        // The truth is etcd's only once the writes that failed in the outage are read back (some did commit).
        let settled = eventually(within: 20, every: 20_000) { churn.isSettled }
        #expect(settled != nil, "the writes that failed in the outage were not read back within 20 s")
        let converged = eventually(within: 10, every: 20_000) { slots.all.allSatisfy(everyAnswerRight) }
        truth.endOutage()
        let convergeTime = converged.map { _ in Date().timeIntervalSince(healthy) } ?? -1
        // A member that is back may still hold a watch it took while starting: that is left after the watch's answer
        // timeout (2 s), and the next member is tried within the backoff's cap (1 s).
        #expect(converged != nil && convergeTime <= 4.0, "converged \(convergeTime) s after the cluster was healthy again")
        report.append(String(format: "members back: both converged to the truth %.2f s after the cluster was healthy; quorum was lost for %.1f s",
                             convergeTime, healthy.timeIntervalSince(lost)))
        try phase(rounds: 40, writes: 20)
        return report
    }
}

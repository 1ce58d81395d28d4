import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `--state-dir`: a restart during a registry outage serves the last-good catalog; a restart with the registry up
/// resumes where the watch was; bad state is reported and ignored.
@Suite("End to end: restarts and --state-dir", .serialized, .enabled(if: etcdAvailable, "etcd-server is not installed"))
struct RestartTests {
    /// The state file of the one registry in `dir`, once it exists.
    func stateFile(_ dir: TempDir) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.first { $0.hasSuffix(".state") }.map { dir.path + "/" + $0 }
    }

    func ready(_ server: Server) throws -> (status: Int, body: String) {
        httpGet("http://127.0.0.1:\(try #require(server.adminPort))/ready")
    }

    /// etcd with `db` × 2.
    func etcdWithDB() throws -> EtcdCluster {
        let etcd = try EtcdCluster()
        try etcd.put("/services/db/1", #"{"Address": "192.0.2.30"}"#)
        try etcd.put("/services/db/2", #"{"Address": "192.0.2.31"}"#)
        return etcd
    }

    /// A server on etcd with the state kept in `state`; waits until it has written the file.
    func serverWritingState(_ etcd: EtcdCluster, _ state: TempDir, extra: [String] = []) throws -> Server {
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", state.path, "--admin", "127.0.0.1:0"] + extra)
        try #require(eventually(within: 5) { server.socketAddresses("db.service.consul") == ["192.0.2.30", "192.0.2.31"] } != nil)
        try #require(eventually(within: 5) { stateFile(state) != nil }, "no state file: \(server.log_())")
        return server
    }

    @Test func aRestartDuringAnOutageServesTheStateFile() throws {
        let etcd = try etcdWithDB()
        let state = TempDir()
        let first = try serverWritingState(etcd, state)
        first.stop()
        etcd.kill(0)
        // The data ages while nothing runs.
        usleep(2_000_000)

        let launched = Date()
        let second = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", state.path, "--admin", "127.0.0.1:0",
                                        "--max-stale", "1h"])
        defer { second.stop() }
        let served = eventually(within: 5, every: 10_000) { second.socketAddresses("db.service.consul") == ["192.0.2.30", "192.0.2.31"] }
        #expect(served != nil, "\(second.log_())")
        print("restart during an outage: answers from the state file \(String(format: "%.2f", Date().timeIntervalSince(launched))) s after launch")
        #expect(second.log_().contains("serving the state file until etcd answers"))
        let r = try ready(second)
        #expect(r.status == 200 && r.body.contains("etcd:\(etcd.endpoints)?prefix=/services/: stale (from state, age "), "\(r.body)")
        // Staleness counts from the stored confirmation, not from this start.
        // (The gauge is set each second.)
        #expect(eventually(within: 3) { (sample((try? second.metrics()) ?? "", "signpost_registry_staleness_seconds") ?? 0) >= 2 } != nil)
        #expect(second.socketRCode("nosuch.service.consul") == RCode.nxDomain)

        // etcd comes back: the data is etcd's again, and no longer "from state".
        try etcd.start(0)
        try etcd.waitHealthy()
        try etcd.put("/services/db/3", #"{"Address": "192.0.2.32"}"#)
        #expect(eventually(within: 10) { second.socketAddresses("db.service.consul").count == 3 } != nil, "\(second.log_())")
        #expect(eventually(within: 5) { (try? ready(second).body) == "ready\n" } != nil)
    }

    @Test func stateOlderThanMaxStaleIsNeverServed() throws {
        let etcd = try etcdWithDB()
        let state = TempDir()
        try serverWritingState(etcd, state).stop()
        etcd.kill(0)
        usleep(1_500_000)
        let second = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", state.path, "--max-stale", "1s"])
        defer { second.stop() }
        #expect(eventually(within: 5) { second.log_().contains("state file too old to serve (over --max-stale)") } != nil)
        #expect(second.socketRCode("db.service.consul") == RCode.servFail, "not loaded: SERVFAIL, never old data")
    }

    @Test func badStateIsReportedAndIgnored() throws {
        let etcd = try etcdWithDB()
        let state = TempDir()
        try serverWritingState(etcd, state).stop()
        let path = try #require(stateFile(state))
        let bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        for (label, damaged) in [("truncated", Array(bytes.prefix(bytes.count / 2))), ("garbage", Array(repeating: 0x7F, count: 300)),
                                 ("future", Array("SIGNPOST-STATE 7 0 0\n".utf8))] {
            FileManager.default.createFile(atPath: path, contents: Data(damaged))
            let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", state.path])
            #expect(eventually(within: 5) { server.log_().contains("state file ignored") } != nil, "\(label): \(server.log_())")
            #expect(server.log_().contains(path), "\(label): the path is named")
            // etcd is up: its data serves as if there had been no file.
            #expect(eventually(within: 5) { server.socketAddresses("db.service.consul") == ["192.0.2.30", "192.0.2.31"] } != nil, "\(label)")
            server.stop()
        }
        // A directory that cannot be written: a warning at start-up, then no state.
        let file = TempDir()
        file.write("not-a-dir", "x")
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", file.path + "/not-a-dir/state"])
        defer { server.stop() }
        #expect(server.log_().contains("--state-dir cannot be written; running without state"))
        #expect(eventually(within: 5) { server.socketAddresses("db.service.consul") == ["192.0.2.30", "192.0.2.31"] } != nil)
    }

    @Test func aRestartWithEtcdUpResumesTheWatchWithoutListing() throws {
        let etcd = try etcdWithDB()
        let state = TempDir()
        let first = try serverWritingState(etcd, state)
        #expect(first.log_().contains("etcd listed"))
        first.stop()
        // A change while Signpost is down: the resumed watch replays it.
        try etcd.put("/services/db/3", #"{"Address": "192.0.2.32"}"#)
        let second = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)", "--state-dir", state.path])
        defer { second.stop() }
        #expect(eventually(within: 5) { second.socketAddresses("db.service.consul").count == 3 } != nil, "\(second.log_())")
        #expect(!second.log_().contains("etcd listed"), "resumed from the stored revision: \(second.log_())")
    }

    @Test func consulResumesFromItsIndexesAndServesItsStateDuringAnOutage() throws {
        let consul = try ConsulStandIn()
        try consul.register(node: "n1", address: "192.0.2.41", service: "api")
        try consul.register(node: "n2", address: "192.0.2.42", service: "api")
        let state = TempDir()
        let extra = ["--registry", "consul:\(consul.url)?wait=2s", "--state-dir", state.path, "--admin", "127.0.0.1:0"]
        let first = try Server(dir: TempDir(), catalog: false, extra: extra)
        try #require(eventually(within: 5) { first.socketAddresses("api.service.consul") == ["192.0.2.41", "192.0.2.42"] } != nil)
        // Written once every read is done, with each service's own index and the catalog's (until then the catalog
        // index is 0, and a restart would sweep).
        try #require(eventually(within: 10) {
            guard let text = stateFile(state).flatMap({ FileManager.default.contents(atPath: $0) }).map({ String(decoding: $0, as: UTF8.self) }) else { return false }
            return text.contains("serviceIndexes") && !text.contains(#""catalogIndex":"0""#) && text.contains("catalogIndex")
        })
        first.stop()
        // A request the first server sent as it went may still be on its way through the stand-in: wait until its
        // connections are closed (the test's own is the one left), so that it counts as the first's.
        #expect(eventually(within: 5) { ((try? consul.stats().current) ?? 99) <= 1 } != nil)
        let before = try consul.requests().count

        let second = try Server(dir: TempDir(), catalog: false, extra: extra)
        #expect(eventually(within: 5) { second.socketAddresses("api.service.consul") == ["192.0.2.41", "192.0.2.42"] } != nil)
        #expect(eventually(within: 5) { (try? consul.requests().count) ?? 0 > before + 1 } != nil)
        let fresh = try consul.requests().dropFirst(before)
        let catalogQueries = fresh.filter { $0.path == "/v1/catalog/services" }
        #expect(catalogQueries.first.map { Int($0.query["index"] ?? "0") ?? 0 } ?? 0 > 0, "the first blocking query resumes at the stored index")
        #expect(!fresh.contains { $0.path.hasPrefix("/v1/health/service/") }, "nothing changed: no service is read again")
        second.stop()

        consul.stop()
        let third = try Server(dir: TempDir(), catalog: false, extra: extra)
        defer { third.stop() }
        #expect(eventually(within: 5) { third.socketAddresses("api.service.consul") == ["192.0.2.41", "192.0.2.42"] } != nil, "\(third.log_())")
        #expect(third.log_().contains("serving the state file until Consul answers"))
        #expect(try ready(third).body.contains("stale (from state, age "))
    }
}

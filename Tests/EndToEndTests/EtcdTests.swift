import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Signpost following a real etcd (Debian's etcd-server) on loopback.
@Suite("End to end: etcd registry", .serialized, .enabled(if: etcdAvailable, "etcd-server is not installed"))
struct EtcdTests {
    func addresses(_ server: Server, _ name: String) -> Set<String> {
        Set((try? server.dig(name, "A").data("A")) ?? [])
    }

    @Test func listingFormatsPutsDeletesAndMerge() throws {
        let etcd = try EtcdCluster()
        // Before Signpost starts: all three value formats, a critical instance, and a bad value.
        try etcd.put("/services/web/1", #"{"Address": "192.0.2.1", "Port": 8080, "Node": "web-1", "Tags": ["v2"]}"#)
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.2", "Port": 8080, "Status": "critical"}"#)
        try etcd.put("/services/grpc/192.0.2.3:50051", #"{"Op": 0, "Addr": "192.0.2.3:50051", "Metadata": {"zone": "a"}}"#)
        try etcd.put("/services/mail/1", #"{"Name": "mail", "IP": "192.0.2.4:8972"}"#)
        try etcd.put("/services/broken/1", "this is not JSON")
        let dir = TempDir()
        // A file registry too: the same service from both is merged.
        dir.write("catalog/web.json", registration(node: "file-1", address: "192.0.2.9", service: "web"))
        let server = try Server(dir: dir, extra: ["--registry", "etcd:\(etcd.endpoints)"])
        defer { server.stop() }

        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.1", "192.0.2.9"] } != nil,
                "\(addresses(server, "web.service.consul"))")
        #expect(try server.dig("grpc.service.consul", "SRV").data("SRV") == ["1 1 50051 c0000203.addr.dc1.consul."])
        #expect(try server.dig("mail.service.consul", "SRV").data("SRV") == ["1 1 8972 c0000204.addr.dc1.consul."])
        #expect(try server.dig("v2.web.service.consul", "SRV").data("SRV") == ["1 1 8080 web-1.node.dc1.consul."])
        #expect(try server.dig("web-1.node.consul", "A").data("A") == ["192.0.2.1"])
        #expect(try server.dig("broken.service.consul", "A").status == "NXDOMAIN")
        #expect(server.log_().contains("/services/broken/1"), "the bad value is logged with its key")

        // A put shows up; a delete removes; a bad value does not disturb the rest.
        try etcd.put("/services/web/3", #"{"Address": "192.0.2.5", "Port": 8080}"#)
        let seen = eventually(within: 2, every: 10_000) { server.socketAddresses("web.service.consul").contains("192.0.2.5") }
        #expect(seen != nil && seen! < 1, "put visible after \(String(describing: seen)) s")
        try etcd.put("/services/web/4", "{\"Port\": 1}")
        try etcd.delete("/services/web/1")
        #expect(eventually(within: 2) { addresses(server, "web.service.consul") == ["192.0.2.5", "192.0.2.9"] } != nil,
                "\(addresses(server, "web.service.consul"))")
        #expect(try server.dig("web-1.node.consul", "A").status == "NXDOMAIN", "a node goes with its last instance")
        // A status change to critical removes the instance.
        try etcd.put("/services/web/3", #"{"Address": "192.0.2.5", "Port": 8080, "Status": "maintenance"}"#)
        #expect(eventually(within: 2) { addresses(server, "web.service.consul") == ["192.0.2.9"] } != nil)
    }

    @Test func leaseExpiryRemovesTheInstance() throws {
        let etcd = try EtcdCluster()
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)"])
        defer { server.stop() }
        try etcd.put("/services/api/keep", #"{"Address": "192.0.2.20"}"#)
        let lease = try etcd.grantLease(2)
        try etcd.put("/services/api/leased", #"{"Address": "192.0.2.21"}"#, lease: lease)
        #expect(eventually(within: 3) { addresses(server, "api.service.consul") == ["192.0.2.20", "192.0.2.21"] } != nil)
        // Nobody keeps the lease alive: etcd deletes the key, and the instance goes.
        #expect(eventually(within: 8) { addresses(server, "api.service.consul") == ["192.0.2.20"] } != nil,
                "\(addresses(server, "api.service.consul"))")
    }

    @Test func servesThroughAnOutageAndCatchesUp() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/services/db/1", #"{"Address": "192.0.2.30"}"#)
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)"])
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "db.service.consul") == ["192.0.2.30"] } != nil)

        etcd.kill(0)
        // Cached answers keep serving, with their normal TTL, for the whole outage.
        for _ in 0..<10 {
            #expect(addresses(server, "db.service.consul") == ["192.0.2.30"])
            usleep(150_000)
        }
        #expect(eventually(within: 3) { server.log_().contains("serving cached registry data") } != nil)

        try etcd.start(0)
        try etcd.waitHealthy()
        try etcd.put("/services/db/2", #"{"Address": "192.0.2.31"}"#)
        #expect(eventually(within: 10) { addresses(server, "db.service.consul") == ["192.0.2.30", "192.0.2.31"] } != nil,
                "\(server.log_())")
    }

    @Test func maxStaleTurnsIntoServfail() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/services/db/1", #"{"Address": "192.0.2.30"}"#)
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)", "--max-stale", "1s"])
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "db.service.consul") == ["192.0.2.30"] } != nil)
        etcd.kill(0)
        #expect(eventually(within: 5) { (try? server.dig("db.service.consul", "A").status) == "SERVFAIL" } != nil)
        // Names outside the registry's data are unaffected.
        #expect(try server.dig("example.com", "A").status == "REFUSED")
    }

    @Test func stalenessIsExposedOnTheAdminEndpoint() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/services/db/1", #"{"Address": "192.0.2.30"}"#)
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--max-stale", "2s", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        let admin = try #require(server.adminPort.map { "http://127.0.0.1:\($0)" }, "\(server.log_())")
        #expect(httpGet(admin + "/health").status == 200)
        #expect(eventually(within: 5) { httpGet(admin + "/ready").status == 200 } != nil)
        #expect(eventually(within: 3) { httpGet(admin + "/metrics").body.contains("signpost_registry_staleness_seconds 0") } != nil,
                "\(httpGet(admin + "/metrics").body)")

        etcd.kill(0)
        // The age grows in the gauge, the restarts are counted, and past --max-stale the gateway is not ready.
        #expect(eventually(within: 6) {
            let m = httpGet(admin + "/metrics").body
            return (sample(m, "signpost_registry_staleness_seconds") ?? 0) >= 2 && m.contains("signpost_registry_watch_restarts_total{registry=\"etcd\"}")
        } != nil, "\(httpGet(admin + "/metrics").body)")
        let ready = httpGet(admin + "/ready")
        #expect(ready.status == 503 && ready.body.contains("over --max-stale"), "\(ready)")
        #expect(httpGet(admin + "/nope").status == 404)
    }

    @Test func startingWithTheRegistryDownIsServfailNotNxdomain() throws {
        // Port 1: nothing listens there (a free port from freePort() could be taken by another test's etcd).
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:http://127.0.0.1:1", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        let first = try server.dig("db.service.consul", "A")
        #expect(first.status == "SERVFAIL", "\(first)\n\(server.log_())")
        let ready = httpGet("http://127.0.0.1:\(try #require(server.adminPort))/ready")
        #expect(ready.status == 503 && ready.body.contains("not loaded"), "\(ready)")
        #expect(try server.dig("consul", "SOA").status == "SERVFAIL")
    }

    @Test func compactionForcesARelist() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/services/db/1", #"{"Address": "192.0.2.30"}"#)
        try etcd.put("/services/db/2", #"{"Address": "192.0.2.31"}"#)
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)"])
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "db.service.consul") == ["192.0.2.30", "192.0.2.31"] } != nil)

        // Freeze Signpost, so it cannot follow what happens next; its watch revision gets compacted away.
        kill(server.process.processIdentifier, SIGSTOP)
        etcd.kill(0)
        try etcd.start(0)
        try etcd.waitHealthy()
        try etcd.delete("/services/db/1")
        try etcd.put("/services/db/3", #"{"Address": "192.0.2.32"}"#)
        try etcd.compactToHead()
        kill(server.process.processIdentifier, SIGCONT)

        #expect(eventually(within: 10) { addresses(server, "db.service.consul") == ["192.0.2.31", "192.0.2.32"] } != nil,
                "\(addresses(server, "db.service.consul")) \(server.log_())")
        #expect(server.log_().contains("compacted; listing again"), "\(server.log_())")
    }

    /// A member that takes the watch request and never answers it (a restarting etcd holds it until it is ready) is
    /// left after `watchAnswerTimeout` (2 s) for the next endpoint, where the watch goes on.
    @Test func aMemberThatHoldsTheWatchIsLeftForTheNext() throws {
        let etcd = try EtcdCluster(size: 1)
        try etcd.put("/services/web/1", #"{"Address": "192.0.2.50"}"#)
        let holding = try BadRegistry("hold-watch", environment: ["UPSTREAM": etcd.members[0].url])
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(holding.url),\(etcd.members[0].url)"])
        defer { server.stop() }
        // The listing goes through the holding endpoint; the watch it holds would keep every later change away.
        #expect(eventually(within: 10) { addresses(server, "web.service.consul") == ["192.0.2.50"] } != nil, "\(server.log_())")
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.51"}"#)
        #expect(eventually(within: 20) { addresses(server, "web.service.consul") == ["192.0.2.50", "192.0.2.51"] } != nil,
                "\(server.log_())")
        #expect(server.log_().contains("\(holding.url): timed out"), "\(server.log_())")
    }

    @Test func threeMemberClusterLosesTheMemberWeWatch() throws {
        let etcd = try EtcdCluster(size: 3)
        try etcd.put("/services/web/1", #"{"Address": "192.0.2.40"}"#)
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(etcd.endpoints)"])
        defer { server.stop() }
        #expect(eventually(within: 5) { addresses(server, "web.service.consul") == ["192.0.2.40"] } != nil)
        // Signpost starts with the first endpoint; kill that member. The other two keep quorum.
        etcd.kill(0)
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.41"}"#)
        #expect(eventually(within: 10) { addresses(server, "web.service.consul") == ["192.0.2.40", "192.0.2.41"] } != nil,
                "\(server.log_())")
        try etcd.delete("/services/web/1")
        #expect(eventually(within: 3) { addresses(server, "web.service.consul") == ["192.0.2.41"] } != nil)
    }
}

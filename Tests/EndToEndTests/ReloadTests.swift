import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP keeps the resolver, and every answer it has pre-encoded, when the resolver's settings are unchanged;
/// it re-encodes when they change. Measured by `signpost_answers_encoded_total`, which counts encodings.
@Suite("End to end: reload and the pre-encoded answers")
struct ReloadTests {
    func encoded(_ admin: String) -> Double? { sample(httpGet(admin + "/metrics").body, "signpost_answers_encoded_total") }

    func reload(_ server: Server) throws {
        let before = server.log_().components(separatedBy: "] reloaded").count
        kill(server.process.processIdentifier, SIGHUP)
        let done = eventually(within: 10) { server.log_().components(separatedBy: "] reloaded").count > before }
        try #require(done != nil, "no 'reloaded' line: \(server.log_())")
    }

    @Test func aReloadThatLeavesTheResolverAloneKeepsTheEncodedAnswers() throws {
        let dir = TempDir()
        dir.write("catalog/web.json", registration(node: "web-1", address: "192.0.2.11", service: "web"))
        dir.write("signpost.json", #"{"service_ttl": "5s", "query_log": false}"#)
        let server = try Server(dir: dir, extra: ["--config", dir.path + "/signpost.json", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        let admin = "http://127.0.0.1:\(try #require(server.adminPort))"
        for type in ["A", "SRV", "A"] { #expect(try server.dig("web.service.consul", type).answer.first?[1] == "5") }
        let warm = try #require(encoded(admin))
        #expect(warm >= 1)

        // Settings outside the resolver (the query log, the forwarding cache) and an untouched resolver part.
        dir.write("signpost.json", #"{"service_ttl": "5s", "query_log": true, "cache_size": 500}"#)
        try reload(server)
        #expect(server.log_().contains("resolver=kept"), "\(server.log_())")
        for type in ["A", "SRV", "A"] { #expect(try server.dig("web.service.consul", type).answer.first?[1] == "5") }
        #expect(encoded(admin) == warm, "no answer was encoded again")

        // A resolver setting: the answers are encoded anew, and carry it.
        dir.write("signpost.json", #"{"service_ttl": "9s", "query_log": true, "cache_size": 500}"#)
        try reload(server)
        #expect(server.log_().contains("resolver=rebuilt"))
        #expect(try server.dig("web.service.consul", "A").answer.first?[1] == "9")
        #expect((encoded(admin) ?? 0) > warm)
    }

    @Test func restartOnlyChangesAreNamedAndWait() throws {
        let dir = TempDir()
        dir.write("catalog/web.json", registration(node: "web-1", address: "192.0.2.11", service: "web"))
        dir.write("signpost.json", #"{"tcp_max_connections": 100}"#)
        let server = try Server(dir: dir, extra: ["--config", dir.path + "/signpost.json"])
        defer { server.stop() }
        dir.write("signpost.json", #"{"tcp_max_connections": 200, "log_level": "debug", "node_ttl": "3s"}"#)
        try reload(server)
        #expect(server.log_().contains("settings=logLevel, tcpMaxConnections"), "\(server.log_())")
        #expect(try server.dig("web-1.node.consul", "A").answer.first?[1] == "3", "the rest applies")
    }
}

/// A reload that changes forwarding replaces the forwarder; the old one's upstream connections close when its last
/// query ends. 100 such reloads, each after a query that opened a TCP connection upstream, leave the process's open
/// files where they were.
@Suite("End to end: reloads do not leak upstream connections", .serialized)
struct ReloadLeakTests {
    func openFiles(_ server: Server) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.process.processIdentifier)/fd").count) ?? -1
    }

    @Test func aHundredReloadsLeaveTheOpenFilesFlat() throws {
        let upstream = try FakeUpstream(mode: "tcp")
        let dir = TempDir()
        func config(_ i: Int) {
            dir.write("signpost.json", #"{"upstream": ["127.0.0.1:\#(upstream.port)"], "cache_size": \#(1000 + i % 2)}"#)
        }
        config(0)
        let server = try Server(dir: dir, forward: true, extra: ["--config", dir.path + "/signpost.json"])
        defer { server.stop() }
        var baseline = 0
        for i in 1...100 {
            // Over TCP upstream (the fake truncates over UDP), so this forwarder's pool holds a connection.
            let answer = try server.dig("q\(i).example.org", "A")
            #expect(answer.status == "NOERROR", "query \(i): \(answer)")
            let before = server.log_().components(separatedBy: "] reloaded").count
            config(i)
            kill(server.process.processIdentifier, SIGHUP)
            try #require(eventually(within: 10) { server.log_().components(separatedBy: "] reloaded").count > before } != nil, "reload \(i)")
            if i == 10 { baseline = openFiles(server) }
        }
        // The retired pools close asynchronously: wait for the count to settle, bounded.
        let settled = eventually(within: 10) { openFiles(server) <= baseline + 3 }
        #expect(settled != nil, "open files: \(openFiles(server)) after 100 reloads, \(baseline) after 10")
        #expect(upstream.log.components(separatedBy: "connection").count - 1 >= 100, "each forwarder opened its own connection")
    }
}

import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("End to end: --config and TCP idle timeout")
struct ConfigTests {
    @Test func configFileSettingsApplyAndFlagsWin() throws {
        let dir = TempDir()
        dir.write("catalog/web.json", registration(node: "web-1", address: "192.0.2.11", service: "web"))
        dir.write("catalog/db.json", registration(node: "db-1", address: "192.0.2.31", service: "db"))
        // The file asks for port 1 (not bindable), which the command line's --listen overrides.
        dir.write("signpost.json", """
        {
          "listen": ["127.0.0.1:1"],
          "service_ttl": {"*": "5s", "web": "30s"},
          "node-ttl": "7s",
          "order": "random",
          "only-passing": true
        }
        """)
        let server = try Server(dir: dir, extra: ["--config", dir.path + "/signpost.json"])
        defer { server.stop() }
        #expect(try server.dig("web.service.consul", "A").answer.map { $0[1] } == ["30"])
        #expect(try server.dig("db.service.consul", "A").answer.map { $0[1] } == ["5"])
        #expect(try server.dig("web-1.node.consul", "A").answer.map { $0[1] } == ["7"])
    }

    @Test func badConfigIsOneLineWithPathAndLine() throws {
        let dir = TempDir()
        dir.write("bad.json", "{\n  \"listen\": \"127.0.0.1:0\",\n  \"only-passing\": \"yes\"\n}")
        let r = try run([signpostBinary, "serve", "--config", dir.path + "/bad.json"])
        #expect(r.status == 64)
        #expect(r.err == "signpost: \(dir.path)/bad.json:3: only-passing: expected true or false, got a string\n", "\(r.err)")
        dir.write("unknown.json", "{\"lisen\": \"127.0.0.1:0\"}")
        let u = try run([signpostBinary, "check", "--config", dir.path + "/unknown.json"])
        #expect(u.status == 64 && u.err.contains("unknown.json:1: unknown setting \"lisen\""), "\(u.err)")
    }

    @Test func checkTakesTheCatalogFromTheConfig() throws {
        let dir = TempDir()
        dir.write("catalog/bad.json", "{\"Node\": \"n\"}")
        dir.write("c.json", "{\"catalog\": \"\(dir.path)/catalog\", \"zones\": \"\(dir.path)\", \"listen\": \"127.0.0.1:0\"}")
        let r = try run([signpostBinary, "check", "--config", dir.path + "/c.json"])
        #expect(r.status == 1)
        #expect(r.out.contains("\(dir.path)/catalog/bad.json:1: Address: required"), "\(r)")
    }

    @Test func idleTCPConnectionsAreClosed() throws {
        let server = try Server(dir: TempDir(), extra: ["--tcp-idle-timeout", "1s"])
        defer { server.stop() }
        let conn = try #require(TCPSocket(port: server.port, timeout: 5))
        let start = Date()
        // Closed by the server (within the socket's 5 s read timeout), and not before the 1 s timeout could run out.
        #expect(conn.isClosedByPeer())
        let waited = Date().timeIntervalSince(start)
        #expect(waited > 0.8, "closed after \(waited) s")
        // The listener itself is unaffected.
        #expect(try server.dig("+tcp", "consul", "SOA").status == "NOERROR")
    }
}

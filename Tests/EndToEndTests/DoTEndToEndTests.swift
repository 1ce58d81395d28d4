import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

let unboundAvailable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/unbound")

/// Debian's unbound serving DNS over TLS on a free loopback port with a test CA's certificate (for 127.0.0.1 and
/// `localhost`), answering `www.dot.example` from local data and refusing everything else, so it never asks
/// anyone: started and stopped by PID.
final class UnboundDoT: @unchecked Sendable {
    let dir = TempDir()
    let port: Int
    var process: Process?

    init(certs: TestCerts) throws {
        port = freePort()
        try certs.make("dot", server: true)
        dir.write("unbound.conf", """
            server:
                interface: 127.0.0.1@\(port)
                tls-port: \(port)
                tls-service-key: "\(certs.key("dot"))"
                tls-service-pem: "\(certs.pem("dot"))"
                do-daemonize: no
                username: ""
                chroot: ""
                directory: "\(dir.path)"
                pidfile: ""
                use-syslog: no
                logfile: ""
                num-threads: 1
                module-config: "iterator"
                access-control: 127.0.0.0/8 allow
                local-zone: "." refuse
                local-zone: "dot.example." static
                local-data: "www.dot.example. 60 IN A 192.0.2.53"
            remote-control:
                control-enable: no

            """)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/unbound")
        p.arguments = ["-d", "-c", dir.path + "/unbound.conf"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: { FileManager.default.createFile(atPath: dir.path + "/log", contents: nil); return dir.path + "/log" }())
        try p.run()
        process = p
        let up = eventually(within: 10) {
            (try? run(["kdig", "@127.0.0.1", "-p", "\(self.port)", "+tls", "+tls-ca=\(certs.pem("ca"))", "+tls-hostname=localhost",
                       "+time=1", "+retry=0", "www.dot.example", "A"]))?.out.contains("192.0.2.53") == true
        }
        if up == nil { throw Server.ServerError(message: "unbound did not start: \((try? String(contentsOfFile: dir.path + "/log", encoding: .utf8)) ?? "")") }
    }

    /// Our established TCP connections to it, as the kernel lists them.
    var connections: Int {
        let r = try? run(["ss", "-tnH", "state", "established", "dst", "127.0.0.1:\(port)"])
        return r?.out.split(separator: "\n").count ?? -1
    }

    func stop() { terminate(&process) }

    deinit { stop() }
}

/// DNS over TLS upstreams (RFC 7858): `--upstream tls://IP[:853]@NAME`, checked against `--upstream-ca`.
@Suite("End to end: DNS over TLS upstreams", .serialized, .enabled(if: unboundAvailable, "unbound is not installed"))
struct DoTEndToEndTests {
    static func server(_ upstreams: [String], certs: TestCerts, extra: [String] = []) throws -> Server {
        try Server(dir: TempDir(), forward: true, extra: upstreams.flatMap { ["--upstream", $0] } + ["--upstream-ca", certs.pem("ca"), "--admin", "127.0.0.1:0"] + extra)
    }

    func metrics(_ server: Server) -> String { httpGet("http://127.0.0.1:\(server.adminPort ?? 0)/metrics").body }

    @Test func forwardedNamesResolveOverTLSAndReuseOneConnection() throws {
        let certs = TestCerts()
        let unbound = try UnboundDoT(certs: certs)
        defer { unbound.stop() }
        let upstream = "tls://127.0.0.1:\(unbound.port)@localhost"
        let server = try Self.server([upstream], certs: certs)
        defer { server.stop() }
        #expect(try server.dig("www.dot.example", "A").data("A") == ["192.0.2.53"])
        // 1,000 different names (none cached), sent 100 at a time: every one answered, over at most 2 connections.
        let script = server.dir.path + "/many.py"
        try #"""
        import socket, struct, sys
        port, answered = int(sys.argv[1]), 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
        for batch in range(10):
            for i in range(100):
                n = batch * 100 + i
                name = b"".join(bytes([len(l)]) + l.encode() for l in f"n{n}.dot.example".split(".")) + b"\0"
                s.sendto(struct.pack(">HHHHHH", n, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1), ("127.0.0.1", port))
            for i in range(100):
                data = s.recv(4096)
                if struct.unpack(">H", data[2:4])[0] & 0xF == 3: answered += 1
        print(answered)
        """#.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try run(["python3", script, "\(server.port)"])
        #expect(r.out.trimmingCharacters(in: .whitespacesAndNewlines) == "1000", "NXDOMAIN from unbound for each: \(r.out) \(r.err)")
        let opened = sample(metrics(server), #"signpost_upstream_connections_total{upstream="\#(upstream)"}"#) ?? -1
        #expect(opened >= 1 && opened <= 2, "connections opened: \(opened)")
        #expect(unbound.connections <= 2)
    }

    @Test func aNameTheCertificateDoesNotCarryFailsWithAClearError() throws {
        let certs = TestCerts()
        let unbound = try UnboundDoT(certs: certs)
        defer { unbound.stop() }
        let upstream = "tls://127.0.0.1:\(unbound.port)@resolver.wrong.example"
        let server = try Self.server([upstream], certs: certs)
        defer { server.stop() }
        #expect(try server.dig("www.dot.example", "A").status == "SERVFAIL")
        #expect(eventually(within: 5) { server.log_().contains("TLS handshake with upstream failed") } != nil, "\(server.log_())")
        let line = server.log_().split(separator: "\n").first { $0.contains("TLS handshake with upstream failed") } ?? ""
        #expect(line.contains(upstream) && line.lowercased().contains("certificate"), "\(line)")
        #expect((sample(metrics(server), #"signpost_upstream_failures_total{upstream="\#(upstream)",reason="tls_handshake"}"#) ?? 0) >= 1)
        // Never over plain DNS instead: unbound's TLS port would not answer it, and nothing else is configured.
        #expect(sample(metrics(server), #"signpost_upstream_failures_total{upstream="\#(upstream)",reason="timeout"}"#) ?? 0 == 0)
    }

    /// A TLS upstream that refuses the connection is passed over at once, with no timeout (measured in the note:
    /// the answer's time is the live upstream's handshake).
    @Test func aDeadTLSUpstreamFailsOverAtOnce() throws {
        let certs = TestCerts()
        let unbound = try UnboundDoT(certs: certs)
        defer { unbound.stop() }
        let dead = "tls://127.0.0.1:\(freePort())@localhost"
        let server = try Self.server([dead, "tls://127.0.0.1:\(unbound.port)@localhost"], certs: certs, extra: ["--upstream-timeout", "5s"])
        defer { server.stop() }
        let d = try server.dig("www.dot.example", "A")
        #expect(d.data("A") == ["192.0.2.53"], "\(d)")
        let m = metrics(server)
        #expect(sample(m, #"signpost_upstream_failures_total{upstream="\#(dead)",reason="connection_refused"}"#) == 1, "\(m)")
        #expect(sample(m, #"signpost_upstream_failures_total{upstream="\#(dead)",reason="timeout"}"#) ?? 0 == 0)
    }

    /// `--upstream-idle-timeout`: an idle connection closes, and the next query opens another.
    @Test func idleConnectionsClose() throws {
        let certs = TestCerts()
        let unbound = try UnboundDoT(certs: certs)
        defer { unbound.stop() }
        let upstream = "tls://127.0.0.1:\(unbound.port)@localhost"
        let server = try Self.server([upstream], certs: certs, extra: ["--upstream-idle-timeout", "300ms"])
        defer { server.stop() }
        #expect(try server.dig("www.dot.example", "A").data("A") == ["192.0.2.53"])
        #expect(eventually(within: 10) { unbound.connections == 0 } != nil, "the idle connection was closed")
        #expect(try server.dig("a.dot.example", "A").status == "NXDOMAIN")
        #expect(sample(metrics(server), #"signpost_upstream_connections_total{upstream="\#(upstream)"}"#) == 2)
    }

    @Test func tlsAndPlainUpstreamsDoNotMix() throws {
        let r = try run([signpostBinary, "serve", "--listen", "127.0.0.1:0", "--upstream", "tls://127.0.0.1@localhost", "--upstream", "127.0.0.1:53"])
        #expect(r.status == 64 && r.err.contains("mixes tls:// and plain upstreams"), "\(r.err)")
        let noName = try run([signpostBinary, "serve", "--listen", "127.0.0.1:0", "--upstream", "tls://127.0.0.1"])
        #expect(noName.status == 64 && noName.err.contains("@NAME"), "\(noName.err)")
    }
}

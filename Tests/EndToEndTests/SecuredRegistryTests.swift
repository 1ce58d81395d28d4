import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Test certificates, made by `TLS/make_certs.py` (EC keys, a few milliseconds each).
final class TestCerts: @unchecked Sendable {
    let dir = TempDir()

    /// Issues NAME.pem/NAME.key from CA (made on first use).
    func make(_ name: String, ca: String = "ca", server: Bool = false, client: Bool = false, expired: Bool = false, noIP: Bool = false) throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("TLS/make_certs.py").path
        var args = ["python3", script, dir.path, name, "--ca", ca]
        if server { args.append("--server") }
        if client { args.append("--client") }
        if expired { args.append("--expired") }
        if noIP { args += ["--no-ip", "--dns", "etcd.test"] }
        let r = try run(args)
        #expect(r.status == 0, "make_certs: \(r.err)")
    }

    func pem(_ name: String) -> String { dir.path + "/\(name).pem" }
    func key(_ name: String) -> String { dir.path + "/\(name).key" }

    /// Replaces `to`'s certificate and key with `from`'s, each by an atomic rename, as cert-manager does.
    func install(_ from: String, as to: String) {
        for ext in ["pem", "key"] {
            let tmp = dir.path + "/.\(to).\(ext).new"
            try? FileManager.default.removeItem(atPath: tmp)
            try? FileManager.default.copyItem(atPath: dir.path + "/\(from).\(ext)", toPath: tmp)
            rename(tmp, dir.path + "/\(to).\(ext)")
        }
    }
}

extension Server {
    var ready: (status: Int, body: String) {
        guard let port = adminPort else { return (0, "") }
        return httpGet("http://127.0.0.1:\(port)/ready")
    }

    /// A counter's value from /metrics (0 when absent).
    func counter(_ series: String) -> Double { sample((try? metrics()) ?? "", series) ?? 0 }

    /// `signpost_registry_errors_total` for a registry, summed over its reasons.
    func registryErrors(_ registry: String) -> Double {
        ((try? metrics()) ?? "").split(separator: "\n").filter { $0.hasPrefix("signpost_registry_errors_total{registry=\"\(registry)\"") }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
    }

    /// How many log lines contain `text`.
    func logLines(containing text: String) -> Int { log_().split(separator: "\n").filter { $0.contains(text) }.count }
}

/// Signpost against registries secured as production runs them: etcd (Debian's) with TLS, client certificates
/// and users; the Consul stand-in with HTTPS, verify_incoming, a unix socket and a token file.
@Suite("End to end: secured registries", .serialized, .enabled(if: etcdAvailable, "etcd-server is not installed"))
struct SecuredRegistryTests {
    static let web = #"{"Address": "192.0.2.1", "Port": 80}"#

    func tlsCluster(_ certs: TestCerts, size: Int = 1) throws -> EtcdCluster {
        // etcd's gateway dials its own gRPC port with the server certificate as its client certificate: it needs both uses.
        // Names only (localhost, etcd.test), as most real certificates: an address in it would match any server-name.
        try certs.make("server", server: true, client: true, noIP: true)
        try certs.make("client", client: true)
        try certs.make("ctl", client: true)
        return try EtcdCluster(size: size, tls: .init(cert: certs.pem("server"), key: certs.key("server"), trustedCA: certs.pem("ca"),
                                                      ctlCA: certs.pem("ca"), ctlCert: certs.pem("ctl"), ctlKey: certs.key("ctl")))
    }

    func tlsURL(_ etcd: EtcdCluster, _ certs: TestCerts, ca: String = "ca", client: String? = "client", more: String = "") -> String {
        "etcd:\(etcd.endpoints)?cacert=\(certs.pem(ca))" + (client.map { "&cert=\(certs.pem($0))&key=\(certs.key($0))" } ?? "") + more
    }

    /// Each broken TLS setting has its own error, said once, on /ready too, while the state file's data serves.
    @Test func etcdWithTLSAndClientCertificates() throws {
        let certs = TestCerts()
        let etcd = try tlsCluster(certs)
        try certs.make("other", ca: "other")
        try etcd.put("/services/web/1", Self.web)
        let state = TempDir()
        let good = try Server(dir: TempDir(), catalog: false, extra: ["--registry", tlsURL(etcd, certs), "--state-dir", state.path, "--admin", "127.0.0.1:0"])
        #expect(eventually(within: 10) { good.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(good.log_())")
        #expect(eventually(within: 10) { ((try? FileManager.default.contentsOfDirectory(atPath: state.path)) ?? []).contains { $0.hasSuffix(".state") } } != nil)
        good.stop()

        let cases: [(String, String, String)] = [
            ("no client certificate", tlsURL(etcd, certs, client: nil), "client certificate"),
            ("the wrong CA", tlsURL(etcd, certs, ca: "other"), "is not signed by a CA in cacert="),
            ("a name mismatch", tlsURL(etcd, certs, more: "&server-name=wrong.example"), "is not valid for \"wrong.example\""),
        ]
        for (what, url, phrase) in cases {
            let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url, "--state-dir", state.path, "--admin", "127.0.0.1:0"])
            defer { server.stop() }
            #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(what): the state file's data serves")
            #expect(eventually(within: 10) { server.ready.body.contains(phrase) } != nil, "\(what): /ready says \(server.ready.body)")
            // Several failed tries, one log line.
            #expect(eventually(within: 15) { server.registryErrors("etcd") >= 3 } != nil, "\(what): retries counted")
            #expect(server.logLines(containing: phrase) == 1, "\(what): said once, not on every try: \(server.log_())")
            #expect(server.socketAddresses("web.service.consul") == ["192.0.2.1"])
        }

        // Verification off: served, with a warning at start-up and on /ready.
        let insecure = try Server(dir: TempDir(), catalog: false, extra: ["--registry", tlsURL(etcd, certs, ca: "other", more: "&insecure-skip-verify=true"),
                                                                           "--admin", "127.0.0.1:0"])
        #expect(eventually(within: 10) { insecure.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(insecure.log_())")
        #expect(insecure.ready.status == 200 && insecure.ready.body.contains("TLS verification is off"), "\(insecure.ready.body)")
        #expect(insecure.log_().contains("TLS verification is off"))
        insecure.stop()

        // The server's certificate expires: the cache serves and /ready says so; a renewed one is taken at once.
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", tlsURL(etcd, certs), "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil)
        try certs.make("expired", server: true, client: true, expired: true, noIP: true)
        etcd.tls!.cert = certs.pem("expired")
        etcd.tls!.key = certs.key("expired")
        etcd.kill(0)
        try etcd.start(0, state: "existing")
        #expect(eventually(within: 15) { server.ready.body.contains("the server's certificate expired") } != nil, "\(server.ready.body)\n\(server.log_())")
        #expect(server.socketAddresses("web.service.consul") == ["192.0.2.1"])
        etcd.tls!.cert = certs.pem("server")
        etcd.tls!.key = certs.key("server")
        try etcd.restart(0)
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.2", "Port": 80}"#)
        #expect(eventually(within: 15) { server.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil)
        #expect(eventually(within: 5) { !server.ready.body.contains("expired") } != nil)
    }

    /// etcd users: a role that reads only the services prefix; tokens that live two seconds; a restart that
    /// forgets every token. The watch goes on through all of it, listing once.
    @Test func etcdWithUsers() throws {
        let etcd = try EtcdCluster(extraArguments: ["--auth-token", "simple", "--auth-token-ttl", "2"])
        for args in [["user", "add", "root:rootpw", "--interactive=false"], ["user", "grant-role", "root", "root"],
                     ["user", "add", "reader:readerpw", "--interactive=false"], ["role", "add", "reader"],
                     ["role", "grant-permission", "reader", "read", "/services/", "--prefix=true"], ["user", "grant-role", "reader", "reader"],
                     ["auth", "enable"]] {
            let r = try etcd.ctl(args)
            #expect(r.status == 0, "etcdctl \(args): \(r.err)")
        }
        etcd.ctlUser = "root:rootpw"
        try etcd.put("/services/web/1", Self.web)
        let dir = TempDir()
        dir.write("password", "readerpw\n")
        dir.write("wrong", "nope\n")
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)?user=reader&password-file=\(dir.path)/password", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        // Changes across several token lifetimes: each is answered.
        let start = Date()
        var n = 2
        while Date().timeIntervalSince(start) < 7, n < 40 {
            try etcd.put("/services/web/\(n)", #"{"Address": "192.0.2.\#(n)", "Port": 80}"#)
            let want = "192.0.2.\(n)"
            #expect(eventually(within: 5) { server.socketAddresses("web.service.consul").contains(want) } != nil, "change \(n) missed")
            n += 1
        }
        // etcd restarts and forgets every token: Signpost logs in again and resumes its watch, no re-list.
        let logins = server.counter(#"signpost_registry_logins_total{registry="etcd"}"#)
        try etcd.restart(0)
        try etcd.put("/services/web/99", #"{"Address": "192.0.2.99", "Port": 80}"#)
        #expect(eventually(within: 15) { server.socketAddresses("web.service.consul").contains("192.0.2.99") } != nil, "\(server.log_())")
        #expect(server.counter(#"signpost_registry_logins_total{registry="etcd"}"#) > logins, "logged in again")
        #expect(server.logLines(containing: "etcd listed") == 1, "resumed, not listed again: \(server.log_())")
        #expect(try server.dig("+tcp", "web.service.consul", "A").data("A").count == n, "every change, none missed")

        // A wrong password, and a prefix outside the role: each its own clear error.
        for (url, phrase) in [("etcd:\(etcd.endpoints)?user=reader&password-file=\(dir.path)/wrong", "etcd refused the user name or password"),
                              ("etcd:\(etcd.endpoints)?user=reader&password-file=\(dir.path)/password&prefix=/private/", "permission denied")] {
            let other = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url, "--admin", "127.0.0.1:0"])
            defer { other.stop() }
            #expect(eventually(within: 10) { other.ready.body.contains(phrase) } != nil, "\(phrase): \(other.ready.body) \(other.log_())")
            #expect(other.ready.status == 503)
            #expect(other.log_().contains(phrase))
        }
    }

    /// Three TLS members: the watched one dies, and Signpost goes on from the next with no wrong answer.
    @Test func tlsClusterFailover() throws {
        let certs = TestCerts()
        let etcd = try tlsCluster(certs, size: 3)
        try etcd.put("/services/web/1", Self.web)
        // By address, with the name the certificate holds as server-name.
        let url = tlsURL(etcd, certs, more: "&server-name=etcd.test").replacingOccurrences(of: "localhost", with: "127.0.0.1")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url, "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        etcd.kill(0)
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.2", "Port": 80}"#)
        var wrong: [Set<String>] = []
        let seen = eventually(within: 15) {
            let answer = server.socketAddresses("web.service.consul")
            if answer != ["192.0.2.1"] && answer != ["192.0.2.1", "192.0.2.2"] { wrong.append(answer) }
            return answer == ["192.0.2.1", "192.0.2.2"]
        }
        #expect(seen != nil, "\(server.log_())")
        #expect(wrong.isEmpty, "answers during the failover: \(wrong)")
    }

    /// The client certificate is replaced by one from a new CA, and etcd restarted to trust only that CA: the cache
    /// serves meanwhile, then the new pair connects, with no restart. A broken replacement changes nothing.
    @Test func certificateRotation() throws {
        let certs = TestCerts()
        let etcd = try tlsCluster(certs)
        try certs.make("client2", ca: "ca2", client: true)
        try certs.make("ctl2", ca: "ca2", client: true)
        try certs.make("server2", ca: "ca2", server: true, client: true, noIP: true)
        try certs.make("stray", ca: "ca2", client: true)
        try etcd.put("/services/web/1", Self.web)
        // Signpost's CA file, which the rotation extends to the new CA.
        let trust = certs.dir.path + "/trust.pem"
        try FileManager.default.copyItem(atPath: certs.pem("ca"), toPath: trust)
        let url = tlsURL(etcd, certs).replacingOccurrences(of: "cacert=\(certs.pem("ca"))", with: "cacert=\(trust)")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url, "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        #expect(server.counter(#"signpost_registry_credentials_ok{registry="etcd"}"#) == 1)

        // A key that does not match its certificate: logged with the path, on /ready and in the metric; still served.
        let keyPath = certs.key("client")
        let goodKey = try String(contentsOfFile: keyPath, encoding: .utf8)
        try String(contentsOfFile: certs.key("stray"), encoding: .utf8).write(toFile: keyPath, atomically: true, encoding: .utf8)
        #expect(eventually(within: 10) { server.ready.body.contains("does not match the certificate") } != nil, "\(server.ready.body)")
        #expect(server.log_().contains(keyPath))
        #expect(server.counter(#"signpost_registry_credentials_ok{registry="etcd"}"#) == 0)
        try etcd.put("/services/web/2", #"{"Address": "192.0.2.2", "Port": 80}"#)
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "the old material still works")
        try goodKey.write(toFile: keyPath, atomically: true, encoding: .utf8)
        #expect(eventually(within: 10) { server.counter(#"signpost_registry_credentials_ok{registry="etcd"}"#) == 1 } != nil)

        // The real rotation: Signpost trusts ca2 too and gets a pair from it; etcd gets a certificate from ca2 and
        // trusts only ca2.
        let both = try String(contentsOfFile: certs.pem("ca"), encoding: .utf8) + String(contentsOfFile: certs.pem("ca2"), encoding: .utf8)
        try both.write(toFile: trust, atomically: true, encoding: .utf8)
        certs.install("client2", as: "client")
        etcd.tls!.cert = certs.pem("server2")
        etcd.tls!.key = certs.key("server2")
        etcd.tls!.trustedCA = certs.pem("ca2")
        etcd.tls!.ctlCA = certs.pem("ca2")
        etcd.tls!.ctlCert = certs.pem("ctl2")
        etcd.tls!.ctlKey = certs.key("ctl2")
        etcd.kill(0)
        #expect(server.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2"], "the cache serves while etcd is away")
        try etcd.start(0, state: "existing")
        try etcd.waitHealthy()
        try etcd.put("/services/web/3", #"{"Address": "192.0.2.3", "Port": 80}"#)
        #expect(eventually(within: 15) { server.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"] } != nil, "\(server.log_())")
        #expect(server.process.isRunning)
    }

    /// The Consul stand-in as an agent with `verify_incoming` and a token file, over HTTPS and a unix socket: the
    /// same matrix as etcd's (served; no client certificate, the wrong CA, a name mismatch, an expired certificate,
    /// each its own error while the cache serves), then the token rotated on both sides with no restart.
    @Test func consulWithHTTPSClientCertificatesAndTokenFile() throws {
        let certs = TestCerts()
        try certs.make("agent", server: true, noIP: true)
        try certs.make("stale-agent", server: true, expired: true, noIP: true)
        try certs.make("client", client: true)
        try certs.make("other", ca: "other")
        let dir = TempDir(), state = TempDir()
        dir.write("agent-token", "tok-1\n")
        dir.write("token", "tok-1\n")
        let socket = dir.path + "/consul.sock"
        func agent(_ cert: String, port: Int = 0) throws -> ConsulStandIn {
            try ConsulStandIn(port: port, extra: ["--token-file", dir.path + "/agent-token", "--tls-cert", certs.pem(cert), "--tls-key", certs.key(cert),
                                                  "--tls-ca", certs.pem("ca"), "--verify-incoming", "--unix", socket], scheme: "https")
        }
        var consul = try agent("agent")
        try consul.register(node: "n1", address: "192.0.2.1", service: "web", token: "tok-1")
        let client = "&cert=\(certs.pem("client"))&key=\(certs.key("client"))"
        func url(ca: String = "ca", client: String = client, name: String = "&server-name=localhost") -> String {
            "consul:\(consul.url)?cacert=\(certs.pem(ca))\(client)\(name)&token-file=\(dir.path)/token"
        }
        let good = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url(), "--admin", "127.0.0.1:0", "--datacenter", "dc1", "--state-dir", state.path])
        #expect(eventually(within: 10) { good.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(good.log_())")
        #expect(eventually(within: 10) { ((try? FileManager.default.contentsOfDirectory(atPath: state.path)) ?? []).contains { $0.hasSuffix(".state") } } != nil)
        good.stop()
        for (what, bad, phrase) in [("no client certificate", url(client: ""), "client certificate"),
                                    ("the wrong CA", url(ca: "other"), "is not signed by a CA in cacert="),
                                    ("a name mismatch", url(name: ""), "is not valid for \"127.0.0.1\"")] {
            let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", bad, "--admin", "127.0.0.1:0", "--datacenter", "dc1", "--state-dir", state.path])
            defer { server.stop() }
            #expect(eventually(within: 5) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(what): the state file's data serves")
            #expect(eventually(within: 10) { server.ready.body.contains(phrase) } != nil, "\(what): \(server.ready.body) \(server.log_())")
            #expect(eventually(within: 15) { server.registryErrors("consul") >= 3 } != nil, "\(what): retries counted")
            #expect(server.logLines(containing: phrase) == 1, "\(what): said once: \(server.log_())")
        }

        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", url(), "--admin", "127.0.0.1:0", "--datacenter", "dc1"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        // The same agent over its unix socket, addressed as Consul's client takes it: CONSUL_HTTP_ADDR.
        let unix = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:", "--admin", "127.0.0.1:0", "--datacenter", "dc1"],
                              environment: ["CONSUL_HTTP_ADDR": "unix://" + socket, "CONSUL_HTTP_TOKEN_FILE": dir.path + "/token"])
        defer { unix.stop() }
        #expect(eventually(within: 10) { unix.socketAddresses("web.service.consul") == ["192.0.2.1"] } != nil, "\(unix.log_())")

        // The token rotates: the agent first (the old token is now unknown: "ACL not found", the cache serves), then
        // Signpost's file; both watchers go on with no restart.
        try "tok-2\n".write(toFile: dir.path + "/agent-token", atomically: true, encoding: .utf8)
        try consul.register(node: "n2", address: "192.0.2.2", service: "web", token: "tok-2")
        #expect(eventually(within: 15) { server.ready.body.contains("does not know the ACL token") } != nil, "\(server.ready.body)")
        #expect(server.socketAddresses("web.service.consul") == ["192.0.2.1"], "the cache serves")
        try "tok-2\n".write(toFile: dir.path + "/token", atomically: true, encoding: .utf8)
        for s in [server, unix] {
            #expect(eventually(within: 15) { s.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2"] } != nil, "\(s.log_())")
        }
        #expect(eventually(within: 5) { !server.ready.body.contains("ACL") } != nil)

        // The agent comes back with an expired certificate: said as such, and the cache serves.
        let port = consul.port
        consul.stop()
        try? FileManager.default.removeItem(atPath: socket)
        consul = try agent("stale-agent", port: port)
        #expect(eventually(within: 15) { server.ready.body.contains("the server's certificate expired") } != nil, "\(server.ready.body)")
        #expect(server.socketAddresses("web.service.consul") == ["192.0.2.1", "192.0.2.2"])
    }

    /// No secret in anything the process writes or serves: logs, /ready, /v1/*, explain, metrics, state files.
    @Test func secretsStayOut() throws {
        let token = "MARKER-TOKEN-7f3a", password = "MARKER-PASS-91c2"
        let etcd = try EtcdCluster()
        for args in [["user", "add", "root:rootpw", "--interactive=false"], ["user", "grant-role", "root", "root"],
                     ["user", "add", "reader:\(password)", "--interactive=false"], ["role", "add", "reader"],
                     ["role", "grant-permission", "reader", "read", "/services/", "--prefix=true"], ["user", "grant-role", "reader", "reader"],
                     ["auth", "enable"]] {
            #expect(try etcd.ctl(args).status == 0)
        }
        etcd.ctlUser = "root:rootpw"
        try etcd.put("/services/api/1", #"{"Address": "192.0.2.7", "Port": 80}"#)
        let consul = try ConsulStandIn(token: token)
        try consul.register(node: "n1", address: "192.0.2.1", service: "web", token: token)
        let dir = TempDir(), state = TempDir()
        dir.write("token", token + "\n")
        // The password on the command line (warned about), the token in a file; then a wrong token for a while.
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "consul:\(consul.url)?token-file=\(dir.path)/token", "--registry", "etcd:\(etcd.endpoints)?user=reader:\(password)",
                                        "--admin", "127.0.0.1:0", "--state-dir", state.path, "--datacenter", "dc1"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketAddresses("web.service.consul") == ["192.0.2.1"] && server.socketAddresses("api.service.consul") == ["192.0.2.7"] } != nil,
                "\(server.log_())")
        #expect(server.log_().contains("/proc/PID/cmdline"), "the inline password is warned about")
        let reads = server.logLines(containing: "TLS and credential files read again")
        dir.write("token", "MARKER-WRONG-TOKEN\n")
        #expect(eventually(within: 10) { server.logLines(containing: "TLS and credential files read again") > reads } != nil)
        // A change ends the blocking queries under way; the next ones carry the wrong token.
        try consul.register(node: "n2", address: "192.0.2.2", service: "web", token: token)
        #expect(eventually(within: 10) { server.ready.body.contains("does not know the ACL token") } != nil, "\(server.ready.body)\n\(server.log_())")
        dir.write("token", token + "\n")
        #expect(eventually(within: 10) { !server.ready.body.contains("ACL") && server.socketAddresses("web.service.consul").count == 2 } != nil)
        #expect(eventually(within: 10) { ((try? FileManager.default.contentsOfDirectory(atPath: state.path)) ?? []).filter { $0.hasSuffix(".state") }.count == 2 } != nil)

        let admin = "http://127.0.0.1:\(try #require(server.adminPort))"
        var written = [server.log_(), server.ready.body, try server.metrics()]
        for path in ["/v1/registries", "/v1/services", "/v1/changes", "/v1/explain?name=web.service.consul", "/v1/explain?name=nothing.service.consul", "/ui"] {
            written.append(httpGet(admin + path).body)
        }
        written.append(try run([signpostBinary, "explain", "web", "--server", "127.0.0.1:\(try #require(server.adminPort))", "--json"]).out)
        for name in try FileManager.default.contentsOfDirectory(atPath: state.path) {
            written.append(name)
            written.append((try? String(contentsOfFile: state.path + "/" + name, encoding: .utf8)) ?? "")
        }
        #expect(written.count > 10)
        for (i, text) in written.enumerated() {
            #expect(!text.contains("MARKER"), "a secret in output \(i): \(text.prefix(400))")
        }
    }

    /// `signpost check --registry` reads the TLS and credential files as serve would, before a start.
    @Test func checkValidatesTheFiles() throws {
        let certs = TestCerts()
        try certs.make("client", client: true)
        try certs.make("old", client: true, expired: true)
        try certs.make("other", client: true)
        let empty = TempDir()
        func check(_ query: String) throws -> (status: Int32, out: String) {
            let r = try run([signpostBinary, "check", "--catalog", empty.path, "--zones", empty.path, "--registry", "etcd:https://127.0.0.1:2379?\(query)"])
            return (r.status, r.out + r.err)
        }
        let ca = "cacert=\(certs.pem("ca"))"
        let good = try check("\(ca)&cert=\(certs.pem("client"))&key=\(certs.key("client"))")
        #expect(good.status == 0 && good.out.contains("ok: etcd:"), "\(good.out)")
        let expired = try check("\(ca)&cert=\(certs.pem("old"))&key=\(certs.key("old"))")
        #expect(expired.status != 0 && expired.out.contains("cert \(certs.pem("old")): the certificate expired at"), "\(expired.out)")
        let mismatch = try check("\(ca)&cert=\(certs.pem("client"))&key=\(certs.key("other"))")
        #expect(mismatch.status != 0 && mismatch.out.contains("the key does not match the certificate"), "\(mismatch.out)")
        let missing = try check("cacert=\(certs.dir.path)/nowhere.pem")
        #expect(missing.status != 0 && missing.out.contains("nowhere.pem: cannot read it"), "\(missing.out)")
        let insecure = try check("insecure-skip-verify=true")
        #expect(insecure.status == 0 && insecure.out.contains("warning: TLS verification is off"), "\(insecure.out)")
    }
}

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

let etcdAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd")

/// Real etcd members from Debian's etcd-server, on free loopback ports, started and stopped by PID.
final class EtcdCluster: @unchecked Sendable {
    struct Member {
        var name: String
        var clientPort: Int
        var peerPort: Int
        var process: Process?
        var scheme = "http"
        /// Clients of a TLS member connect by name: its certificate names it, not its address.
        var url: String { scheme == "https" ? "https://localhost:\(clientPort)" : "http://127.0.0.1:\(clientPort)" }
        var listenURL: String { "\(scheme)://127.0.0.1:\(clientPort)" }
    }

    /// Client TLS: the member's certificate and key, the CA its clients' certificates must chain to (with
    /// `--client-cert-auth`), and what etcdctl presents.
    struct TLS {
        var cert: String
        var key: String
        var trustedCA: String
        var clientCertAuth = true
        /// etcdctl's --cacert, --cert, --key.
        var ctlCA: String
        var ctlCert: String
        var ctlKey: String
    }

    let dir = TempDir()
    var members: [Member]
    /// Read when a member starts: change it and restart a member to rotate its certificates or trusted CA.
    var tls: TLS?
    var extraArguments: [String]
    /// `--user` for etcdctl once authentication is on.
    var ctlUser: String? = nil

    init(size: Int = 1, tls: TLS? = nil, extraArguments: [String] = []) throws {
        self.tls = tls
        self.extraArguments = extraArguments
        members = (0..<size).map { Member(name: "m\($0)", clientPort: freePort(), peerPort: freePort(), scheme: tls == nil ? "http" : "https") }
        for i in members.indices { try start(i) }
        try waitHealthy()
    }

    /// SIGKILL one member and start it again, with the current `tls`.
    func restart(_ i: Int) throws {
        kill(i)
        try start(i, state: "existing")
        try waitHealthy()
    }

    var endpoints: String { members.map(\.url).joined(separator: ",") }

    func start(_ i: Int, state: String = "new") throws {
        let m = members[i]
        let cluster = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/etcd")
        p.arguments = ["--name", m.name, "--data-dir", dir.path + "/" + m.name,
                       "--listen-client-urls", m.listenURL, "--advertise-client-urls", m.url,
                       "--listen-peer-urls", "http://127.0.0.1:\(m.peerPort)",
                       "--initial-advertise-peer-urls", "http://127.0.0.1:\(m.peerPort)",
                       "--initial-cluster", cluster, "--initial-cluster-state", state,
                       "--initial-cluster-token", "signpost-test-\(getpid())"] + extraArguments
        if let tls {
            p.arguments! += ["--cert-file", tls.cert, "--key-file", tls.key, "--trusted-ca-file", tls.trustedCA]
            if tls.clientCertAuth { p.arguments!.append("--client-cert-auth") }
        }
        let log = FileManager.default.createFile(atPath: dir.path + "/\(m.name).log", contents: nil)
        _ = log
        p.standardOutput = FileHandle(forWritingAtPath: dir.path + "/\(m.name).log")
        p.standardError = p.standardOutput
        p.standardInput = FileHandle.nullDevice
        try p.run()
        members[i].process = p
    }

    /// SIGKILL one member (as a crash would).
    func kill(_ i: Int) {
        guard let p = members[i].process, p.isRunning else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        members[i].process = nil
    }

    func waitHealthy(timeout: TimeInterval = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let live = members.filter { $0.process != nil }.map(\.url).joined(separator: ",")
            if (try? ctl(["endpoint", "health"], endpoints: live))?.status == 0 { return }
            usleep(100_000)
        }
        throw Server.ServerError(message: "etcd did not become healthy")
    }

    @discardableResult
    func ctl(_ args: [String], endpoints: String? = nil) throws -> (status: Int32, out: String, err: String) {
        let live = endpoints ?? members.filter { $0.process != nil }.map(\.url).joined(separator: ",")
        var flags = ["--command-timeout=5s", "--endpoints", live]
        if let tls { flags += ["--cacert", tls.ctlCA, "--cert", tls.ctlCert, "--key", tls.ctlKey] }
        if let ctlUser { flags += ["--user", ctlUser] }
        return try run(["ETCDCTL_API=3", "etcdctl"] + flags + args)
    }

    /// Writes retry for a few seconds: right after a member dies, the cluster may be electing a leader.
    private func write(_ args: [String]) throws {
        var r = try ctl(args)
        for _ in 0..<20 where r.status != 0 {
            usleep(250_000)
            r = try ctl(args)
        }
        #expect(r.status == 0, "etcdctl \(args.first ?? ""): \(r.err)")
    }

    func put(_ key: String, _ value: String, lease: String? = nil) throws {
        try write(["put", key, value] + (lease.map { ["--lease=\($0)"] } ?? []))
    }

    func delete(_ key: String) throws { try write(["del", key]) }

    /// A lease of `ttl` seconds; returns its hex ID.
    func grantLease(_ ttl: Int) throws -> String {
        let r = try ctl(["lease", "grant", "\(ttl)"])
        // "lease 694d77aa9e38260a granted with TTL(2s)"
        return String(r.out.split(separator: " ")[1])
    }

    /// The current revision, then compact to it.
    func compactToHead() throws {
        let r = try ctl(["endpoint", "status", "-w", "json"])
        guard let data = r.out.data(using: .utf8),
              let arr = try JSONSerialization.jsonObject(with: data) as? [[String: Any]],
              let status = arr.first?["Status"] as? [String: Any],
              let header = status["header"] as? [String: Any],
              let rev = header["revision"] as? NSNumber else {
            throw Server.ServerError(message: "no revision in \(r.out)")
        }
        try ctl(["compact", "\(rev.int64Value)", "--physical"])
    }

    deinit { for i in members.indices { kill(i) } }
}

/// Polls `condition` until true or the deadline; returns the seconds it took, or nil.
@discardableResult
func eventually(within seconds: TimeInterval, every interval: useconds_t = 50_000, _ condition: () throws -> Bool) rethrows -> TimeInterval? {
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        if try condition() { return Date().timeIntervalSince(start) }
        usleep(interval)
    }
    return try condition() ? Date().timeIntervalSince(start) : nil
}

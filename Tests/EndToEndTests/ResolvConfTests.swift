import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whether this machine lets us create network namespaces (root and iproute2).
let namespacesPermitted: Bool = {
    let name = "sp-probe-\(getpid())"
    guard (try? run(["ip", "netns", "add", name]))?.status == 0 else { return false }
    _ = try? run(["ip", "netns", "del", name])
    return true
}()

/// The resolv.conf path for real: glibc in a network namespace of our own, with Signpost on port 53.
@Suite("End to end: glibc through resolv.conf")
struct ResolvConfTests {
    @Test(.enabled(if: namespacesPermitted, "network namespaces are not permitted here (needs root and iproute2); the resolv.conf path was not tested"))
    func glibcResolvesServicesAndFallsBackOnRefused() throws {
        let ns = "sp-e2e-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        let etc = "/etc/netns/\(ns)"
        let dir = TempDir()
        dir.write("a/catalog/web.json", registration(node: "web-1", address: "192.0.2.11", service: "web"))
        dir.write("b/catalog/.keep", "")
        dir.write("b/zones/example.org.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 192.0.2.80\n")
        try FileManager.default.createDirectory(atPath: etc, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: etc) }
        // Signpost first; a second server for names the first one refuses.
        try "nameserver 127.0.0.1\nnameserver 127.0.0.2\noptions timeout:1 attempts:2\n".write(toFile: etc + "/resolv.conf", atomically: true, encoding: .utf8)
        #expect(try run(["ip", "netns", "add", ns]).status == 0)
        defer { _ = try? run(["ip", "netns", "del", ns]) }
        try run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        try run(["ip", "netns", "exec", ns, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo"])

        func serve(_ listen: String, _ sub: String) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["ip", "netns", "exec", ns, signpostBinary, "serve", "--listen", listen,
                           "--catalog", dir.path + "/\(sub)/catalog", "--zones", dir.path + "/\(sub)/zones", "--no-forward"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try FileManager.default.createDirectory(atPath: dir.path + "/\(sub)/zones", withIntermediateDirectories: true)
            try p.run()
            return p
        }
        let first = try serve("127.0.0.1:53", "a")
        let second = try serve("127.0.0.2:53", "b")
        defer {
            for p in [first, second] where p.isRunning { kill(p.processIdentifier, SIGTERM); p.waitUntilExit() }
        }

        var hosts = ""
        for _ in 0..<100 {  // until both servers are up, at most ~5 s
            hosts = try run(["ip", "netns", "exec", ns, "getent", "ahosts", "web.service.consul"]).out
            if !hosts.isEmpty { break }
            usleep(50_000)
        }
        #expect(hosts.contains("192.0.2.11"), "getent ahosts web.service.consul: \(hosts)")
        var other = ""
        for _ in 0..<100 {
            other = try run(["ip", "netns", "exec", ns, "getent", "hosts", "www.example.org"]).out
            if !other.isEmpty { break }
            usleep(50_000)
        }
        #expect(other.contains("192.0.2.80"), "a refused name should fall through to the next nameserver: \(other)")
    }

    @Test(.enabled(if: namespacesPermitted && knotAvailable, "network namespaces are not permitted here, or knot is missing; the forwarding resolv.conf path was not tested"))
    func signpostAsTheOnlyNameserverForwardsEverythingElse() throws {
        let ns = "sp-fw-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        let etc = "/etc/netns/\(ns)"
        let dir = TempDir()
        dir.write("catalog/web.json", registration(node: "web-1", address: "192.0.2.11", service: "web"))
        dir.write("knot/example.org.zone", "$ORIGIN example.org.\n$TTL 60\n@ IN SOA ns hostmaster 1 2 3 4 5\nwww IN A 192.0.2.80\n")
        dir.write("knot/knot.conf", """
        server:
            rundir: "\(dir.path)/knot"
            listen: 127.0.0.2@53
        database:
            storage: "\(dir.path)/knot"
        zone:
          - domain: example.org
            storage: "\(dir.path)/knot"
            file: "example.org.zone"
        """)
        try FileManager.default.createDirectory(atPath: etc, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: etc) }
        try "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n".write(toFile: etc + "/resolv.conf", atomically: true, encoding: .utf8)
        #expect(try run(["ip", "netns", "add", ns]).status == 0)
        defer { _ = try? run(["ip", "netns", "del", ns]) }
        try run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        try run(["ip", "netns", "exec", ns, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo"])

        func start(_ args: [String]) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["ip", "netns", "exec", ns] + args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            return p
        }
        let knot = try start(["/usr/sbin/knotd", "-c", dir.path + "/knot/knot.conf"])
        // resolv.conf names only Signpost; Signpost forwards to knotd, a second host address in the namespace.
        let signpost = try start([signpostBinary, "serve", "--listen", "127.0.0.1:53", "--catalog", dir.path + "/catalog",
                                  "--upstream", "127.0.0.2:53"])
        defer {
            for p in [signpost, knot] where p.isRunning { kill(p.processIdentifier, SIGTERM); p.waitUntilExit() }
        }
        var service = "", forwarded = ""
        for _ in 0..<100 {
            service = try run(["ip", "netns", "exec", ns, "getent", "ahosts", "web.service.consul"]).out
            forwarded = try run(["ip", "netns", "exec", ns, "getent", "hosts", "www.example.org"]).out
            if !service.isEmpty && !forwarded.isEmpty { break }
            usleep(50_000)
        }
        #expect(service.contains("192.0.2.11"), "getent ahosts web.service.consul: \(service)")
        #expect(forwarded.contains("192.0.2.80"), "getent hosts www.example.org through Signpost's forwarding: \(forwarded)")
    }
}

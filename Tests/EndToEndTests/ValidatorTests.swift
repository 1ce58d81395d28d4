import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A network namespace of the test's own, with loopback up (127.0.0.1 and 127.0.0.2) and a resolv.conf of its
/// own: clients that only speak to port 53, and tools that may query the root servers, run only in here.
final class NetNamespace: @unchecked Sendable {
    let name = "sp-ns-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
    private var processes: [Process] = []

    init(resolvConf: String = "nameserver 127.0.0.1\n") throws {
        try FileManager.default.createDirectory(atPath: "/etc/netns/\(name)", withIntermediateDirectories: true)
        try resolvConf.write(toFile: "/etc/netns/\(name)/resolv.conf", atomically: true, encoding: .utf8)
        guard try run(["ip", "netns", "add", name]).status == 0 else { throw Server.ServerError(message: "ip netns add failed") }
        try exec(["ip", "link", "set", "lo", "up"])
        try exec(["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"])
    }

    @discardableResult
    func exec(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try run(["ip", "netns", "exec", name] + args)
    }

    /// Starts a long-running process inside; stopped (by PID) when the namespace goes.
    func start(_ args: [String], log: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ip", "netns", "exec", name] + args
        FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = p.standardOutput
        p.standardInput = FileHandle.nullDevice
        try p.run()
        processes.append(p)
    }

    /// Waits until a DNS server inside answers `name` at `server`.
    func waitForDNS(_ server: String, port: Int = 53, _ name: String) throws {
        let up = eventually(within: 20, every: 100_000) {
            ((try? exec(["dig", "@\(server)", "-p", "\(port)", "+time=1", "+tries=1", name]))?.out.contains("status: NOERROR")) == true
        }
        if up == nil { throw Server.ServerError(message: "no DNS answer from \(server):\(port) in namespace \(name)") }
    }

    deinit {
        for p in processes where p.isRunning {
            kill(p.processIdentifier, SIGTERM)
            p.waitUntilExit()
        }
        _ = try? run(["ip", "netns", "del", name])
        try? FileManager.default.removeItem(atPath: "/etc/netns/\(name)")
    }
}

let muslAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/musl-gcc")
let dnsvizAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/dnsviz")
let zonemasterAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/zonemaster-cli")

/// The demo catalog and zones in the repository, which `make run` serves.
let demoCatalog = FileManager.default.currentDirectoryPath + "/zones/catalog"
let demoZones = FileManager.default.currentDirectoryPath + "/zones"

/// Real clients and validators nobody here wrote, inside a namespace of the test's own.
@Suite("End to end: stub resolvers and validators", .serialized, .enabled(if: namespacesPermitted, "network namespaces are not permitted here"))
struct ValidatorTests {
    /// Alpine's resolver: musl 1.2.3 never retries over TCP, so a big service must fit in a UDP answer. With
    /// `--answer-limit 8` it does, with no TC.
    @Test(.enabled(if: muslAvailable, "musl-tools is not installed"))
    func muslResolvesABigServiceThroughTheAnswerLimit() throws {
        let dir = TempDir()
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("MuslProbe/resolve.c").path
        let built = try run(["musl-gcc", "-static", "-O2", "-o", dir.path + "/musl-resolve", source])
        #expect(built.status == 0, "\(built.err)")
        dir.write("catalog/big.json", "[" + (0..<1000).map { i in
            #"{"Node": "big-\#(i)", "Address": "10.1.\#(i / 250).\#(i % 250 + 1)", "Service": {"ID": "big-\#(i)", "Service": "big", "Port": 80}}"#
        }.joined(separator: ",\n") + "]")
        try FileManager.default.createDirectory(atPath: dir.path + "/zones", withIntermediateDirectories: true)
        let ns = try NetNamespace()
        try ns.start([signpostBinary, "serve", "--listen", "127.0.0.1:53", "--catalog", dir.path + "/catalog", "--zones", dir.path + "/zones",
                      "--no-forward", "--answer-limit", "8"], log: dir.path + "/signpost.log")
        try ns.waitForDNS("127.0.0.1", "big.service.consul")
        let r = try ns.exec([dir.path + "/musl-resolve", "big.service.consul"])
        #expect(r.status == 0, "musl: \(r.err)")
        let addresses = Set(r.out.split(separator: "\n").map(String.init))
        #expect(addresses.count == 8 && addresses.allSatisfy { $0.hasPrefix("10.1.") }, "\(r.out)")
    }

    static let demoNames = ["consul", "service.consul", "node.consul", "dc1.consul", "web.service.consul", "v2.web.service.consul",
                            "_web._tcp.service.consul", "api.service.consul", "db.service.consul", "web-1.node.consul",
                            "c633640d.addr.dc1.consul", "nope.service.consul", "nope.consul",
                            "hello.service.service.consul", "v2.hello.service.service.consul", "service.service.consul",
                            "_grpc_config.hello.service.service.consul"]

    /// dnsviz probes the demo names for every common type and finds no error and no warning.
    @Test(.enabled(if: dnsvizAvailable, "dnsviz is not installed"))
    func dnsvizFindsNothingInTheDemo() throws {
        let dir = TempDir()
        let ns = try NetNamespace()
        try ns.start([signpostBinary, "serve", "--listen", "127.0.0.1:5300", "--catalog", demoCatalog, "--zones", demoZones, "--no-forward"],
                     log: dir.path + "/signpost.log")
        try ns.waitForDNS("127.0.0.1", port: 5300, "web.service.consul")
        // `+` after the zone: no queries to its ancestors (the root); the CNAME target's zone is ours too.
        let probe = try ns.exec(["dnsviz", "probe", "-A", "-R", "A,AAAA,SRV,TXT,NS,SOA,CNAME,MX,PTR",
                                 "-x", "consul+:ns.consul=127.0.0.1:5300", "-x", "example.internal+:ns.consul=127.0.0.1:5300",
                                 "-o", dir.path + "/probe.json"] + Self.demoNames)
        #expect(probe.status == 0, "\(probe.err)")
        let grok = try run(["dnsviz", "grok", "-l", "info", "-r", dir.path + "/probe.json", "-o", dir.path + "/grok.json"])
        #expect(grok.status == 0, "\(grok.err)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.path + "/grok.json")))
        var findings: [String] = []
        func walk(_ node: Any, _ path: String) {
            if let object = node as? [String: Any] {
                for (key, value) in object {
                    if ["errors", "warnings", "error", "warning"].contains(key), let list = value as? [[String: Any]] {
                        findings += list.map { "\(path) \(key): \($0["code"] ?? "?") \($0["description"] ?? "")" }
                    } else {
                        walk(value, path + "/" + key)
                    }
                }
            } else if let list = node as? [Any] {
                for value in list { walk(value, path) }
            }
        }
        walk(json, "")
        let analysed = (json as? [String: Any])?.keys.count ?? 0
        #expect(analysed >= Self.demoNames.count, "grok analysed \(analysed) names")
        #expect(findings.isEmpty, "\(findings.joined(separator: "\n"))")
    }

    /// Findings Zonemaster makes about any zone that one synthesised server on loopback answers, and why each
    /// cannot go away. Anything else at WARNING or above fails the test.
    static let zonemasterInevitable: [String: String] = [
        "NOT_ENOUGH_NS_DEL": "one name server, where Zonemaster wants two",
        "NOT_ENOUGH_NS_CHILD": "one name server, where Zonemaster wants two",
        "NOT_ENOUGH_IPV4_NS_DEL": "one IPv4 address, where Zonemaster wants two",
        "NOT_ENOUGH_IPV4_NS_CHILD": "one IPv4 address, where Zonemaster wants two",
        "Z01_MNAME_HAS_LOCALHOST_ADDR": "the MNAME, ns.<domain>, is the --listen address, 127.0.0.1",
        "EXPIRE_MINIMUM_VALUE_LOWER": "our SOA expire, 86400, is below the 604800 Zonemaster wants; the zone is never transferred",
        "RNAME_RFC822_INVALID": "the RNAME, hostmaster.consul, makes hostmaster@consul, whose domain has a single label",
    ]

    /// Zonemaster (it speaks only to port 53) against Signpost on 127.0.0.1:53, with knotd on 127.0.0.2 serving a
    /// root zone that delegates `consul` to it, so nothing leaves the namespace.
    @Test(.enabled(if: zonemasterAvailable && knotAvailable, "zonemaster-cli or knot is not installed"))
    func zonemasterFindsOnlyWhatOneLocalServerMust() throws {
        let dir = TempDir()
        dir.write("root/root.zone", """
            $ORIGIN .
            $TTL 3600
            . SOA a.root. hostmaster.root. 1 3600 600 86400 60
            . NS a.root.
            a.root. A 127.0.0.2
            consul. NS ns.consul.
            ns.consul. A 127.0.0.1

            """)
        dir.write("root/knot.conf", """
            server:
                rundir: "\(dir.path)/root"
                listen: 127.0.0.2@53
            database:
                storage: "\(dir.path)/root"
            zone:
              - domain: .
                storage: "\(dir.path)/root"
                file: "root.zone"

            """)
        dir.write("hints", ". 3600 IN NS a.root.\na.root. 3600 IN A 127.0.0.2\n")
        let ns = try NetNamespace(resolvConf: "nameserver 127.0.0.2\n")
        try ns.start(["/usr/sbin/knotd", "-c", dir.path + "/root/knot.conf"], log: dir.path + "/knot.log")
        try ns.start([signpostBinary, "serve", "--listen", "127.0.0.1:53", "--catalog", demoCatalog, "--zones", demoZones, "--no-forward"],
                     log: dir.path + "/signpost.log")
        try ns.waitForDNS("127.0.0.2", "consul")  // the root's referral (NOERROR, no answer)
        try ns.waitForDNS("127.0.0.1", "web.service.consul")
        let r = try ns.exec(["zonemaster-cli", "consul", "--hints", dir.path + "/hints", "--no-ipv6", "--level", "WARNING", "--raw",
                             "--test", "nameserver", "--test", "syntax", "--test", "zone", "--test", "consistency", "--test", "delegation"])
        #expect(r.status == 0, "\(r.err)")
        var unexpected: [String] = []
        var seen: Set<String> = []
        for line in r.out.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 3, ["WARNING", "ERROR", "CRITICAL"].contains(fields[1]) else { continue }
            let tag = String(fields[2])
            seen.insert(tag)
            if Self.zonemasterInevitable[tag] == nil { unexpected.append(String(line)) }
        }
        #expect(unexpected.isEmpty, "\(unexpected.joined(separator: "\n"))\n\(r.out)")
        #expect(seen.contains("NOT_ENOUGH_NS_CHILD"), "Zonemaster ran its delegation tests: \(r.out)")
    }
}

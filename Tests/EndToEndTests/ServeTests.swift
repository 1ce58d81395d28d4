import DNSWire
import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built `signpost` binary, queried by dig, kdig and drill over UDP and TCP.
@Suite("End to end: the real binary and real clients", .serialized)
final class ServeTests {
    let dir = TempDir()
    let server: Server

    init() throws {
        dir.write("catalog/web.json", "[" + [
            registration(node: "web-1", address: "192.0.2.11", service: "web", port: 8080, tags: ["v2", "primary"]),
            registration(node: "web-2", address: "192.0.2.12", service: "web", port: 8080, tags: ["v2"]),
            registration(node: "web-3", address: "192.0.2.13", service: "web", port: 9090, tags: ["canary"], status: "warning",
                         serviceAddress: "198.51.100.13"),
            registration(node: "web-4", address: "192.0.2.14", service: "web", status: "critical"),
        ].joined(separator: ",") + "]")
        dir.write("catalog/api.json", registration(node: "api-1", address: "2001:db8::21", service: "api", port: 50051))
        dir.write("catalog/db.json", registration(node: "db-1", address: "192.0.2.31", service: "db", port: 5432,
                                                  serviceAddress: "db.example.internal"))
        dir.write("catalog/big.json", "[" + (1...40).map {
            registration(node: "big-\($0)", address: "192.0.2.\(100 + $0)", service: "big", port: 7000 + $0)
        }.joined(separator: ",") + "]")
        dir.write("zones/example.internal.zone", """
        $ORIGIN example.internal.
        $TTL 300
        @ IN SOA ns hostmaster 1 3600 600 86400 60
        @ IN NS ns
        ns IN A 127.0.0.1
        db IN A 203.0.113.5
        """)
        dir.write("zones/consul.zone", """
        $ORIGIN consul.
        @ 3600 IN SOA ns1 ops.example.org. 2026112101 3600 600 86400 30
        @ 3600 IN NS ns1
        ns1 3600 IN A 127.0.0.1
        """)
        server = try Server(dir: dir)
    }

    deinit { server.stop() }

    @Test(arguments: ["", "+tcp"])
    func everyNameForm(transport: String) throws {
        func dig(_ name: String, _ type: String) throws -> Dig {
            try transport.isEmpty ? server.dig(name, type) : server.dig(transport, name, type)
        }
        let a = try dig("web.service.consul", "A")
        #expect(a.status == "NOERROR")
        #expect(a.flags.contains("aa") && a.flags.contains("qr") && a.flags.contains("rd") && !a.flags.contains("ra"))
        #expect(Set(a.data("A")) == ["192.0.2.11", "192.0.2.12", "198.51.100.13"], "\(a)")

        #expect(Set(try dig("WEB.Service.dc1.CONSUL", "A").data("A")) == ["192.0.2.11", "192.0.2.12", "198.51.100.13"])
        #expect(try dig("WEB.Service.CONSUL", "A").answer.first?.first == "WEB.Service.CONSUL.")
        #expect(Set(try dig("v2.web.service.consul", "A").data("A")) == ["192.0.2.11", "192.0.2.12"])

        let srv = try dig("_web._v2.service.consul", "SRV")
        #expect(Set(srv.data("SRV")) == ["1 1 8080 web-1.node.dc1.consul.", "1 1 8080 web-2.node.dc1.consul."])
        #expect(Set(srv.additional.map { "\($0[0]) \($0[4])" }) == ["web-1.node.dc1.consul. 192.0.2.11", "web-2.node.dc1.consul. 192.0.2.12"])
        let all = try dig("_web._tcp.service.consul", "SRV")
        #expect(all.data("SRV").contains("1 1 9090 c633640d.addr.dc1.consul."))

        #expect(try dig("api.service.consul", "AAAA").data("AAAA") == ["2001:db8::21"])
        let any = try dig("api.service.consul", "ANY")
        #expect(any.data("AAAA") == ["2001:db8::21"])

        let db = try dig("db.service.consul", "A")
        #expect(db.data("CNAME") == ["db.example.internal."])
        #expect(db.data("A") == ["203.0.113.5"])
        // A name with a CNAME holds nothing else: SRV follows it too (RFC 1034 §3.6.2).
        let dbSRV = try dig("db.service.consul", "SRV")
        #expect(dbSRV.data("CNAME") == ["db.example.internal."] && dbSRV.data("SRV").isEmpty, "\(dbSRV)")

        #expect(try dig("web-1.node.consul", "A").data("A") == ["192.0.2.11"])
        #expect(try dig("web-1.node.dc1.consul", "TXT").data("TXT") == ["\"zone=a\""])
        #expect(try dig("c633640d.addr.dc1.consul", "A").data("A") == ["198.51.100.13"])
        #expect(try dig("20010db8000000000000000000000021.addr.dc1.consul", "AAAA").data("AAAA") == ["2001:db8::21"])

        let soa = try dig("consul", "SOA")
        #expect(soa.data("SOA") == ["ns1.consul. ops.example.org. 2026112101 3600 600 86400 30"])
        // Below the apex, SOA is NODATA with the SOA in authority (not the apex's SOA as an answer, as Consul does).
        let belowSOA = try dig("web.service.consul", "SOA")
        #expect(belowSOA.status == "NOERROR" && belowSOA.answer.isEmpty && belowSOA.authority.first?.first == "consul.", "\(belowSOA)")
        #expect(try dig("nope.service.consul", "NS").status == "NXDOMAIN")
        let ns = try dig("consul", "NS")
        #expect(ns.data("NS") == ["ns1.consul."])
        #expect(ns.additional.map { $0[4] } == ["127.0.0.1"])

        #expect(try dig("db.example.internal", "A").data("A") == ["203.0.113.5"])
        let outside = try dig("example.com", "A")
        #expect(outside.status == "REFUSED" && !outside.flags.contains("ra"))
    }

    @Test func negativeAnswersCarrySOA() throws {
        let nx = try server.dig("nosuch.service.consul", "A")
        #expect(nx.status == "NXDOMAIN")
        #expect(nx.answer.isEmpty)
        #expect(nx.authority.first?[3] == "SOA")
        #expect(nx.authority.first?[1] == "30", "negative TTL is the SOA minimum: \(nx)")
        let unhealthy = try server.dig("web-4.web.service.consul", "A")  // only a critical instance has no such tag
        #expect(unhealthy.status == "NXDOMAIN")

        let nodata = try server.dig("web.service.consul", "AAAA")
        #expect(nodata.status == "NOERROR")
        #expect(nodata.answer.isEmpty)
        #expect(nodata.authority.first?[3] == "SOA" && nodata.authority.first?[1] == "30")

        let zoneNX = try server.dig("nope.example.internal", "A")
        #expect(zoneNX.status == "NXDOMAIN" && zoneNX.authority.first?[1] == "60")
    }

    @Test func truncationAndTCP() throws {
        let udp = try server.dig("+noedns", "+ignore", "big.service.consul", "SRV")
        #expect(udp.flags.contains("tc"), "\(udp)")
        #expect(udp.answer.count > 0 && udp.answer.count < 40)
        // Every SRV that made it has its glue, and no glue is orphaned.
        #expect(Set(udp.additional.map { $0[0] }) == Set(udp.answer.map { $0[7] }))

        let edns = try server.dig("+ignore", "+bufsize=4096", "big.service.consul", "SRV")
        #expect(edns.udpSize == 1232)
        #expect(edns.flags.contains("tc"))

        let tcp = try server.dig("+tcp", "big.service.consul", "SRV")
        #expect(!tcp.flags.contains("tc"))
        #expect(tcp.answer.count == 40)
        #expect(tcp.additional.count == 40)

        // Without +ignore, dig retries over TCP by itself on TC and gets everything.
        #expect(try server.dig("+noedns", "big.service.consul", "SRV").answer.count == 40)
    }

    @Test func rotationAcrossQueries() throws {
        var firsts: [String] = []
        for _ in 0..<3 { firsts.append(try server.dig("web.service.consul", "A").data("A")[0]) }
        #expect(Set(firsts).count == 3, "\(firsts)")
    }

    @Test func otherClients() throws {
        let kdig = try run(["kdig", "@127.0.0.1", "-p", "\(server.port)", "+tcp", "+short", "+time=2", "+retry=0", "api.service.consul", "AAAA"])
        #expect(kdig.out.trimmingCharacters(in: .whitespacesAndNewlines) == "2001:db8::21", "\(kdig)")
        let drill = try run(["drill", "-p", "\(server.port)", "web.service.consul", "SRV", "@127.0.0.1"])
        #expect(drill.status == 0)
        #expect(drill.out.contains("rcode: NOERROR"))
        let answers = drill.out.split(separator: "\n").filter { !$0.hasPrefix(";") && $0.contains("\tSRV\t") }
        #expect(answers.count == 3, "\(drill.out)")
    }

    @Test func garbageLeavesTheServerAnswering() throws {
        // Garbage from one socket; the checks below from another, so their replies are not lost
        // behind a full receive buffer of replies to garbage.
        let junk = UDPSocket(port: server.port)
        let sock = UDPSocket(port: server.port)
        var rng = seededGenerator()
        for i in 0..<2000 {
            junk.send((0..<(i % 300)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        }
        // Specific malformed packets get the right rcode from the live server.
        var qd2 = queryBytes("web.service.consul", RRType.a, id: 0xAB01)
        qd2[5] = 2
        var notimp = queryBytes("web.service.consul", RRType.a, id: 0xAB02)
        notimp[2] = 0x21
        var loop = Array(queryBytes("x", RRType.a, id: 0xAB03).prefix(12))
        loop += [0xC0, 12, 0, 1, 0, 1]
        let expectations: [(UInt16, [UInt8], UInt16)] = [(0xAB01, qd2, RCode.formErr), (0xAB02, notimp, RCode.notImp), (0xAB03, loop, RCode.formErr)]
        for (id, packet, rcode) in expectations {
            sock.send(packet)
            // Up to 5 s: a loaded server may still be working through the garbage.
            let got = sock.reply(id: id, within: 5)
            #expect(got?.rcode == rcode, "id \(id) after garbage (\(seedNote))")
        }
        let after = try server.dig("web.service.consul", "A")
        #expect(after.status == "NOERROR" && after.data("A").count == 3, "after garbage (\(seedNote))")
        #expect(try server.dig("+tcp", "web.service.consul", "A").data("A").count == 3, "after garbage (\(seedNote))")
    }

    @Test func tcpPipeliningAndSplitFrames() throws {
        let conn = try #require(TCPSocket(port: server.port))
        // Three queries in one write; three answers back, in order.
        conn.send(framed(queryBytes("web.service.consul", RRType.a, id: 1)) + framed(queryBytes("api.service.consul", RRType.aaaa, id: 2))
                  + framed(queryBytes("big.service.consul", RRType.srv, id: 3)))
        var ids: [UInt16] = []
        for _ in 0..<3 {
            let frame = try #require(conn.readFrame())
            ids.append(try Message(from: ByteBuffer(bytes: frame)).header.id)
        }
        #expect(ids == [1, 2, 3])
        // A frame split across writes is reassembled.
        let q = framed(queryBytes("web.service.consul", RRType.a, id: 4))
        conn.send(Array(q.prefix(5)))
        usleep(100_000)
        conn.send(Array(q.dropFirst(5)))
        #expect(try Message(from: ByteBuffer(bytes: try #require(conn.readFrame()))).header.id == 4)
    }
}

@Suite("End to end: live catalog edits", .serialized)
struct LiveEditTests {
    @Test func editsShowWithinOneSecondAndBrokenFilesKeepOldContent() throws {
        let dir = TempDir()
        dir.write("catalog/a.json", registration(node: "n1", address: "192.0.2.1", service: "live"))
        let server = try Server(dir: dir)
        defer { server.stop() }
        #expect(try server.dig("live.service.consul", "A").data("A") == ["192.0.2.1"])

        // A new file: visible within 1 s.
        let start = Date()
        dir.write("catalog/b.json", registration(node: "n2", address: "192.0.2.2", service: "live"))
        var seen: TimeInterval? = nil
        while Date().timeIntervalSince(start) < 3 {
            if server.socketAddresses("live.service.consul").count == 2 { seen = Date().timeIntervalSince(start); break }
            usleep(20_000)
        }
        let elapsed = try #require(seen, "the new instance never appeared")
        #expect(elapsed < 1.0, "took \(elapsed) s")

        // Each step below waits (with a deadline) for the server to show it has read the edit: the answer
        // changing, or, for an edit that must change nothing, the log line that reports it and then a later
        // good edit (a marker) being served, so the broken one has been dealt with in full.

        // A broken edit: reported with path and reason; the old content keeps serving.
        dir.write("catalog/b.json", "{\"Node\": \"n2\", \"Address\": ")
        #expect(eventually(within: 5) { server.log_().contains(dir.path + "/catalog/b.json:1: invalid JSON") } != nil, "\(server.log_())")
        dir.write("catalog/marker.json", registration(node: "m1", address: "192.0.2.99", service: "marker"))
        #expect(eventually(within: 5) { server.socketAddresses("marker.service.consul") == ["192.0.2.99"] } != nil, "\(server.log_())")
        #expect(Set(try server.dig("live.service.consul", "A").data("A")) == ["192.0.2.1", "192.0.2.2"])

        // An edit that makes an instance critical removes it; deleting a file removes its instances.
        dir.write("catalog/b.json", registration(node: "n2", address: "192.0.2.2", service: "live", status: "critical"))
        #expect(eventually(within: 5) { server.socketAddresses("live.service.consul") == ["192.0.2.1"] } != nil, "\(server.log_())")
        #expect(try server.dig("live.service.consul", "A").data("A") == ["192.0.2.1"])
        dir.remove("catalog/a.json")
        #expect(eventually(within: 5) { server.socketRCode("live.service.consul") == RCode.nxDomain } != nil, "\(server.log_())")
        #expect(try server.dig("live.service.consul", "A").status == "NXDOMAIN")

        // A broken zone file edit keeps the previous copy and names the line.
        dir.write("zones/t.test.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 192.0.2.80\n")
        #expect(eventually(within: 5) { server.socketAddresses("www.t.test") == ["192.0.2.80"] } != nil, "\(server.log_())")
        #expect(try server.dig("www.t.test", "A").data("A") == ["192.0.2.80"])
        dir.write("zones/t.test.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 192.0.2.800\n")
        #expect(eventually(within: 5) { server.log_().contains(dir.path + "/zones/t.test.zone:2: ") } != nil, "\(server.log_())")
        dir.write("zones/marker.test.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 192.0.2.98\n")
        #expect(eventually(within: 5) { server.socketAddresses("www.marker.test") == ["192.0.2.98"] } != nil, "\(server.log_())")
        #expect(try server.dig("www.t.test", "A").data("A") == ["192.0.2.80"])

        #expect(server.stop() == 0)
    }
}

@Suite("End to end: start-up and the check command")
struct StartupTests {
    func lines(_ s: String) -> [Substring] { s.split(separator: "\n") }

    @Test func addressInUse() throws {
        let dir = TempDir()
        let first = try Server(dir: dir)
        defer { first.stop() }
        let r = try run([signpostBinary, "serve", "--listen", "127.0.0.1:\(first.port)", "--catalog", dir.path + "/catalog"])
        #expect(r.status != 0)
        #expect(lines(r.err).count == 1, "\(r.err)")
        #expect(r.err.contains("signpost: cannot listen on 127.0.0.1:\(first.port)"))
        #expect(r.err.contains("address already in use"))
    }

    @Test func addressInUseWithRegistriesIsStillOneLine() throws {
        let dir = TempDir()
        let first = try Server(dir: dir)
        defer { first.stop() }
        // Watchers exist when the bind fails; tearing them down must not crash.
        let r = try run([signpostBinary, "serve", "--listen", "127.0.0.1:\(first.port)", "--catalog", dir.path + "/catalog",
                         "--registry", "etcd:http://127.0.0.1:1", "--registry", "consul:http://127.0.0.1:1"])
        #expect(r.status == 1)
        #expect(lines(r.err).count == 1, "\(r.err)")
        #expect(r.err.contains("address already in use"))
    }

    @Test func unreadableDirectory() throws {
        let r = try run([signpostBinary, "serve", "--listen", "127.0.0.1:0", "--catalog", "/nonexistent/signpost-catalog"])
        #expect(r.status != 0)
        #expect(lines(r.err) == ["signpost: cannot use /nonexistent/signpost-catalog: no such directory"], "\(r.err)")
    }

    @Test(arguments: [["serve", "--bogus"], ["serve", "--order", "sideways"], ["serve", "--listen", "127.0.0.1:99999"],
                      ["serve", "--service-ttl", "web=soon"], ["serve", "--domain", "a..b"]])
    func badFlags(args: [String]) throws {
        let r = try run([signpostBinary] + args + ["--catalog", "/nonexistent"])
        #expect(r.status != 0)
        #expect(lines(r.err).count == 1, "\(r.err)")
        #expect(r.err.hasPrefix("signpost: "))
        #expect(!r.err.contains("Fatal error") && !r.err.contains("Stack"))
    }

    @Test func checkReportsPathLineReason() throws {
        let dir = TempDir()
        dir.write("catalog/good.json", registration(node: "n1", address: "192.0.2.1", service: "web"))
        dir.write("catalog/bad.json", "{\n\"Node\": \"n\",\n\"Address\": \"192.0.2.1\",\n\"Service\": {\"Service\": \"web\", \"Port\": -1}\n}")
        dir.write("zones/bad.test.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN AAAA nope\n")
        let r = try run([signpostBinary, "check", "--catalog", dir.path + "/catalog", "--zones", dir.path + "/zones"])
        #expect(r.status == 1)
        #expect(r.out.contains(dir.path + "/catalog/bad.json:4: Service.Port: -1 is not from 0 to 65535"), "\(r.out)")
        #expect(r.out.contains(dir.path + "/zones/bad.test.zone:2: "), "\(r.out)")
        #expect(!r.out.contains("good.json"))

        dir.remove("catalog/bad.json")
        dir.remove("zones/bad.test.zone")
        let ok = try run([signpostBinary, "check", "--catalog", dir.path + "/catalog", "--zones", dir.path + "/zones"])
        #expect(ok.status == 0, "\(ok)")
    }

    @Test func sigtermExitsCleanly() throws {
        let server = try Server(dir: TempDir())
        // A clean exit of its own on SIGTERM (`stop` kills a process still there after 10 s; its status is then not 0).
        #expect(server.stop() == 0)
    }
}

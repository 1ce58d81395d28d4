import DNSWire
import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The recvmmsg/sendmmsg UDP engine (`--udp-engine mmsg`), through the same clients.
@Suite("End to end: the mmsg UDP engine", .serialized)
struct UDPEngineTests {
    @Test func answersTruncatesSurvivesGarbageAndForwards() throws {
        let knot = try Knot()
        let dir = TempDir()
        dir.write("catalog/web.json", "[" + (1...3).map {
            registration(node: "web-\($0)", address: "192.0.2.\($0)", service: "web", port: 8080)
        }.joined(separator: ",") + "]")
        dir.write("catalog/big.json", "[" + (1...40).map {
            registration(node: "big-\($0)", address: "192.0.2.\(100 + $0)", service: "big", port: 7000 + $0)
        }.joined(separator: ",") + "]")
        let server = try Server(dir: dir, port: freePort(), forward: true,
                                extra: ["--udp-engine", "mmsg", "--threads", "2", "--upstream", "127.0.0.1:\(knot.port)"])
        #expect(udpSockets(port: server.port) == 2, "one SO_REUSEPORT socket per worker")

        let srv = try server.dig("web.service.consul", "SRV")
        #expect(srv.data("SRV").count == 3 && srv.additional.count == 3, "\(srv)")
        var firsts = Set<String>()
        for _ in 0..<6 { firsts.insert(try server.dig("web.service.consul", "A").data("A").first ?? "") }
        #expect(firsts.count == 3, "rotation across both workers: \(firsts)")

        let udp = try server.dig("+noedns", "+ignore", "big.service.consul", "SRV")
        #expect(udp.flags.contains("tc") && udp.answer.count < 40)
        #expect(try server.dig("+tcp", "big.service.consul", "SRV").answer.count == 40)

        let junk = UDPSocket(port: server.port)
        var rng = seededGenerator()
        for i in 0..<2000 { junk.send((0..<(i % 300)).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        let sock = UDPSocket(port: server.port)
        var qd2 = queryBytes("web.service.consul", RRType.a, id: 0xBEEF)
        qd2[5] = 2
        sock.send(qd2)
        // Up to 5 s: a loaded server may still be working through the garbage.
        let formerr = sock.reply(id: 0xBEEF, within: 5)
        #expect(formerr?.rcode == RCode.formErr, "after garbage (\(seedNote))")
        #expect(try server.dig("web.service.consul", "A").data("A").count == 3, "after garbage (\(seedNote))")

        // Forwarded: the answer comes back later, sent from the same socket.
        let forwarded = try server.dig("www.example.org", "A")
        #expect(forwarded.data("A") == ["192.0.2.80"] && forwarded.flags.contains("ra"))
        #expect(try server.dig("www.example.org", "A").data("A") == ["192.0.2.80"], "then from the cache")

        // A clean exit of its own on SIGTERM, with a forwarded query's socket still registered.
        #expect(server.stop() == 0)
    }

    @Test("A socket per event loop on a fixed port, one on port 0, and a port in use is still reported",
          arguments: ["nio", "mmsg"])
    func socketsPerWorker(engine: String) throws {
        let dir = TempDir()
        dir.write("catalog/web.json", registration(node: "web-1", address: "192.0.2.1", service: "web", port: 8080))
        let fixed = try Server(dir: dir, port: freePort(), extra: ["--udp-engine", engine, "--threads", "2"])
        defer { fixed.stop() }
        #expect(udpSockets(port: fixed.port) == 2)
        for _ in 0..<4 { #expect(try fixed.dig("web.service.consul", "A").data("A") == ["192.0.2.1"]) }
        let ephemeral = try Server(dir: TempDir(), extra: ["--udp-engine", engine, "--threads", "2"])
        defer { ephemeral.stop() }
        #expect(udpSockets(port: ephemeral.port) == 1)
        // A second server must not silently join the first one's SO_REUSEPORT group.
        let r = try run([signpostBinary, "serve", "--listen", "127.0.0.1:\(fixed.port)", "--threads", "2", "--udp-engine", engine,
                         "--catalog", dir.path + "/catalog", "--no-forward"])
        #expect(r.status != 0 && r.err.contains("address already in use"), "\(r.err)")
    }
}

/// UDP sockets bound to 127.0.0.1:`port`, as `ss` lists them.
func udpSockets(port: Int) -> Int {
    guard let r = try? run(["/usr/bin/ss", "-H", "-u", "-a", "-n", "sport = :\(port)"]) else { return -1 }
    return r.out.split(separator: "\n").filter { $0.contains("127.0.0.1:\(port)") }.count
}

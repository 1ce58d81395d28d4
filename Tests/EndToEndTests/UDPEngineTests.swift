import DNSWire
import Foundation
import NIOCore
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
        let server = try Server(dir: dir, forward: true,
                                extra: ["--udp-engine", "mmsg", "--threads", "2", "--upstream", "127.0.0.1:\(knot.port)"])

        let srv = try server.dig("web.service.consul", "SRV")
        #expect(srv.data("SRV").count == 3 && srv.additional.count == 3, "\(srv)")
        var firsts = Set<String>()
        for _ in 0..<6 { firsts.insert(try server.dig("web.service.consul", "A").data("A").first ?? "") }
        #expect(firsts.count == 3, "rotation across both workers: \(firsts)")

        let udp = try server.dig("+noedns", "+ignore", "big.service.consul", "SRV")
        #expect(udp.flags.contains("tc") && udp.answer.count < 40)
        #expect(try server.dig("+tcp", "big.service.consul", "SRV").answer.count == 40)

        let junk = UDPSocket(port: server.port)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<2000 { junk.send((0..<(i % 300)).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        let sock = UDPSocket(port: server.port)
        var qd2 = queryBytes("web.service.consul", RRType.a, id: 0xBEEF)
        qd2[5] = 2
        sock.send(qd2)
        var formerr: Message? = nil
        while let reply = sock.receive() {
            if let m = try? Message(from: ByteBuffer(bytes: reply)), m.header.id == 0xBEEF { formerr = m; break }
        }
        #expect(formerr?.rcode == RCode.formErr)
        #expect(try server.dig("web.service.consul", "A").data("A").count == 3)

        // Forwarded: the answer comes back later, sent from the same socket.
        let forwarded = try server.dig("www.example.test", "A")
        #expect(forwarded.data("A") == ["192.0.2.80"] && forwarded.flags.contains("ra"))
        #expect(try server.dig("www.example.test", "A").data("A") == ["192.0.2.80"], "then from the cache")

        let start = Date()
        #expect(server.stop() == 0)
        #expect(Date().timeIntervalSince(start) < 3)
    }
}

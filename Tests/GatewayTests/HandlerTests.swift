import Catalog
import DNSWire
@testable import Gateway
import Logging
import NIOCore
import NIOEmbedded
import TestSupport
import Testing

@Suite("Query handler and front ends")
struct HandlerTests {
    static func handler(_ configure: (inout ResolverConfiguration) -> Void = { _ in }) -> QueryHandler {
        let store = SnapshotStore(Fixture.snapshot(Fixture.standard + (1...40).map {
            Fixture.I(node: "big-\($0)", address: "192.0.2.\(100 + $0)", service: "big")
        }))
        return QueryHandler(resolver: Fixture.resolver(configure), store: store, logger: Logger(label: "test"))
    }

    func respond(_ packet: ByteBuffer, _ transport: QueryHandler.Transport = .udp) throws -> Message? {
        guard let out = Self.handler().respond(to: packet, transport: transport, allocator: ByteBufferAllocator()) else { return nil }
        return try Message(from: out)
    }

    @Test func flagsAndEcho() throws {
        let m = try #require(try respond(Fixture.query("Web.SERVICE.consul", RRType.a, id: 777, rd: true)))
        #expect(m.header.id == 777)
        #expect(m.header.qr && m.header.aa && m.header.rd && !m.header.ra && !m.header.tc)
        #expect(m.questions.first?.name.description == "Web.SERVICE.consul.")
        let noRD = try #require(try respond(Fixture.query("web.service.consul", RRType.a, rd: false)))
        #expect(!noRD.header.rd)
        let refused = try #require(try respond(Fixture.query("example.com", RRType.a)))
        #expect(refused.rcode == RCode.refused && !refused.header.aa && !refused.header.ra)
    }

    @Test func udpSizeLimits() throws {
        // No EDNS: 512 bytes and TC.
        let plain = try #require(Self.handler().respond(to: Fixture.query("big.service.consul", RRType.a), transport: .udp, allocator: ByteBufferAllocator()))
        #expect(plain.readableBytes <= 512)
        #expect(try Message(from: plain).header.tc)
        // EDNS 4096 is capped at 1232 by default; all 40 A records (16 bytes each) fit in that.
        let edns = try #require(try respond(Fixture.query("big.service.consul", RRType.a, edns: 4096)))
        #expect(!edns.header.tc && edns.answers.count == 40)
        #expect(edns.opt?.rclass == 1232)
        // A tiny EDNS size counts as 512 (RFC 6891 §6.2.5).
        let tiny = try #require(Self.handler().respond(to: Fixture.query("big.service.consul", RRType.srv, edns: 100), transport: .udp, allocator: ByteBufferAllocator()))
        #expect(tiny.readableBytes <= 512 && tiny.readableBytes > 400)
        // TCP carries everything.
        let tcp = try #require(try respond(Fixture.query("big.service.consul", RRType.srv), .tcp))
        #expect(!tcp.header.tc && tcp.answers.count == 40 && tcp.additional.count == 40)
    }

    @Test func rejectsCarryTheRightRcode() throws {
        var notimp = Fixture.query("web.service.consul", RRType.a)
        notimp.setInteger(UInt16(0x2100), at: 2)  // opcode 4 (NOTIFY), RD
        let n = try #require(try respond(notimp))
        #expect(n.rcode == RCode.notImp && n.header.opcode == 4 && n.questions.count == 1)

        var badvers = Fixture.query("web.service.consul", RRType.a, edns: 1232)
        badvers.setInteger(UInt8(1), at: badvers.writerIndex - 5)  // EDNS version 1
        let b = try #require(try respond(badvers))
        #expect(b.rcode == RCode.badVers)
        #expect(b.opt != nil && b.answers.isEmpty)

        var formerr = Fixture.query("web.service.consul", RRType.a)
        formerr.setInteger(UInt16(2), at: 4)  // QDCOUNT 2
        let f = try #require(try respond(formerr))
        #expect(f.rcode == RCode.formErr && f.questions.isEmpty)

        var response = Fixture.query("web.service.consul", RRType.a)
        response.setInteger(UInt16(0x8100), at: 2)  // QR=1
        #expect(try respond(response) == nil)
        #expect(try respond(ByteBuffer(bytes: [1, 2, 3])) == nil)
    }

    /// A query with an EDNS Client Subnet option for `10.1.7.0/24`, and EDNS `version`.
    static func withClientSubnet(_ name: String, _ type: UInt16, version: UInt8 = 0) -> ByteBuffer {
        var q = Fixture.query(name, type)
        let option: [UInt8] = [0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 7]
        q.writeBytes([0, 0, 41, 0x04, 0xD0, 0, version, 0, 0, 0, UInt8(option.count)] + option)
        q.setInteger(UInt16(1), at: 10)
        return q
    }

    /// A rejected query's OPT comes back bare (no Client Subnet echo), so the BADVERS in its extended bits is counted
    /// as BADVERS; and a trusted Client Subnet option's scope is nonzero only when nearest first shaped the answer.
    @Test func clientSubnetEchoesOnlyWhereTheAnswerDependsOnIt() throws {
        let handler = Self.handler { c in
            c.locality.mode = .zone
            c.locality.clientZones = [(try! CIDR("10.1.0.0/16"), "a")]
            c.locality.ecsTrusted = [try! CIDR("127.0.0.0/8")]
        }
        let client = try SocketAddress(ipAddress: "127.0.0.1", port: 5353)
        func respond(_ packet: ByteBuffer) -> ByteBuffer? {
            handler.respond(Query.parse(packet), transport: .udp, client: client, allocator: ByteBufferAllocator())
        }
        let badvers = try #require(respond(Self.withClientSubnet("web.service.consul", RRType.a, version: 1)))
        let b = try Message(from: badvers)
        #expect(b.rcode == RCode.badVers && b.opt?.rdata == .unknown([]), "\(b)")
        #expect(badvers.withUnsafeReadableBytes { QueryObserver.rcode($0) } == 6)  // the BADVERS column
        // No zone in the catalog: nothing depends on the client, so the scope is 0 (RFC 7871 §7.2.1).
        let plain = try #require(respond(Self.withClientSubnet("web.service.consul", RRType.a)))
        #expect(try Message(from: plain).rcode == RCode.noError)
        #expect(plain.getInteger(at: plain.writerIndex - 4, as: UInt8.self) == 0)
        let nx = try #require(respond(Self.withClientSubnet("nothing.service.consul", RRType.a)))
        #expect(nx.getInteger(at: nx.writerIndex - 4, as: UInt8.self) == 0)
    }

    @Test func udpChannelSurvivesGarbage() throws {
        let channel = EmbeddedChannel(handler: UDPQueryHandler(handler: Self.handler(), logger: Logger(label: "test")))
        let peer = try SocketAddress(ipAddress: "127.0.0.1", port: 5353)
        try channel.connect(to: peer).wait()  // active until something closes it
        #expect(channel.isActive)
        var rng = seededGenerator()
        for i in 0..<500 {
            let junk = (0..<(i % 70)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try channel.writeInbound(AddressedEnvelope(remoteAddress: peer, data: ByteBuffer(bytes: junk)))
            while let reply = try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) {
                // Anything we do send back is a well-formed response to that peer.
                #expect(reply.remoteAddress == peer, "\(seedNote)")
                #expect(try Message(from: reply.data).header.qr, "\(seedNote)")
            }
        }
        #expect(channel.isActive, "\(seedNote)")
        try channel.writeInbound(AddressedEnvelope(remoteAddress: peer, data: Fixture.query("web.service.consul", RRType.a, id: 5)))
        channel.pipeline.fireChannelReadComplete()
        let reply = try #require(try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self))
        let m = try Message(from: reply.data)
        #expect(m.header.id == 5 && m.answers.count == 3)
        #expect(try channel.finish().isClean)
    }

    @Test func tcpAnswersPipelinedFramesInOrder() throws {
        let channel = EmbeddedChannel(handler: TCPQueryHandler(handler: Self.handler(), logger: Logger(label: "test")))
        for id in UInt16(1)...3 {
            try channel.writeInbound(Fixture.query(id == 2 ? "api.service.consul" : "web.service.consul", RRType.a, id: id))
        }
        var ids: [UInt16] = []
        while let out = try channel.readOutbound(as: ByteBuffer.self) { ids.append(try Message(from: out).header.id) }
        #expect(ids == [1, 2, 3])
        #expect(try channel.finish().isClean)
    }
}

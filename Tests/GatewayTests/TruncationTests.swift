import Catalog
import DNSWire
@testable import Gateway
import NIOCore
import Testing

@Suite("Truncation")
struct TruncationTests {
    static let owner = Fixture.name("web.service.consul")
    // Header 12 + question (20-byte name + type + class) = 36; each A answer with a
    // compressed owner is 2 + 10 + 4 = 16 bytes.
    static let base = 36
    static let perA = 16

    func reply(edns: EDNS? = nil) -> ResponseEncoder.Reply {
        var h = DNSHeader(id: 9)
        h.qr = true
        return ResponseEncoder.Reply(header: h, question: Question(name: Self.owner, type: RRType.a), edns: edns,
                                     rcode: 0, udpSize: 1232)
    }

    func aAnswer(_ n: Int) -> Answer {
        Answer(rcode: 0, authoritative: true, answers: (0..<n).map {
            ResourceRecord(name: Self.owner, ttl: 0, rdata: .a(IPv4(bytes: [192, 0, 2, UInt8($0)])))
        })
    }

    @Test(arguments: [1, 5, 29, 39])
    func exactLimit(kept: Int) throws {
        let answer = aAnswer(40)
        let limit = Self.base + kept * Self.perA
        let exact = ResponseEncoder.encode(answer, reply: reply(), limit: limit, allocator: ByteBufferAllocator())
        #expect(exact.readableBytes == limit)
        let m = try Message(from: exact)
        #expect(m.answers.count == kept)
        #expect(m.header.tc)
        // One byte less drops exactly one more record.
        let less = try Message(from: ResponseEncoder.encode(answer, reply: reply(), limit: limit - 1, allocator: ByteBufferAllocator()))
        #expect(less.answers.count == kept - 1)
        #expect(less.header.tc)
    }

    @Test func noTruncationWhenItFits() throws {
        let answer = aAnswer(29)
        let out = ResponseEncoder.encode(answer, reply: reply(), limit: 512, allocator: ByteBufferAllocator())
        #expect(out.readableBytes == Self.base + 29 * Self.perA)
        let m = try Message(from: out)
        #expect(!m.header.tc && m.answers.count == 29)
    }

    @Test func ednsReservesRoomForOPT() throws {
        let answer = aAnswer(100)
        let edns = EDNS(udpSize: 1232, version: 0, dnssecOK: false)
        let out = ResponseEncoder.encode(answer, reply: reply(edns: edns), limit: 1232, allocator: ByteBufferAllocator())
        #expect(out.readableBytes <= 1232)
        let m = try Message(from: out)
        #expect(m.header.tc)
        #expect(m.opt != nil)
        #expect(m.answers.count == (1232 - Self.base - 11) / Self.perA)
    }

    @Test func srvUnitsKeepTheirGlue() throws {
        let instances = (1...40).map { Fixture.I(node: "node-\($0)", address: "192.0.2.\($0)", service: "big") }
        let snap = Fixture.snapshot(instances)
        let answer = Fixture.resolver().resolve(Question(name: Fixture.name("big.service.consul"), type: RRType.srv), in: snap)
        let out = ResponseEncoder.encode(answer, reply: reply(), limit: 512, allocator: ByteBufferAllocator())
        #expect(out.readableBytes <= 512)
        let m = try Message(from: out)
        #expect(m.header.tc)
        #expect(m.answers.count > 0 && m.answers.count < 40)
        let targets = m.answers.compactMap { rr -> DNSName? in
            if case .srv(_, _, _, let t) = rr.rdata { return t } else { return nil }
        }
        #expect(m.additional.map(\.name) == targets)
    }

    @Test func negativeAnswerKeepsSOA() throws {
        let answer = Answer(rcode: RCode.nxDomain, authoritative: true, authority: [
            ResourceRecord(name: Fixture.name("consul"), ttl: 0, rdata: .soa(.init(
                mname: Fixture.name("ns.consul"), rname: Fixture.name("hostmaster.consul"), serial: 1,
                refresh: 1, retry: 1, expire: 1, minimum: 0))),
        ])
        let m = try Message(from: ResponseEncoder.encode(answer, reply: reply(), limit: 512, allocator: ByteBufferAllocator()))
        #expect(!m.header.tc)
        #expect(m.authority.map(\.type) == [RRType.soa])
    }
}

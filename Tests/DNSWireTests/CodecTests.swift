import DNSWire
import NIOCore
import Testing

@Suite("Wire codec")
struct CodecTests {
    static func name(_ s: String) -> DNSName { try! DNSName(s) }

    /// A response with every RDATA type we encode, sharing suffixes so compression matters.
    static let sample: Message = {
        var h = DNSHeader(id: 0xBEEF)
        h.qr = true
        h.aa = true
        h.rd = true
        let owner = name("Web.Service.Consul")
        return Message(
            header: h,
            questions: [Question(name: owner, type: RRType.srv)],
            answers: [
                ResourceRecord(name: owner, ttl: 30, rdata: .srv(priority: 1, weight: 10, port: 8080, target: name("web-1.node.dc1.consul"))),
                ResourceRecord(name: owner, ttl: 30, rdata: .srv(priority: 1, weight: 1, port: 9090, target: name("c0000201.addr.dc1.consul"))),
                ResourceRecord(name: owner, ttl: 30, rdata: .cname(name("db.example.internal"))),
                ResourceRecord(name: owner, ttl: 30, rdata: .mx(preference: 10, exchange: name("mail.example.internal"))),
                ResourceRecord(name: owner, ttl: 30, rdata: .txt([Array("rack=r1".utf8), Array("a\"b".utf8)])),
                ResourceRecord(name: owner, ttl: 30, rdata: .ptr(name("web.example.internal"))),
                ResourceRecord(name: owner, type: 65280, ttl: 5, rdata: .unknown([1, 2, 3])),
            ],
            authority: [
                ResourceRecord(name: name("consul"), ttl: 0, rdata: .soa(.init(
                    mname: name("ns.consul"), rname: name("hostmaster.consul"), serial: 2026112101,
                    refresh: 3600, retry: 600, expire: 86400, minimum: 5))),
                ResourceRecord(name: name("consul"), ttl: 0, rdata: .ns(name("ns.consul"))),
            ],
            additional: [
                ResourceRecord(name: name("web-1.node.dc1.consul"), ttl: 30, rdata: .a(IPv4("192.0.2.11")!)),
                ResourceRecord(name: name("c0000201.addr.dc1.consul"), ttl: 30, rdata: .aaaa(IPv6("2001:db8::1")!)),
            ])
    }()

    @Test func roundTripPreservesEveryField() throws {
        let wire = Self.sample.encode()
        var decoded = try Message(from: wire)
        decoded.header.qdCount = Self.sample.header.qdCount  // counts are filled by the encoder
        #expect(decoded.questions == Self.sample.questions)
        #expect(decoded.answers == Self.sample.answers)
        #expect(decoded.authority == Self.sample.authority)
        #expect(decoded.additional == Self.sample.additional)
        #expect(decoded.header.id == 0xBEEF)
        #expect(decoded.header.qr && decoded.header.aa && decoded.header.rd && !decoded.header.tc)
        // The question's case survives.
        #expect(decoded.questions[0].name.description == "Web.Service.Consul.")
    }

    @Test func compressionShrinksAndPointsBackwards() throws {
        let wire = Self.sample.encode()
        let uncompressed = Self.sample.answers.reduce(0) { $0 + $1.name.wire.count } * 1
        // Every answer owner after the question must be a 2-byte pointer to offset 12.
        let bytes = Array(wire.readableBytesView)
        let firstAnswer = 12 + Self.sample.questions[0].name.wire.count + 4
        #expect(bytes[firstAnswer] == 0xC0 && bytes[firstAnswer + 1] == 12)
        #expect(uncompressed > 0)
        // SRV targets are never compressed (RFC 2782): the full target appears as labels.
        let target = Self.name("web-1.node.dc1.consul").wire
        #expect(bytes.indices.contains { i in i + target.count <= bytes.count && Array(bytes[i..<(i + target.count)]) == target })
    }

    @Test(arguments: [
        ("www.example.com.", "www.example.com."),
        ("www.example.com", "www.example.com."),
        (".", "."),
        ("a\\.b.example", "a\\.b.example."),
        ("\\065bc.example", "Abc.example."),
    ])
    func namePresentation(input: String, expected: String) throws {
        #expect(try DNSName(input).description == expected)
    }

    @Test func nameLimits() {
        #expect(throws: WireError.self) { try DNSName(String(repeating: "a", count: 64) + ".example") }
        let long = (0..<5).map { _ in String(repeating: "b", count: 60) }.joined(separator: ".")
        #expect(throws: WireError.self) { try DNSName(long) }
        #expect(throws: WireError.self) { try DNSName("a..b") }
    }

    @Test func namesCompareCaseInsensitively() throws {
        #expect(try DNSName("WEB.service.Consul") == DNSName("web.SERVICE.consul"))
        #expect(try DNSName("web.service.consul").isSubdomain(of: DNSName("CONSUL")))
        #expect(try !DNSName("web.service.xconsul").isSubdomain(of: DNSName("consul")))
        #expect(try DNSName("consul").isSubdomain(of: DNSName("consul")))
    }

    @Test(arguments: [
        ("2001:db8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::", "::"),
        ("::1", "::1"),
        ("fe80::1:2:3:4", "fe80::1:2:3:4"),
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
        ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
    ])
    func ipv6TextRoundTrip(input: String, expected: String) {
        #expect(IPv6(input)?.description == expected)
    }

    @Test(arguments: ["1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "g::1", "1.2.3.4", ""])
    func ipv6Rejects(input: String) {
        #expect(IPv6(input) == nil)
    }

    @Test(arguments: ["256.1.1.1", "1.2.3", "01.2.3.4", "a.b.c.d", "1.2.3.4.5"])
    func ipv4Rejects(input: String) {
        #expect(IPv4(input) == nil)
    }

    @Test func goldenQueriesParse() throws {
        for hex in Golden.all {
            guard case .query(let q) = Query.parse(buffer(hex: hex)) else {
                Issue.record("golden query did not parse: \(hex)")
                continue
            }
            #expect(q.question.qclass == DNSClass.inet)
        }
        guard case .query(let dig) = Query.parse(buffer(hex: Golden.digSRVWithCookie)) else { return }
        #expect(dig.question.type == RRType.srv)
        #expect(dig.question.name.description == "web.service.consul.")
        #expect(dig.edns == EDNS(udpSize: 1232, version: 0, dnssecOK: false))
        #expect(dig.header.rd)
        guard case .query(let mixed) = Query.parse(buffer(hex: Golden.digANoEDNSMixedCase)) else { return }
        #expect(mixed.edns == nil)
        #expect(mixed.question.name.description == "Web.Service.Consul.")
    }
}

@Suite("Name compression")
struct CompressionTests {
    @Test func matchesCaseInsensitivelyAndThroughPointerChains() throws {
        var w = MessageWriter(buffer: ByteBuffer())
        w.writeQuestion(Question(name: try DNSName("A.Example.COM"), type: RRType.mx))
        // Same name, other case: a bare pointer to the question (offset 12).
        w.writeRecord(ResourceRecord(name: try DNSName("a.example.com"), ttl: 1, rdata: .mx(preference: 1, exchange: try DNSName("mail.EXAMPLE.com"))), section: .answer)
        // "x.mail.example.com" can point at "mail.example.com", which itself ends in a pointer.
        let before = w.mark()
        w.writeRecord(ResourceRecord(name: try DNSName("x.mail.example.com"), ttl: 1, rdata: .a(IPv4("192.0.2.1")!)), section: .additional)
        let m = try Message(from: w.finish(header: DNSHeader(id: 1)))
        // A pointer takes the case of the bytes it points to: the question's (RFC 4343).
        #expect(m.answers.first?.name.description == "A.Example.COM.")
        #expect(m.answers.first?.rdata == .mx(preference: 1, exchange: try DNSName("mail.example.com")))
        #expect(m.additional.first?.name == (try DNSName("x.mail.example.com")))
        let bytes = Array(w.buffer.readableBytesView)
        // The answer owner is exactly C0 0C.
        let answerAt = 12 + 15 + 4
        #expect(bytes[answerAt] == 0xC0 && bytes[answerAt + 1] == 12)
        // The additional owner is "x" + one pointer: 1 + 1 + 2 bytes.
        #expect(bytes.count == before.writerIndexForTesting + 4 + 10 + 4)

        // After a rollback, names written later cannot point into the discarded bytes.
        var r = MessageWriter(buffer: ByteBuffer())
        r.writeQuestion(Question(name: try DNSName("q.test"), type: RRType.a))
        let mark = r.mark()
        r.writeRecord(ResourceRecord(name: try DNSName("gone.test"), ttl: 1, rdata: .a(IPv4("192.0.2.1")!)), section: .answer)
        r.rollback(to: mark)
        r.writeRecord(ResourceRecord(name: try DNSName("x.gone.test"), ttl: 1, rdata: .a(IPv4("192.0.2.2")!)), section: .answer)
        let after = try Message(from: r.finish(header: DNSHeader(id: 2)))
        #expect(after.answers.map(\.name) == [try DNSName("x.gone.test")])
    }
}

@Suite("Name building")
struct NameBuildingTests {
    @Test func prefixLabelsAndSuffix() throws {
        #expect(try DNSName(prefix: "web-1", "node", "dc1", suffix: DNSName("consul")) == (try DNSName("web-1.node.dc1.consul")))
        #expect(try DNSName(prefix: "a.b", "node", "dc1", suffix: DNSName("sd.example")) == (try DNSName("a.b.node.dc1.sd.example")))
        #expect(throws: WireError.self) { try DNSName(prefix: "a..b", "node", "dc1", suffix: .root) }
        #expect(throws: WireError.self) { try DNSName(prefix: String(repeating: "x", count: 64), "node", "dc1", suffix: .root) }
    }
}

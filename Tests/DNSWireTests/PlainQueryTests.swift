import DNSWire
import NIOCore
import TestSupport
import Testing

/// `PlainQuery` is the allocation-free reader of the fast path. Whatever it accepts, `Query.parse` must accept
/// as a query with the same question and EDNS; it may decline anything, which then takes the general path.
@Suite("Plain query reader")
struct PlainQueryTests {
    static func agree(_ bytes: [UInt8]) -> Bool? {
        let plain = bytes.withUnsafeBytes { PlainQuery.parse($0) }
        guard let plain else { return nil }
        guard case .query(let q) = Query.parse(ByteBuffer(bytes: bytes)) else { return false }
        return q.question.name.wire == Array(bytes[DNSHeader.size..<plain.nameEnd]) && q.question.type == plain.type
            && q.question.qclass == plain.qclass && q.edns == plain.edns?.edns && q.header.id == plain.id
            && q.header.rd == plain.rd && q.header.cd == plain.cd
    }

    @Test func goldenPacketsAreRead() throws {
        for hex in [Golden.digSRVWithCookie, Golden.digANoEDNSMixedCase, Golden.kdigAAAA, Golden.drillSRV] {
            #expect(Self.agree(bytes(hex: hex)) == true, "\(hex)")
        }
        let dig = try #require(bytes(hex: Golden.digSRVWithCookie).withUnsafeBytes { PlainQuery.parse($0) })
        #expect(dig.type == RRType.srv && dig.edns?.edns == EDNS(udpSize: 1232, version: 0, dnssecOK: false) && dig.rd)
    }

    @Test("Declines what only the general reader may classify", arguments: [
        "a0bb8120000100000000000003776562077365727669636506636f6e73756c0000010001",  // QR=1
        "a0bb2920000100000000000003776562077365727669636506636f6e73756c0000010001",  // opcode 5 (UPDATE)
        "a0bb0120000200000000000003776562077365727669636506636f6e73756c0000010001",  // QDCOUNT 2
        "a0bb0120000100010000000003776562077365727669636506636f6e73756c0000010001",  // ANCOUNT 1
        "a0bb0120000100000000000003776562077365727669636506636f6e73756c00000100",    // short question
        "a0bb01200001000000000000c00c00010001",                                       // pointer in the question
        "a0bb0120000100000000000103776562077365727669636506636f6e73756c000001000100002904d0000100000000",  // EDNS version 1
        "a0bb0120000100000000000103776562077365727669636506636f6e73756c000001000100002904d000000000000a00",  // OPT RDATA cut
        "a0bb0120000100000000000103776562077365727669636506636f6e73756c0000010001c00c002904d000000000000000",  // OPT owner not root
    ])
    func declines(_ hex: String) {
        #expect(Self.agree(bytes(hex: hex)) == nil)
    }

    @Test func longNamesAtTheLimit() {
        // 4 labels of 63 bytes = 256 bytes with the root: too long. 3 × 63 + 61: exactly 255.
        func packet(_ labels: [Int]) -> [UInt8] {
            var b: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
            for n in labels { b.append(UInt8(n)); b += Array(repeating: UInt8(ascii: "a"), count: n) }
            return b + [0, 0, 1, 0, 1]
        }
        #expect(Self.agree(packet([63, 63, 63, 63])) == nil)
        #expect(Self.agree(packet([63, 63, 63, 61])) == true)
        #expect(Self.agree(packet([63, 63, 63, 62])) == nil)
    }

    @Test func mutantsNeverDisagree() {
        var accepted = 0
        var rng = seededGenerator()
        for i in 0..<20000 {
            var b = bytes(hex: Golden.all[i % Golden.all.count])
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = Int.random(in: 0..<b.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: b[k] = UInt8.random(in: 0...255, using: &rng)
                case 1: b[k] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                default: b.removeLast(Int.random(in: 0...min(3, b.count - 1), using: &rng))
                }
            }
            switch Self.agree(b) {
            case true?: accepted += 1
            case false?: Issue.record("PlainQuery accepted what Query.parse does not: \(b) (\(seedNote))")
            case nil: break
            }
        }
        #expect(accepted > 1000, "\(accepted) accepted (\(seedNote))")
    }
}

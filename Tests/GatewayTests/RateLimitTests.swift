import NIOCore
import Testing

@testable import Gateway

@Suite("Response rate limiting")
struct RateLimitTests {
    static func address(_ text: String) -> SocketAddress { try! SocketAddress(ipAddress: text, port: 5353) }

    /// The raw-sockaddr decision (the recvmmsg engine's) for the same client.
    static func rawDecision(_ rrl: ResponseRateLimiter, _ client: SocketAddress, now: UInt64) -> ResponseRateLimiter.Decision {
        switch client {
        case .v4(let a): return withUnsafeBytes(of: a.address) { rrl.decide(sockaddr: $0.baseAddress!, now: now) }
        case .v6(let a): return withUnsafeBytes(of: a.address) { rrl.decide(sockaddr: $0.baseAddress!, now: now) }
        default: return .send
        }
    }

    @Test(arguments: [false, true])
    func oneBucketPerNetworkWithSlip(raw: Bool) {
        let rrl = ResponseRateLimiter(configuration: .init(rate: 2, slip: 2))
        func decide(_ text: String, at seconds: Double) -> ResponseRateLimiter.Decision {
            let now = UInt64(seconds * 1e9) + 1_000_000_000
            return raw ? Self.rawDecision(rrl, Self.address(text), now: now) : rrl.decide(Self.address(text), now: now)
        }
        // Two per second for 192.0.2.0/24, whichever address in it asks, and as an IPv4-mapped client of a
        // dual-stack socket too.
        #expect(decide("192.0.2.7", at: 0) == .send)
        #expect(decide("::ffff:192.0.2.9", at: 0) == .send)
        #expect(decide("192.0.2.200", at: 0) == .drop)
        #expect(decide("::ffff:192.0.2.7", at: 0) == .slip)
        #expect(decide("192.0.2.7", at: 0) == .drop)
        // Another network has its own bucket; IPv6 is per /56.
        #expect(decide("198.51.100.1", at: 0) == .send)
        #expect(decide("2001:db8::1", at: 0) == .send)
        #expect(decide("2001:db8:0:ff::1", at: 0) == .send)
        #expect(decide("2001:db8:0:1::2", at: 0) == .drop)
        #expect(decide("2001:db8:0:100::1", at: 0) == .send)
        // Half a second refills one token.
        #expect(decide("192.0.2.7", at: 0.5) == .send)
        #expect(decide("192.0.2.7", at: 0.5) != .send)
        // Loopback is exempt by default, as IPv4, IPv6 and IPv4-mapped.
        for _ in 0..<10 {
            #expect(decide("127.0.0.1", at: 0) == .send)
            #expect(decide("::1", at: 0) == .send)
            #expect(decide("::ffff:127.0.0.1", at: 0) == .send)
        }
    }

    /// The end-to-end burst (OperationsTests) with the clock held still, for exact counts: 300 queries from one
    /// network at rate 20 and slip 2 are 20 sent, 140 slipped, 140 dropped; half a second on, 10 more tokens.
    @Test func aBurstAtOneInstantGetsExactlyTheBucket() {
        let rrl = ResponseRateLimiter(configuration: .init(rate: 20, slip: 2, exempt: []))
        let client = Self.address("127.0.0.1")
        let t0: UInt64 = 5_000_000_000
        var counts: [ResponseRateLimiter.Decision: Int] = [:]
        for _ in 0..<300 { counts[rrl.decide(client, now: t0), default: 0] += 1 }
        #expect(counts == [.send: 20, .slip: 140, .drop: 140])
        counts = [:]
        for _ in 0..<30 { counts[rrl.decide(client, now: t0 + 500_000_000), default: 0] += 1 }
        #expect(counts == [.send: 10, .slip: 10, .drop: 10])
    }

    @Test func slipZeroOnlyDrops() {
        let rrl = ResponseRateLimiter(configuration: .init(rate: 1, slip: 0))
        let client = Self.address("203.0.113.5")
        #expect(rrl.decide(client, now: 1) == .send)
        #expect((0..<6).allSatisfy { _ in rrl.decide(client, now: 1) == .drop })
    }

    @Test func applyGivesTheResponseItsStandInOrNothing() {
        // A response: header (QR, 1 question, 1 answer), question "a." A IN, one A record.
        let bytes: [UInt8] = [0x12, 0x34, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0x61, 0, 0, 1, 0, 1,
                              0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]
        let response = ByteBuffer(bytes: bytes)
        #expect(ResponseRateLimiter.apply(.send, to: response) == response)
        #expect(ResponseRateLimiter.apply(.drop, to: response) == nil)
        let slipped = ResponseRateLimiter.apply(.slip, to: response).map { Array($0.readableBytesView) }
        #expect(slipped == [0x12, 0x34, 0x86, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 0, 0, 1, 0, 1])
    }
}

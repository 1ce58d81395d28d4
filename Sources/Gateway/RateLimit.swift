import Catalog
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Response rate limiting (`--rrl-rate`), for UDP only: a TCP client has proven its address, a UDP source may be
/// spoofed, and then our answers would be aimed at a victim. Each client network (/24 for IPv4, /56 for IPv6)
/// gets a token bucket of `rate` responses per second, with a burst of one second's worth. Past it, responses are
/// dropped, except that every `slip`-th one is sent truncated instead (TC=1, no records), so a real client behind
/// the network can still retry over TCP.
///
/// Networks in `exempt` are never limited. The default is loopback: a local stub or sidecar can send at any rate
/// legitimately, and a loopback source cannot come from outside the host, so it cannot be spoofed.
public final class ResponseRateLimiter: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var rate: Int
        public var slip: Int
        public var exempt: [CIDR]
        public init(rate: Int, slip: Int = 2, exempt: [CIDR] = ResponseRateLimiter.loopback) {
            self.rate = rate
            self.slip = slip
            self.exempt = exempt
        }
    }

    public static let loopback: [CIDR] = [try! CIDR("127.0.0.0/8"), try! CIDR("::1/128")]

    public enum Decision: Sendable { case send, drop, slip }

    private struct Bucket {
        var network: (UInt64, UInt64) = (0, 0)
        var used = false
        var tokens: Double = 0
        var refilled: UInt64 = 0
        var limited: Int = 0
    }

    public let configuration: Configuration
    /// 16k buckets in 64 shards, each behind its own lock: workers deciding for different networks rarely meet.
    private static let shards = 64
    private static let slotsPerShard = 256
    private let buckets: [NIOLockedValueBox<[Bucket]>] = (0..<ResponseRateLimiter.shards).map { _ in
        NIOLockedValueBox([Bucket](repeating: Bucket(), count: ResponseRateLimiter.slotsPerShard))
    }
    private let drops = Counter(label: "signpost_rrl_responses_total", dimensions: [("action", "drop")])
    private let slips = Counter(label: "signpost_rrl_responses_total", dimensions: [("action", "slip")])

    public init(configuration: Configuration) { self.configuration = configuration }

    /// For a client given as a raw `sockaddr_in`/`sockaddr_in6` (the recvmmsg engine's). An IPv4-mapped IPv6
    /// client counts as IPv4: its /24, and the IPv4 exemptions.
    public func decide(sockaddr: UnsafeRawPointer, now: UInt64 = Uptime.nanoseconds) -> Decision {
        withClientAddress(sockaddr: sockaddr) { decide($0, now: now) } ?? .send
    }

    public func decide(_ client: SocketAddress?, now: UInt64 = Uptime.nanoseconds) -> Decision {
        withClientAddress(client) { decide($0, now: now) } ?? .send
    }

    /// `response` after `decision`: itself, its truncated stand-in, or nil (dropped).
    public static func apply(_ decision: Decision, to response: ByteBuffer) -> ByteBuffer? {
        switch decision {
        case .send: return response
        case .drop: return nil
        case .slip: return ByteBuffer(bytes: response.withUnsafeReadableBytes { slipped($0) })
        }
    }

    func decide(_ address: UnsafeRawBufferPointer, now: UInt64) -> Decision {
        if configuration.exempt.contains(where: { $0.contains(address) }) { return .send }
        // The network: /24 or /56, tagged with the family so the two never share a key.
        var network: (UInt64, UInt64) = (UInt64(address.count), 0)
        let keep = address.count == 4 ? 3 : 7
        for i in 0..<keep { network.1 = network.1 << 8 | UInt64(address[i]) }
        var h = Hasher()
        h.combine(network.0)
        h.combine(network.1)
        let hash = UInt(bitPattern: h.finalize())
        let shard = Int(hash % UInt(Self.shards)), slot = Int(hash / UInt(Self.shards) % UInt(Self.slotsPerShard))
        let rate = Double(configuration.rate)
        let decision: Decision = buckets[shard].withLockedValue { table in
            var b = table[slot]
            if !b.used || b.network != network { b = Bucket(network: network, used: true, tokens: rate, refilled: now, limited: 0) }
            b.tokens = min(rate, b.tokens + Double(now &- b.refilled) / 1e9 * rate)
            b.refilled = now
            defer { table[slot] = b }
            if b.tokens >= 1 {
                b.tokens -= 1
                return .send
            }
            b.limited += 1
            return configuration.slip > 0 && b.limited % configuration.slip == 0 ? .slip : .drop
        }
        switch decision {
        case .drop: drops.increment()
        case .slip: slips.increment()
        case .send: break
        }
        return decision
    }

    /// The truncated stand-in for `response`: its header and question, TC set, no records.
    public static func slipped(_ response: UnsafeRawBufferPointer) -> [UInt8] {
        guard response.count >= 12 else { return Array(response) }
        var end = 12
        if response[4] != 0 || response[5] != 0 {
            while end < response.count, response[end] != 0, response[end] & 0xC0 == 0 { end += Int(response[end]) + 1 }
            end = min(response.count, end + (end < response.count && response[end] & 0xC0 == 0xC0 ? 2 : 1) + 4)
        }
        var out = Array(response[0..<end])
        out[2] |= 0x02
        for i in 6..<12 { out[i] = 0 }
        if end == 12 { out[4] = 0; out[5] = 0 }
        return out
    }
}

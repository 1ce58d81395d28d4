import Catalog
import DNSWire
import NIOConcurrencyHelpers
import NIOCore

/// The forwarding cache: entries keyed exactly by (name, type, class, DO), so a hash collision can never
/// return another name's data; least-recently-used eviction at `capacity` entries.
///
/// - Positive answers live for the smallest TTL among their answer records, clamped to [min, max].
/// - Negative answers (NXDOMAIN, NODATA) live for min(SOA TTL, SOA minimum) (RFC 2308), clamped to max.
///   Negative answers without an SOA, SERVFAIL and truncated replies are not cached.
/// - Served TTLs count down. An expired entry is kept for `staleTTL` more, for serve-stale (RFC 8767).
final class ForwardCache: Sendable {
    struct Key: Hashable, Sendable {
        var name: DNSName  // compared case-insensitively
        var type: UInt16
        var qclass: UInt16
        var dnssecOK: Bool
    }

    struct Entry: Sendable {
        var rcode: UInt16
        var answers: [ResourceRecord]
        var authority: [ResourceRecord]
        var additional: [ResourceRecord]
        var storedAt: UInt64  // Uptime nanoseconds
        var ttl: UInt32
        /// The reply's records, encoded once for the fast path.
        var wire: Wire?
    }

    /// A cached reply's records as the general encoder writes them after the question, with where each TTL is,
    /// so a hit copies the bytes and counts the TTLs down in place.
    final class Wire: Sendable {
        let body: [UInt8]
        let counts: (an: UInt16, ns: UInt16, ar: UInt16)
        let rcode: UInt8
        let ttlOffsets: [Int]
        let ttls: [UInt32]
        /// The smallest TTL: at this age one would reach 0, and the general path takes over.
        let minTTL: UInt32

        /// Encodes `answer` after `question` exactly as `ResponseEncoder` does for an untruncated reply.
        init?(_ answer: Answer, question: Question) {
            let reply = ResponseEncoder.Reply(header: DNSHeader(id: 0), question: question, edns: nil, rcode: answer.rcode, udpSize: 0)
            let message = ResponseEncoder.encode(answer, reply: reply, limit: 65535, allocator: ByteBufferAllocator())
            guard let header = DNSHeader(from: message, at: message.readerIndex), !header.tc,
                  let (_, afterName) = try? DNSName.read(from: message, at: DNSHeader.size) else { return nil }
            let start = afterName + 4
            let all = Array(message.readableBytesView)
            // Walk the records for their TTL fields.
            var offsets: [Int] = [], ttls: [UInt32] = []
            var p = start
            for _ in 0..<(Int(header.anCount) + Int(header.nsCount) + Int(header.arCount)) {
                while p < all.count, all[p] != 0, all[p] & 0xC0 == 0 { p += Int(all[p]) + 1 }
                guard p < all.count else { return nil }
                p += all[p] == 0 ? 1 : 2
                guard p + 10 <= all.count else { return nil }
                offsets.append(p + 4 - start)
                ttls.append(UInt32(all[p + 4]) << 24 | UInt32(all[p + 5]) << 16 | UInt32(all[p + 6]) << 8 | UInt32(all[p + 7]))
                p += 10 + (Int(all[p + 8]) << 8 | Int(all[p + 9]))
            }
            guard p == all.count else { return nil }
            self.body = Array(all[start...])
            self.counts = (header.anCount, header.nsCount, header.arCount)
            self.rcode = header.rcode
            self.ttlOffsets = offsets
            self.ttls = ttls
            self.minTTL = ttls.min() ?? 0
        }
    }

    enum Lookup {
        case fresh(Answer)
        case stale(Answer)
        case miss
    }

    let capacity: Int
    let minTTL: UInt32
    let maxTTL: UInt32
    let staleTTL: UInt32
    /// Now, in `Uptime` nanoseconds: where ages come from when a caller does not pass `now` (tests set it).
    let clock: @Sendable () -> UInt64
    private let state: NIOLockedValueBox<LRU>

    init(capacity: Int, minTTL: UInt32, maxTTL: UInt32, staleTTL: UInt32, clock: @escaping @Sendable () -> UInt64 = { Uptime.nanoseconds }) {
        self.capacity = max(1, capacity)
        self.minTTL = minTTL
        self.maxTTL = max(minTTL, maxTTL)
        self.staleTTL = staleTTL
        self.clock = clock
        self.state = NIOLockedValueBox(LRU(capacity: max(1, capacity)))
    }

    /// How long `message` may be cached, or nil if it must not be.
    func ttl(for message: Message) -> UInt32? {
        guard !message.header.tc else { return nil }
        let rcode = message.rcode
        if rcode == RCode.noError, !message.answers.isEmpty {
            let ttl = message.answers.map(\.ttl).min()!
            return min(max(ttl, minTTL), maxTTL)
        }
        guard rcode == RCode.noError || rcode == RCode.nxDomain,
              let soa = message.authority.first(where: { $0.type == RRType.soa }), case .soa(let s) = soa.rdata else { return nil }
        return min(min(soa.ttl, s.minimum), maxTTL)
    }

    func store(_ message: Message, for key: Key, now: UInt64? = nil) {
        let now = now ?? clock()
        guard let ttl = ttl(for: message), ttl > 0 else { return }
        var entry = Entry(rcode: message.rcode, answers: message.answers, authority: message.authority,
                          additional: message.additional.filter { $0.type != RRType.opt }, storedAt: now, ttl: ttl)
        entry.wire = Wire(answer(entry, ttl: { Int64($0) }), question: Question(name: key.name, type: key.type, qclass: key.qclass))
        state.withLockedValue { $0.set(key, entry) }
    }

    /// A fresh entry's encoded reply and its age in seconds, for the fast path; nil when the general path must
    /// answer (a miss, stale, or a TTL that would reach 0).
    func wire(_ key: Key, now: UInt64? = nil) -> (Wire, UInt32)? {
        let now = now ?? clock()
        return state.withLockedValue { lru -> (Wire, UInt32)? in
            guard let (wire, storedAt, ttl) = lru.wire(key), let wire else { return nil }
            let age = UInt32(min(UInt64(UInt32.max), (now &- storedAt) / 1_000_000_000))
            guard age < ttl, age < wire.minTTL else { return nil }
            return (wire, age)
        }
    }

    func lookup(_ key: Key, now: UInt64? = nil) -> Lookup {
        let now = now ?? clock()
        guard let entry = state.withLockedValue({ $0.get(key) }) else { return .miss }
        let age = UInt32(min(UInt64(UInt32.max), (now - entry.storedAt) / 1_000_000_000))
        if age < entry.ttl {
            return .fresh(answer(entry, ttl: { max(0, Int64($0) - Int64(age)) }))
        }
        if UInt64(age) < UInt64(entry.ttl) + UInt64(staleTTL) {
            return .stale(answer(entry, ttl: { _ in 30 }))
        }
        state.withLockedValue { $0.remove(key) }
        return .miss
    }

    var count: Int { state.withLockedValue { $0.count } }

    private func answer(_ e: Entry, ttl: (UInt32) -> Int64) -> Answer {
        func adjust(_ records: [ResourceRecord]) -> [ResourceRecord] {
            records.map { var r = $0; r.ttl = UInt32(clamping: ttl(r.ttl)); return r }
        }
        return Answer(rcode: e.rcode, authoritative: false, answers: adjust(e.answers), authority: adjust(e.authority),
                      additional: adjust(e.additional))
    }
}

/// A fixed-capacity LRU map: a dictionary of slots and a doubly linked recency list over them.
struct LRU {
    private struct Slot {
        var key: ForwardCache.Key
        var value: ForwardCache.Entry
        var prev: Int
        var next: Int
    }

    private var index: [ForwardCache.Key: Int] = [:]
    private var slots: [Slot] = []
    private var free: [Int] = []
    private var head = -1  // most recent
    private var tail = -1  // least recent
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    var count: Int { index.count }

    mutating func get(_ key: ForwardCache.Key) -> ForwardCache.Entry? {
        guard let i = index[key] else { return nil }
        unlink(i)
        pushFront(i)
        return slots[i].value
    }

    /// What the fast path needs of an entry, without copying its record arrays; marks it most recently used.
    mutating func wire(_ key: ForwardCache.Key) -> (ForwardCache.Wire?, storedAt: UInt64, ttl: UInt32)? {
        guard let i = index[key] else { return nil }
        unlink(i)
        pushFront(i)
        return (slots[i].value.wire, slots[i].value.storedAt, slots[i].value.ttl)
    }

    mutating func set(_ key: ForwardCache.Key, _ value: ForwardCache.Entry) {
        if let i = index[key] {
            slots[i].value = value
            unlink(i)
            pushFront(i)
            return
        }
        if index.count >= capacity, tail >= 0 { remove(slots[tail].key) }
        let slot = Slot(key: key, value: value, prev: -1, next: -1)
        let i: Int
        if let f = free.popLast() { slots[f] = slot; i = f } else { slots.append(slot); i = slots.count - 1 }
        index[key] = i
        pushFront(i)
    }

    mutating func remove(_ key: ForwardCache.Key) {
        guard let i = index.removeValue(forKey: key) else { return }
        unlink(i)
        free.append(i)
    }

    private mutating func unlink(_ i: Int) {
        let (p, n) = (slots[i].prev, slots[i].next)
        if p >= 0 { slots[p].next = n } else { head = n }
        if n >= 0 { slots[n].prev = p } else { tail = p }
        slots[i].prev = -1
        slots[i].next = -1
    }

    private mutating func pushFront(_ i: Int) {
        slots[i].next = head
        slots[i].prev = -1
        if head >= 0 { slots[head].prev = i }
        head = i
        if tail < 0 { tail = i }
    }
}

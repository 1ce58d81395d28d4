import Catalog
import DNSWire
import Logging
import Metrics
import NIOCore

/// What the front ends report about every query: Prometheus counters by query type, transport and response
/// code, a duration histogram, and, only when asked for, one log line per query (`--query-log`).
///
/// Recording is an index computation and three relaxed atomic adds (the request counter, the duration's bucket,
/// the duration's sum) into the recording thread's own row of a `ShardedCounters`: no lock, and no cache line
/// shared between workers. (swift-prometheus's histogram took a lock per record, one lock for every worker.) The
/// rows are summed when `/metrics` is scraped (`exposition()`), in Prometheus's text format. The table is
/// process-wide, so the counts carry across reloads, which make new observers.
public final class QueryObserver: Sendable {
    static let types: [(UInt16, String)] = [(RRType.a, "A"), (RRType.aaaa, "AAAA"), (RRType.srv, "SRV"), (RRType.any, "ANY"),
                                            (RRType.txt, "TXT"), (RRType.ptr, "PTR"), (RRType.mx, "MX"), (RRType.ns, "NS"),
                                            (RRType.soa, "SOA"), (RRType.cname, "CNAME")]
    public static let durationLabel = "signpost_dns_request_duration_seconds"
    public static let requestsLabel = "signpost_dns_requests_total"
    /// The duration histogram's buckets: answers take microseconds; forwarded ones, milliseconds.
    public static let durationBuckets: [Duration] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 500_000,
                                                     2_000_000].map { Duration.microseconds($0) }
    static let bucketNanoseconds: [UInt64] = durationBuckets.map { UInt64($0.components.seconds) * 1_000_000_000 + UInt64($0.components.attoseconds / 1_000_000_000) }
    static let rcodes = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]
    static let transports = ["udp", "tcp"]
    /// Rows: the types above, then "other"; columns: the rcodes above, then BADVERS, "other" and "dropped".
    static let typeCount = 11  // types.count + 1 (literals, so the hot path reads no lazily made global)
    static let rcodeCount = 9  // rcodes.count + 3
    static let rcodeNames = rcodes + ["BADVERS", "other", "dropped"]
    /// The table: the request counters, then per transport the histogram's buckets, its +Inf bucket and its sum (ns).
    static let requestCount = 198  // transports.count * typeCount * rcodeCount
    static let histogramWidth = 16  // durationBuckets.count + 2
    static let counters = ShardedCounters(width: requestCount + transports.count * histogramWidth)

    private let queryLog: Logger?

    /// `queryLog`: where per-query lines go; nil for none (the default: no per-query logging at all).
    public init(queryLog: Logger? = nil) {
        self.queryLog = queryLog
    }

    /// Records one query. `response` is nil when the query was dropped; `started` is `Uptime.nanoseconds` at receipt,
    /// `now` at the answer (the recvmmsg engine reads the clock once per batch for `started`).
    @inline(__always)
    public func record(query: UnsafeRawBufferPointer, response: UnsafeRawBufferPointer?, transport: QueryHandler.Transport,
                       started: UInt64, now: UInt64 = Uptime.nanoseconds, client: @autoclosure () -> String) {
        let elapsed = now &- started
        let (typeIndex, typeNumber) = Self.questionType(query)
        let rcode = response.map(Self.rcode) ?? Self.rcodeCount - 1
        let t = transport == .udp ? 0 : 1
        Self.counters.add((t * Self.typeCount + typeIndex) * Self.rcodeCount + rcode)
        let histogram = Self.requestCount + t * Self.histogramWidth
        Self.counters.add(histogram + Self.bucket(elapsed))
        Self.counters.add(histogram + Self.histogramWidth - 1, elapsed)
        if let queryLog {
            let name = (try? DNSName.read(from: ByteBuffer(bytes: query), at: DNSHeader.size).0.description) ?? "-"
            let rcodeName = Self.rcodeNames[rcode]
            queryLog.info("query", metadata: [
                "client": "\(client())", "name": "\(name)", "type": "\(Self.typeName(typeIndex, typeNumber))", "protocol": "\(transport)", "rcode": "\(rcodeName)",
                "size": "\(response?.count ?? 0)", "duration_us": "\(elapsed / 1000)",
            ])
        }
    }

    /// The histogram bucket of a duration: the first whose bound holds it, or the +Inf one. Compares with
    /// constants (the bounds of `durationBuckets`, which a test holds equal), reading no shared array.
    @inline(__always)
    static func bucket(_ ns: UInt64) -> Int {
        if ns <= 250_000 {
            if ns <= 25_000 { return ns <= 10_000 ? 0 : 1 }
            return ns <= 50_000 ? 2 : ns <= 100_000 ? 3 : 4
        }
        if ns <= 5_000_000 { return ns <= 500_000 ? 5 : ns <= 1_000_000 ? 6 : ns <= 2_500_000 ? 7 : 8 }
        if ns <= 100_000_000 { return ns <= 10_000_000 ? 9 : ns <= 25_000_000 ? 10 : 11 }
        return ns <= 500_000_000 ? 12 : ns <= 2_000_000_000 ? 13 : 14
    }

    /// The counters and the histogram in Prometheus's text format, summed over the recording threads' rows.
    public static func exposition() -> String {
        var out = "# TYPE \(requestsLabel) counter\n"
        for (t, transport) in transports.enumerated() {
            for type in 0..<typeCount {
                let typeName = type < types.count ? types[type].1 : "other"
                for rcode in 0..<rcodeCount {
                    let value = counters.total((t * typeCount + type) * rcodeCount + rcode)
                    out += "\(requestsLabel){qtype=\"\(typeName)\",protocol=\"\(transport)\",rcode=\"\(rcodeNames[rcode])\"} \(value)\n"
                }
            }
        }
        out += "# TYPE \(durationLabel) histogram\n"
        for (t, transport) in transports.enumerated() {
            let base = requestCount + t * histogramWidth
            var cumulative: UInt64 = 0
            for (i, bound) in bucketNanoseconds.enumerated() {
                cumulative += counters.total(base + i)
                out += "\(durationLabel)_bucket{protocol=\"\(transport)\",le=\"\(seconds(bound))\"} \(cumulative)\n"
            }
            cumulative += counters.total(base + bucketNanoseconds.count)
            out += "\(durationLabel)_bucket{protocol=\"\(transport)\",le=\"+Inf\"} \(cumulative)\n"
            out += "\(durationLabel)_sum{protocol=\"\(transport)\"} \(seconds(counters.total(base + histogramWidth - 1)))\n"
            out += "\(durationLabel)_count{protocol=\"\(transport)\"} \(cumulative)\n"
        }
        return out
    }

    /// Nanoseconds as decimal seconds, with no trailing zeros (`0.00001`, `2.0`… as `2.0`).
    static func seconds(_ nanoseconds: UInt64) -> String {
        var fraction = String(nanoseconds % 1_000_000_000)
        fraction = String(repeating: "0", count: 9 - fraction.count) + fraction
        while fraction.count > 1, fraction.last == "0" { fraction.removeLast() }
        return "\(nanoseconds / 1_000_000_000).\(fraction)"
    }

    /// The index of the question's type among `types` (`types.count` for any other), and the type number (nil
    /// when there is no readable question), read in place.
    @inline(__always)
    static func questionType(_ p: UnsafeRawBufferPointer) -> (Int, UInt16?) {
        let other = 10  // types.count
        guard p.count > DNSHeader.size, p[4] != 0 || p[5] != 0 else { return (other, nil) }
        var i = DNSHeader.size
        while i < p.count, p[i] != 0 {
            guard p[i] <= 63 else { return (other, nil) }
            i += Int(p[i]) + 1
        }
        guard i + 2 < p.count else { return (other, nil) }
        let type = UInt16(p[i + 1]) << 8 | UInt16(p[i + 2])
        switch type {
        case RRType.a: return (0, type)
        case RRType.aaaa: return (1, type)
        case RRType.srv: return (2, type)
        case RRType.any: return (3, type)
        case RRType.txt: return (4, type)
        case RRType.ptr: return (5, type)
        case RRType.mx: return (6, type)
        case RRType.ns: return (7, type)
        case RRType.soa: return (8, type)
        case RRType.cname: return (9, type)
        default: return (other, type)
        }
    }

    /// A type's name for the query log: its row's, or its number.
    static func typeName(_ index: Int, _ type: UInt16?) -> String {
        index < types.count ? types[index].1 : type.map { "\($0)" } ?? "other"
    }

    /// The response code, with the extended bits of our OPT record: BADVERS. The OPT is always the last record, and
    /// the only replies with extended bits (rejected queries) carry it bare, so it is the last 11 bytes; a reply
    /// whose OPT holds an option (a Client Subnet echo) has rcode bits below 16 only, which the header gives.
    static func rcode(_ r: UnsafeRawBufferPointer) -> Int {
        guard r.count >= DNSHeader.size else { return 7 }
        var code = Int(r[3] & 0x0F)
        if r.count >= DNSHeader.size + 11, r[10] != 0 || r[11] != 0, r[r.count - 11] == 0, r[r.count - 10] == 0, r[r.count - 9] == 41 {
            code |= Int(r[r.count - 6]) << 4
        }
        if code < 6 { return code }  // rcodes.count
        return code == 16 ? 6 : 7
    }
}

extension QueryHandler {
    /// Reports a query answered through a `ByteBuffer` (the NIO front ends, and forwarded answers).
    func observe(_ query: ByteBuffer, _ response: ByteBuffer?, _ transport: Transport, _ started: UInt64, _ client: SocketAddress?) {
        guard let observer else { return }
        query.withUnsafeReadableBytes { q in
            if let response {
                response.withUnsafeReadableBytes { observer.record(query: q, response: $0, transport: transport, started: started,
                                                                   client: client.map { "\($0)" } ?? "-") }
            } else {
                observer.record(query: q, response: nil, transport: transport, started: started, client: client.map { "\($0)" } ?? "-")
            }
        }
    }
}

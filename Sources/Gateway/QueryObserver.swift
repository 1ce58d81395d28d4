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
    static let typeCount = types.count + 1
    static let rcodeCount = rcodes.count + 3
    static let rcodeNames = rcodes + ["BADVERS", "other", "dropped"]
    /// The table: the request counters, then per transport the histogram's buckets, its +Inf bucket and its sum (ns).
    static let requestCount = transports.count * typeCount * rcodeCount
    static let histogramWidth = durationBuckets.count + 2
    static let counters = ShardedCounters(width: requestCount + transports.count * histogramWidth)

    private let queryLog: Logger?

    /// `queryLog`: where per-query lines go; nil for none (the default: no per-query logging at all).
    public init(queryLog: Logger? = nil) {
        self.queryLog = queryLog
    }

    /// Records one query. `response` is nil when the query was dropped; `started` is `Uptime.nanoseconds` at receipt.
    public func record(query: UnsafeRawBufferPointer, response: UnsafeRawBufferPointer?, transport: QueryHandler.Transport,
                       started: UInt64, client: @autoclosure () -> String) {
        let elapsed = Uptime.nanoseconds &- started
        let (typeIndex, type) = Self.questionType(query)
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
                "client": "\(client())", "name": "\(name)", "type": "\(type)", "protocol": "\(transport)", "rcode": "\(rcodeName)",
                "size": "\(response?.count ?? 0)", "duration_us": "\(elapsed / 1000)",
            ])
        }
    }

    /// The histogram bucket of a duration: the first whose bound holds it, or the +Inf one.
    @inline(__always)
    static func bucket(_ nanoseconds: UInt64) -> Int {
        var i = 0
        while i < bucketNanoseconds.count, nanoseconds > bucketNanoseconds[i] { i += 1 }
        return i
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

    /// The index and name of the question's type, read in place.
    static func questionType(_ p: UnsafeRawBufferPointer) -> (Int, String) {
        let other = (types.count, "other")
        guard p.count > DNSHeader.size, p[4] != 0 || p[5] != 0 else { return other }
        var i = DNSHeader.size
        while i < p.count, p[i] != 0 {
            guard p[i] <= 63 else { return other }
            i += Int(p[i]) + 1
        }
        guard i + 2 < p.count else { return other }
        let type = UInt16(p[i + 1]) << 8 | UInt16(p[i + 2])
        for (k, t) in types.enumerated() where t.0 == type { return (k, t.1) }
        return (types.count, "\(type)")
    }

    /// The response code, with the extended bits of our OPT record (always last, with no options): BADVERS.
    static func rcode(_ r: UnsafeRawBufferPointer) -> Int {
        guard r.count >= DNSHeader.size else { return rcodes.count + 1 }
        var code = Int(r[3] & 0x0F)
        if r.count >= DNSHeader.size + 11, r[10] != 0 || r[11] != 0, r[r.count - 11] == 0, r[r.count - 10] == 0, r[r.count - 9] == 41 {
            code |= Int(r[r.count - 6]) << 4
        }
        if code < rcodes.count { return code }
        return code == 16 ? rcodes.count : rcodes.count + 1
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

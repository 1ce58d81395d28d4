import Catalog
import DNSWire
import Logging
import Metrics
import NIOCore

/// What the front ends report about every query: Prometheus counters by query type, transport and response
/// code, a duration histogram, and, only when asked for, one log line per query (`--query-log`).
/// The counters are created once, up front, so recording is an index and an atomic add.
public final class QueryObserver: Sendable {
    static let types: [(UInt16, String)] = [(RRType.a, "A"), (RRType.aaaa, "AAAA"), (RRType.srv, "SRV"), (RRType.any, "ANY"),
                                            (RRType.txt, "TXT"), (RRType.ptr, "PTR"), (RRType.mx, "MX"), (RRType.ns, "NS"),
                                            (RRType.soa, "SOA"), (RRType.cname, "CNAME")]
    public static let durationLabel = "signpost_dns_request_duration_seconds"
    /// The duration histogram's buckets: answers take microseconds; forwarded ones, milliseconds.
    public static let durationBuckets: [Duration] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 500_000,
                                                     2_000_000].map { Duration.microseconds($0) }
    static let rcodes = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]
    /// Rows: the types above, then "other"; columns: the rcodes above, then BADVERS, "other" and "dropped".
    static let typeCount = types.count + 1
    static let rcodeCount = rcodes.count + 3

    private let requests: [Counter]
    private let durations: [Timer]
    private let queryLog: Logger?

    /// `queryLog`: where per-query lines go; nil for none (the default: no per-query logging at all).
    public init(queryLog: Logger? = nil) {
        var requests: [Counter] = []
        for transport in ["udp", "tcp"] {
            for type in Self.types.map(\.1) + ["other"] {
                for rcode in Self.rcodes + ["BADVERS", "other", "dropped"] {
                    requests.append(Counter(label: "signpost_dns_requests_total",
                                            dimensions: [("qtype", type), ("protocol", transport), ("rcode", rcode)]))
                }
            }
        }
        self.requests = requests
        self.durations = ["udp", "tcp"].map { Timer(label: Self.durationLabel, dimensions: [("protocol", $0)]) }
        self.queryLog = queryLog
    }

    /// Records one query. `response` is nil when the query was dropped; `started` is `Uptime.nanoseconds` at receipt.
    public func record(query: UnsafeRawBufferPointer, response: UnsafeRawBufferPointer?, transport: QueryHandler.Transport,
                       started: UInt64, client: @autoclosure () -> String) {
        let elapsed = Uptime.nanoseconds &- started
        let (typeIndex, type) = Self.questionType(query)
        let rcode = response.map(Self.rcode) ?? Self.rcodeCount - 1
        let t = transport == .udp ? 0 : 1
        requests[(t * Self.typeCount + typeIndex) * Self.rcodeCount + rcode].increment()
        durations[t].recordNanoseconds(Int64(truncatingIfNeeded: elapsed))
        if let queryLog {
            let name = (try? DNSName.read(from: ByteBuffer(bytes: query), at: DNSHeader.size).0.description) ?? "-"
            let rcodeName = rcode < Self.rcodes.count ? Self.rcodes[rcode] : ["BADVERS", "other", "dropped"][rcode - Self.rcodes.count]
            queryLog.info("query", metadata: [
                "client": "\(client())", "name": "\(name)", "type": "\(type)", "protocol": "\(transport)", "rcode": "\(rcodeName)",
                "size": "\(response?.count ?? 0)", "duration_us": "\(elapsed / 1000)",
            ])
        }
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

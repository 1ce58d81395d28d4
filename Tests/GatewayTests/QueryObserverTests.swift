import Catalog
import DNSWire
import Foundation
@testable import Gateway
import Testing

/// The query counters and duration histogram, recorded into per-thread rows and summed for `/metrics`.
@Suite("Query observer", .serialized)
struct QueryObserverTests {
    static func query(_ type: UInt16) -> [UInt8] {
        var h = DNSHeader(id: 7)
        h.rd = true
        return Array(Message(header: h, questions: [Question(name: try! DNSName("web.service.consul"), type: type)]).encode().readableBytesView)
    }

    /// The value of one line of the exposition (0 when absent).
    static func value(_ text: String, _ series: String) -> Double {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1)) ?? -1
        }
        return 0
    }

    /// Four threads recording at once lose nothing: the sums over the rows are the counts, the buckets are
    /// cumulative, and the sum of durations is exact.
    @Test func concurrentRecordsAreAllCounted() async {
        let before = QueryObserver.exposition()
        let observer = QueryObserver()
        let a = Self.query(RRType.a), srv = Self.query(RRType.srv)
        // A "response" with rcode NXDOMAIN: the query's bytes, as the observer reads only the header.
        let nx = srv.enumerated().map { $0.offset == 3 ? UInt8(3) : $0.element }
        let perThread = 20_000
        await withTaskGroup(of: Void.self) { group in
            for k in 0..<4 {
                group.addTask {
                    // Durations 5 µs (first bucket) and 30 µs (the 50 µs bucket), by the injected start time.
                    let now = Uptime.nanoseconds
                    for i in 0..<perThread {
                        let query = k % 2 == 0 ? a : srv
                        let response = i % 10 == 0 ? nx : query
                        query.withUnsafeBytes { q in
                            response.withUnsafeBytes { r in
                                observer.record(query: q, response: r, transport: .udp, started: now &- (i % 2 == 0 ? 5_000 : 30_000), client: "-")
                            }
                        }
                    }
                }
            }
        }
        let after = QueryObserver.exposition()
        func delta(_ series: String) -> Double { Self.value(after, series) - Self.value(before, series) }
        #expect(delta(#"signpost_dns_requests_total{qtype="A",protocol="udp",rcode="NOERROR"}"#) == 36_000)
        #expect(delta(#"signpost_dns_requests_total{qtype="A",protocol="udp",rcode="NXDOMAIN"}"#) == 4_000)
        #expect(delta(#"signpost_dns_requests_total{qtype="SRV",protocol="udp",rcode="NXDOMAIN"}"#) == 4_000)
        #expect(delta(#"signpost_dns_request_duration_seconds_count{protocol="udp"}"#) == 80_000)
        // Recording takes time of its own, so a duration lands at or above the one injected.
        #expect(delta(#"signpost_dns_request_duration_seconds_bucket{protocol="udp",le="0.00001"}"#) <= 40_000)
        #expect(delta(#"signpost_dns_request_duration_seconds_bucket{protocol="udp",le="+Inf"}"#) == 80_000)
        let sum = delta(#"signpost_dns_request_duration_seconds_sum{protocol="udp"}"#)
        #expect(sum >= 40_000 * 5e-6 + 40_000 * 30e-6, "sum \(sum)")
        #expect(after.contains("# TYPE signpost_dns_request_duration_seconds histogram"))
        // Cumulative buckets never fall.
        var last = -1.0
        for bound in ["0.00001", "0.000025", "0.00005", "0.0001", "2.0", "+Inf"] {
            let v = Self.value(after, #"signpost_dns_request_duration_seconds_bucket{protocol="udp",le="\#(bound)"}"#)
            #expect(v >= last, "bucket \(bound)")
            last = v
        }
    }

    @Test func secondsAreWrittenAsPrometheusReadsThem() {
        #expect(QueryObserver.seconds(10_000) == "0.00001")
        #expect(QueryObserver.seconds(2_000_000_000) == "2.0")
        #expect(QueryObserver.seconds(1_500_000_123) == "1.500000123")
        #expect(QueryObserver.seconds(0) == "0.0")
        #expect(QueryObserver.bucket(10_000) == 0 && QueryObserver.bucket(10_001) == 1 && QueryObserver.bucket(3_000_000_000) == 14)
        // The hot path's constants are the declared bounds and sizes.
        for (i, bound) in QueryObserver.bucketNanoseconds.enumerated() {
            #expect(QueryObserver.bucket(bound) == i && QueryObserver.bucket(bound + 1) == i + 1, "bucket \(i)")
        }
        #expect(QueryObserver.typeCount == QueryObserver.types.count + 1 && QueryObserver.rcodeCount == QueryObserver.rcodes.count + 3)
        #expect(QueryObserver.requestCount == QueryObserver.transports.count * QueryObserver.typeCount * QueryObserver.rcodeCount)
        #expect(QueryObserver.histogramWidth == QueryObserver.durationBuckets.count + 2)
        for (k, t) in QueryObserver.types.enumerated() {
            #expect(QueryObserverTests.query(t.0).withUnsafeBytes { QueryObserver.questionType($0).0 } == k)
        }
        #expect(QueryObserverTests.query(99).withUnsafeBytes { QueryObserver.questionType($0) } == (10, 99))
    }
}

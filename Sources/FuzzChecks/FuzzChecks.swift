import Catalog
import DNSWire
import Gateway
import Logging
import NIOCore

/// The invariants the fuzz targets (`fuzz/`, `make fuzz`) check on arbitrary bytes, shared with the test that
/// replays the fuzz corpus and every crash reproducer in CI. Each check returns what went wrong; empty is good.
public enum FuzzChecks {
    /// The parsers:
    /// - nothing crashes;
    /// - `PlainQuery` never accepts what `Query.parse` does not, and agrees with it on what it accepts;
    /// - a message that decodes re-encodes to bytes that decode to the same records.
    public static func parser(_ bytes: UnsafeRawBufferPointer) -> [String] {
        var problems: [String] = []
        let buffer = ByteBuffer(bytes: bytes)
        let parsed = Query.parse(buffer)
        if let plain = PlainQuery.parse(bytes) {
            if case .query(let q) = parsed {
                if q.question.name.wire != Array(bytes[DNSHeader.size..<plain.nameEnd]) || q.question.type != plain.type
                    || q.question.qclass != plain.qclass || q.edns != plain.edns?.edns || q.header.id != plain.id {
                    problems.append("PlainQuery and Query.parse read different queries")
                }
            } else {
                problems.append("PlainQuery accepted what Query.parse classifies as \(parsed)")
            }
        }
        if let message = try? Message(from: buffer) {
            let again = message.encode()
            if let decoded = try? Message(from: again) {
                if decoded.questions != message.questions || decoded.answers != message.answers
                    || decoded.authority != message.authority || decoded.additional != message.additional {
                    problems.append("re-encoding changed the records")
                }
            } else {
                problems.append("our own encoding of a decoded message does not decode")
            }
        }
        return problems
    }

    /// Two handlers over equal snapshots, one with the fast paths in front and one with the general path alone,
    /// so their rotation counters move together.
    static let handlers: (fast: QueryHandler, general: QueryHandler) = {
        func make() -> QueryHandler {
            let store = SnapshotStore(catalog())
            return QueryHandler(resolver: Resolver(configuration: ResolverConfiguration()), store: store, logger: Logger(label: "fuzz"))
        }
        return (make(), make())
    }()

    /// Services with plain, duplicate, IPv6, hostname, tagged and unhealthy instances, and one too big for 512 bytes.
    static func catalog() -> CatalogSnapshot {
        var json: [String] = []
        func add(_ node: String, _ address: String, _ service: String, serviceAddress: String? = nil, port: Int = 80,
                 tags: [String] = [], status: String = "passing") {
            let sa = serviceAddress.map { #", "Address": "\#($0)""# } ?? ""
            json.append(#"{"Node": "\#(node)", "Address": "\#(address)", "Service": {"ID": "\#(service)-\#(node)", "Service": "\#(service)", "#
                + #""Port": \#(port), "Tags": [\#(tags.map { "\"\($0)\"" }.joined(separator: ","))]\#(sa)}, "#
                + #""Checks": [{"CheckID": "c-\#(node)", "Status": "\#(status)", "ServiceID": "\#(service)-\#(node)"}]}"#)
        }
        add("web-1", "192.0.2.11", "web", port: 8080, tags: ["v2"])
        add("web-2", "192.0.2.12", "web", port: 8080)
        add("web-3", "192.0.2.13", "web", serviceAddress: "198.51.100.13", port: 9090, status: "warning")
        add("web-4", "192.0.2.14", "web", status: "critical")
        add("dup-1", "192.0.2.71", "dup", serviceAddress: "198.51.100.7", port: 1)
        add("dup-2", "192.0.2.72", "dup", serviceAddress: "198.51.100.7", port: 2)
        add("api-1", "2001:db8::21", "api", port: 50051)
        add("db-1", "192.0.2.31", "db", serviceAddress: "db.example.internal", port: 5432)
        for i in 1...40 { add("big-\(i)", "192.0.2.\(100 + i)", "big", port: 7000 + i) }
        let registrations = json.flatMap {
            (try? RegistrationDecoder.decode(bytes: Array($0.utf8), path: "fuzz", defaultDatacenter: "dc1")) ?? []
        }
        return CatalogSnapshot.build(registrations: registrations, zones: [], localDatacenter: "dc1", generation: 1)
    }

    /// The whole query path, bytes in and bytes out, over UDP and TCP:
    /// - the fast paths answer exactly as the general path does;
    /// - a response (QR=1) is never answered; every answer parses, carries the query's ID, and fits the
    ///   client's UDP limit (512 bytes without EDNS, at most 1232 with it).
    public static func queryPath(_ bytes: UnsafeRawBufferPointer) -> [String] {
        var problems: [String] = []
        let buffer = ByteBuffer(bytes: bytes)
        for transport in [QueryHandler.Transport.udp, .tcp] {
            let fast = handlers.fast.respond(to: buffer, transport: transport, allocator: ByteBufferAllocator())
            let general = handlers.general.respondWithoutFastPath(to: buffer, transport: transport, allocator: ByteBufferAllocator())
            if fast != general { problems.append("fast and general paths differ (\(transport))") }
            guard let response = general else { continue }
            if bytes.count >= 3, bytes[2] & 0x80 != 0 { problems.append("answered a response") }
            guard let message = try? Message(from: response) else {
                problems.append("our answer does not parse (\(transport))")
                continue
            }
            if bytes.count >= 2, message.header.id != UInt16(bytes[0]) << 8 | UInt16(bytes[1]) { problems.append("wrong ID") }
            if transport == .udp {
                var limit = 512
                if case .query(let q) = Query.parse(buffer), let edns = q.edns { limit = min(max(Int(edns.udpSize), 512), 1232) }
                if response.readableBytes > limit { problems.append("UDP answer of \(response.readableBytes) bytes over the limit \(limit)") }
            }
        }
        return problems
    }
}

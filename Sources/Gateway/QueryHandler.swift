import Catalog
import DNSWire
import Logging
import NIOCore

/// Bytes in, bytes out: parse, resolve against the current snapshot, encode, truncate.
/// Shared by the UDP and TCP front ends and by the tests.
public struct QueryHandler: Sendable {
    public enum Transport: Sendable { case udp, tcp }

    public let resolver: Resolver
    public let store: SnapshotStore
    public let logger: Logger
    /// Past this much staleness (a registry out of contact), names in the domain get SERVFAIL.
    public let maxStale: Duration?

    public init(resolver: Resolver, store: SnapshotStore, logger: Logger, maxStale: Duration? = nil) {
        self.resolver = resolver
        self.store = store
        self.logger = logger
        self.maxStale = maxStale
    }

    /// True when the data is older than `--max-stale` allows.
    func tooStale(_ question: Question) -> Bool {
        guard let maxStale, let age = store.staleness(), age > maxStale else { return false }
        return question.name.isSubdomain(of: resolver.configuration.domain)
    }

    /// The response for `packet`, or nil when it must be dropped.
    public func respond(to packet: ByteBuffer, transport: Transport, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let config = resolver.configuration
        switch Query.parse(packet) {
        case .drop(let reason):
            logger.debug("dropped packet", metadata: ["packet.reason": "\(reason)"])
            return nil
        case .reject(let header, let question, let edns, let rcode, let reason):
            if let reason { logger.debug("malformed query", metadata: ["packet.reason": "\(reason)"]) }
            var h = DNSHeader(id: header.id)
            h.qr = true
            h.opcode = header.opcode
            h.rd = header.rd
            h.ra = config.forwarding
            let reply = ResponseEncoder.Reply(header: h, question: question, edns: edns, rcode: rcode,
                                              udpSize: UInt16(config.maxUDPSize))
            return ResponseEncoder.encode(Answer(rcode: rcode, authoritative: false), reply: reply,
                                          limit: limit(edns, transport), allocator: allocator)
        case .query(let query):
            let answer = tooStale(query.question)
                ? Answer(rcode: RCode.servFail, authoritative: false)
                : resolver.resolve(query.question, in: store.snapshot)
            var h = DNSHeader(id: query.header.id)
            h.qr = true
            h.aa = answer.authoritative
            h.rd = query.header.rd
            h.cd = query.header.cd
            h.ra = config.forwarding
            let reply = ResponseEncoder.Reply(header: h, question: query.question, edns: query.edns, rcode: answer.rcode,
                                              udpSize: UInt16(config.maxUDPSize))
            return ResponseEncoder.encode(answer, reply: reply, limit: limit(query.edns, transport), allocator: allocator)
        }
    }

    /// 512 bytes without EDNS (RFC 1035); with EDNS the client's size, at least 512 and at most
    /// our cap (RFC 6891 §6.2.5); 65535 over TCP.
    func limit(_ edns: EDNS?, _ transport: Transport) -> Int {
        if transport == .tcp { return 65535 }
        guard let edns else { return 512 }
        return min(max(Int(edns.udpSize), 512), resolver.configuration.maxUDPSize)
    }
}

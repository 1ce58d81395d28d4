import NIOCore

/// EDNS(0) as seen in a query's OPT record (RFC 6891).
public struct EDNS: Hashable, Sendable {
    public var udpSize: UInt16
    public var version: UInt8
    public var dnssecOK: Bool
    /// The query's EDNS Client Subnet option (RFC 7871), echoed in the reply with the scope the answer covers.
    public var clientSubnet: ClientSubnet?

    public init(udpSize: UInt16, version: UInt8, dnssecOK: Bool, clientSubnet: ClientSubnet? = nil) {
        self.udpSize = udpSize
        self.version = version
        self.dnssecOK = dnssecOK
        self.clientSubnet = clientSubnet
    }
}

/// EDNS Client Subnet (RFC 7871, option code 8): the network a query was sent on behalf of.
public struct ClientSubnet: Hashable, Sendable {
    public static let code: UInt16 = 8
    /// 1: IPv4, 2: IPv6.
    public var family: UInt16
    public var sourcePrefix: UInt8
    /// How far the answer holds for other addresses: 0 (every address) unless the answer depended on this one.
    public var scopePrefix: UInt8
    /// The address, as sent: ⌈source/8⌉ bytes.
    public var address: [UInt8]

    public init(family: UInt16, sourcePrefix: UInt8, scopePrefix: UInt8, address: [UInt8]) {
        (self.family, self.sourcePrefix, self.scopePrefix, self.address) = (family, sourcePrefix, scopePrefix, address)
    }

    /// The option's data, checked as RFC 7871 §6 and §7.2.1 ask: a known family, a source prefix within it, exactly
    /// ⌈source/8⌉ address bytes, and no bit set past the source prefix. Anything else is a FORMERR.
    public init(option data: [UInt8]) throws(WireError) {
        guard data.count >= 4 else { throw WireError(.truncated, "OPT.ECS") }
        family = UInt16(data[0]) << 8 | UInt16(data[1])
        // A query's scope must be 0 (§6); the reply's is the server's to set, so it starts at 0 whatever was sent.
        (sourcePrefix, scopePrefix) = (data[2], 0)
        let width = family == 1 ? 4 : family == 2 ? 16 : 0
        guard width > 0 else { throw WireError(.badValue, "OPT.ECS.family") }
        guard Int(sourcePrefix) <= width * 8 else { throw WireError(.badValue, "OPT.ECS.source") }
        address = Array(data[4...])
        guard address.count == (Int(sourcePrefix) + 7) / 8 else { throw WireError(.badValue, "OPT.ECS.address") }
        if sourcePrefix % 8 != 0, let last = address.last, last & (0xFF >> (sourcePrefix % 8)) != 0 {
            throw WireError(.badValue, "OPT.ECS.address")
        }
    }

    /// The address at its full width (4 or 16 bytes), zero past the sent bytes.
    public var fullAddress: [UInt8] { address + [UInt8](repeating: 0, count: (family == 1 ? 4 : 16) - address.count) }

    /// The option as written in a reply's OPT record: code, length, then the data with `scopePrefix`.
    public var wire: [UInt8] {
        let length = 4 + address.count
        return [0, UInt8(Self.code), UInt8(length >> 8), UInt8(length & 0xFF), UInt8(family >> 8), UInt8(family & 0xFF),
                sourcePrefix, scopePrefix] + address
    }
}

/// An incoming query, parsed just enough to answer it.
public struct Query: Sendable {
    public var header: DNSHeader
    public var question: Question
    public var edns: EDNS?
}

/// What to do with an incoming datagram or TCP frame.
public enum QueryParse: Sendable {
    case query(Query)
    /// The header was readable; answer with this rcode (FORMERR, NOTIMP, BADVERS).
    /// `question` is echoed when it could be read; `edns` shapes the reply's OPT.
    case reject(header: DNSHeader, question: Question?, edns: EDNS?, rcode: UInt16, reason: WireError?)
    /// No answer at all: unreadable header, or a response (QR=1).
    case drop(reason: String)
}

extension Query {
    /// Classifies a packet per RFC 1035/6891: drop, FORMERR, NOTIMP, BADVERS, or a query to answer.
    public static func parse(_ buffer: ByteBuffer) -> QueryParse {
        let start = buffer.readerIndex
        guard let header = DNSHeader(from: buffer, at: start) else { return .drop(reason: "short header") }
        guard !header.qr else { return .drop(reason: "QR=1") }

        var question: Question? = nil
        var p = start + DNSHeader.size
        if header.qdCount >= 1 {
            do { (question, p) = try readQuestion(buffer, at: p, messageStart: start) } catch {
                return .reject(header: header, question: nil, edns: nil, rcode: RCode.formErr, reason: error as? WireError)
            }
        }
        guard header.opcode == Opcode.query else {
            return .reject(header: header, question: header.qdCount == 1 ? question : nil, edns: nil,
                           rcode: RCode.notImp, reason: nil)
        }
        guard header.qdCount == 1, let question else {
            return .reject(header: header, question: nil, edns: nil, rcode: RCode.formErr,
                           reason: WireError(.badValue, "header.qdcount"))
        }
        var edns: EDNS? = nil
        do { try readEDNS(buffer, header, at: p, messageStart: start, into: &edns) } catch {
            return .reject(header: header, question: question, edns: edns, rcode: RCode.formErr, reason: error as? WireError)
        }
        if let edns, edns.version > 0 {
            return .reject(header: header, question: question, edns: edns, rcode: RCode.badVers, reason: nil)
        }
        return .query(Query(header: header, question: question, edns: edns))
    }

    /// The question at `p`, and where the next section starts.
    private static func readQuestion(_ buffer: ByteBuffer, at p: Int, messageStart start: Int) throws -> (Question, Int) {
        let (name, next) = try DNSName.read(from: buffer, at: p, messageStart: start, field: "question.name")
        guard let t = buffer.getInteger(at: next, as: UInt16.self), let c = buffer.getInteger(at: next + 2, as: UInt16.self) else {
            throw WireError(.truncated, "question.type")
        }
        return (Question(name: name, type: t, qclass: c), next + 4)
    }

    /// The one walk over an OPT record's options (RFC 6891 §6.1.2: code, length, data), for both paths: calls
    /// `body` with each option's code and where its data lies, in order. Options that run past the record are a
    /// FORMERR. It reads through `byte`, so the general path's array and the fast path's packet share it uncopied.
    @inline(__always)
    static func forEachOption(in record: Range<Int>, _ byte: (Int) -> UInt8,
                              _ body: (_ code: UInt16, _ data: Range<Int>) throws(WireError) -> Void) throws(WireError) {
        var k = record.lowerBound
        while k < record.upperBound {
            guard k + 4 <= record.upperBound else { throw WireError(.truncated, "OPT.option") }
            let code = UInt16(byte(k)) << 8 | UInt16(byte(k + 1)), length = Int(byte(k + 2)) << 8 | Int(byte(k + 3))
            guard k + 4 + length <= record.upperBound else { throw WireError(.truncated, "OPT.option") }
            try body(code, (k + 4)..<(k + 4 + length))
            k += 4 + length
        }
    }

    /// The Client Subnet option among an OPT record's options, if there is one; a malformed one, or options that run
    /// past the record, are a FORMERR.
    static func clientSubnet(_ options: [UInt8]) throws(WireError) -> ClientSubnet? {
        var found: ClientSubnet? = nil
        try forEachOption(in: options.indices, { options[$0] }) { (code, data) throws(WireError) in
            if code == ClientSubnet.code { found = try ClientSubnet(option: Array(options[data])) }
        }
        return found
    }

    /// Skips any answer and authority records, then reads the additional section for exactly one OPT, which
    /// `edns` holds as soon as it is read (a FORMERR after it still echoes it).
    private static func readEDNS(_ buffer: ByteBuffer, _ header: DNSHeader, at start: Int, messageStart: Int,
                                 into edns: inout EDNS?) throws {
        var p = start
        for _ in 0..<(Int(header.anCount) + Int(header.nsCount)) {
            p = try ResourceRecord.read(from: buffer, at: p, messageStart: messageStart).1
        }
        for _ in 0..<header.arCount {
            let (name, afterName) = try DNSName.read(from: buffer, at: p, messageStart: messageStart, field: "additional.name")
            guard let type = buffer.getInteger(at: afterName, as: UInt16.self),
                  let rclass = buffer.getInteger(at: afterName + 2, as: UInt16.self),
                  let ttl = buffer.getInteger(at: afterName + 4, as: UInt32.self),
                  let rdlen = buffer.getInteger(at: afterName + 8, as: UInt16.self),
                  buffer.getBytes(at: afterName + 10, length: Int(rdlen)) != nil else {
                throw WireError(.truncated, "additional.record")
            }
            if type == RRType.opt {
                guard edns == nil else { throw WireError(.badValue, "OPT.count") }
                guard name.wire == [0] else { throw WireError(.badValue, "OPT.name") }
                edns = EDNS(udpSize: rclass, version: UInt8((ttl >> 16) & 0xFF), dnssecOK: ttl & 0x8000 != 0)
                edns?.clientSubnet = try clientSubnet(buffer.getBytes(at: afterName + 10, length: Int(rdlen))!)
            }
            p = afterName + 10 + Int(rdlen)
        }
    }
}

/// The shape nearly every stub resolver sends: opcode QUERY, QR=0, one question whose name has no compression
/// pointer, no answer or authority records, and nothing in additional but an optional EDNS(0) OPT record.
/// Read in place, without allocating. Anything else (and every error) gives nil, and `Query.parse` decides.
/// Whenever this accepts a packet, `Query.parse` returns `.query` with the same question and EDNS.
public struct PlainQuery: Sendable {
    public var id: UInt16
    public var rd: Bool
    public var cd: Bool
    /// The question's name occupies `DNSHeader.size..<nameEnd`, in wire form including the root label.
    public var nameEnd: Int
    public var type: UInt16
    public var qclass: UInt16
    public var questionEnd: Int { nameEnd + 4 }
    public var edns: PlainEDNS?

    /// A plain query's OPT record: version 0 and no Client Subnet (both the general path's business), so nothing in
    /// it needs a reference count, and a `PlainQuery` is copied as plain bytes on the fast path.
    public struct PlainEDNS: Hashable, Sendable {
        public var udpSize: UInt16
        public var dnssecOK: Bool
        /// The same record as the general reader's `EDNS`.
        public var edns: EDNS { EDNS(udpSize: udpSize, version: 0, dnssecOK: dnssecOK) }
    }

    public static func parse(_ p: UnsafeRawBufferPointer) -> PlainQuery? {
        let count = p.count
        guard count >= DNSHeader.size + 5 else { return nil }
        // QR=0, opcode 0; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1.
        guard p[2] & 0xF8 == 0, p[4] == 0, p[5] == 1, p[6] == 0, p[7] == 0, p[8] == 0, p[9] == 0, p[10] == 0,
              p[11] <= 1 else { return nil }
        var i = DNSHeader.size
        while true {
            guard i < count else { return nil }
            let len = Int(p[i])
            if len == 0 { break }
            guard len <= 63 else { return nil }  // pointers and reserved label types
            i += len + 1
            guard i - DNSHeader.size < DNSName.maxWireLength else { return nil }
        }
        let nameEnd = i + 1
        guard nameEnd + 4 <= count else { return nil }
        var q = PlainQuery(id: UInt16(p[0]) << 8 | UInt16(p[1]), rd: p[2] & 0x01 != 0, cd: p[3] & 0x10 != 0, nameEnd: nameEnd,
                           type: UInt16(p[nameEnd]) << 8 | UInt16(p[nameEnd + 1]),
                           qclass: UInt16(p[nameEnd + 2]) << 8 | UInt16(p[nameEnd + 3]), edns: nil)
        if p[11] == 1 {
            // The OPT record: root owner, type 41, class = UDP size, TTL = extended rcode/version/flags, then its
            // options, walked only to see that none is the general path's business.
            let o = nameEnd + 4
            guard o + 11 <= count, p[o] == 0, p[o + 1] == 0, p[o + 2] == 41 else { return nil }
            let rdlen = Int(p[o + 9]) << 8 | Int(p[o + 10])
            guard o + 11 + rdlen <= count, p[o + 6] == 0 else { return nil }  // version 0 only; others are BADVERS
            // Options that overrun the record are a FORMERR, and a Client Subnet option is echoed with its scope:
            // both the general path's business.
            do {
                try Query.forEachOption(in: (o + 11)..<(o + 11 + rdlen), { p[$0] }) { (code, _) throws(WireError) in
                    if code == ClientSubnet.code { throw WireError(.badValue, "OPT.ecs") }
                }
            } catch { return nil }
            q.edns = PlainEDNS(udpSize: UInt16(p[o + 3]) << 8 | UInt16(p[o + 4]), dnssecOK: p[o + 7] & 0x80 != 0)
        }
        return q
    }
}

import NIOCore

public struct Question: Hashable, Sendable {
    public var name: DNSName
    public var type: UInt16
    public var qclass: UInt16

    public init(name: DNSName, type: UInt16, qclass: UInt16 = DNSClass.inet) {
        self.name = name
        self.type = type
        self.qclass = qclass
    }
}

public struct ResourceRecord: Hashable, Sendable {
    public var name: DNSName
    public var type: UInt16
    public var rclass: UInt16
    public var ttl: UInt32
    public var rdata: RData

    public init(name: DNSName, type: UInt16, rclass: UInt16 = DNSClass.inet, ttl: UInt32, rdata: RData) {
        self.name = name
        self.type = type
        self.rclass = rclass
        self.ttl = ttl
        self.rdata = rdata
    }

    /// Builds a record whose type follows from its data.
    public init(name: DNSName, ttl: UInt32, rdata: RData) {
        let type: UInt16
        switch rdata {
        case .a: type = RRType.a
        case .aaaa: type = RRType.aaaa
        case .ns: type = RRType.ns
        case .cname: type = RRType.cname
        case .ptr: type = RRType.ptr
        case .mx: type = RRType.mx
        case .txt: type = RRType.txt
        case .srv: type = RRType.srv
        case .soa: type = RRType.soa
        case .unknown: preconditionFailure("unknown RDATA needs an explicit type")
        }
        self.init(name: name, type: type, ttl: ttl, rdata: rdata)
    }

    /// Reads one record at `offset`; returns it and the offset after it.
    public static func read(from buffer: ByteBuffer, at offset: Int, messageStart: Int = 0)
        throws -> (ResourceRecord, Int)
    {
        let (name, p) = try DNSName.read(from: buffer, at: offset, messageStart: messageStart, field: "RR.name")
        guard let type = buffer.getInteger(at: p, as: UInt16.self),
              let rclass = buffer.getInteger(at: p + 2, as: UInt16.self),
              let ttl = buffer.getInteger(at: p + 4, as: UInt32.self),
              let rdlen = buffer.getInteger(at: p + 8, as: UInt16.self) else {
            throw WireError(.truncated, "RR.header")
        }
        let start = p + 10
        guard buffer.getBytes(at: start, length: Int(rdlen)) != nil else { throw WireError(.truncated, "RR.rdata") }
        let rdata: RData
        if type == RRType.opt {
            rdata = .unknown(buffer.getBytes(at: start, length: Int(rdlen))!)
        } else {
            rdata = try RData.decode(type: type, from: buffer, at: start, length: Int(rdlen), messageStart: messageStart)
        }
        return (ResourceRecord(name: name, type: type, rclass: rclass, ttl: ttl, rdata: rdata), start + Int(rdlen))
    }
}

/// A whole DNS message, decoded. Used for tests, zone data and anything off the hot path.
public struct Message: Hashable, Sendable {
    public var header: DNSHeader
    public var questions: [Question]
    public var answers: [ResourceRecord]
    public var authority: [ResourceRecord]
    public var additional: [ResourceRecord]

    public init(header: DNSHeader, questions: [Question] = [], answers: [ResourceRecord] = [],
                authority: [ResourceRecord] = [], additional: [ResourceRecord] = []) {
        self.header = header
        self.questions = questions
        self.answers = answers
        self.authority = authority
        self.additional = additional
    }

    public init(from buffer: ByteBuffer) throws {
        let start = buffer.readerIndex
        guard let header = DNSHeader(from: buffer, at: start) else { throw WireError(.truncated, "header") }
        self.header = header
        var p = start + DNSHeader.size
        questions = []
        for _ in 0..<header.qdCount {
            let (name, next) = try DNSName.read(from: buffer, at: p, messageStart: start, field: "question.name")
            guard let t = buffer.getInteger(at: next, as: UInt16.self),
                  let c = buffer.getInteger(at: next + 2, as: UInt16.self) else {
                throw WireError(.truncated, "question.type")
            }
            questions.append(Question(name: name, type: t, qclass: c))
            p = next + 4
        }
        func section(_ count: UInt16) throws -> [ResourceRecord] {
            var out: [ResourceRecord] = []
            for _ in 0..<count {
                let (rr, next) = try ResourceRecord.read(from: buffer, at: p, messageStart: start)
                out.append(rr)
                p = next
            }
            return out
        }
        answers = try section(header.anCount)
        authority = try section(header.nsCount)
        additional = try section(header.arCount)
    }

    /// The OPT pseudo-record, if present.
    public var opt: ResourceRecord? { additional.first { $0.type == RRType.opt } }

    /// The full rcode, including the EDNS extended bits.
    public var rcode: UInt16 {
        var r = UInt16(header.rcode)
        if let opt { r |= UInt16(opt.ttl >> 24) << 4 }
        return r
    }
}

import NIOCore

/// EDNS(0) as seen in a query's OPT record (RFC 6891).
public struct EDNS: Hashable, Sendable {
    public var udpSize: UInt16
    public var version: UInt8
    public var dnssecOK: Bool

    public init(udpSize: UInt16, version: UInt8, dnssecOK: Bool) {
        self.udpSize = udpSize
        self.version = version
        self.dnssecOK = dnssecOK
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
            do {
                let (name, next) = try DNSName.read(from: buffer, at: p, messageStart: start, field: "question.name")
                if let t = buffer.getInteger(at: next, as: UInt16.self),
                   let c = buffer.getInteger(at: next + 2, as: UInt16.self) {
                    question = Question(name: name, type: t, qclass: c)
                    p = next + 4
                } else {
                    return .reject(header: header, question: nil, edns: nil, rcode: RCode.formErr,
                                   reason: WireError(.truncated, "question.type"))
                }
            } catch let e as WireError {
                return .reject(header: header, question: nil, edns: nil, rcode: RCode.formErr, reason: e)
            } catch {
                return .reject(header: header, question: nil, edns: nil, rcode: RCode.formErr, reason: nil)
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

        // Skip any answer/authority records, then look for exactly one OPT in additional.
        var edns: EDNS? = nil
        do {
            for _ in 0..<(Int(header.anCount) + Int(header.nsCount)) {
                p = try ResourceRecord.read(from: buffer, at: p, messageStart: start).1
            }
            for _ in 0..<header.arCount {
                let (name, afterName) = try DNSName.read(from: buffer, at: p, messageStart: start, field: "additional.name")
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
                }
                p = afterName + 10 + Int(rdlen)
            }
        } catch let e as WireError {
            return .reject(header: header, question: question, edns: edns, rcode: RCode.formErr, reason: e)
        } catch {
            return .reject(header: header, question: question, edns: edns, rcode: RCode.formErr, reason: nil)
        }
        if let edns, edns.version > 0 {
            return .reject(header: header, question: question, edns: edns, rcode: RCode.badVers, reason: nil)
        }
        return .query(Query(header: header, question: question, edns: edns))
    }
}

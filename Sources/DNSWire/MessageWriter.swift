import NIOCore

/// Writes a DNS message into a ByteBuffer, compressing names (RFC 1035 §4.1.4).
/// `mark()`/`rollback(to:)` undo a partly written record, which is how truncation drops whole records.
public struct MessageWriter {
    public var buffer: ByteBuffer
    private let start: Int
    /// Lower-cased uncompressed suffix → offset from the message start.
    private var table: [[UInt8]: UInt16] = [:]
    private var inserted: [[UInt8]] = []
    public private(set) var counts: (qd: UInt16, an: UInt16, ns: UInt16, ar: UInt16) = (0, 0, 0, 0)

    public struct Mark {
        let writerIndex: Int
        let inserted: Int
        let counts: (UInt16, UInt16, UInt16, UInt16)
    }

    public enum Section { case answer, authority, additional }

    /// Starts a message; the header is written at the end by `finish`.
    public init(buffer: ByteBuffer) {
        self.buffer = buffer
        self.start = buffer.writerIndex
        self.buffer.writeRepeatingByte(0, count: DNSHeader.size)
    }

    public var size: Int { buffer.writerIndex - start }

    public func mark() -> Mark { Mark(writerIndex: buffer.writerIndex, inserted: inserted.count, counts: counts) }

    public mutating func rollback(to mark: Mark) {
        buffer.moveWriterIndex(to: mark.writerIndex)
        while inserted.count > mark.inserted { table.removeValue(forKey: inserted.removeLast()) }
        counts = mark.counts
    }

    public mutating func writeName(_ name: DNSName, compress: Bool = true) {
        let wire = name.wire
        var i = 0
        while wire[i] != 0 {
            let suffix = wire[i...].map(asciiLower)
            if compress, let ptr = table[suffix] {
                buffer.writeInteger(0xC000 | ptr)
                return
            }
            let offset = buffer.writerIndex - start
            if offset < 0x3FFF && table[suffix] == nil {
                table[suffix] = UInt16(offset)
                inserted.append(suffix)
            }
            let len = Int(wire[i])
            buffer.writeBytes(wire[i...(i + len)])
            i += len + 1
        }
        buffer.writeInteger(UInt8(0))
    }

    /// Writes the question exactly as given (case preserved).
    public mutating func writeQuestion(_ q: Question) {
        writeName(q.name)
        buffer.writeMultipleIntegers(q.type, q.qclass)
        counts.qd += 1
    }

    public mutating func writeRecord(_ rr: ResourceRecord, section: Section) {
        writeName(rr.name)
        buffer.writeMultipleIntegers(rr.type, rr.rclass, rr.ttl)
        let lengthAt = buffer.writerIndex
        buffer.writeInteger(UInt16(0))
        writeRData(rr.rdata)
        buffer.setInteger(UInt16(buffer.writerIndex - lengthAt - 2), at: lengthAt)
        switch section {
        case .answer: counts.an += 1
        case .authority: counts.ns += 1
        case .additional: counts.ar += 1
        }
    }

    /// Writes an OPT pseudo-record (RFC 6891 §6.1.2).
    public mutating func writeOPT(udpSize: UInt16, extendedRcode: UInt8 = 0, version: UInt8 = 0,
                                  dnssecOK: Bool = false, options: [UInt8] = []) {
        buffer.writeInteger(UInt8(0))
        let ttl = UInt32(extendedRcode) << 24 | UInt32(version) << 16 | (dnssecOK ? 0x8000 : 0)
        buffer.writeMultipleIntegers(RRType.opt, udpSize, ttl, UInt16(options.count))
        buffer.writeBytes(options)
        counts.ar += 1
    }

    private mutating func writeRData(_ rdata: RData) {
        switch rdata {
        case .a(let v4): buffer.writeMultipleIntegers(v4.bytes.0, v4.bytes.1, v4.bytes.2, v4.bytes.3)
        case .aaaa(let v6): buffer.writeBytes(v6.bytes)
        case .ns(let n), .cname(let n), .ptr(let n): writeName(n)
        case .mx(let pref, let n):
            buffer.writeInteger(pref)
            writeName(n)
        case .srv(let priority, let weight, let port, let target):
            buffer.writeMultipleIntegers(priority, weight, port)
            writeName(target, compress: false)
        case .soa(let soa):
            writeName(soa.mname)
            writeName(soa.rname)
            buffer.writeMultipleIntegers(soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
        case .txt(let strings):
            for s in strings {
                buffer.writeInteger(UInt8(s.count))
                buffer.writeBytes(s)
            }
        case .unknown(let bytes): buffer.writeBytes(bytes)
        }
    }

    /// Writes the header (with the section counts) and returns the finished buffer.
    public mutating func finish(header: DNSHeader) -> ByteBuffer {
        var h = header
        h.qdCount = counts.qd
        h.anCount = counts.an
        h.nsCount = counts.ns
        h.arCount = counts.ar
        var headerBytes = ByteBuffer()
        h.write(to: &headerBytes)
        buffer.setBuffer(headerBytes, at: start)
        return buffer
    }
}

extension Message {
    /// Encodes the whole message with name compression.
    public func encode(into buffer: ByteBuffer = ByteBuffer()) -> ByteBuffer {
        var w = MessageWriter(buffer: buffer)
        for q in questions { w.writeQuestion(q) }
        for rr in answers { w.writeRecord(rr, section: .answer) }
        for rr in authority { w.writeRecord(rr, section: .authority) }
        for rr in additional { w.writeRecord(rr, section: .additional) }
        return w.finish(header: header)
    }
}

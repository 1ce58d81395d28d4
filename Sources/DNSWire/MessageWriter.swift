import NIOCore

/// Writes a DNS message into a ByteBuffer, compressing names (RFC 1035 §4.1.4).
/// `mark()`/`rollback(to:)` undo a partly written record, which is how truncation drops whole records.
public struct MessageWriter {
    public var buffer: ByteBuffer
    private let start: Int
    /// Name suffixes already in the message: a hash of the lower-cased suffix, and its offset from the start.
    /// A hash hit is confirmed against the bytes in the buffer, so a collision can never mis-compress.
    private var table: [(hash: UInt64, offset: UInt16)] = []
    public private(set) var counts: (qd: UInt16, an: UInt16, ns: UInt16, ar: UInt16) = (0, 0, 0, 0)

    public struct Mark {
        let writerIndex: Int
        /// The buffer position this mark restores (for tests).
        public var writerIndexForTesting: Int { writerIndex }
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

    public func mark() -> Mark { Mark(writerIndex: buffer.writerIndex, inserted: table.count, counts: counts) }

    public mutating func rollback(to mark: Mark) {
        buffer.moveWriterIndex(to: mark.writerIndex)
        table.removeLast(table.count - mark.inserted)
        counts = mark.counts
    }

    public mutating func writeName(_ name: DNSName, compress: Bool = true) {
        name.wire.withUnsafeBufferPointer { wire in
            withUnsafeTemporaryAllocation(of: (start: Int, hash: UInt64).self, capacity: 128) { labels in
                // Label starts, then each suffix's hash in one backward pass (a suffix hash covers its tail).
                var n = 0
                var i = 0
                while wire[i] != 0 {
                    labels[n] = (i, 0)
                    n += 1
                    i += Int(wire[i]) + 1
                }
                var h: UInt64 = 0xCBF2_9CE4_8422_2325
                for k in stride(from: n - 1, through: 0, by: -1) {
                    let s = labels[k].start
                    for b in wire[s...(s + Int(wire[s]))] { h = (h ^ UInt64(asciiLower(b))) &* 0x100_0000_01B3 }
                    labels[k].hash = h
                }
                for k in 0..<n {
                    let (s, hash) = labels[k]
                    if compress, let ptr = lookup(hash, wire, from: s) {
                        buffer.writeInteger(0xC000 | ptr)
                        return
                    }
                    let offset = buffer.writerIndex - start
                    if offset < 0x3FFF { table.append((hash, UInt16(offset))) }
                    buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(wire)[s...(s + Int(wire[s]))]))
                }
                buffer.writeInteger(UInt8(0))
            }
        }
    }

    /// The offset of an earlier copy of `wire[from...]` (compared case-insensitively), if any.
    private func lookup(_ hash: UInt64, _ wire: UnsafeBufferPointer<UInt8>, from: Int) -> UInt16? {
        for entry in table where entry.hash == hash && equal(at: start + Int(entry.offset), wire, from: from) {
            return entry.offset
        }
        return nil
    }

    /// Whether the name written at `position` (following our own backward pointers) equals `wire[from...]`.
    private func equal(at position: Int, _ wire: UnsafeBufferPointer<UInt8>, from: Int) -> Bool {
        var p = position
        var w = from
        while true {
            guard var len = buffer.getInteger(at: p, as: UInt8.self) else { return false }
            while len & 0xC0 == 0xC0 {
                guard let ptr = buffer.getInteger(at: p, as: UInt16.self) else { return false }
                p = start + Int(ptr & 0x3FFF)
                guard let l = buffer.getInteger(at: p, as: UInt8.self) else { return false }
                len = l
            }
            guard len == wire[w] else { return false }
            if len == 0 { return true }
            for k in 1...Int(len) {
                guard let b = buffer.getInteger(at: p + k, as: UInt8.self), asciiLower(b) == asciiLower(wire[w + k]) else { return false }
            }
            p += Int(len) + 1
            w += Int(len) + 1
        }
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

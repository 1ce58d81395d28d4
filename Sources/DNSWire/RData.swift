import NIOCore

/// Typed record data. Names inside NS, CNAME, PTR, MX and SOA may be compressed on output
/// (RFC 3597 §4); SRV targets are never compressed (RFC 2782).
public enum RData: Hashable, Sendable {
    /// A: 4 octets (RFC 1035 §3.4.1).
    case a(IPv4)
    /// AAAA: 16 octets (RFC 3596 §2.2).
    case aaaa(IPv6)
    /// NS: NSDNAME.
    case ns(DNSName)
    /// CNAME: CNAME.
    case cname(DNSName)
    /// PTR: PTRDNAME.
    case ptr(DNSName)
    /// MX: PREFERENCE (16) EXCHANGE.
    case mx(preference: UInt16, exchange: DNSName)
    /// TXT: one or more <character-string>s.
    case txt([[UInt8]])
    /// SRV: PRIORITY (16) WEIGHT (16) PORT (16) TARGET (RFC 2782).
    case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DNSName)
    /// SOA: MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM (RFC 1035 §3.3.13).
    case soa(SOA)
    /// Anything else, kept as opaque bytes (RFC 3597).
    case unknown([UInt8])

    public struct SOA: Hashable, Sendable {
        public var mname: DNSName
        public var rname: DNSName
        public var serial: UInt32
        public var refresh: UInt32
        public var retry: UInt32
        public var expire: UInt32
        public var minimum: UInt32

        public init(mname: DNSName, rname: DNSName, serial: UInt32, refresh: UInt32, retry: UInt32,
                    expire: UInt32, minimum: UInt32) {
            self.mname = mname
            self.rname = rname
            self.serial = serial
            self.refresh = refresh
            self.retry = retry
            self.expire = expire
            self.minimum = minimum
        }
    }

    /// Decodes RDATA of `type` occupying `length` bytes at `offset`.
    public static func decode(type: UInt16, from buffer: ByteBuffer, at offset: Int, length: Int,
                              messageStart: Int = 0) throws -> RData {
        let end = offset + length
        guard buffer.getBytes(at: offset, length: length) != nil else { throw WireError(.truncated, "RDATA") }
        func name(_ at: Int, _ field: String) throws -> (DNSName, Int) {
            let (n, next) = try DNSName.read(from: buffer, at: at, messageStart: messageStart, field: field)
            guard next <= end else { throw WireError(.truncated, field) }
            return (n, next)
        }
        func u16(_ at: Int, _ field: String) throws -> UInt16 {
            guard at + 2 <= end, let v = buffer.getInteger(at: at, as: UInt16.self) else {
                throw WireError(.truncated, field)
            }
            return v
        }
        func u32(_ at: Int, _ field: String) throws -> UInt32 {
            guard at + 4 <= end, let v = buffer.getInteger(at: at, as: UInt32.self) else {
                throw WireError(.truncated, field)
            }
            return v
        }
        func exact(_ next: Int, _ field: String) throws {
            guard next == end else { throw WireError(.badValue, field + ".length") }
        }
        switch type {
        case RRType.a:
            guard length == 4, let b = buffer.getBytes(at: offset, length: 4) else { throw WireError(.badValue, "A.address") }
            return .a(IPv4(bytes: b))
        case RRType.aaaa:
            guard length == 16, let b = buffer.getBytes(at: offset, length: 16) else { throw WireError(.badValue, "AAAA.address") }
            return .aaaa(IPv6(bytes: b))
        case RRType.ns:
            let (n, next) = try name(offset, "NS.nsdname"); try exact(next, "NS"); return .ns(n)
        case RRType.cname:
            let (n, next) = try name(offset, "CNAME.cname"); try exact(next, "CNAME"); return .cname(n)
        case RRType.ptr:
            let (n, next) = try name(offset, "PTR.ptrdname"); try exact(next, "PTR"); return .ptr(n)
        case RRType.mx:
            let pref = try u16(offset, "MX.preference")
            let (n, next) = try name(offset + 2, "MX.exchange"); try exact(next, "MX")
            return .mx(preference: pref, exchange: n)
        case RRType.srv:
            let priority = try u16(offset, "SRV.priority")
            let weight = try u16(offset + 2, "SRV.weight")
            let port = try u16(offset + 4, "SRV.port")
            let (n, next) = try name(offset + 6, "SRV.target"); try exact(next, "SRV")
            return .srv(priority: priority, weight: weight, port: port, target: n)
        case RRType.soa:
            let (m, p1) = try name(offset, "SOA.mname")
            let (r, p2) = try name(p1, "SOA.rname")
            let soa = SOA(mname: m, rname: r,
                          serial: try u32(p2, "SOA.serial"), refresh: try u32(p2 + 4, "SOA.refresh"),
                          retry: try u32(p2 + 8, "SOA.retry"), expire: try u32(p2 + 12, "SOA.expire"),
                          minimum: try u32(p2 + 16, "SOA.minimum"))
            try exact(p2 + 20, "SOA")
            return .soa(soa)
        case RRType.txt:
            var strings: [[UInt8]] = []
            var p = offset
            while p < end {
                let len = Int(buffer.getInteger(at: p, as: UInt8.self)!)
                guard p + 1 + len <= end else { throw WireError(.truncated, "TXT.string") }
                strings.append(buffer.getBytes(at: p + 1, length: len)!)
                p += 1 + len
            }
            guard !strings.isEmpty else { throw WireError(.badValue, "TXT.string") }
            return .txt(strings)
        default:
            return .unknown(buffer.getBytes(at: offset, length: length)!)
        }
    }
}

public struct IPv4: Hashable, Sendable, CustomStringConvertible {
    public var bytes: (UInt8, UInt8, UInt8, UInt8)
    public init(bytes b: [UInt8]) { bytes = (b[0], b[1], b[2], b[3]) }
    public var array: [UInt8] { [bytes.0, bytes.1, bytes.2, bytes.3] }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = UInt8(p),
                  !(p.count > 1 && p.first == "0") else { return nil }
            out.append(v)
        }
        self.init(bytes: out)
    }

    public var description: String { "\(bytes.0).\(bytes.1).\(bytes.2).\(bytes.3)" }

    public static func == (a: IPv4, b: IPv4) -> Bool { a.array == b.array }
    public func hash(into h: inout Hasher) { h.combine(array) }
}

public struct IPv6: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]
    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Parses RFC 4291 text, including "::" and an embedded IPv4 tail.
    public init?(_ text: some StringProtocol) {
        var s = String(text)
        if let pct = s.firstIndex(of: "%") { s = String(s[..<pct]) }  // zone index
        // An embedded IPv4 tail ("::ffff:192.0.2.1") becomes two hex groups.
        if let lastColon = s.lastIndex(of: ":"), s[s.index(after: lastColon)...].contains(".") {
            guard let v4 = IPv4(s[s.index(after: lastColon)...]) else { return nil }
            let b = v4.array
            s = String(s[...lastColon]) + String(UInt16(b[0]) << 8 | UInt16(b[1]), radix: 16) + ":"
                + String(UInt16(b[2]) << 8 | UInt16(b[3]), radix: 16)
        }
        func groups(_ part: Substring) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            for g in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard !g.isEmpty, g.count <= 4, g.allSatisfy(\.isHexDigit), g.allSatisfy(\.isASCII), let v = UInt16(g, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        var words: [UInt16]
        let chars = Array(s)
        var gap: Int? = nil
        for k in 0..<max(chars.count - 1, 0) where chars[k] == ":" && chars[k + 1] == ":" { gap = k; break }
        if let gap {
            let head = String(chars[..<gap]), rest = String(chars[(gap + 2)...])
            guard !rest.contains("::"), let h = groups(head[...]), let r = groups(rest[...]), h.count + r.count < 8 else {
                return nil
            }
            words = h + Array(repeating: 0, count: 8 - h.count - r.count) + r
        } else {
            guard let all = groups(s[...]), all.count == 8 else { return nil }
            words = all
        }
        var out: [UInt8] = []
        for w in words { out.append(UInt8(w >> 8)); out.append(UInt8(w & 0xFF)) }
        self.bytes = out
    }

    /// RFC 5952 text.
    public var description: String {
        var words: [UInt16] = []
        for i in stride(from: 0, to: 16, by: 2) { words.append(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])) }
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if words[i] == 0 {
                var j = i
                while j < 8 && words[j] == 0 { j += 1 }
                if j - i > bestLen && j - i > 1 { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        func hex(_ r: ArraySlice<UInt16>) -> String { r.map { String($0, radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(words[...]) }
        return hex(words[..<bestStart]) + "::" + hex(words[(bestStart + bestLen)...])
    }
}

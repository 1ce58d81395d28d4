import NIOCore

/// A domain name in uncompressed wire form (length-prefixed labels, ending in the root label).
/// The original case is kept, so a response can echo the question exactly as asked;
/// comparison and hashing are case-insensitive (RFC 4343).
public struct DNSName: Sendable, CustomStringConvertible {
    /// Uncompressed wire bytes, including the final zero byte.
    public private(set) var wire: [UInt8]

    public static let root = DNSName(uncheckedWire: [0])
    public static let maxWireLength = 255

    init(uncheckedWire: [UInt8]) { self.wire = uncheckedWire }

    /// A name from uncompressed wire bytes (labels, then the root label); nil unless they are exactly one valid name.
    public init?<Bytes: Collection>(wire bytes: Bytes) where Bytes.Element == UInt8 {
        let wire = Array(bytes)
        guard !wire.isEmpty, wire.count <= DNSName.maxWireLength else { return nil }
        var i = 0
        while wire[i] != 0 {
            guard wire[i] <= 63, i + Int(wire[i]) + 1 < wire.count else { return nil }
            i += Int(wire[i]) + 1
        }
        guard i == wire.count - 1 else { return nil }
        self.wire = wire
    }

    /// Builds a name from labels (without dots). Throws if a label is empty or longer than 63 bytes.
    public init<S: Sequence>(labels: S) throws where S.Element: StringProtocol {
        var bytes: [UInt8] = []
        for label in labels {
            let utf8 = Array(label.utf8)
            guard !utf8.isEmpty, utf8.count <= 63 else { throw WireError(.badLabel, "name") }
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
        }
        bytes.append(0)
        guard bytes.count <= DNSName.maxWireLength else { throw WireError(.nameTooLong, "name") }
        self.wire = bytes
    }

    /// Parses presentation form ("www.example.com." or without the final dot).
    /// Supports `\.` and `\DDD` escapes. "." and "" are the root.
    public init(_ text: String) throws {
        if text == "." || text.isEmpty { self = .root; return }
        var labels: [[UInt8]] = []
        var current: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let c = bytes.popFirst() {
            if c == UInt8(ascii: ".") {
                guard !current.isEmpty else { throw WireError(.badLabel, "name") }
                labels.append(current)
                current = []
            } else if c == UInt8(ascii: "\\") {
                guard let n = bytes.popFirst() else { throw WireError(.badLabel, "name") }
                if n >= 0x30 && n <= 0x39 {
                    guard let d2 = bytes.popFirst(), let d3 = bytes.popFirst(),
                          (0x30...0x39).contains(d2), (0x30...0x39).contains(d3) else {
                        throw WireError(.badLabel, "name")
                    }
                    let v = Int(n - 0x30) * 100 + Int(d2 - 0x30) * 10 + Int(d3 - 0x30)
                    guard v <= 255 else { throw WireError(.badLabel, "name") }
                    current.append(UInt8(v))
                } else {
                    current.append(n)
                }
            } else {
                current.append(c)
            }
        }
        if !current.isEmpty { labels.append(current) }
        var wire: [UInt8] = []
        for label in labels {
            guard label.count <= 63 else { throw WireError(.badLabel, "name") }
            wire.append(UInt8(label.count))
            wire.append(contentsOf: label)
        }
        wire.append(0)
        guard wire.count <= DNSName.maxWireLength else { throw WireError(.nameTooLong, "name") }
        self.wire = wire
    }

    /// `<first>.<second>.<third>.<suffix>` built in one allocation; `first` may itself contain dots.
    public init(prefix first: String, _ second: String, _ third: String, suffix: DNSName) throws(WireError) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(first.utf8.count + second.utf8.count + third.utf8.count + suffix.wire.count + 4)
        for part in [first, second, third] {
            for label in part.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard !label.isEmpty, label.count <= 63 else { throw WireError(.badLabel, "name") }
                bytes.append(UInt8(label.count))
                bytes.append(contentsOf: label)
            }
        }
        bytes.append(contentsOf: suffix.wire)
        guard bytes.count <= DNSName.maxWireLength else { throw WireError(.nameTooLong, "name") }
        self.wire = bytes
    }

    /// Appends `suffix` to this name (e.g. "web" + "service.consul").
    public func appending(_ suffix: DNSName) throws -> DNSName {
        var bytes = wire
        bytes.removeLast()
        bytes.append(contentsOf: suffix.wire)
        guard bytes.count <= DNSName.maxWireLength else { throw WireError(.nameTooLong, "name") }
        return DNSName(uncheckedWire: bytes)
    }

    public var labelCount: Int {
        var count = 0
        var i = 0
        while wire[i] != 0 { count += 1; i += Int(wire[i]) + 1 }
        return count
    }

    /// Labels as raw bytes, left to right.
    public var labels: [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var i = 0
        while wire[i] != 0 {
            let len = Int(wire[i])
            result.append(wire[(i + 1)..<(i + 1 + len)])
            i += len + 1
        }
        return result
    }

    /// Labels folded to lower case, as strings (for lookups).
    public var lowercasedLabels: [String] {
        labels.map { String(decoding: $0.map(asciiLower), as: UTF8.self) }
    }

    /// The name with ASCII letters folded to lower case.
    public var lowercased: DNSName { DNSName(uncheckedWire: wire.map(asciiLower)) }

    /// The name without its first label; nil for the root.
    public var parent: DNSName? {
        guard wire[0] != 0 else { return nil }
        return DNSName(uncheckedWire: Array(wire[(Int(wire[0]) + 1)...]))
    }

    /// True if `self` equals `other` or lies below it.
    public func isSubdomain(of other: DNSName) -> Bool {
        wire.withUnsafeBytes { Self.isSubdomain(wire: $0, of: other) }
    }

    /// The same test for a name's uncompressed wire bytes read in place (already validated, e.g. by `PlainQuery`).
    public static func isSubdomain(wire: UnsafeRawBufferPointer, of other: DNSName) -> Bool {
        let n = wire.count, m = other.wire.count
        guard n >= m else { return false }
        // The suffix must start on a label boundary.
        var i = 0
        while n - i > m { i += Int(wire[i]) + 1 }
        guard n - i == m else { return false }
        // Read in place: indexing the array each time cost a bounds check per byte, on every query's domain test.
        return other.wire.withUnsafeBytes { suffix in
            let a = wire.baseAddress! + i, b = suffix.baseAddress!
            for k in 0..<m where asciiLower(a.load(fromByteOffset: k, as: UInt8.self)) != asciiLower(b.load(fromByteOffset: k, as: UInt8.self)) {
                return false
            }
            return true
        }
    }

    /// Presentation form with the trailing dot, escaping as RFC 4343 describes.
    public var description: String {
        if wire.count == 1 { return "." }
        var out = ""
        for label in labels {
            for b in label {
                switch b {
                case UInt8(ascii: "."), UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: ";"),
                     UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "@"), UInt8(ascii: "$"):
                    out.append("\\")
                    out.append(Character(UnicodeScalar(b)))
                case 0x21...0x7E:
                    out.append(Character(UnicodeScalar(b)))
                default:
                    let s = String(b)
                    out.append("\\" + String(repeating: "0", count: 3 - s.count) + s)
                }
            }
            out.append(".")
        }
        return out
    }

    /// Reads a possibly compressed name starting at `offset` in `buffer` (absolute indices).
    /// Returns the name and the offset just past it in the original stream.
    /// Pointers must point strictly backwards, so loops cannot occur; a hop limit guards anyway.
    public static func read(from buffer: ByteBuffer, at offset: Int, messageStart: Int = 0, field: String = "name")
        throws -> (DNSName, Int)
    {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var pos = offset
        var end: Int? = nil
        var lowestSeen = offset  // every pointer must go below the start of the label run it ends
        var hops = 0
        while true {
            guard let len = buffer.getInteger(at: pos, as: UInt8.self) else {
                throw WireError(.truncated, field)
            }
            switch len & 0xC0 {
            case 0x00:
                if len == 0 {
                    bytes.append(0)
                    guard bytes.count <= maxWireLength else { throw WireError(.nameTooLong, field) }
                    return (DNSName(uncheckedWire: bytes), end ?? pos + 1)
                }
                guard let label = buffer.getBytes(at: pos + 1, length: Int(len)) else {
                    throw WireError(.truncated, field)
                }
                bytes.append(len)
                bytes.append(contentsOf: label)
                guard bytes.count < maxWireLength else { throw WireError(.nameTooLong, field) }
                pos += 1 + Int(len)
            case 0xC0:
                guard let ptr = buffer.getInteger(at: pos, as: UInt16.self) else {
                    throw WireError(.truncated, field)
                }
                let target = messageStart + Int(ptr & 0x3FFF)
                guard target < lowestSeen else { throw WireError(.forwardPointer, field) }
                hops += 1
                guard hops <= 127 else { throw WireError(.pointerLoop, field) }
                if end == nil { end = pos + 2 }
                lowestSeen = target
                pos = target
            default:
                throw WireError(.badLabel, field)
            }
        }
    }
}

extension DNSName: Hashable {
    public static func == (a: DNSName, b: DNSName) -> Bool {
        guard a.wire.count == b.wire.count else { return false }
        for i in 0..<a.wire.count where asciiLower(a.wire[i]) != asciiLower(b.wire[i]) { return false }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        for b in wire { hasher.combine(asciiLower(b)) }
    }
}

/// ASCII letters folded to lower case (RFC 4343); every other byte as it is.
@inline(__always)
public func asciiLower(_ b: UInt8) -> UInt8 {
    (b >= 0x41 && b <= 0x5A) ? b | 0x20 : b
}

import DNSWire
import HashTreeCollections

/// A name as the snapshot's maps key it (a service, a tag, a node, a datacenter): ASCII case-insensitive text.
///
/// A stored key owns its text. A probe borrows the bytes of a query in flight, either as plain text or as a run
/// of wire-format labels read as dotted text (`\x02go\x05micro` is `go.micro`), so a lookup by a name of any
/// length copies nothing and allocates nothing. Both hash the same lower-cased bytes (FNV-1a), so a probe finds
/// the stored key that equals it. A probe must not outlive the buffer it borrows; the maps never keep one.
// Unchecked: `.probe` holds a pointer, which lives only for one lookup on the querying thread (see above).
public enum NameKey: Hashable, @unchecked Sendable, ExpressibleByStringLiteral, CustomStringConvertible, Comparable {
    case owned(String)
    /// Plain bytes (`wire: false`) or wire-format labels (`wire: true`).
    case probe(UnsafeRawBufferPointer, wire: Bool)

    public init(_ text: String) { self = .owned(text) }
    public init(stringLiteral value: String) { self = .owned(value) }

    /// The text; a probe's is copied out.
    public var text: String {
        switch self {
        case .owned(let s): return s
        case .probe:
            var bytes: [UInt8] = []
            forEachByte { bytes.append($0) }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    public var description: String { text }

    public static func < (a: NameKey, b: NameKey) -> Bool { a.text < b.text }

    /// Calls `body` with each byte of the text, lower-cased (ASCII only, as DNS compares names).
    @inline(__always)
    func forEachByte(_ body: (UInt8) -> Void) {
        switch self {
        case .owned(let s):
            for b in s.utf8 { body(asciiLower(b)) }
        case .probe(let bytes, wire: false):
            for b in bytes { body(asciiLower(b)) }
        case .probe(let bytes, wire: true):
            var p = 0
            while p < bytes.count {
                let n = Int(bytes[p])
                if p > 0 { body(UInt8(ascii: ".")) }
                for k in (p + 1)..<min(p + 1 + n, bytes.count) { body(asciiLower(bytes[k])) }
                p += 1 + n
            }
        }
    }

    /// FNV-1a over the lower-cased bytes: the same for a key and a probe that are equal.
    @inline(__always)
    var fnv: UInt64 {
        var h = FNV1a()
        forEachByte { h.add($0) }
        return h.value
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(fnv) }

    /// Byte for byte, ASCII case folded (as `hash` sees them; Unicode equivalence would break the pairing).
    public static func == (a: NameKey, b: NameKey) -> Bool {
        switch (a, b) {
        case (.owned(let x), .owned(let y)):
            return x.utf8.count == y.utf8.count && x.utf8.elementsEqual(y.utf8) { asciiLower($0) == asciiLower($1) }
        case (.owned(let x), .probe), (.probe, .owned(let x)):
            return b.matches(x) && a.matches(x)
        case (.probe, .probe):
            var x: [UInt8] = [], y: [UInt8] = []
            a.forEachByte { x.append($0) }
            b.forEachByte { y.append($0) }
            return x == y
        }
    }

    /// Whether this key's lower-cased bytes are `text`'s (an owned key says yes: the caller compares those).
    @inline(__always)
    private func matches(_ text: String) -> Bool {
        guard case .probe(let bytes, let wire) = self else { return true }
        var copy = text
        return copy.withUTF8 { t -> Bool in
            if !wire {
                guard t.count == bytes.count else { return false }
                for k in 0..<t.count where asciiLower(t[k]) != asciiLower(bytes[k]) { return false }
                return true
            }
            // Wire labels: each label's bytes, then a dot in the text where the next label starts.
            var p = 0, k = 0
            while p < bytes.count {
                let n = Int(bytes[p])
                if p > 0 {
                    guard k < t.count, t[k] == UInt8(ascii: ".") else { return false }
                    k += 1
                }
                guard n <= bytes.count - p - 1, k + n <= t.count else { return false }
                for j in 0..<n where asciiLower(t[k + j]) != asciiLower(bytes[p + 1 + j]) { return false }
                k += n
                p += 1 + n
            }
            return k == t.count
        }
    }
}

extension TreeDictionary where Key == NameKey {
    /// Lookups and updates by text, for code that holds a `String`.
    public subscript(_ name: String) -> Value? {
        get { self[NameKey.owned(name)] }
        set { self[NameKey.owned(name)] = newValue }
    }
}

/// FNV-1a, 64 bits: the name keys' hash and the state file's checksum.
public struct FNV1a {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    @inline(__always)
    public mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }
}

import DNSWire
import HashTreeCollections

/// A name as the snapshot's maps key it (a service, a tag, a node, a datacenter): ASCII case-insensitive text.
///
/// Outside this file a key always owns its text. A lookup by a name in a query borrows the query's bytes instead,
/// through a `NameProbe`: the maps below take a probe in their lookup subscripts, and only this file turns a probe
/// into a key, for the length of that one lookup. A probe cannot become a stored key: it is not `Hashable`, nothing
/// outside this module can read its key, and only `NameProbe.with` makes one, lent to a closure. (The lookups are
/// `@inlinable`, so their internals are `@usableFromInline`: without that, every lookup from the Gateway module ran
/// the unspecialized generic code, copying its results through value witnesses.) (A `~Copyable` probe,
/// which the closure could not even keep, crashes Swift 6.3's optimizer in release builds: "Cannot initialize a
/// nonCopyable type with a guaranteed value".) Both hash the same lower-cased bytes
/// (FNV-1a), so a probe finds the stored key that equals it, with nothing copied or allocated.
// Unchecked: the `.borrowed` storage holds a pointer, and only the lookups in this file make one, for the length
// of the lookup, on the querying thread; every key that can be stored or sent owns its text.
public struct NameKey: Hashable, @unchecked Sendable, ExpressibleByStringLiteral, CustomStringConvertible, Comparable {
    @usableFromInline enum Storage {
        case owned(String)
        /// Plain bytes (`wire: false`) or wire-format labels (`wire: true`).
        case borrowed(UnsafeRawBufferPointer, wire: Bool)
    }
    @usableFromInline let storage: Storage

    public init(_ text: String) { storage = .owned(text) }
    public init(stringLiteral value: String) { storage = .owned(value) }
    @usableFromInline init(storage: Storage) { self.storage = storage }

    /// The text as stored.
    public var text: String {
        switch storage {
        case .owned(let s): return s
        case .borrowed(let bytes, let wire): return NameKey.text(bytes, wire: wire)
        }
    }

    public var description: String { text }

    public static func < (a: NameKey, b: NameKey) -> Bool { a.text < b.text }

    /// The lower-cased text of bytes, plain or wire-format labels read as dotted text.
    fileprivate static func text(_ bytes: UnsafeRawBufferPointer, wire: Bool) -> String {
        var out: [UInt8] = []
        forEachByte(bytes, wire: wire) { out.append($0) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Calls `body` with each byte of the text, lower-cased (ASCII only, as DNS compares names).
    @inline(__always)
    fileprivate func forEachByte(_ body: (UInt8) -> Void) {
        switch storage {
        case .owned(let s):
            for b in s.utf8 { body(asciiLower(b)) }
        case .borrowed(let bytes, let wire):
            NameKey.forEachByte(bytes, wire: wire, body)
        }
    }

    @inline(__always)
    fileprivate static func forEachByte(_ bytes: UnsafeRawBufferPointer, wire: Bool, _ body: (UInt8) -> Void) {
        guard wire else {
            for b in bytes { body(asciiLower(b)) }
            return
        }
        var p = 0
        while p < bytes.count {
            let n = Int(bytes[p])
            if p > 0 { body(UInt8(ascii: ".")) }
            for k in (p + 1)..<min(p + 1 + n, bytes.count) { body(asciiLower(bytes[k])) }
            p += 1 + n
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

    /// What the maps (`TreeDictionary`, `Set`) ask for: the FNV-1a hash finished with splitmix64's mixer and the
    /// table's seed, without SipHash (which took a tenth of the fast path's own instructions). Keys come from the
    /// registry, never from queries, so nobody who can only send queries can choose colliding ones; a collision
    /// costs a comparison, not a wrong answer.
    public func _rawHashValue(seed: Int) -> Int {
        var z = fnv &+ UInt64(UInt(bitPattern: seed)) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int(truncatingIfNeeded: z ^ (z >> 31))
    }

    /// Byte for byte, ASCII case folded (as `hash` sees them; Unicode equivalence would break the pairing).
    /// (One switch after the other, not over a tuple of both: the tuple copied a stored key's string, a retain and
    /// a release on every lookup.)
    public static func == (a: NameKey, b: NameKey) -> Bool {
        switch a.storage {
        case .owned(let x):
            switch b.storage {
            case .owned(let y): return x.utf8.count == y.utf8.count && x.utf8.elementsEqual(y.utf8) { asciiLower($0) == asciiLower($1) }
            case .borrowed(let bytes, let wire): return NameKey.matches(bytes, wire: wire, x)
            }
        case .borrowed(let bytes, let wire):
            if case .owned(let x) = b.storage { return NameKey.matches(bytes, wire: wire, x) }
            var x: [UInt8] = [], y: [UInt8] = []
            a.forEachByte { x.append($0) }
            b.forEachByte { y.append($0) }
            return x == y
        }
    }

    /// Whether the lower-cased bytes are `text`'s, ASCII case folded.
    @inline(__always)
    fileprivate static func matches(_ bytes: UnsafeRawBufferPointer, wire: Bool, _ text: String) -> Bool {
        // The stored text's UTF-8 in place (a native or small string always has it); copying the string to reach
        // it, as `withUTF8` on a `var` does, cost a retain and a release on every lookup.
        if let result = text.utf8.withContiguousStorageIfAvailable({ matches(bytes, wire: wire, UnsafeRawBufferPointer($0)) }) {
            return result
        }
        var copy = text
        return copy.withUTF8 { matches(bytes, wire: wire, UnsafeRawBufferPointer($0)) }
    }

    @inline(__always)
    fileprivate static func matches(_ bytes: UnsafeRawBufferPointer, wire: Bool, _ t: UnsafeRawBufferPointer) -> Bool {
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

/// A name in a query, borrowed for lookups: plain bytes, or wire-format labels read as dotted text
/// (`\x02go\x05micro` is `go.micro`); or, where a lookup needs one, a stored key. Made only by `with`, for the
/// length of its closure.
public struct NameProbe {
    @usableFromInline let key: NameKey

    @usableFromInline init(_ key: NameKey) { self.key = key }

    /// Lends `body` a probe of `bytes`, which must stay valid for the call.
    @inlinable @inline(__always)
    public static func with<R>(_ bytes: UnsafeRawBufferPointer, wire: Bool, _ body: (NameProbe) throws -> R) rethrows -> R {
        try body(NameProbe(NameKey(storage: .borrowed(bytes, wire: wire))))
    }

    /// Lends `body` a probe of a stored key (a lookup that takes probes, for a name the query does not give).
    @inlinable @inline(__always)
    public static func with<R>(_ key: NameKey, _ body: (NameProbe) throws -> R) rethrows -> R {
        try body(NameProbe(key))
    }

    /// Whether the probe names `key`.
    @inline(__always)
    public func matches(_ other: NameKey) -> Bool { key == other }

    /// The text, lower-cased for a borrowed name (copied out).
    public var text: String { key.text }
}

extension TreeDictionary where Key == NameKey {
    /// Lookups and updates by text, for code that holds a `String`.
    public subscript(_ name: String) -> Value? {
        get { self[NameKey(name)] }
        set { self[NameKey(name)] = newValue }
    }

    /// A lookup by a query's name, copying nothing.
    @inlinable @inline(__always)
    public func value(at probe: NameProbe) -> Value? { self[probe.key] }
}

extension Set where Element == NameKey {
    @inlinable @inline(__always)
    public func contains(_ probe: NameProbe) -> Bool { contains(probe.key) }
}

extension TreeDictionary where Key == CatalogSnapshot.NodeKey {
    /// A node by name and datacenter, copying nothing.
    @inlinable @inline(__always)
    public func value(name: NameProbe, datacenter: NameProbe) -> Value? {
        self[CatalogSnapshot.NodeKey(name: name.key, datacenter: datacenter.key)]
    }
}

/// A selection of a service's instances, as a resolver's answer cache keys it: a kind, a label (a tag or a
/// named port; empty for every instance), a datacenter, and the client's zone for nearest-first answers (empty
/// without). Stored keys own their text; lookups take probes.
public struct SelectionKey: Hashable, Sendable {
    public let kind: UInt8
    public let label: NameKey
    public let datacenter: NameKey
    public let zone: NameKey

    public init(kind: UInt8, label: String, datacenter: String, zone: String = "") {
        self.kind = kind
        self.label = NameKey(label)
        self.datacenter = NameKey(datacenter)
        self.zone = NameKey(zone)
    }

    @usableFromInline init(kind: UInt8, label: NameKey, datacenter: NameKey, zone: NameKey) {
        self.kind = kind
        self.label = label
        self.datacenter = datacenter
        self.zone = zone
    }
}

extension Dictionary where Key == SelectionKey {
    /// A lookup by a query's names, copying nothing.
    @inlinable @inline(__always)
    public func value(kind: UInt8, label: NameProbe, datacenter: NameProbe, zone: NameKey = "") -> Value? {
        self[SelectionKey(kind: kind, label: label.key, datacenter: datacenter.key, zone: zone)]
    }
}

/// FNV-1a, 64 bits: the name keys' hash and the state file's checksum.
public struct FNV1a {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    @inline(__always)
    public mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }
}

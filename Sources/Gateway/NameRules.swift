import Catalog
import DNSWire

/// A run of the query name's bytes: wire-format labels read as dotted text (`wire`), or one label's text.
public struct NameSpan: Sendable, Equatable {
    var start: Int
    var end: Int
    var wire: Bool

    /// Lends `body` a lookup probe borrowing `name` (the same bytes the span was taken from).
    @inline(__always)
    func probe<R>(_ name: UnsafeRawBufferPointer, _ body: (NameProbe) -> R) -> R {
        NameProbe.with(UnsafeRawBufferPointer(rebasing: name[start..<end]), wire: wire, body)
    }

    /// The text, lower-cased (copied out; the general path's).
    func text(_ name: UnsafeRawBufferPointer) -> String { probe(name) { $0.text } }
}

/// What a name in the service domain asks for, decided by the naming rules in one place (`Resolver.classify`).
/// The general path answers every plan; the fast path answers the positive service, node and addr plans from
/// bytes it encodes ahead or writes in place, and hands everything else to the general path.
public struct NamePlan: Sendable {
    public enum Kind: Sendable {
        /// Not in the service domain or `--alt-domain`: a zone, a reverse name, or forwarded.
        case outside
        /// In the domain, before the first snapshot has loaded: SERVFAIL, never a false NXDOMAIN.
        case notLoaded
        case apex
        /// `ns.<domain>` when no zone file gives the domain's NS records.
        case nameserver
        /// A zone file for the domain has records at this very name; they take precedence.
        case domainZone
        case nxdomain
        /// A name that exists only because names below it do (RFC 8020): NODATA.
        case nodata
        case service(ServiceEntry, Selector)
        case grpcConfig(ServiceEntry)
        case node(Node)
        /// `<hex>.addr`: the span is the validated hex label.
        case addr(NameSpan)
    }

    /// Which of a service's instances a name selects (`ServiceSelector`, as spans of the name).
    public enum Selector: Sendable, Equatable {
        case all
        case tag(NameSpan)
        /// `_<name>._tcp`: the named port `<name>`, or else the tag.
        case named(NameSpan)
    }

    public var kind: Kind
    /// Whether the name is in `--alt-domain` rather than `--domain` (`Resolver.domain(of:)`).
    public var alt = false
    /// The datacenter label, when the name gives one.
    public var datacenter: NameSpan? = nil
}

extension Resolver {
    /// The service domain, or `--alt-domain`, that holds the name in `wire` (the longer, when both do).
    public func servedDomain(wire name: UnsafeRawBufferPointer) -> DNSName? {
        servesAlt(wire: name).map { $0 ? configuration.altDomain! : configuration.domain }
    }

    /// Nil when the name is in neither domain; else whether it is in `--alt-domain` rather than `--domain`.
    func servesAlt(wire name: UnsafeRawBufferPointer) -> Bool? {
        let primary = DNSName.isSubdomain(wire: name, of: configuration.domain)
        guard let alt = configuration.altDomain, DNSName.isSubdomain(wire: name, of: alt) else { return primary ? false : nil }
        return !primary || alt.wire.count > configuration.domain.wire.count
    }

    public func servedDomain(containing name: DNSName) -> DNSName? {
        name.wire.withUnsafeBytes { servedDomain(wire: $0) }
    }

    /// Where a name outside the served domains (`NamePlan.Kind.outside`) is answered from. The one rule, for the
    /// general path, the forwarding decision and the cache's fast path, of which outside names are ours anyway.
    enum OutsideSource {
        /// A zone file's.
        case zone(Zone)
        /// A reverse name whose address we hold, asked for PTR (or ANY): its answer.
        case pointer(Answer)
        /// A zone served locally with forwarding on (`LocalZones`: RFC 6303, RFC 6761): never forwarded.
        case local(Zone)
        /// A `--forward-zone ZONE=none`: REFUSED, never forwarded.
        case refusedZone(DNSName)
        /// None of ours: forwarded when forwarding is on and the client may recurse, else REFUSED; to the upstreams
        /// of the `--forward-zone` holding it (`zone`), or else to `--upstream`.
        case forwarded(zone: DNSName?)
    }

    func outsideSource(_ name: DNSName, _ type: UInt16, in snapshot: CatalogSnapshot) -> OutsideSource {
        if let zone = snapshot.zone(containing: name) { return .zone(zone) }
        if let answer = pointer(name, type, in: snapshot) { return .pointer(answer) }
        switch configuration.routes.route(for: name) {
        case .local(let zone)?: return .local(zone)
        case .refuse(let zone)?: return .refusedZone(zone)
        case .forward(let zone)?: return .forwarded(zone: zone)
        case nil: return .forwarded(zone: nil)
        }
    }

    /// The naming rules, in one place: what `name` (uncompressed wire bytes, validated) asks for. Reads the bytes
    /// in place and allocates nothing: every lookup borrows the name (`NameKey.probe`).
    /// `zoneHolds` says whether a zone file for the domain has records at this name (the general path looks;
    /// the fast path, which cannot without building a name, says yes and so leaves such names alone).
    public func classify(_ name: UnsafeRawBufferPointer, in snapshot: CatalogSnapshot, zoneHolds: (Zone) -> Bool) -> NamePlan {
        guard let alt = servesAlt(wire: name) else { return NamePlan(kind: .outside) }
        let domain = alt ? configuration.altDomain! : configuration.domain
        guard snapshot.isLoaded else { return NamePlan(kind: .notLoaded, alt: alt) }
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: 128) { offsets -> NamePlan in
            // offsets[i]: where label i starts; offsets[count]: the root label.
            var count = 0, p = 0
            while name[p] != 0 { offsets[count] = p; count += 1; p += Int(name[p]) + 1 }
            offsets[count] = p
            let labels = Labels(name: name, offsets: offsets, count: count - domain.labelCount)
            var datacenter: NameSpan? = nil
            let kind = domainKind(labels, &datacenter, snapshot, zone: snapshot.zoneIndex(for: domain), zoneHolds)
            return NamePlan(kind: kind, alt: alt, datacenter: datacenter)
        }
    }

    /// The served domain a plan's name is in.
    public func domain(of plan: NamePlan) -> DNSName { plan.alt ? configuration.altDomain! : configuration.domain }

    /// The labels in front of the domain, read in place.
    struct Labels {
        let name: UnsafeRawBufferPointer
        let offsets: UnsafeMutableBufferPointer<Int>
        /// How many labels come before the domain.
        let count: Int

        func label(_ i: Int) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: name[(offsets[i] + 1)..<offsets[i + 1]])
        }
        /// Labels `from..<to` as dotted text.
        func span(_ from: Int, _ to: Int) -> NameSpan { NameSpan(start: offsets[from], end: offsets[to], wire: true) }
        /// Label `i`'s text, without its first `drop` bytes.
        func text(_ i: Int, dropping drop: Int = 0) -> NameSpan {
            NameSpan(start: offsets[i] + 1 + drop, end: offsets[i + 1], wire: false)
        }
        func probe<R>(_ span: NameSpan, _ body: (NameProbe) -> R) -> R { span.probe(name, body) }
        func isUnderscored(_ i: Int) -> Bool { let l = label(i); return !l.isEmpty && l[0] == UInt8(ascii: "_") }
        func label(_ i: Int, is text: StaticString) -> Bool { Labels.equal(label(i), text) }

        static func equal(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
            guard bytes.count == text.utf8CodeUnitCount else { return false }
            let t = UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount)
            for k in 0..<bytes.count where asciiLower(bytes[k]) != t[k] { return false }
            return true
        }
    }

    /// Lends `body` the datacenter a name selects: the label at `span` in `name`, or else the local one.
    @inline(__always)
    func withDatacenter<R>(_ span: NameSpan?, _ name: UnsafeRawBufferPointer, _ body: (NameProbe) -> R) -> R {
        if let span { return span.probe(name, body) }
        return NameProbe.with(configuration.datacenterKey, body)
    }

    private enum Branch { case service, node, addr }

    private static func branch(_ label: UnsafeRawBufferPointer) -> Branch? {
        if Labels.equal(label, "service") { return .service }
        if Labels.equal(label, "node") { return .node }
        if Labels.equal(label, "addr") { return .addr }
        return nil
    }

    /// `[rest].<service|node|addr>[.<dc>].<domain>`: the kind label is found from the right, as Consul does.
    private func domainKind(_ l: Labels, _ datacenter: inout NameSpan?, _ snapshot: CatalogSnapshot, zone: Int?,
                            _ zoneHolds: (Zone) -> Bool) -> NamePlan.Kind {
        // Records a zone file gives for the domain take precedence at their own names.
        if let zone, l.count > 0, zoneHolds(snapshot.zones[zone]) { return .domainZone }
        if l.count == 0 { return .apex }
        if zone == nil, l.count == 1, l.label(0, is: "ns") { return .nameserver }
        let branch: Branch
        let restEnd: Int
        if let b = Self.branch(l.label(l.count - 1)) {
            (branch, restEnd) = (b, l.count - 1)
        } else if l.count >= 2, let b = Self.branch(l.label(l.count - 2)) {
            (branch, restEnd) = (b, l.count - 2)
            datacenter = l.text(l.count - 1)
        } else {
            // `<dc>.<domain>` is an empty non-terminal: NODATA, not NXDOMAIN (RFC 8020).
            return l.count == 1 && l.probe(l.text(0)) { snapshot.datacenters.contains($0) } ? .nodata : .nxdomain
        }
        if let dc = datacenter, !l.probe(dc, { snapshot.datacenters.contains($0) }) { return .nxdomain }
        // `service.<domain>`, `node.dc1.<domain>` …: empty non-terminals too.
        if restEnd == 0 { return .nodata }
        switch branch {
        case .service:
            return serviceKind(l, restEnd, snapshot)
        case .node:
            let found = l.probe(l.span(0, restEnd)) { name in
                withDatacenter(datacenter, l.name) { dc in snapshot.nodes.value(name: name, datacenter: dc) }
            }
            guard let node = found, !node.name.isEmpty else { return .nxdomain }
            return .node(node)
        case .addr:
            guard restEnd == 1, Self.hexAddress(l.label(0)) != nil else { return .nxdomain }
            return .addr(l.text(0))
        }
    }

    /// The naming rule for services. Service names may contain dots, so the labels are read as **the longest
    /// service name that exists** in the snapshot, and whatever is left in front selects instances:
    /// - nothing: every instance;
    /// - `_<name>._tcp` or `_<name>._udp`: the named port `<name>` (a Kratos endpoint's scheme), or else the tag;
    /// - `_grpc_config`, when the service announces a gRPC policy: its service config (TXT);
    /// - anything else: a tag, which may itself contain dots (`a.b.web` is the tag `a.b` on `web`, as in Consul).
    /// When no suffix names a service, the RFC 2782 form `_<service>._<tag|tcp|udp>` is tried. Consul reads every
    /// label but the last as a tag; the two differ only when a dotted service exists.
    private func serviceKind(_ l: Labels, _ restEnd: Int, _ snapshot: CatalogSnapshot) -> NamePlan.Kind {
        // A label holding a dot (escaped in the query) can never match: dots separate labels in service names.
        for i in 0..<restEnd where l.label(i).contains(UInt8(ascii: ".")) { return .nxdomain }
        for start in 0..<restEnd {
            guard let entry = l.probe(l.span(start, restEnd), { snapshot.services.value(at: $0) }) else { continue }
            if start == 0 { return .service(entry, .all) }
            if start == 2, l.isUnderscored(0), l.label(1, is: "_tcp") || l.label(1, is: "_udp") {
                return .service(entry, .named(l.text(0, dropping: 1)))
            }
            if start == 1, l.label(0, is: "_grpc_config"), grpcPolicy(for: entry) != nil { return .grpcConfig(entry) }
            return .service(entry, .tag(l.span(0, start)))
        }
        if restEnd == 2, l.isUnderscored(0), l.isUnderscored(1), let entry = l.probe(l.text(0, dropping: 1), { snapshot.services.value(at: $0) }) {
            return .service(entry, l.label(1, is: "_tcp") || l.label(1, is: "_udp") ? .all : .tag(l.text(1, dropping: 1)))
        }
        return isEmptyNonTerminal(l, restEnd, snapshot) ? .nodata : .nxdomain
    }

    /// Names in front of `service` that no service matches, but that exist because something below them does:
    /// a proper suffix of a dotted service name (`greeter` under `go.micro.srv.greeter`), or the `_<tag>`,
    /// `_tcp` and `_udp` parents of RFC 2782 names. NODATA there, not NXDOMAIN, which would deny the names
    /// below (RFC 8020; dnsviz's INCONSISTENT_NXDOMAIN_ANCESTOR).
    private func isEmptyNonTerminal(_ l: Labels, _ restEnd: Int, _ snapshot: CatalogSnapshot) -> Bool {
        if l.probe(l.span(0, restEnd), { snapshot.names.serviceSuffixes.value(at: $0) }) != nil { return true }
        guard restEnd == 1, l.isUnderscored(0) else { return false }
        if l.label(0, is: "_tcp") || l.label(0, is: "_udp") { return !snapshot.services.isEmpty }
        return l.probe(l.text(0, dropping: 1)) { snapshot.names.tags.value(at: $0) } != nil
    }

    /// `<hex>.addr`: 8 hex digits for IPv4, 32 for IPv6; the address's bytes in `out` (16 bytes of room) and
    /// how many there are, or nil.
    static func hexAddress(_ label: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer? = nil) -> Int? {
        guard label.count == 8 || label.count == 32 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        for k in stride(from: 0, to: label.count, by: 2) {
            guard let hi = nibble(label[k]), let lo = nibble(label[k + 1]) else { return nil }
            out?[k / 2] = hi << 4 | lo
        }
        return label.count / 2
    }

    /// The address an `addr` plan names (the general path's form).
    static func address(_ span: NameSpan, in name: UnsafeRawBufferPointer) -> Address? {
        withUnsafeTemporaryAllocation(byteCount: 16, alignment: 1) { out -> Address? in
            guard let n = hexAddress(UnsafeRawBufferPointer(rebasing: name[span.start..<span.end]), into: out) else { return nil }
            let bytes = Array(out.prefix(n))
            return n == 4 ? .v4(IPv4(bytes: bytes)) : .v6(IPv6(bytes: bytes))
        }
    }
}

extension NamePlan.Selector {
    /// The general path's selector, with the spans' text copied out.
    func selector(_ name: UnsafeRawBufferPointer) -> ServiceSelector {
        switch self {
        case .all: return .all
        case .tag(let s): return .tag(s.text(name))
        case .named(let s): return .named(s.text(name))
        }
    }
}

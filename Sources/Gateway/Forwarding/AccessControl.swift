import DNSWire
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A CIDR block, IPv4 or IPv6.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    let network: [UInt8]
    let prefix: Int

    public init(_ text: String) throws(ConfigurationError) {
        let parts = text.split(separator: "/", maxSplits: 1)
        let addrText = String(parts[0])
        var bytes: [UInt8]
        // DNSWire's parsers, the one pair for every address Signpost reads (no `010.1.1.1`, no `+1`).
        if let v4 = IPv4(addrText) { bytes = v4.array } else if addrText.contains(":"), let v6 = IPv6(addrText) { bytes = v6.bytes } else {
            throw ConfigurationError("invalid CIDR \"\(text)\"")
        }
        let maxPrefix = bytes.count * 8
        let prefix = parts.count == 2 ? Int(parts[1]) : maxPrefix
        guard let prefix, (0...maxPrefix).contains(prefix) else { throw ConfigurationError("invalid prefix length in \"\(text)\"") }
        for i in 0..<bytes.count {
            let keep = max(0, min(8, prefix - i * 8))
            bytes[i] &= keep == 8 ? 0xFF : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
        }
        self.network = bytes
        self.prefix = prefix
    }

    public func contains<Bytes: RandomAccessCollection>(_ address: Bytes) -> Bool where Bytes.Element == UInt8, Bytes.Index == Int {
        guard address.count == network.count else { return false }
        for i in 0..<address.count {
            let keep = max(0, min(8, prefix - i * 8))
            if keep == 0 { return true }
            let mask: UInt8 = keep == 8 ? 0xFF : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
            if address[address.startIndex + i] & mask != network[i] { return false }
        }
        return true
    }

    public var description: String {
        let address = network.count == 4 ? IPv4(bytes: network).description : IPv6(bytes: network).description
        return "\(address)/\(prefix)"
    }

    /// Loopback, RFC 1918, RFC 6598 (CGNAT), link-local, and IPv6 loopback, ULA and link-local.
    public static let privateDefaults: [CIDR] = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                 "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10"].map { try! CIDR($0) }
}

/// Who may have names outside the domain resolved (`--allow-recursion`). Everyone gets service answers.
public struct AccessControl: Sendable, Equatable {
    public var allowed: [CIDR]

    public init(allowed: [CIDR] = CIDR.privateDefaults) { self.allowed = allowed }

    public func mayRecurse(_ client: SocketAddress?) -> Bool {
        withClientAddress(client) { bytes in allowed.contains { $0.contains(bytes) } } ?? false
    }

    /// The same decision for a raw `sockaddr_in`/`sockaddr_in6`, read in place (the recvmmsg engine's).
    public func mayRecurse(sockaddr: UnsafeRawPointer) -> Bool {
        withClientAddress(sockaddr: sockaddr) { bytes in allowed.contains { $0.contains(bytes) } } ?? false
    }
}

/// A client's address bytes, read in place from a raw `sockaddr_in`/`sockaddr_in6`: 4 for IPv4, 16 for IPv6.
/// An IPv4-mapped IPv6 address (an IPv4 client of a dual-stack socket) is given as its 4 IPv4 bytes, so it is
/// judged as the IPv4 client it is. nil for any other family.
func withClientAddress<R>(sockaddr: UnsafeRawPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R? {
    switch Int32(sockaddr.load(as: sa_family_t.self)) {
    case AF_INET:
        return body(UnsafeRawBufferPointer(start: sockaddr + 4, count: 4))  // sin_addr
    case AF_INET6:
        let bytes = UnsafeRawBufferPointer(start: sockaddr + 8, count: 16)  // sin6_addr
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            return body(UnsafeRawBufferPointer(rebasing: bytes[12...]))
        }
        return body(bytes)
    default:
        return nil
    }
}

/// The same for a `SocketAddress`.
func withClientAddress<R>(_ client: SocketAddress?, _ body: (UnsafeRawBufferPointer) -> R) -> R? {
    switch client {
    case .v4(let a)?: return withUnsafeBytes(of: a.address) { withClientAddress(sockaddr: $0.baseAddress!, body) }
    case .v6(let a)?: return withUnsafeBytes(of: a.address) { withClientAddress(sockaddr: $0.baseAddress!, body) }
    default: return nil
    }
}

/// The nameservers of a resolv.conf, as upstreams, leaving out any address Signpost itself listens on,
/// so it never forwards to itself.
public func defaultUpstreams(resolvConf: String, listen: [ListenAddress]) -> [ListenAddress] {
    resolvConf.split(separator: "\n").compactMap { line -> ListenAddress? in
        let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard f.count >= 2, f[0] == "nameserver" else { return nil }
        var host = String(f[1])
        if let pct = host.firstIndex(of: "%") { host = String(host[..<pct]) }  // IPv6 zone index
        let address = ListenAddress(host: host, port: 53)
        // A wildcard listener is reachable on every local address; of those, resolv.conf can only name loopback.
        let loopback = host.hasPrefix("127.") || host == "::1"
        let ours = listen.contains { l in
            l.port == 53 && (l.host == host || (loopback && (l.host == "0.0.0.0" || l.host == "::")))
        }
        return ours ? nil : address
    }
}

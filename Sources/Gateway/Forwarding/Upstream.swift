import NIOCore

/// One upstream resolver: its address, and for DNS over TLS (RFC 7858) the name its certificate must carry.
public struct Upstream: Sendable, Hashable, CustomStringConvertible {
    public var address: SocketAddress
    /// `tls://IP[:853]@NAME`: DNS over TLS only, the upstream's certificate checked against NAME. Nil: plain DNS.
    public var tlsName: String?

    public init(_ address: SocketAddress, tlsName: String? = nil) {
        self.address = address
        self.tlsName = tlsName
    }

    public var isTLS: Bool { tlsName != nil }

    /// As metrics, logs and `explain` name it: `IP:PORT`, or `tls://IP:PORT@NAME`.
    public var description: String {
        let hostPort = "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        return tlsName.map { "tls://\(hostPort)@\($0)" } ?? hostPort
    }

    /// `HOST[:PORT]` (port 53), or `tls://HOST[:PORT]@NAME` (port 853, RFC 7858 §3.1). HOST is an IP address: the
    /// forwarder never resolves a name to reach its resolver. `[v6]:PORT` for IPv6 with a port.
    public init(parsing text: String) throws(ConfigurationError) {
        var rest = Substring(text)
        var name: String? = nil
        var port = 53
        if rest.lowercased().hasPrefix("tls://") {
            rest = rest.dropFirst("tls://".count)
            guard let at = rest.lastIndex(of: "@"), !rest[rest.index(after: at)...].isEmpty else {
                throw ConfigurationError("invalid upstream \"\(text)\": tls:// needs @NAME, the name its certificate carries (tls://IP[:853]@NAME)")
            }
            name = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
            port = 853
        }
        let listen: ListenAddress
        do { listen = try ListenAddress(parsing: String(rest), defaultPort: port) } catch {
            throw ConfigurationError("invalid upstream \"\(text)\": \(error.description)")
        }
        guard let address = try? SocketAddress(ipAddress: listen.host, port: listen.port) else {
            throw ConfigurationError("invalid upstream \"\(text)\": \(listen.host) is not an IP address")
        }
        self.init(address, tlsName: name)
    }

    /// A listening address as an upstream would be, to compare with one; nil when it is not an IP address.
    public init?(parsingIfAddress listen: ListenAddress) {
        guard let address = try? SocketAddress(ipAddress: listen.host, port: listen.port) else { return nil }
        self.init(address)
    }
}

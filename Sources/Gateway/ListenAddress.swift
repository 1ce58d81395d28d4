/// `HOST:PORT`, `[IPv6]:PORT`, or a bare host (port 8600).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String, defaultPort: Int = 8600) throws(ConfigurationError) {
        var host = text
        var portText: Substring? = nil
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw ConfigurationError("invalid address \"\(text)\": missing ]") }
            host = String(text[text.index(after: text.startIndex)..<close])
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw ConfigurationError("invalid address \"\(text)\"") }
                portText = after.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (0...65535).contains(p) else {
                throw ConfigurationError("invalid port in \"\(text)\": expected 0-65535")
            }
            port = p
        }
        guard !host.isEmpty else { throw ConfigurationError("invalid address \"\(text)\": missing host") }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

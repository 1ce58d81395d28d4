import ArgumentParser
import Catalog
import Registries
import Foundation
import Gateway

/// A duration as every duration setting takes it, parsed once (`GoDuration`): `500ms`, `1.5s`, `1h30m`, `10`.
struct DurationSetting: Sendable, Equatable, Codable, ExpressibleByArgument, CustomStringConvertible {
    var value: Duration

    init(_ value: Duration) { self.value = value }

    init?(argument: String) {
        guard let d = GoDuration.parse(argument) else { return nil }
        value = d
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        // A bare number is seconds, as on the command line: one parser for both.
        let text = try (try? c.decode(Int64.self)).map(String.init) ?? c.decode(String.self)
        guard let d = GoDuration.parse(text) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected a duration such as 500ms, 30s or 1h30m, got \"\(text)\"")
        }
        value = d
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(GoDuration.format(value))
    }

    var description: String { GoDuration.format(value) }
    /// Whole seconds, rounded down: TTLs are counted in seconds.
    var seconds: UInt32 { UInt32(clamping: value.components.seconds) }
}

/// Every `serve` setting as given, by the command line or the `--config` file: nil where neither gives it.
/// The command line and the file are decoded into this one type; `overlaid` puts the command line over the file,
/// and `ServeConfiguration(_:)` applies the defaults and checks every value.
struct Settings: Sendable, Equatable, Codable {
    var listen: [String]?
    var catalog: String?
    var zones: String?
    var datacenter: String?
    var registry: [String]?
    var maxStale: DurationSetting?
    var domain: String?
    var altDomain: String?
    var onlyPassing: Bool?
    var answerLimit: Int?
    var nodeMetaTxt: Bool?
    var serviceTtl: [String]?
    var nodeTtl: DurationSetting?
    var grpcLbPolicy: GRPCLBPolicy?
    var order: AnswerOrder?
    var maxUdpSize: Int?
    var tcpIdleTimeout: DurationSetting?
    var tcpMaxConnections: Int?
    var tcpMaxInflight: Int?
    var logLevel: String?
    var threads: Int?
    var udpEngine: DNSServer.UDPEngine?
    var admin: String?
    var rrlRate: Int?
    var rrlSlip: Int?
    var rrlExempt: [String]?
    var user: String?
    var queryLog: Bool?
    var upstream: [String]?
    var forward: Bool?
    var upstreamPolicy: Forwarder.Policy?
    var upstreamTimeout: DurationSetting?
    var maxConcurrent: Int?
    var cacheSize: Int?
    var cacheMinTtl: DurationSetting?
    var cacheMaxTtl: DurationSetting?
    var staleTtl: DurationSetting?
    var allowRecursion: [String]?
    var stateDir: String?

    /// The file's keys are the flag names; the JSON names are the same with `_` for `-` (`only_passing`).
    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, catalog, zones, datacenter, registry, domain, order, threads, admin, user, upstream, forward
        case maxStale = "max_stale", altDomain = "alt_domain", onlyPassing = "only_passing", answerLimit = "answer_limit"
        case nodeMetaTxt = "node_meta_txt", serviceTtl = "service_ttl", nodeTtl = "node_ttl", grpcLbPolicy = "grpc_lb_policy"
        case maxUdpSize = "max_udp_size", tcpIdleTimeout = "tcp_idle_timeout", tcpMaxConnections = "tcp_max_connections"
        case tcpMaxInflight = "tcp_max_inflight", logLevel = "log_level", udpEngine = "udp_engine", rrlRate = "rrl_rate"
        case rrlSlip = "rrl_slip", rrlExempt = "rrl_exempt", queryLog = "query_log", upstreamPolicy = "upstream_policy"
        case upstreamTimeout = "upstream_timeout", maxConcurrent = "max_concurrent", cacheSize = "cache_size"
        case cacheMinTtl = "cache_min_ttl", cacheMaxTtl = "cache_max_ttl", staleTtl = "stale_ttl", allowRecursion = "allow_recursion"
        case stateDir = "state_dir"
    }

    /// `self` with every setting `top` gives replaced by `top`'s: the command line over the file. A list given on
    /// the command line replaces the file's list.
    func overlaid(with top: Settings) throws -> Settings {
        let encoder = JSONEncoder()
        guard case .object(var fields, var keys) = try JSONParser.parse(Array(encoder.encode(self))).value,
              case .object(let over, let overKeys) = try JSONParser.parse(Array(encoder.encode(top))).value else { return top }
        for key in overKeys {
            if fields[key] == nil { keys.append(key) }
            fields[key] = over[key]
        }
        return try JSONDecoder().decode(Settings.self, from: Data(JSONNode(value: .object(fields, keys: keys), line: 0).jsonText.utf8))
    }

    /// The `serve` settings `--config FILE` gives. A problem is reported with the file, the line and the reason.
    static func decode(file path: String) throws(CatalogProblem) -> Settings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CatalogProblem(path: path, line: 0, reason: "cannot read config file")
        }
        let root: JSONNode
        do { root = try JSONParser.parse([UInt8](data)) } catch {
            throw CatalogProblem(path: path, line: error.line, reason: "invalid JSON: \(error.reason)")
        }
        guard case .object(let fields, let keys) = root.value else {
            throw CatalogProblem(path: path, line: root.line, reason: "expected an object of settings")
        }
        var normalized: [String: JSONNode] = [:]
        var given: [String: JSONNode] = [:]
        for key in keys {
            let name = key.lowercased().replacingOccurrences(of: "-", with: "_")
            do { try normalize(name, fields[key]!, into: &normalized) } catch {
                let reason = error.description.hasPrefix("unknown") ? "unknown setting \"\(key)\"\(error.description.dropFirst("unknown setting".count))"
                    : "\(key): \(error.description)"
                throw CatalogProblem(path: path, line: fields[key]!.line, reason: reason)
            }
            given[name == "no_forward" ? "forward" : name] = fields[key]!
        }
        let text = JSONNode(value: .object(normalized, keys: normalized.keys.sorted()), line: root.line).jsonText
        do {
            return try JSONDecoder().decode(Settings.self, from: Data(text.utf8))
        } catch let error as DecodingError {
            let (key, reason) = Self.explain(error)
            let got = given[key].map { ", got \($0.typeName)" } ?? ""
            throw CatalogProblem(path: path, line: given[key]?.line ?? root.line,
                                 reason: "\(key.replacingOccurrences(of: "_", with: "-")): \(reason)\(reason.hasPrefix("expected") ? got : "")")
        } catch {
            throw CatalogProblem(path: path, line: root.line, reason: "\(error)")
        }
    }

    private static let lists: Set<String> = ["listen", "registry", "upstream", "allow_recursion", "rrl_exempt", "service_ttl"]

    /// One key of the file, in the form `Codable` reads: a bare string where a list goes is a list of one;
    /// `service_ttl` may be Consul's map (`{"*": "5s", "web": "30s"}`); `no_forward` is `forward` inverted.
    private static func normalize(_ name: String, _ node: JSONNode, into out: inout [String: JSONNode]) throws(ConfigurationError) {
        switch (name, node.value) {
        case ("no_forward", .bool(let b)):
            out["forward"] = JSONNode(value: .bool(!b), line: node.line)
        case ("no_forward", _):
            throw ConfigurationError("expected true or false, got \(node.typeName)")
        case ("service_ttl", .object(let map, let names)):
            var items: [JSONNode] = []
            for n in names {
                guard case .string(let ttl) = map[n]!.value else { throw ConfigurationError("expected an object of name to duration") }
                items.append(JSONNode(value: .string("\(n)=\(ttl)"), line: node.line))
            }
            out[name] = JSONNode(value: .array(items), line: node.line)
        case (_, .string) where lists.contains(name):
            out[name] = JSONNode(value: .array([node]), line: node.line)
        case _ where CodingKeys(rawValue: name) != nil:
            out[name] = node
        default:
            let known = CodingKeys.allCases.map { $0.rawValue.replacingOccurrences(of: "_", with: "-") } + ["no-forward"]
            throw ConfigurationError("unknown setting (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    /// The key and a one-line reason for a decoding failure.
    private static func explain(_ error: DecodingError) -> (String, String) {
        switch error {
        case .typeMismatch(let type, let c), .valueNotFound(let type, let c):
            return (c.codingPath.first?.stringValue ?? "?", "expected \(describe(type))")
        case .dataCorrupted(let c):
            return (c.codingPath.first?.stringValue ?? "?", c.debugDescription)
        case .keyNotFound(let key, _):
            return (key.stringValue, "missing")
        @unknown default:
            return ("?", "\(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Bool.Type, is Bool?.Type: return "true or false"
        case is Int.Type, is Int?.Type: return "an integer"
        case is [String].Type, is [String]?.Type: return "a string or an array of strings"
        default: return "a string"
        }
    }
}

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

/// One `serve` setting as the `--config` file gives it: the flag's name (the file takes it with `-` or `_`, in any
/// case) and where it goes in `Serve`. `Serve`'s properties are the settings, declared once with their flags and
/// help; this table is the one list of them for the file, and `SettingsTableTests` checks that it names every
/// flag. A value the command line gives wins over the file's.
struct FileSetting {
    let name: String
    /// Reads the file's value into `serve`, unless the command line gave one.
    let read: (inout Serve, JSONNode) throws(ConfigurationError) -> Void

    /// A single value, decoded as its type decodes (a duration also from a bare number of seconds).
    static func value<V: Decodable>(_ name: String, _ path: WritableKeyPath<Serve, V?>) -> FileSetting {
        FileSetting(name: name) { serve, node throws(ConfigurationError) in
            guard serve[keyPath: path] == nil else { return }
            serve[keyPath: path] = try decode(V.self, node)
        }
    }

    /// A list: the command line's, when it gives any, replaces the file's; a bare string is a list of one.
    /// `map` reads an object instead (`service-ttl` as Consul's map, `{"*": "5s", "web": "30s"}`).
    static func list(_ name: String, _ path: WritableKeyPath<Serve, [String]>,
                     map: ((String, String) -> String)? = nil) -> FileSetting {
        FileSetting(name: name) { serve, node throws(ConfigurationError) in
            guard serve[keyPath: path].isEmpty else { return }
            switch node.value {
            case .string(let one): serve[keyPath: path] = [one]
            case .object(let fields, let keys) where map != nil:
                serve[keyPath: path] = try keys.map { key throws(ConfigurationError) in
                    guard case .string(let value) = fields[key]!.value else { throw ConfigurationError("expected an object of name to duration") }
                    return map!(key, value)
                }
            default: serve[keyPath: path] = try decode([String].self, node)
            }
        }
    }

    /// A flag with a `--no-` form: the file takes `no-<name>` too, inverted.
    static func flag(_ name: String, _ path: WritableKeyPath<Serve, Bool?>) -> [FileSetting] {
        [value(name, path), FileSetting(name: "no-" + name) { serve, node throws(ConfigurationError) in
            guard serve[keyPath: path] == nil else { return }
            serve[keyPath: path] = !(try decode(Bool.self, node))
        }]
    }

    private static func decode<V: Decodable>(_ type: V.Type, _ node: JSONNode) throws(ConfigurationError) -> V {
        do { return try JSONDecoder().decode(V.self, from: Data(node.jsonText.utf8)) } catch let error as DecodingError {
            switch error {
            case .dataCorrupted(let c) where !c.debugDescription.hasPrefix("The given data"): throw ConfigurationError(c.debugDescription)
            default: throw ConfigurationError("expected \(describe(V.self)), got \(node.typeName)")
            }
        } catch {
            throw ConfigurationError("\(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Bool.Type: return "true or false"
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        case is [String].Type: return "a string or an array of strings"
        default: return "a string"
        }
    }

    /// The file's name for a key: lower case, `_` for `-`.
    static func key(_ text: String) -> String { text.lowercased().replacingOccurrences(of: "-", with: "_") }
}

extension Serve {
    /// Every setting the file may give, by flag name.
    static var fileSettings: [FileSetting] {
        [.list("listen", \.listen), .value("catalog", \.catalogOptions.catalog), .value("zones", \.catalogOptions.zones),
         .value("datacenter", \.catalogOptions.datacenter), .list("registry", \.registry), .value("max-stale", \.maxStale),
         .value("domain", \.domain), .value("alt-domain", \.altDomain), .value("answer-limit", \.answerLimit),
         .list("service-ttl", \.serviceTTL, map: { "\($0)=\($1)" }), .value("node-ttl", \.nodeTTL),
         .value("grpc-lb-policy", \.grpcLbPolicy), .value("order", \.order), .value("max-udp-size", \.maxUDPSize),
         .value("tcp-idle-timeout", \.tcpIdleTimeout), .value("tcp-max-connections", \.tcpMaxConnections),
         .value("tcp-max-inflight", \.tcpMaxInflight), .value("log-level", \.logLevel), .value("threads", \.threads),
         .value("udp-engine", \.udpEngine), .value("admin", \.admin), .value("rrl-rate", \.rrlRate), .value("rrl-slip", \.rrlSlip),
         .list("rrl-exempt", \.rrlExempt), .value("user", \.user), .list("upstream", \.upstream),
         .value("upstream-policy", \.upstreamPolicy), .value("upstream-timeout", \.upstreamTimeout),
         .value("max-concurrent", \.maxConcurrent), .value("cache-size", \.cacheSize), .value("cache-min-ttl", \.cacheMinTTL),
         .value("cache-max-ttl", \.cacheMaxTTL), .value("stale-ttl", \.staleTTL), .list("allow-recursion", \.allowRecursion),
         .value("state-dir", \.stateDir), .value("locality", \.locality), .value("zone", \.zone), .list("client-zone", \.clientZone),
         .list("locality-key", \.localityKey), .value("locality-min", \.localityMin), .value("locality-min-share", \.localityMinShare),
         .list("ecs-trusted", \.ecsTrusted), .list("forward-zone", \.forwardZone),
         .value("upstream-ca", \.upstreamCa), .value("upstream-idle-timeout", \.upstreamIdleTimeout)]
            + FileSetting.flag("only-passing", \.onlyPassing) + FileSetting.flag("node-meta-txt", \.nodeMetaTxt)
            + FileSetting.flag("query-log", \.queryLog) + FileSetting.flag("forward", \.forward)
            + FileSetting.flag("local-zones", \.localZones)
    }

    /// These settings with the `--config` file's under the command line's. A problem is reported with the file,
    /// the line and the reason.
    func overFile() throws(StartupError) -> Serve {
        guard let path = catalogOptions.config else { return self }
        do { return try overFile(path) } catch { throw StartupError(message: error.description, code: 64) }
    }

    func overFile(_ path: String) throws(CatalogProblem) -> Serve {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CatalogProblem(path: path, line: 0, reason: "cannot read config file")
        }
        let root: JSONNode
        do { root = try JSONParser.parse([UInt8](data), comments: true) } catch {
            throw CatalogProblem(path: path, line: error.line, reason: "invalid JSON: \(error.reason)")
        }
        guard case .object(let fields, let keys) = root.value else {
            throw CatalogProblem(path: path, line: root.line, reason: "expected an object of settings")
        }
        let settings = Self.fileSettings
        var out = self
        for key in keys {
            let node = fields[key]!
            guard let setting = settings.first(where: { FileSetting.key($0.name) == FileSetting.key(key) }) else {
                let known = settings.map(\.name).sorted().joined(separator: ", ")
                throw CatalogProblem(path: path, line: node.line, reason: "unknown setting \"\(key)\" (known: \(known))")
            }
            do { try setting.read(&out, node) } catch {
                throw CatalogProblem(path: path, line: node.line, reason: "\(setting.name): \(error.description)")
            }
        }
        return out
    }
}

import Catalog
import Foundation

/// `--config FILE`: a JSON object whose keys are the flag names (`only-passing` or `only_passing`).
/// Its settings become command-line arguments placed before the real ones, so anything given on the
/// command line wins; a repeatable option given on the command line replaces the file's list.
enum ConfigFile {
    enum Kind { case string, strings, bool, integer, ttlMap }

    static let serveKeys: [String: Kind] = [
        "listen": .strings, "catalog": .string, "zones": .string, "domain": .string, "datacenter": .string,
        "only-passing": .bool, "service-ttl": .ttlMap, "node-ttl": .string, "order": .string,
        "max-udp-size": .integer, "tcp-idle-timeout": .string, "log-level": .string, "threads": .integer,
        "registry": .strings, "max-stale": .string, "admin": .string, "upstream": .strings, "no-forward": .bool,
        "upstream-policy": .string, "upstream-timeout": .string, "max-concurrent": .integer, "cache-size": .integer,
        "cache-min-ttl": .string, "cache-max-ttl": .string, "stale-ttl": .string, "allow-recursion": .strings,
        "query-log": .bool, "udp-engine": .string, "user": .string, "tcp-max-connections": .integer, "tcp-max-inflight": .integer,
        "rrl-rate": .integer, "rrl-slip": .integer, "rrl-exempt": .strings, "grpc-lb-policy": .string,
        "alt-domain": .string, "answer-limit": .integer, "node-meta-txt": .bool,
    ]
    /// The subset `signpost check` uses; the other keys are still validated.
    static let checkKeys: Set<String> = ["catalog", "zones", "datacenter"]

    /// Rewrites `arguments` (without the program name) to include the settings of `--config FILE`, if any.
    static func merge(_ arguments: [String]) throws(CatalogProblem) -> [String] {
        guard let path = configPath(arguments) else { return arguments }
        let subcommand = arguments.first.flatMap { ["serve", "check"].contains($0) ? $0 : nil }
        let wanted = subcommand == "check" ? checkKeys : Set(serveKeys.keys)
        var extra: [String] = []
        for (key, values) in try settings(path: path) where wanted.contains(key) {
            let given = arguments.contains { $0 == "--\(key)" || $0.hasPrefix("--\(key)=") }
            if given { continue }
            extra += values
        }
        var out = arguments
        out.insert(contentsOf: extra, at: subcommand == nil ? 0 : 1)
        return out
    }

    static func configPath(_ arguments: [String]) -> String? {
        for (i, a) in arguments.enumerated() {
            if a == "--config", i + 1 < arguments.count { return arguments[i + 1] }
            if a.hasPrefix("--config=") { return String(a.dropFirst("--config=".count)) }
        }
        return nil
    }

    /// Each known key → the arguments it stands for, in file order.
    static func settings(path: String) throws(CatalogProblem) -> [(String, [String])] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CatalogProblem(path: path, line: 0, reason: "cannot read config file")
        }
        let root: JSONNode
        do {
            root = try JSONParser.parse([UInt8](data))
        } catch {
            throw CatalogProblem(path: path, line: error.line, reason: "invalid JSON: \(error.reason)")
        }
        guard case .object(let fields, let keys) = root.value else {
            throw CatalogProblem(path: path, line: root.line, reason: "expected an object of settings")
        }
        var out: [(String, [String])] = []
        for rawKey in keys {
            let node = fields[rawKey]!
            let key = rawKey.lowercased().replacingOccurrences(of: "_", with: "-")
            guard let kind = serveKeys[key] else {
                throw CatalogProblem(path: path, line: node.line,
                                     reason: "unknown setting \"\(rawKey)\" (known: \(serveKeys.keys.sorted().joined(separator: ", ")))")
            }
            func bad(_ expected: String) -> CatalogProblem {
                CatalogProblem(path: path, line: node.line, reason: "\(rawKey): expected \(expected), got \(node.typeName)")
            }
            let flag = "--\(key)"
            switch (kind, node.value) {
            case (.string, .string(let s)):
                out.append((key, [flag, s]))
            case (.integer, .number(let n)) where n == n.rounded():
                out.append((key, [flag, String(Int(n))]))
            case (.bool, .bool(let b)):
                out.append((key, b ? [flag] : []))
            case (.strings, .string(let s)), (.ttlMap, .string(let s)):
                out.append((key, [flag, s]))
            case (.strings, .array(let items)), (.ttlMap, .array(let items)):
                var args: [String] = []
                for item in items {
                    guard case .string(let s) = item.value else { throw bad("an array of strings") }
                    args += [flag, s]
                }
                out.append((key, args))
            case (.ttlMap, .object(let map, let names)):
                // Consul's service_ttl map: {"*": "5s", "web": "30s", "db*": "1m"}
                var args: [String] = []
                for name in names {
                    guard case .string(let ttl) = map[name]!.value else { throw bad("an object of durations") }
                    args += [flag, "\(name)=\(ttl)"]
                }
                out.append((key, args))
            case (.string, _): throw bad("a string")
            case (.integer, _): throw bad("an integer")
            case (.bool, _): throw bad("true or false")
            case (.strings, _): throw bad("a string or an array of strings")
            case (.ttlMap, _): throw bad("a duration, an array, or an object of name to duration")
            }
        }
        return out
    }
}

import Metrics

/// Why a registration was left out of the snapshot. Every registry reports a skip the same way: one log line
/// naming the registry, the key or file and the reason, and one count in `signpost_registry_skipped_total`.
public enum SkipReason: String, Sendable, CaseIterable, CustomStringConvertible {
    /// A service name with an empty label (`a..b`, `.a`, `a.`, or nothing at all).
    case emptyLabel = "empty_label"
    /// A label over 63 bytes.
    case labelTooLong = "label_too_long"
    /// A name over 255 bytes in wire form.
    case nameTooLong = "name_too_long"
    /// A value in none of the shapes the registry's readers know (etcd layouts, Consul entries).
    case unknownFormat = "unknown_format"

    public var description: String {
        switch self {
        case .emptyLabel: return "the name has an empty label"
        case .labelTooLong: return "a label of the name is over 63 bytes"
        case .nameTooLong: return "the name is over 255 bytes"
        case .unknownFormat: return "the value is in none of the known formats"
        }
    }
}

/// The one rule for service names, in every registry: any name that can be a DNS name, dots included
/// (`hello.service`, `go.micro.srv.greeter`, `grpc.health.v1.greeter`). Dotted names are resolved by the
/// longest existing service name (see the resolver).
public enum ServiceName {
    /// Nil when `name` can be served, else why not.
    public static func problem(_ name: String) -> SkipReason? {
        var wire = 1
        for label in name.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            if label.isEmpty { return .emptyLabel }
            if label.count > 63 { return .labelTooLong }
            wire += label.count + 1
        }
        return wire > 255 ? .nameTooLong : nil
    }

    /// The snapshot's key for a service: its name with ASCII letters folded to lower case.
    public static func key(_ name: String) -> String { name.lowercased() }
}

/// `signpost_registry_skipped_total{registry, reason}`: every series created once, up front.
public struct SkipCounters: Sendable {
    private let counters: [SkipReason: Counter]

    public init(registry: String) {
        var counters: [SkipReason: Counter] = [:]
        for reason in SkipReason.allCases {
            counters[reason] = Counter(label: "signpost_registry_skipped_total",
                                       dimensions: [("registry", registry), ("reason", reason.rawValue)])
        }
        self.counters = counters
    }

    public func count(_ reason: SkipReason) { counters[reason]?.increment() }
}

/// A registration left out, with where it came from (`path:line`, an etcd key, a Consul service).
public struct SkippedName: Sendable, Hashable, CustomStringConvertible {
    public var location: String
    public var name: String
    public var reason: SkipReason

    public init(location: String, name: String, reason: SkipReason) {
        self.location = location
        self.name = name
        self.reason = reason
    }

    public var description: String { "\(location): service \"\(name)\" skipped: \(reason)" }
}

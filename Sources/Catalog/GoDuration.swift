/// Durations written as Go writes them (`time.ParseDuration`): a sequence of decimal numbers, each with a unit,
/// such as `300ms`, `1.5s` or `1h30m`, with `d` for days added. `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`.
/// A bare `0` is zero, and a bare integer is seconds (TTLs are usually written so). Parsed exactly, to the
/// nanosecond: `1.5s` is 1500 ms, and `500ms` is not rounded away. The one parser every duration setting uses.
public enum GoDuration {
    public static func parse(_ text: String) -> Duration? {
        if let seconds = Int64(text), seconds >= 0 { return .seconds(seconds) }
        var rest = Substring(text)
        guard !rest.isEmpty else { return nil }
        var nanoseconds: Double = 0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            rest = rest.dropFirst(unit.count)
            guard let scale = units[String(unit)] else { return nil }
            nanoseconds += value * scale
        }
        // Int64 nanoseconds hold about 292 years; a TTL's UInt32 seconds are 136.
        guard nanoseconds < 9.2e18 else { return nil }
        return .nanoseconds(Int64(nanoseconds.rounded()))
    }

    private static let units: [String: Double] = [
        "ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9, "d": 86400e9,
    ]

    /// Whole seconds of a parsed duration, rounded down, for TTLs (DNS counts TTLs in seconds).
    public static func seconds(_ text: String) -> UInt32? {
        guard let d = parse(text) else { return nil }
        let s = d.components.seconds
        return s <= Int64(Int32.max) ? UInt32(s) : nil
    }

    /// The shortest text that parses back to `d`: `1.5s`, `500ms`, `1h30m` (for logs and `signpost config`).
    public static func format(_ d: Duration) -> String {
        let (s, atto) = d.components
        let ns = s * 1_000_000_000 + atto / 1_000_000_000
        if ns == 0 { return "0s" }
        if ns % 1_000_000_000 != 0 {
            if ns % 1_000_000 == 0 { return "\(ns / 1_000_000)ms" }
            if ns % 1000 == 0 { return "\(ns / 1000)us" }
            return "\(ns)ns"
        }
        var rest = s
        var out = ""
        for (unit, size) in [("d", Int64(86400)), ("h", 3600), ("m", 60)] where rest >= size {
            out += "\(rest / size)\(unit)"
            rest %= size
        }
        if rest > 0 || out.isEmpty { out += "\(rest)s" }
        return out
    }
}

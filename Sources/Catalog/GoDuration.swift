/// Durations written as Go writes them (`time.ParseDuration`): a sequence of decimal numbers, each with a unit,
/// such as `300ms`, `1.5s` or `1h30m`, with `d` for days added. `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`.
/// A bare `0` is zero, and a bare integer is seconds (TTLs are usually written so). Parsed exactly, to the
/// nanosecond: `1.5s` is 1500 ms, and `500ms` is not rounded away. The one parser every duration setting uses.
public enum GoDuration {
    /// The longest duration parsed: what Int64 nanoseconds hold (about 292 years).
    static let maxSeconds: Int64 = Int64.max / 1_000_000_000 - 1

    public static func parse(_ text: String) -> Duration? {
        if let seconds = Int64(text) { return seconds >= 0 && seconds <= maxSeconds ? .seconds(seconds) : nil }
        var rest = Substring(text)
        guard !rest.isEmpty else { return nil }
        var total: Int64 = 0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            rest = rest.dropFirst(unit.count)
            guard let scale = units[String(unit)], let part = nanoseconds(String(number), scale) else { return nil }
            let (sum, overflow) = total.addingReportingOverflow(part)
            guard !overflow, sum <= maxSeconds * 1_000_000_000 else { return nil }
            total = sum
        }
        return .nanoseconds(total)
    }

    /// `number` × `scale` nanoseconds: exact for whole numbers, rounded to the nanosecond for fractions.
    private static func nanoseconds(_ number: String, _ scale: Int64) -> Int64? {
        if let whole = Int64(number) {
            let (ns, overflow) = whole.multipliedReportingOverflow(by: scale)
            return overflow ? nil : ns
        }
        guard let value = Double(number), case let ns = value * Double(scale), ns.isFinite, ns < 9.2e18 else { return nil }
        return Int64(ns.rounded())
    }

    private static let units: [String: Int64] = [
        "ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
        "h": 3_600_000_000_000, "d": 86_400_000_000_000,
    ]

    /// Whole seconds of a parsed duration, rounded down, for TTLs (DNS counts TTLs in seconds).
    public static func seconds(_ text: String) -> UInt32? {
        guard let d = parse(text) else { return nil }
        let s = d.components.seconds
        return s <= Int64(Int32.max) ? UInt32(s) : nil
    }

    /// The shortest text that parses back to `d`: `1.5s`, `500ms`, `1h30m` (for logs).
    public static func format(_ d: Duration) -> String {
        let (s, atto) = d.components
        guard s >= 0, s <= maxSeconds else { return "\(s)s" }
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

/// Capped exponential backoff with full jitter: after n failures, a random delay in [0, min(cap, base·2^(n-1))].
public struct Backoff: Sendable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .milliseconds(100), cap: Duration = .seconds(5)) {
        self.base = base
        self.cap = cap
    }

    public func delay(afterFailures failures: Int) -> Duration {
        let ceiling = min(cap, base * (1 << min(max(failures - 1, 0), 30)))
        let ns = ceiling.components.seconds * 1_000_000_000 + ceiling.components.attoseconds / 1_000_000_000
        return .nanoseconds(Int64.random(in: 0...max(ns, 0)))
    }
}

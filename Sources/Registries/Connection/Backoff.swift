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

/// A token bucket (the blocking-query docs' advice for watches whose results change fast): `burst` updates go at
/// once, then one per `interval`, so a flapping check costs one update per interval, not a tight loop.
public struct TokenBucket: Sendable {
    public var burst: Double
    public var interval: Duration
    private var tokens: Double
    private var last: ContinuousClock.Instant

    public init(burst: Int = 2, interval: Duration = .seconds(1), now: ContinuousClock.Instant = .now) {
        self.burst = Double(burst)
        self.interval = interval
        self.tokens = Double(burst)
        self.last = now
    }

    /// Takes a token; returns how long to wait first (zero when one was there).
    public mutating func take(now: ContinuousClock.Instant = .now) -> Duration {
        let seconds = Double((now - last).components.seconds) + Double((now - last).components.attoseconds) / 1e18
        let per = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        tokens = min(burst, tokens + seconds / per)
        last = now
        tokens -= 1
        guard tokens < 0 else { return .zero }
        return .nanoseconds(Int64(-tokens * per * 1e9))
    }
}

import Catalog
import Registries
import Testing

@Suite("Token bucket (per-watch churn limit)")
struct TokenBucketTests {
    @Test func burstThenOnePerInterval() {
        let t0 = ContinuousClock.now
        var bucket = TokenBucket(burst: 2, interval: .seconds(1), now: t0)
        #expect(bucket.take(now: t0) == .zero)
        #expect(bucket.take(now: t0) == .zero)
        #expect(bucket.take(now: t0) == .seconds(1), "the third waits a whole interval")
        // Having waited, the next one a moment later waits another interval: one update a second under churn.
        #expect(bucket.take(now: t0 + .seconds(1)) == .seconds(1))
        // Quiet for a while: the burst is back, but never more than the burst.
        #expect(bucket.take(now: t0 + .seconds(10)) == .zero)
        #expect(bucket.take(now: t0 + .seconds(10)) == .zero)
        #expect(bucket.take(now: t0 + .seconds(10)) > .zero)
    }
}

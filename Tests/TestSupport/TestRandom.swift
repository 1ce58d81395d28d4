import Foundation
import Synchronization

// Randomized tests draw from a seeded generator, so a failure reproduces: each failure message names the seed,
// and SIGNPOST_TEST_SEED=<seed> (decimal or 0x-hex) replays that run. Without it, every run takes a fresh seed.
// Every test target depends on this one library target (TestSupport).

/// SplitMix64: small, fast, and good enough to drive mutation tests.
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// This run's seed: $SIGNPOST_TEST_SEED, else one taken from the clock. Printed once, and named in failures.
public let testSeed: UInt64 = {
    let seed: UInt64
    if let text = ProcessInfo.processInfo.environment["SIGNPOST_TEST_SEED"],
       let value = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text) {
        seed = value
    } else {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        seed = (UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)) ^ (UInt64(getpid()) << 48)
    }
    print("random tests: SIGNPOST_TEST_SEED=\(seed)")
    return seed
}()

/// A generator for one test, seeded from `testSeed` and the test's own name, so tests running in parallel or in
/// another order each replay the same sequence.
public func seededGenerator(_ test: String = #function) -> SeededGenerator {
    var g = SeededGenerator(seed: testSeed)
    for byte in test.utf8 { g = SeededGenerator(seed: g.next() ^ UInt64(byte)) }
    return g
}

/// What a failure message says so the run can be replayed.
public var seedNote: String { "SIGNPOST_TEST_SEED=\(testSeed)" }

private let queryIDs = Mutex(SeededGenerator(seed: testSeed ^ 0x5155_4552_5949_4453))

/// A query ID from a generator seeded with `testSeed`. It is shared by the target's tests, so which IDs one test
/// gets depends on the order tests ran in; no outcome depends on the ID itself, only on replies matching it.
public func nextQueryID() -> UInt16 { queryIDs.withLock { UInt16(truncatingIfNeeded: $0.next()) } }

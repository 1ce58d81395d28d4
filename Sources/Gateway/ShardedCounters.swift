import Atomics
import CUDPBatch

/// A table of counters that every worker thread adds to on every query, without a lock and without sharing a
/// cache line: each thread adds to its own row (`sp_thread_shard`, numbered once per thread), and a reader sums
/// the rows (when `/metrics` is scraped). Rows are whole cache lines apart. More threads than rows share rows,
/// which stays correct (the adds are atomic) and only costs contention.
// Unchecked: the storage is only touched through atomic operations, and is never freed (the tables are
// process-wide). A struct of a pointer and two numbers: using it retains nothing, so threads share no reference
// count either.
struct ShardedCounters: @unchecked Sendable {
    static let rows = 16
    let width: Int
    private let stride: Int
    private let storage: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>

    init(width: Int) {
        self.width = width
        stride = (width + 7) / 8 * 8 + 8  // whole 64-byte lines, and one line between rows
        storage = .allocate(capacity: stride * Self.rows)
        storage.initialize(repeating: .init(0), count: stride * Self.rows)
    }

    /// Adds `amount` to counter `index` in this thread's row.
    @inline(__always)
    func add(_ index: Int, _ amount: UInt64 = 1) {
        let row = Int(sp_thread_shard()) & (Self.rows - 1)
        UnsafeAtomic<UInt64>(at: storage + row * stride + index).wrappingIncrement(by: amount, ordering: .relaxed)
    }

    /// Counter `index`, summed over the rows.
    func total(_ index: Int) -> UInt64 {
        var sum: UInt64 = 0
        for row in 0..<Self.rows { sum &+= UnsafeAtomic<UInt64>(at: storage + row * stride + index).load(ordering: .relaxed) }
        return sum
    }
}

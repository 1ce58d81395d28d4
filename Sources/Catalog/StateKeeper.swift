import Atomics
import Foundation
import Logging

/// A watcher whose last-good data `StateKeeper` can write: its entries and where it would resume.
public protocol StateSource: Actor {
    func currentState() -> (entries: [String: [Instance]], resume: [String: String])
}

/// Keeps one registry's `RegistryState` in `--state-dir`.
/// - The watcher says when its data changed (`changed`) and whether the registry is in contact (`confirmed`,
///   `lostContact`); both are a few atomic stores.
/// - `run` writes the data at most once a second (and no more often than five times the last write took), through
///   `RegistryState.writeAtomically`. While the registry stays in contact with nothing to write, it rewrites the
///   small `.confirmed` file beside it, so the confirmation time is never more than about a second behind.
/// - `load` reads the file back at start-up, and says why when it cannot.
public final class StateKeeper: Sendable {
    public let path: String
    let registry: String
    private let logger: Logger
    private let version = ManagedAtomic<Int>(0)
    private let inContact = ManagedAtomic<Bool>(false)
    /// Milliseconds since the epoch at which the registry last confirmed the data (0: never).
    private let confirmedAt = ManagedAtomic<Int64>(0)
    /// While in contact: how old the registry itself says its data is (a Consul follower without a leader), in ms.
    private let lagMilliseconds = ManagedAtomic<Int64>(0)
    /// The checksum of the file `load` read, so its confirmation is kept current from the start.
    private let loadedSum = ManagedAtomic<UInt64>(0)

    /// A keeper for the registry `registry` (its description) in `directory`.
    public init(directory: String, registry: String, logger: Logger) {
        // The name stays the same while the registry's URL does, whatever its position in --registry.
        let kind = registry.prefix { $0 != ":" }
        self.path = "\(directory)/\(kind)-\(String(RegistryState.checksum(registry.utf8), radix: 16)).state"
        self.registry = registry
        self.logger = logger
    }

    var confirmedPath: String { path + ".confirmed" }

    public func changed() { version.wrappingIncrement(ordering: .relaxed) }

    /// The registry answered; `lag` is how old it says the data is.
    public func confirmed(lag: Duration = .zero) {
        let lag = min(lag.components.seconds, 3_200_000_000) * 1000 + lag.components.attoseconds / 1_000_000_000_000_000
        lagMilliseconds.store(max(0, lag), ordering: .relaxed)
        inContact.store(true, ordering: .relaxed)
        confirmedAt.store(Self.nowMilliseconds - max(0, lag), ordering: .relaxed)
    }

    public func lostContact() {
        if inContact.exchange(false, ordering: .relaxed) { confirmedAt.store(Self.nowMilliseconds, ordering: .relaxed) }
    }

    static var nowMilliseconds: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// The confirmation time a write stamps: now (less the registry's own lag) while in contact, else the last
    /// moment of contact.
    private var stamp: Double {
        inContact.load(ordering: .relaxed)
            ? Date().timeIntervalSince1970 - Double(lagMilliseconds.load(ordering: .relaxed)) / 1000
            : Double(confirmedAt.load(ordering: .relaxed)) / 1000
    }

    // MARK: Start-up

    /// Whether the directory can hold state; a warning says why not (Signpost then runs without state).
    public static func usable(directory: String, logger: Logger) -> Bool {
        let probe = "\(directory)/.signpost-probe-\(getpid())"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try RegistryState.writeAtomically([], to: probe, sync: false)
            unlink(probe)
            return true
        } catch {
            logger.warning("--state-dir cannot be written; running without state", metadata: ["path": "\(directory)", "reason": "\(error)"])
            return false
        }
    }

    /// The registry's last-good state, or nil: no file, a file that cannot be used (logged with its path and
    /// why), or data already older than `maxStale` when it was last confirmed.
    public func load(maxStale: Duration?) -> RegistryState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        var state: RegistryState
        do { state = try RegistryState.decode([UInt8](data), path: path) } catch {
            logger.error("state file ignored", metadata: ["path": "\(error.path)", "reason": "\(error.reason)"])
            return nil
        }
        guard state.registry == registry else {
            logger.error("state file ignored", metadata: ["path": "\(path)", "reason": "it holds \(state.registry), not \(registry)"])
            return nil
        }
        if !state.refused.isEmpty {
            logger.warning("state file records left out: today's registration rules refuse them; the rest is served",
                           metadata: ["path": "\(path)", "count": "\(state.refused.count)", "first": "\(state.refused[0])"])
        }
        // A later confirmation of this very data, if the small file beside it says so.
        if let text = FileManager.default.contents(atPath: confirmedPath).map({ String(decoding: $0, as: UTF8.self) }) {
            let parts = text.split(separator: " ")
            if parts.count == 2, UInt64(parts[0], radix: 16) == RegistryState.checksum(data), let t = Double(parts[1]),
               RegistryState.plausible(t) {
                state.confirmed = max(state.confirmed, t)
            }
        }
        let age = Date().timeIntervalSince1970 - state.confirmed
        if let maxStale, age > Double(maxStale.components.seconds) + Double(maxStale.components.attoseconds) / 1e18 {
            logger.warning("state file too old to serve (over --max-stale)", metadata: ["path": "\(path)", "age": "\(Int(age))s"])
            return nil
        }
        confirmedAt.store(Int64(state.confirmed * 1000), ordering: .relaxed)
        loadedSum.store(RegistryState.checksum(data), ordering: .relaxed)
        return state
    }

    // MARK: Writing

    /// Where the writer is: what it last wrote, and the confirmation it last stamped.
    public struct Progress: Sendable {
        var written: Int
        var writtenSum: UInt64?
        var confirmedWritten = 0.0
    }

    /// The writer's starting point: nothing written by this process, or the file `load` read.
    public func start() -> Progress {
        let sum = loadedSum.load(ordering: .relaxed)
        return Progress(written: version.load(ordering: .relaxed), writtenSum: sum == 0 ? nil : sum)
    }

    /// Writes on change until cancelled; a last write on the way out.
    public func run(source: some StateSource) async {
        var progress = start()
        var pause = Duration.seconds(1)
        while !Task.isCancelled {
            do { try await Task.sleep(for: pause) } catch { break }
            pause = await step(source, &progress)
        }
        if version.load(ordering: .relaxed) != progress.written { _ = await write(source) }
    }

    /// One turn of the writer: the data if it changed, else the confirmation stamp if the registry is in contact.
    /// Returns how long to wait before the next turn.
    public func step(_ source: some StateSource, _ progress: inout Progress) async -> Duration {
        let now = version.load(ordering: .relaxed)
        if now != progress.written {
            let started = ContinuousClock.now
            if let sum = await write(source) { (progress.written, progress.writtenSum) = (now, sum) }
            return max(.seconds(1), (ContinuousClock.now - started) * 5)
        }
        if let sum = progress.writtenSum, inContact.load(ordering: .relaxed), stamp - progress.confirmedWritten >= 1 {
            progress.confirmedWritten = stamp
            // Not fsynced: losing it only makes the data look older than it is.
            try? RegistryState.writeAtomically(Array("\(String(sum, radix: 16)) \(progress.confirmedWritten)".utf8), to: confirmedPath,
                                               sync: false)
        }
        return .seconds(1)
    }

    /// Writes the source's state now; returns the file's checksum, or nil (logged) when it could not.
    @discardableResult
    public func write(_ source: some StateSource) async -> UInt64? {
        let (entries, resume) = await source.currentState()
        let state = RegistryState(registry: registry, confirmed: stamp, resume: resume, entries: entries)
        do {
            let bytes = try state.encoded()
            try RegistryState.writeAtomically(bytes, to: path)
            unlink(confirmedPath)
            return RegistryState.checksum(bytes)
        } catch {
            logger.error("state file not written", metadata: ["path": "\(path)", "reason": "\(error)"])
            return nil
        }
    }
}

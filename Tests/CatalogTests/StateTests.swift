import Catalog
import Registries
import DNSWire
import Foundation
import Logging
import TestSupport
import Testing

/// `--state-dir`: the file format, and every way a state file can be unusable. None may crash, and each is
/// reported with its path and why.
@Suite("State files")
struct StateTests {
    static func state(services: Int = 3, confirmed: Double = Date().timeIntervalSince1970) -> RegistryState {
        var entries: [String: [Instance]] = [:]
        for s in 0..<services {
            var a = AssemblerTests.inst("node-\(s)", "10.\(s / 250).\(s % 250).1", service: "svc\(s)", id: "svc\(s)-a")
            a.tags = ["v2"]
            a.meta = ["version": "1.\(s)"]
            a.namedPorts = ["grpc": 9000]
            a.health = .warning
            // The operator view's checks and origin survive a restart too.
            a.checks = [CheckState(id: "service:svc\(s)-a", name: "TTL", status: .warning, output: "slow <b>\u{1F600}", nodeLevel: false),
                        CheckState(id: "serfHealth", name: "Serf Health Status", status: .passing, output: "", nodeLevel: true)]
            a.origin = Origin(registry: "etcd", location: "/services/svc\(s)/a", revision: Int64(40 + s))
            var b = AssemblerTests.inst("node-\(s)-b", "2001:db8::\(String(s + 1, radix: 16))", service: "svc\(s)", id: "svc\(s)-b")
            b.serviceAddress = Address("db.example.internal")
            b.node.lanAddresses = [Address("10.\(s / 250).\(s % 250).2")!]
            b.weightPassing = 7
            entries["/services/svc\(s)/a"] = [a]
            entries["/services/svc\(s)/b"] = [b, a]
        }
        return RegistryState(registry: "etcd:http://127.0.0.1:2379?prefix=/services/", confirmed: confirmed,
                             resume: ["revision": "42"], entries: entries)
    }

    @Test func roundTrips() throws {
        let s = Self.state()
        #expect(try RegistryState.decode(s.encoded(), path: "x") == s)
    }

    /// A record today's registration rules refuse (a service on 0.0.0.0, which a Signpost before that rule wrote)
    /// is left out and reported with why; the rest of the file still serves a warm restart.
    @Test func aRecordTheRulesNowRefuseIsLeftOutNotTheFile() throws {
        var s = Self.state(services: 2)
        s.entries["/services/svc0/a"]![0].serviceAddress = Address("0.0.0.0")
        let decoded = try RegistryState.decode(s.encoded(), path: "x")
        #expect(decoded.refused.count == 1 && decoded.refused[0].contains("/services/svc0/a: instance svc0-a") && decoded.refused[0].contains("unspecified"),
                "\(decoded.refused)")
        #expect(decoded.entries["/services/svc0/a"] == nil)
        var rest = Self.state(services: 2)
        rest.entries["/services/svc0/a"] = nil
        #expect(decoded.entries == rest.entries)
    }

    @Test func truncatedAtAnyOffsetIsReportedNeverDecoded() throws {
        let bytes = try Self.state(services: 20).encoded()
        var g = seededGenerator()
        for _ in 0..<200 {
            let cut = Int.random(in: 0..<bytes.count, using: &g)
            #expect(throws: RegistryState.Problem.self, "cut at \(cut) of \(bytes.count), \(seedNote)") {
                try RegistryState.decode(Array(bytes[..<cut]), path: "x")
            }
        }
    }

    @Test func garbageAndFlippedBytesAreReported() throws {
        var g = seededGenerator()
        for _ in 0..<50 {
            let garbage = (0..<Int.random(in: 0..<2000, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            #expect(throws: RegistryState.Problem.self, "\(seedNote)") { try RegistryState.decode(garbage, path: "x") }
        }
        let bytes = try Self.state().encoded()
        let body = bytes.firstIndex(of: UInt8(ascii: "\n"))! + 1
        for _ in 0..<100 {
            var flipped = bytes
            flipped[Int.random(in: body..<bytes.count, using: &g)] ^= 1 << UInt8.random(in: 0..<8, using: &g)
            #expect(throws: RegistryState.Problem.self, "\(seedNote)") { try RegistryState.decode(flipped, path: "x") }
        }
    }

    @Test func aNewerFormatIsNamed() throws {
        var bytes = try Self.state().encoded()
        bytes.replaceSubrange(0..<16, with: Array("SIGNPOST-STATE 9".utf8))
        do { _ = try RegistryState.decode(bytes, path: "/var/lib/signpost/x.state") } catch {
            #expect(error.description == "/var/lib/signpost/x.state: written by a newer Signpost (format 9; this one reads 1)")
        }
    }

    @Test func implausibleValuesAreRefused() throws {
        for (confirmed, revision) in [(1e300, "42"), (-1e12, "42"), (Date().timeIntervalSince1970, "9223372036854775807")] {
            var s = Self.state(services: 1, confirmed: confirmed)
            s.resume["revision"] = revision
            #expect(throws: RegistryState.Problem.self, "\(confirmed) \(revision)") { try RegistryState.decode(s.encoded(), path: "x") }
        }
    }

    @Test func dataConfirmedBeforeThisBootCountsItsWholeAge() async throws {
        let store = SnapshotStore()
        let a = CatalogAssembler(sources: ["etcd"], expectsZones: false, localDatacenter: "dc1", store: store, logger: Logger(label: "t"))
        // Older than this machine's uptime: the age must not be cut at boot.
        let age = Double(Uptime.nanoseconds / 1_000_000_000) + 3600
        await a.restore(source: 0, with: SourceCatalog(services: ["web": [AssemblerTests.inst("n1", "192.0.2.1")]]),
                        confirmed: Date().timeIntervalSince1970 - age)
        let staleness = try #require(store.staleness())
        #expect(staleness >= .seconds(Int64(age) - 1), "\(staleness)")
        #expect(store.snapshot.isLoaded && store.fromState.count == 1)
        await a.setContact(source: 0, inContact: true)
        #expect(store.staleness() == nil && store.fromState.isEmpty)
    }

    actor Source: StateSource {
        var entries: [String: [Instance]] = [:]
        func currentState() -> (entries: [String: [Instance]], resume: [String: String]) { (entries, ["revision": "7"]) }
    }

    @Test func aRestoredFileKeepsItsConfirmationCurrent() async throws {
        let dir = NSTemporaryDirectory() + "signpost-state-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keeper = StateKeeper(directory: dir, registry: "etcd:http://127.0.0.1:2379?prefix=/services/", logger: Logger(label: "t"))
        #expect(StateKeeper.usable(directory: dir, logger: Logger(label: "t")))
        let old = Date().timeIntervalSince1970 - 600
        try RegistryState.writeAtomically(Self.state(confirmed: old).encoded(), to: keeper.path)
        #expect(keeper.load(maxStale: nil)?.confirmed == old)
        // The registry answers and nothing changes: the file is not rewritten, but its confirmation moves on. (One
        // turn of the writer, driven here: a loop on a timer would depend on the test pool's threads being free.)
        keeper.confirmed()
        var progress = keeper.start()
        let pause = await keeper.step(Source(), &progress)
        #expect(pause == .seconds(1))
        let moved = try #require(keeper.load(maxStale: .seconds(60)))
        #expect(moved.confirmed > old + 500)
        #expect(moved.entries == Self.state(confirmed: old).entries, "the data itself is untouched")
    }

    @Test func theKeeperLoadsOnlyItsOwnFreshData() throws {
        let dir = NSTemporaryDirectory() + "signpost-state-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(StateKeeper.usable(directory: dir, logger: Logger(label: "t")))
        let keeper = StateKeeper(directory: dir, registry: "etcd:http://127.0.0.1:2379?prefix=/services/", logger: Logger(label: "t"))
        #expect(keeper.load(maxStale: nil) == nil, "no file yet")
        let fresh = Self.state(confirmed: Date().timeIntervalSince1970 - 30)
        try RegistryState.writeAtomically(fresh.encoded(), to: keeper.path)
        #expect(keeper.load(maxStale: nil) == fresh)
        #expect(keeper.load(maxStale: .seconds(60)) == fresh)
        #expect(keeper.load(maxStale: .seconds(10)) == nil, "confirmed 30 s ago: over --max-stale")
        // The small file beside it moves the confirmation on, for this very data only.
        let bytes = [UInt8](FileManager.default.contents(atPath: keeper.path)!)
        let now = Date().timeIntervalSince1970
        try RegistryState.writeAtomically(Array("\(String(RegistryState.checksum(bytes), radix: 16)) \(now)".utf8), to: keeper.path + ".confirmed")
        #expect(keeper.load(maxStale: .seconds(10))?.confirmed == now)
        try RegistryState.writeAtomically(Array("0 \(now)".utf8), to: keeper.path + ".confirmed")
        #expect(keeper.load(maxStale: .seconds(10)) == nil, "a confirmation of other data does not count")
        // Another registry's file under this name is not used.
        let other = StateKeeper(directory: dir, registry: "etcd:http://127.0.0.1:2380?prefix=/services/", logger: Logger(label: "t"))
        try RegistryState.writeAtomically(fresh.encoded(), to: other.path)
        #expect(other.load(maxStale: nil) == nil)
    }

    @Test func anUnwritableDirectoryIsReportedNotFatal() throws {
        let file = NSTemporaryDirectory() + "signpost-file-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(!StateKeeper.usable(directory: file + "/state", logger: Logger(label: "t")))
    }

    @Test("100k instances: size and write time (printed)")
    func size() throws {
        // Three instances a service: 100,002 in all.
        let s = Self.state(services: 33_334)
        let started = ContinuousClock.now
        let bytes = try s.encoded()
        let path = NSTemporaryDirectory() + "signpost-big-\(UUID().uuidString).state"
        defer { unlink(path) }
        try RegistryState.writeAtomically(bytes, to: path)
        let took = ContinuousClock.now - started
        let readStarted = ContinuousClock.now
        let back = try RegistryState.decode([UInt8](FileManager.default.contents(atPath: path)!), path: path)
        print("state file, 100,000 instances: \(bytes.count / 1024) KiB, encode+write \(took), read+decode \(ContinuousClock.now - readStarted) (debug build)")
        #expect(back.entries.values.reduce(0) { $0 + $1.count } == 100_002)
    }
}

@testable import Catalog
@testable import Registries
import DNSWire
import Foundation
import Logging
import Testing

@Suite("Snapshots and the file watcher")
struct SnapshotTests {
    static func reg(_ node: String, _ addr: String, service: String? = nil, id: String? = nil, status: String? = nil,
                    nodeStatus: String? = nil, dc: String? = nil) -> String {
        var checks: [String] = []
        if let status { checks.append(#"{"CheckID": "svc", "Status": "\#(status)", "ServiceID": "\#(id ?? service ?? "")"}"#) }
        if let nodeStatus { checks.append(#"{"CheckID": "node", "Status": "\#(nodeStatus)"}"#) }
        let svc = service.map { #", "Service": {"ID": "\#(id ?? $0)", "Service": "\#($0)", "Port": 80}"# } ?? ""
        let dcField = dc.map { #", "Datacenter": "\#($0)""# } ?? ""
        return #"{"Node": "\#(node)", "Address": "\#(addr)"\#(dcField)\#(svc), "Checks": [\#(checks.joined(separator: ","))]}"#
    }

    static func build(_ files: [String]) throws -> CatalogSnapshot {
        var regs: [Registration] = []
        for (i, f) in files.enumerated() {
            regs += try RegistrationDecoder.decode(bytes: Array(f.utf8), path: "\(i).json", defaultDatacenter: "dc1")
        }
        return CatalogSnapshot.build(registrations: regs, zones: [], localDatacenter: "dc1", generation: 1)
    }

    @Test func nodeLevelChecksFromAnotherFileApply() throws {
        let snap = try Self.build([
            Self.reg("n1", "192.0.2.1", service: "web", status: "passing"),
            Self.reg("n1", "192.0.2.1", nodeStatus: "maintenance"),
            Self.reg("n2", "192.0.2.2", service: "web", status: "passing"),
        ])
        let web = try #require(snap.services["web"])
        #expect(web.instances.map(\.node.name) == ["n1", "n2"])
        #expect(web.instances.map(\.health) == [.maintenance, .passing])
    }

    @Test func firstDefinitionWinsAndDatacentersAreCollected() throws {
        let snap = try Self.build([
            Self.reg("n1", "192.0.2.1", service: "web"),
            Self.reg("n1", "192.0.2.99", service: "web"),
            Self.reg("n9", "192.0.2.9", service: "web", dc: "DC2"),
        ])
        #expect(snap.services["web"]?.instances.count == 2)
        #expect(snap.nodes[.init(name: "N1", datacenter: "dc1")]?.address == .v4(IPv4("192.0.2.1")!))
        #expect(snap.datacenters == ["dc1", "dc2"])
    }

    @Test func rotationCounterAdvancesWithoutTouchingInstances() throws {
        let snap = try Self.build([Self.reg("n1", "192.0.2.1", service: "web"), Self.reg("n2", "192.0.2.2", service: "web")])
        let web = try #require(snap.services["web"])
        let before = web.instances
        #expect((0..<4).map { _ in web.nextRotation(RRType.a) } == [0, 1, 2, 3])
        #expect(web.instances == before)
        // A and AAAA asked together (as glibc and Go do for every lookup) each keep their own turn.
        let pairs = (0..<4).map { _ in (web.nextRotation(RRType.a), web.nextRotation(RRType.aaaa)) }
        #expect(pairs.map(\.0) == [4, 5, 6, 7])
        #expect(pairs.map(\.1) == [0, 1, 2, 3])
        #expect(web.nextRotation(RRType.srv) == 0)
    }
}

@Suite("File watcher")
struct WatcherTests {
    final class TempDir {
        let path: String
        init() {
            path = NSTemporaryDirectory() + "signpost-test-" + UUID().uuidString
            try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: path) }
        func write(_ name: String, _ text: String) {
            FileManager.default.createFile(atPath: path + "/" + name, contents: Data(text.utf8))
        }
        func remove(_ name: String) { try? FileManager.default.removeItem(atPath: path + "/" + name) }
    }

    @Test func addEditBreakAndDelete() async throws {
        let catalog = TempDir()
        let zones = TempDir()
        let store = SnapshotStore()
        let watcher = try CatalogWatcher(configuration: .init(catalogDirectory: catalog.path, zonesDirectory: zones.path),
                                         store: store, logger: Logger(label: "test"))
        #expect(await watcher.refresh().isEmpty)
        #expect(store.snapshot.isLoaded)
        #expect(store.snapshot.services.isEmpty)

        catalog.write("a.json", SnapshotTests.reg("n1", "192.0.2.1", service: "web"))
        await watcher.refresh()
        #expect(store.snapshot.services["web"]?.instances.count == 1)

        // A broken edit is reported with its path and line, and the last good content stays.
        let before = store.snapshot
        catalog.write("a.json", "{\n\"Node\": \"n1\",\n\"Address\": }")
        let problems = await watcher.refresh()
        #expect(problems.map(\.path) == [catalog.path + "/a.json"])
        #expect(problems.first?.line == 3)
        #expect(store.snapshot === before)
        #expect(store.snapshot.services["web"]?.instances.count == 1)
        // Reported once per change, not on every poll.
        #expect(await watcher.refresh().isEmpty)

        catalog.write("b.json", SnapshotTests.reg("n2", "192.0.2.2", service: "web"))
        await watcher.refresh()
        #expect(store.snapshot.services["web"]?.instances.count == 2)

        catalog.remove("a.json")
        await watcher.refresh()
        #expect(store.snapshot.services["web"]?.instances.map(\.node.name) == ["n2"])

        // Zones: a good file serves, a broken edit reports path:line and keeps the old copy.
        zones.write("example.internal.zone", "$TTL 60\n@ IN SOA ns hostmaster 1 2 3 4 5\n@ IN NS ns\nns IN A 192.0.2.53\n")
        await watcher.refresh()
        #expect(store.snapshot.zones.first?.origin == (try DNSName("example.internal")))
        zones.write("example.internal.zone", "$TTL 60\n@ IN SOA ns hostmaster 1 2 3 4 5\nns IN A 192.0.2.300\n")
        let zoneProblems = await watcher.refresh()
        #expect(zoneProblems.first?.line == 3, "\(zoneProblems)")
        #expect(store.snapshot.zones.first?.rrset(try DNSName("ns.example.internal"), RRType.a).count == 1)
    }

    @Test func vanishedDirectoryKeepsContentAndIsReportedOnce() async throws {
        let catalog = TempDir()
        catalog.write("a.json", SnapshotTests.reg("n1", "192.0.2.1", service: "web"))
        let store = SnapshotStore()
        let watcher = try CatalogWatcher(configuration: .init(catalogDirectory: catalog.path, zonesDirectory: nil),
                                         store: store, logger: Logger(label: "test"))
        await watcher.refresh()
        let moved = catalog.path + ".moved"
        try FileManager.default.moveItem(atPath: catalog.path, toPath: moved)
        #expect(await watcher.refresh().map(\.reason) == ["no such directory"])
        #expect(await watcher.refresh().isEmpty)
        #expect(store.snapshot.services["web"]?.instances.count == 1)
        try FileManager.default.moveItem(atPath: moved, toPath: catalog.path)
        #expect(await watcher.refresh().isEmpty)
        #expect(store.snapshot.services["web"]?.instances.count == 1)
    }

    @Test func missingDirectoryIsAStartupError() {
        #expect(throws: CatalogProblem.self) {
            try CatalogWatcher(configuration: .init(catalogDirectory: "/nonexistent-signpost-dir", zonesDirectory: nil),
                               store: SnapshotStore(), logger: Logger(label: "test"))
        }
    }

    @Test func checkListsEveryProblem() {
        let catalog = TempDir()
        catalog.write("good.json", SnapshotTests.reg("n1", "192.0.2.1", service: "web"))
        catalog.write("bad.json", "{\"Node\": \"n\"}")
        catalog.write("worse.json", "[")
        let problems = CatalogWatcher.check(catalogDirectory: catalog.path, zonesDirectory: nil, localDatacenter: "dc1")
        #expect(problems.map { $0.path.split(separator: "/").last! } == ["bad.json", "worse.json"])
    }
}

@Suite("Zone files through ldns")
struct ZoneTests {
    @Test func loadsRecordsAndEmptyNonTerminals() throws {
        let dir = WatcherTests.TempDir()
        dir.write("example.internal.zone", """
        $ORIGIN example.internal.
        $TTL 300
        @ IN SOA ns hostmaster 7 3600 600 86400 60
        @ IN NS ns
        ns IN A 192.0.2.53
        a.b.c IN TXT "deep"
        www IN CNAME ns
        _x._tcp IN SRV 0 5 80 ns
        """)
        let zone = try ZoneLoader.load(path: dir.path + "/example.internal.zone")
        #expect(zone.negativeTTL == 60)
        #expect(zone.names.contains(try DNSName("b.c.example.internal")))
        #expect(!zone.names.contains(try DNSName("b.example.internal")))
        #expect(zone.names.contains(try DNSName("c.example.internal")))
        #expect(zone.rrset(try DNSName("WWW.example.internal"), RRType.cname).first?.rdata == .cname(try DNSName("ns.example.internal")))
        #expect(zone.rrset(try DNSName("_x._tcp.example.internal"), RRType.srv).first?.rdata
                == .srv(priority: 0, weight: 5, port: 80, target: try DNSName("ns.example.internal")))
        #expect(zone.nsRecords.count == 1)
    }

    @Test func originFromFileName() throws {
        let dir = WatcherTests.TempDir()
        dir.write("corp.test.zone", "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nns 60 IN A 192.0.2.1\n")
        #expect(try ZoneLoader.load(path: dir.path + "/corp.test.zone").origin == (try DNSName("corp.test")))
    }

    @Test func syntaxErrorHasLine() {
        let dir = WatcherTests.TempDir()
        dir.write("bad.test.zone", "$TTL 60\n@ IN SOA ns hostmaster 1 2 3 4 5\n\nfoo IN BOGUS 1\n")
        do {
            _ = try ZoneLoader.load(path: dir.path + "/bad.test.zone")
            Issue.record("accepted")
        } catch {
            #expect(error.line == 4, "\(error)")
            #expect(error.description.hasPrefix(dir.path + "/bad.test.zone:4: "))
        }
    }
}

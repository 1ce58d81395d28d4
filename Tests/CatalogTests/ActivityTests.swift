import Catalog
import Registries
import Foundation
import Logging
import Testing

/// What the operator view reads besides the snapshot: instance-level changes, registry states, skips.
@Suite("Activity")
struct ActivityTests {
    static func assembler() -> (CatalogAssembler, SnapshotStore) {
        let store = SnapshotStore()
        return (CatalogAssembler(sources: ["etcd:http://127.0.0.1:2379", "consul:http://127.0.0.1:8500"], expectsZones: false,
                                 localDatacenter: "dc1", store: store, logger: Logger(label: "test")), store)
    }

    @Test("Appeared, health moved, changed and removed are recorded, newest first, with the registry")
    func changes() async {
        let (assembler, store) = Self.assembler()
        var a = AssemblerTests.inst("n1", "10.0.0.1", service: "web", id: "web-1")
        let b = AssemblerTests.inst("n2", "10.0.0.2", service: "web", id: "web-2")
        await assembler.replace(source: 0, with: SourceCatalog(services: ["web": [a, b]]))
        await assembler.replace(source: 1, with: SourceCatalog())
        a.health = .critical
        await assembler.update(source: 0, services: ["web": [a, b]], nodes: [:])
        a.port = 9999
        await assembler.update(source: 0, services: ["web": [a]], nodes: [:])
        // Only where it came from moved: not a change.
        a.origin = Origin(registry: "etcd", location: "/services/web/1", revision: 99)
        await assembler.update(source: 0, services: ["web": [a]], nodes: [:])
        let whats = store.activity.recentChanges().map { "\($0.instance) \($0.what)" }
        #expect(whats == ["web-2 removed", "web-1 changed: port 80 → 9999", "web-1 health passing → critical",
                          "web-2 appeared (passing)", "web-1 appeared (passing)"])
        #expect(store.activity.recentChanges().allSatisfy { $0.registry == "etcd:http://127.0.0.1:2379" })
        #expect(store.activity.changedAt(a) != nil)
        #expect(store.activity.changedAt(b) == nil, "a removed instance is forgotten")
    }

    @Test("A health change that comes with another change says both; a skip seen again is not a second entry")
    func combinedAndRepeated() async {
        let (assembler, store) = Self.assembler()
        var a = AssemblerTests.inst("n1", "10.0.0.1", service: "web", id: "web-1")
        await assembler.update(source: 0, services: ["web": [a]], nodes: [:])
        a.health = .critical
        a.port = 81
        await assembler.update(source: 0, services: ["web": [a]], nodes: [:])
        #expect(store.activity.recentChanges().first?.what == "health passing → critical; changed: port 80 → 81")
        for _ in 0..<3 { store.activity.noteSkipped(registry: "consul", location: "/v1/health/service/x", name: "x", reason: "bad") }
        store.activity.noteSkipped(registry: "consul", location: "/v1/health/service/y", name: "y", reason: "bad")
        #expect(store.activity.recentSkips().map(\.name) == ["y", "x"])
    }

    @Test("A registry's list is worth publishing only when more than check output or origin changed")
    func sameServing() {
        var a = AssemblerTests.inst("n1", "10.0.0.1", service: "web", id: "web-1")
        a.checks = [CheckState(id: "c", name: "c", status: .passing, output: "HTTP 200 at 12:00:01", nodeLevel: false)]
        var b = a
        b.checks[0].output = "HTTP 200 at 12:00:31"
        b.origin = Origin(registry: "consul", location: "service web-1 on node n1", revision: 42)
        #expect(Instance.sameServing([a], [b]))
        b.checks[0].status = .critical
        #expect(!Instance.sameServing([a], [b]))
        #expect(!Instance.sameServing(nil, [a]) && !Instance.sameServing([a], [a, a]))
    }

    @Test("The ring keeps the last 200 changes")
    func bounded() async {
        let (assembler, store) = Self.assembler()
        for round in 0..<3 {
            let list = (0..<100).map { AssemblerTests.inst("n\($0)", "10.0.1.\($0 % 250)", service: "s\(round)", id: "i\($0)") }
            await assembler.update(source: 0, services: ["s\(round)": list], nodes: [:])
        }
        let changes = store.activity.recentChanges()
        #expect(changes.count == 200)
        #expect(changes.first?.service == "s2" && changes.last?.service == "s1")
    }

    @Test("Registry states: loading, connected, stale with its age, a problem, restarts")
    func registries() async {
        let (assembler, store) = Self.assembler()
        #expect(store.activity.registries().map(\.state) == ["loading", "loading"])
        #expect(store.activity.registries().map(\.kind) == ["etcd", "consul"])
        await assembler.replace(source: 0, with: SourceCatalog())
        await assembler.setContact(source: 0, inContact: true)
        #expect(store.activity.registries()[0].state == "connected")
        await assembler.setContact(source: 0, inContact: false)
        let stale = store.activity.registries(now: Date().timeIntervalSince1970 + 30)[0]
        #expect(stale.state == "stale" && (stale.staleness ?? 0) >= 29)
        await assembler.setContact(source: 0, inContact: true)
        store.activity.noteRestart(registry: 1)
        await assembler.setProblem(source: 1, "ACL filters the catalog")
        let r = store.activity.registries()
        #expect(r[0].state == "connected" && r[1].state == "problem" && r[1].restarts == 1)
    }
}

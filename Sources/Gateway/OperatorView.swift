import Catalog
import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1

/// The operator view behind the admin endpoint: the status page and its read-only JSON.
/// - `/ui`: one self-contained page (`StatusPage.html`), refreshing itself from the JSON below.
/// - `/v1/explain?name=…&type=…[&client=ADDRESS]`: `QueryHandler.explain`.
/// - `/v1/registries`: each registry's state, and the data's staleness.
/// - `/v1/services?q=…&offset=…&limit=…`: healthy, warning and excluded counts per service, by name, a page at a time.
/// - `/v1/changes`: the last instance-level changes, newest first.
/// - `/v1/traffic`: queries per second by response code over the last five minutes, from the same counters
///   `/metrics` exports (sampled every `sampleInterval` seconds).
public final class OperatorView: Sendable {
    public static let sampleInterval = 2
    /// Five minutes of samples, and one more to take the first difference from.
    static let samples = 300 / sampleInterval + 1

    private let slot: QueryHandlerSlot
    private let metrics: AdminServer.Metrics
    private let traffic = NIOLockedValueBox<[(time: Double, byRcode: [String: Double])]>([])

    public init(slot: QueryHandlerSlot, metrics: @escaping AdminServer.Metrics) {
        self.slot = slot
        self.metrics = metrics
    }

    typealias Page = (HTTPResponseStatus, String, [UInt8])

    func page(_ path: String, _ query: [String: String]) -> Page? {
        switch path {
        case "/ui", "/ui/": return (.ok, "text/html; charset=utf-8", Array(StatusPage.html.utf8))
        case "/v1/explain": return explain(query)
        case "/v1/registries": return json(registries())
        case "/v1/services": return json(services(query))
        case "/v1/changes": return json(Changes(changes: slot.handler.store.activity.recentChanges()))
        case "/v1/traffic": return json(trafficSeries())
        default: return nil
        }
    }

    private func explain(_ query: [String: String]) -> Page {
        guard let name = query["name"], !name.isEmpty else { return (.badRequest, "text/plain", Array("name= is required\n".utf8)) }
        guard let explanation = slot.handler.explain(name: name, type: query["type"].flatMap { $0.isEmpty ? nil : $0 } ?? "A",
                                                     client: query["client"].flatMap { $0.isEmpty ? nil : $0 }) else {
            return (.badRequest, "text/plain", Array("cannot ask for \(name) \(query["type"] ?? "")\n".utf8))
        }
        return json(explanation)
    }

    private func json(_ value: some Encodable) -> Page {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value) else { return (.internalServerError, "text/plain", Array("encoding failed\n".utf8)) }
        return (.ok, "application/json", Array(data))
    }

    // MARK: Registries

    struct Registries: Encodable {
        var registries: [Activity.Registry]
        var staleness: Double?
        var domain: String
        var services: Int
        var generation: UInt32
    }

    func registries() -> Registries {
        let handler = slot.handler
        let snapshot = handler.store.snapshot
        return Registries(registries: handler.store.activity.registries(),
                          staleness: handler.store.staleness().map { Double($0.components.seconds) },
                          domain: handler.resolver.configuration.domain.description, services: snapshot.services.count,
                          generation: snapshot.generation)
    }

    // MARK: Services

    struct ServiceRow: Encodable {
        var name: String
        var instances: Int
        var healthy: Int
        var warning: Int
        var excluded: Int
    }

    struct Services: Encodable {
        var total: Int
        var matching: Int
        var offset: Int
        var services: [ServiceRow]
    }

    /// A page of services whose name contains `q` (case-insensitive), in name order. Excluded: what a plain
    /// query for the service leaves out (`Resolver.exclusions`: health, or another datacenter); healthy and warning:
    /// the rest, by health.
    func services(_ query: [String: String]) -> Services {
        let handler = slot.handler
        let snapshot = handler.store.snapshot
        let needle = (query["q"] ?? "").lowercased()
        let offset = max(0, Int(query["offset"] ?? "") ?? 0)
        let limit = min(max(1, Int(query["limit"] ?? "") ?? 100), 1000)
        // The snapshot's keys are the lower-cased names already: filter and sort on them.
        var names: [(key: String, entry: ServiceEntry)] = []
        for (key, entry) in snapshot.services where needle.isEmpty || key.text.contains(needle) {
            names.append((key.text, entry))
        }
        names.sort { $0.key < $1.key }
        let resolver = handler.resolver
        let rows = names.dropFirst(offset).prefix(limit).map { _, entry in
            var row = ServiceRow(name: entry.name, instances: entry.instances.count, healthy: 0, warning: 0, excluded: 0)
            for inst in entry.instances {
                if !resolver.exclusions(inst, .all, datacenter: resolver.configuration.datacenter).isEmpty { row.excluded += 1 }
                else if inst.health == .passing { row.healthy += 1 }
                else { row.warning += 1 }
            }
            return row
        }
        return Services(total: snapshot.services.count, matching: names.count, offset: offset, services: Array(rows))
    }

    struct Changes: Encodable {
        var changes: [Activity.Change]
    }

    // MARK: Traffic

    /// Takes one sample of `signpost_dns_requests_total`, summed by rcode.
    public func sample(now: Double = Date().timeIntervalSince1970) {
        let totals = Self.requestsByRcode(metrics())
        traffic.withLockedValue { samples in
            samples.append((now, totals))
            if samples.count > Self.samples { samples.removeFirst(samples.count - Self.samples) }
        }
    }

    /// `signpost_dns_requests_total{…rcode="X"…} N` lines of the Prometheus text, summed by X.
    static func requestsByRcode(_ text: [UInt8]) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("signpost_dns_requests_total{") {
            guard let r = line.range(of: "rcode=\""), let end = line[r.upperBound...].firstIndex(of: "\""),
                  let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            out[String(line[r.upperBound..<end]), default: 0] += value
        }
        return out
    }

    struct Traffic: Encodable {
        var interval: Int
        var rcodes: [String]
        /// Each point: seconds since the epoch, and queries per second for each of `rcodes`.
        var points: [Point]
        struct Point: Encodable {
            var time: Double
            var qps: [Double]
        }
    }

    func trafficSeries() -> Traffic {
        let samples = traffic.withLockedValue { $0 }
        let rcodes = QueryObserver.rcodes + ["BADVERS", "other", "dropped"]
        var points: [Traffic.Point] = []
        for (a, b) in zip(samples, samples.dropFirst()) where b.time > a.time {
            let seconds = b.time - a.time
            points.append(Traffic.Point(time: b.time, qps: rcodes.map { max(0, (b.byRcode[$0] ?? 0) - (a.byRcode[$0] ?? 0)) / seconds }))
        }
        return Traffic(interval: Self.sampleInterval, rcodes: rcodes, points: points)
    }
}

import Logging
import Metrics

/// Reports how old the served data is while a registry is out of contact: a gauge
/// (`signpost_registry_staleness_seconds`, 0 while in contact) every second, and a log line every 30 s.
public struct StalenessMonitor: Sendable {
    let store: SnapshotStore
    let logger: Logger
    let gauge = Gauge(label: "signpost_registry_staleness_seconds")

    public init(store: SnapshotStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func run() async {
        var lastLog: Duration? = nil
        while !Task.isCancelled {
            let age = store.staleness()
            gauge.record(age.map { Double($0.components.seconds) } ?? 0)
            if let age {
                if lastLog == nil || age - lastLog! >= .seconds(30) {
                    logger.warning("serving cached registry data", metadata: ["registry.staleness": "\(age.components.seconds)s"])
                    lastLog = age
                }
            } else {
                lastLog = nil
            }
            do { try await Task.sleep(for: .seconds(1)) } catch { return }
        }
    }
}

import Catalog
import Logging
import Metrics

/// What every registry watcher does besides decoding: try the endpoints in turn, back off after a failure, report
/// the lost contact (the cached catalog keeps serving, as stale), and say each distinct failure once until the
/// registry answers again, with the repeats in `signpost_registry_errors_total{registry,reason}`.
struct RegistryLoop: Sendable {
    let connection: RegistryConnection
    let assembler: CatalogAssembler
    let sourceIndex: Int
    let state: StateKeeper?
    let backoff: Backoff
    let logger: Logger
    private let restarts: Counter

    init(connection: RegistryConnection, assembler: CatalogAssembler, sourceIndex: Int, state: StateKeeper?, backoff: Backoff, logger: Logger) {
        self.connection = connection
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.state = state
        self.backoff = backoff
        self.logger = logger
        self.restarts = Counter(label: "signpost_registry_watch_restarts_total", dimensions: [("registry", connection.metricLabel)])
    }

    /// Runs `attempt` until cancelled. An attempt that returns is a success and runs again at once (a blocking
    /// query's turn); one that runs long (a watch) calls `connected` once it is through. A thrown error is offered
    /// to `recover` first (a compacted revision, an expired token: no failure), and otherwise fails over to the
    /// next endpoint after the backoff. `reportsContact` is false for a registry's second loop (Consul's checks),
    /// whose contact the first one reports; its failures are reported all the same, and said once between them.
    func run(reportsContact: Bool = true, isolation: isolated (any Actor)? = #isolation,
             _ attempt: (_ endpoint: String, _ connected: () async -> Void) async throws -> Void,
             recover: (any Error, _ endpoint: String) async -> Bool = { _, _ in false },
             onFailure: () async -> Void = {}) async {
        let endpoints = connection.settings.endpoints
        var index = 0, failures = 0
        var reported: RegistryFailure? = nil
        while !Task.isCancelled {
            let endpoint = endpoints[index % endpoints.count]
            let connected = {
                failures = 0
                self.connection.succeeded(endpoint)
                self.connection.resetNews()
                if reported != nil {
                    reported = nil
                    await self.assembler.setConnectionError(source: self.sourceIndex, nil, primary: reportsContact)
                }
            }
            do {
                try await attempt(endpoint, connected)
                await connected()
            } catch {
                if Task.isCancelled { break }
                if await recover(error, endpoint) { continue }
                failures += 1
                let failure = (error as? RegistryFailure) ?? RegistryFailure(.other, endpoint: endpoint, "\(error)")
                await onFailure()
                report(failure)
                reported = failure
                await assembler.setConnectionError(source: sourceIndex, failure.description, primary: reportsContact)
                if reportsContact {
                    restarts.increment()
                    assembler.store.activity.noteRestart(registry: sourceIndex)
                    state?.lostContact()
                    await assembler.setContact(source: sourceIndex, inContact: false)
                }
                index += 1
                do { try await Task.sleep(for: backoff.delay(afterFailures: failures)) } catch { break }
            }
        }
    }

    /// Reads the connection's files again each `interval` when they changed (SIGHUP does so at once), and keeps
    /// the registry's warnings on `/ready` current: the settings' own, and a file that cannot be used.
    func watchFiles(every interval: Duration = .seconds(1)) async {
        var shown: [String]? = nil
        while !Task.isCancelled {
            connection.refresh()
            let lines = connection.settings.warnings + (connection.materialProblem.map { ["cannot use \($0); the previous files stay in use"] } ?? [])
            if lines != shown {
                if shown == nil { for w in connection.settings.warnings { logger.warning("\(w)", metadata: ["registry": "\(connection.name)"]) } }
                shown = lines
                await assembler.setWarnings(source: sourceIndex, lines)
            }
            do { try await Task.sleep(for: interval) } catch { return }
        }
    }

    /// Counts every failure; logs one only when it has not been said since the registry last answered (the same
    /// failure from the next endpoint of a cluster that is down, or from a second watch, is the same news).
    private func report(_ failure: RegistryFailure) {
        Counter(label: "signpost_registry_errors_total", dimensions: [("registry", connection.metricLabel), ("reason", failure.kind.reason)]).increment()
        guard connection.isNews(failure) else { return }
        logger.error("\(failure)", metadata: ["registry": "\(connection.name)", "reason": "\(failure.kind.reason)"])
    }
}

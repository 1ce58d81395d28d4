import Atomics
import Catalog
import DNSWire
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// Resolves names outside the service domain through upstream resolvers, with a cache.
///
/// - A name goes to the upstreams of the most specific `--forward-zone` holding it (`ForwardRoutes`, which the
///   resolver asks), else to `--upstream`. Each zone's upstreams are tried in policy order; a timeout, a network
///   error, SERVFAIL or REFUSED moves on to the next.
/// - An upstream that fails `downAfter` times in a row is marked down and tried last; any answer brings it back.
/// - Identical queries in flight (name, type, class, DO) share one upstream exchange.
/// - At most `maxConcurrent` exchanges run at once; beyond that, SERVFAIL at once (and counted).
/// - When every upstream fails, an expired cache entry is served (TTL 30) if it is within `--stale-ttl`,
///   else SERVFAIL.
public final class Forwarder: Sendable {
    public enum Policy: String, Sendable, CaseIterable, Codable { case sequential, random, round_robin }

    /// `--forward-zone ZONE=UPSTREAM,…`: a zone's own upstreams (split DNS). `none` zones never reach the forwarder.
    public struct Zone: Sendable, Equatable {
        public var name: DNSName
        public var upstreams: [Upstream]
        public init(name: DNSName, upstreams: [Upstream]) { (self.name, self.upstreams) = (name.lowercased, upstreams) }
    }

    public struct Configuration: Sendable, Equatable {
        /// The default upstreams (`--upstream`), for names no forward zone holds; may be empty when zones are given.
        public var upstreams: [Upstream]
        public var zones: [Zone] = []
        /// `--upstream-ca FILE`: the CA certificates (PEM) a DNS-over-TLS upstream's certificate must chain to; nil:
        /// the system's roots.
        public var tlsCA: String? = nil
        /// Pooled TCP and TLS connections to upstreams close after this long with no query (`--upstream-idle-timeout`).
        public var idleTimeout: TimeAmount = .seconds(10)
        public var policy: Policy = .sequential
        public var timeout: TimeAmount = .seconds(2)
        public var maxConcurrent: Int = 1000
        public var cacheSize: Int = 10000
        public var cacheMinTTL: UInt32 = 0
        public var cacheMaxTTL: UInt32 = 86400
        public var staleTTL: UInt32 = 86400
        public var downAfter: Int = 3

        public init(upstreams: [Upstream]) { self.upstreams = upstreams }
        public init(upstreams: [SocketAddress]) { self.upstreams = upstreams.map { Upstream($0) } }
    }

    public enum Outcome: Sendable {
        case answer(Answer)
        case failure
    }

    let configuration: Configuration
    let cache: ForwardCache
    private let client: UpstreamClient
    private let logger: Logger
    private let inflight = NIOLockedValueBox<[ForwardCache.Key: Task<Outcome, Never>]>([:])
    private let running = NIOLockedValueBox(0)
    /// Replaced by a reload: its upstream connections close when its last query ends.
    private let retired = ManagedAtomic(false)
    /// Every upstream, each once: the default ones, then the zones' others. Failures, marks and metrics are kept
    /// per upstream, whichever zones share it.
    let all: [Upstream]
    /// Indexes into `all`: the default upstreams' and each zone's, in the order given.
    private let defaultMembers: [Int]
    private let zoneMembers: [DNSName: [Int]]
    private let failures: NIOLockedValueBox<[Int]>
    private let rotation = NIOLockedValueBox(0)
    private let overloaded = Counter(label: "signpost_forward_overload_total")
    private let hits = Counter(label: "signpost_cache_requests_total", dimensions: [("result", "hit")])
    private let misses = Counter(label: "signpost_cache_requests_total", dimensions: [("result", "miss")])
    /// Per upstream: exchange latency, and failures by kind.
    private let upstreamMetrics: [(duration: Timer, timeout: Counter, error: Counter, servfail: Counter, refused: Counter,
                                   connectionRefused: Counter, handshake: Counter)]

    /// `clock`: the cache's now, in `Uptime` nanoseconds (tests drive it).
    public init(configuration: Configuration, group: any EventLoopGroup, logger: Logger,
                clock: @escaping @Sendable () -> UInt64 = { Uptime.nanoseconds }) {
        self.configuration = configuration
        self.cache = ForwardCache(capacity: configuration.cacheSize, minTTL: configuration.cacheMinTTL,
                                  maxTTL: configuration.cacheMaxTTL, staleTTL: configuration.staleTTL, clock: clock)
        self.client = UpstreamClient(group: group, timeout: configuration.timeout, idleTimeout: configuration.idleTimeout,
                                     tls: Self.tlsContext(configuration, logger: logger))
        self.logger = logger
        var all: [Upstream] = []
        func index(_ a: Upstream) -> Int {
            if let i = all.firstIndex(of: a) { return i }
            all.append(a)
            return all.count - 1
        }
        self.defaultMembers = configuration.upstreams.map(index)
        self.zoneMembers = Dictionary(configuration.zones.map { ($0.name, $0.upstreams.map(index)) }, uniquingKeysWith: { _, last in last })
        self.all = all
        self.failures = NIOLockedValueBox(Array(repeating: 0, count: all.count))
        self.upstreamMetrics = all.map { upstream in
            let name = upstream.description
            func failures(_ reason: String) -> Counter {
                Counter(label: "signpost_upstream_failures_total", dimensions: [("upstream", name), ("reason", reason)])
            }
            return (Timer(label: "signpost_upstream_duration_seconds", dimensions: [("upstream", name)]),
                    failures("timeout"), failures("error"), failures("servfail"), failures("refused"), failures("connection_refused"),
                    failures("tls_handshake"))
        }
    }

    /// The TLS client context for `tls://` upstreams: TLS 1.2 or later, the certificate verified against the
    /// upstream's NAME and `--upstream-ca` or the system's roots (RFC 7858 §4.2's strict profile). Nil when no
    /// upstream uses TLS, or the CA file cannot be read (then every TLS exchange fails, and says so).
    static func tlsContext(_ configuration: Configuration, logger: Logger) -> NIOSSLContext? {
        guard (configuration.upstreams + configuration.zones.flatMap(\.upstreams)).contains(where: \.isTLS) else { return nil }
        do { return try NIOSSLContext(configuration: try tlsConfiguration(ca: configuration.tlsCA)) } catch {
            logger.error("DNS-over-TLS upstreams cannot be used", metadata: ["ca": "\(configuration.tlsCA ?? "system")", "error": "\(error)"])
            return nil
        }
    }

    /// The client TLS configuration; throws when `ca` cannot be read as PEM certificates (checked at start-up too).
    /// The chain is verified here; the name is checked after the handshake (`HandshakeWaiter`), against NAME alone:
    /// NIOSSL's own check also accepts a certificate for the IP address connected to, which RFC 7858's
    /// authentication by name must not.
    public static func tlsConfiguration(ca: String?) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .noHostnameVerification
        if let ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        return tls
    }

    /// Counts a hit that the fast path answered from `cache.wire`.
    func countHit() { hits.increment() }

    /// A fresh cache hit, answered without leaving the event loop; nil means go through `resolve`.
    public func cached(_ question: Question, dnssecOK: Bool) -> Answer? {
        let key = ForwardCache.Key(name: question.name, type: question.type, qclass: question.qclass, dnssecOK: dnssecOK)
        guard case .fresh(let answer) = cache.lookup(key) else { return nil }
        hits.increment()
        return answer
    }

    /// `zone`: the forward zone holding the name (`Resolver.forwarding`), nil for the default upstreams.
    public func resolve(_ question: Question, dnssecOK: Bool, zone: DNSName? = nil) async -> Outcome {
        let key = ForwardCache.Key(name: question.name, type: question.type, qclass: question.qclass, dnssecOK: dnssecOK)
        let stale: Answer?
        switch cache.lookup(key) {
        case .fresh(let answer):
            hits.increment()
            return .answer(answer)
        case .stale(let answer):
            stale = answer
        case .miss:
            stale = nil
        }
        misses.increment()
        let task: Task<Outcome, Never>? = inflight.withLockedValue { map in
            if let existing = map[key] { return existing }
            guard running.withLockedValue({ n in
                guard n < configuration.maxConcurrent else { return false }
                n += 1
                return true
            }) else { return nil }
            let t = Task { await self.fetch(question, dnssecOK: dnssecOK, key: key, zone: zone) }
            map[key] = t
            return t
        }
        guard let task else {
            overloaded.increment()
            return stale.map { .answer($0) } ?? .failure
        }
        let outcome = await task.value
        if case .failure = outcome, let stale {
            logger.debug("serving stale", metadata: ["query.name": "\(question.name)"])
            return .answer(stale)
        }
        return outcome
    }

    private func fetch(_ question: Question, dnssecOK: Bool, key: ForwardCache.Key, zone: DNSName?) async -> Outcome {
        defer {
            inflight.withLockedValue { $0[key] = nil }
            let idle = running.withLockedValue { n -> Bool in
                n -= 1
                return n == 0
            }
            if idle, retired.load(ordering: .acquiring) { client.pool.shutdown() }
        }
        for i in order(zone: zone) {
            let started = Uptime.nanoseconds
            do {
                let reply = try await client.exchange(question, dnssecOK: dnssecOK, upstream: all[i])
                upstreamMetrics[i].duration.recordNanoseconds(Int64(Uptime.nanoseconds - started))
                let rcode = reply.rcode
                if rcode == RCode.servFail || rcode == RCode.refused {
                    (rcode == RCode.servFail ? upstreamMetrics[i].servfail : upstreamMetrics[i].refused).increment()
                    markFailure(i)
                    continue
                }
                markSuccess(i)
                cache.store(reply, for: key)
                return .answer(Answer(rcode: rcode, authoritative: false, answers: reply.answers, authority: reply.authority,
                                      additional: reply.additional.filter { $0.type != RRType.opt }))
            } catch {
                let m = upstreamMetrics[i]
                (error is UpstreamClient.Timeout ? m.timeout : UpstreamClient.isRefusal(error) ? m.connectionRefused
                    : error is UpstreamClient.HandshakeFailed ? m.handshake : m.error).increment()
                // A failed TLS handshake is a configuration problem more often than an outage (a wrong NAME, a CA
                // not trusted): said at warning level, once for each run of failures.
                let first = markFailure(i) == 1
                if first, let handshake = error as? UpstreamClient.HandshakeFailed {
                    logger.warning("TLS handshake with upstream failed", metadata: ["upstream": "\(all[i])", "error": "\(handshake.reason)"])
                } else {
                    logger.debug("upstream failed", metadata: ["upstream": "\(all[i])", "error": "\(error)"])
                }
            }
        }
        return .failure
    }

    /// A reload replaced this forwarder: close its upstream connections once no query of its own is under way
    /// (queries still arriving through the old handler finish, over UDP or a fresh connection that is closed too).
    public func retire() {
        retired.store(true, ordering: .releasing)
        if running.withLockedValue({ $0 == 0 }) { client.pool.shutdown() }
    }

    /// The upstreams of `zone` (nil: `--upstream`'s), as indexes into `all`, in the order given.
    private func members(_ zone: DNSName?) -> [Int] { zone.flatMap { zoneMembers[$0.lowercased] } ?? defaultMembers }

    /// The upstreams a name in `zone` (nil: outside every forward zone) goes to; none means it is REFUSED, as with
    /// forwarding off. The query path and `explain` both ask this.
    public func upstreams(for zone: DNSName?) -> [Upstream] { members(zone).map { all[$0] } }

    /// The upstreams of `zone` (nil: the default ones), as indexes into `all`, in policy order, with the ones marked
    /// down moved to the end.
    func order(zone: DNSName? = nil) -> [Int] {
        var base = members(zone)
        let n = base.count
        switch configuration.policy {
        case .sequential: break
        case .random: base.shuffle()
        case .round_robin:
            let start = rotation.withLockedValue { r in defer { r = r &+ 1 }; return r } % max(n, 1)
            base = Array(base[start...] + base[..<start])
        }
        let down = failures.withLockedValue { f in Set(base.filter { f[$0] >= configuration.downAfter }) }
        return base.filter { !down.contains($0) } + base.filter { down.contains($0) }
    }

    /// Counts a failure; returns the upstream's failures in a row.
    @discardableResult
    private func markFailure(_ i: Int) -> Int {
        let count = failures.withLockedValue { f in f[i] += 1; return f[i] }
        if count == configuration.downAfter {
            logger.warning("upstream marked down", metadata: ["upstream": "\(all[i])"])
        }
        return count
    }

    private func markSuccess(_ i: Int) {
        let was = failures.withLockedValue { f in defer { f[i] = 0 }; return f[i] }
        if was >= configuration.downAfter {
            logger.info("upstream up again", metadata: ["upstream": "\(all[i])"])
        }
    }

    /// Probes upstreams marked down (the root NS query), so they come back without client traffic.
    public func runProbes() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .seconds(2)) } catch { return }
            let down = failures.withLockedValue { f in f.indices.filter { f[$0] >= configuration.downAfter } }
            for i in down {
                if (try? await client.exchange(Question(name: .root, type: RRType.ns), dnssecOK: false,
                                               upstream: all[i])) != nil {
                    markSuccess(i)
                }
            }
        }
    }
}

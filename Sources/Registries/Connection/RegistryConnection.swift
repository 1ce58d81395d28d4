import Catalog
import AsyncHTTPClient
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// How Signpost reaches a registry's HTTP API, for every registry alike: one HTTP client per endpoint, built from
/// the TLS and credential files of `ConnectionSettings`; the credentials on each request; bounded, checked
/// response bodies; and failures classified into `RegistryFailure`s that say what to fix.
///
/// Rotation: `refresh()` (every second from `run()`, and on SIGHUP) reads the files again when any of them changed.
/// Material that loads and checks whole replaces the old: requests from then on use clients built from it, while
/// a request already under way (a watch) finishes on the old client, which is shut down when its last request
/// ends. Material that does not load is reported with its path and reason, on `/ready` and in
/// `signpost_registry_credentials_ok`, and the old material keeps working until the registry refuses it.
public final class RegistryConnection: Sendable {
    public let settings: ConnectionSettings
    public let registry: ConnectionOption.Registry
    /// The registry as logs show it (no credential).
    public let name: String
    /// HTTP/1 connections per endpoint (Consul counts connections per client address).
    let poolSize: Int
    let connectTimeout: TimeAmount
    private let logger: Logger
    private let state: Mutex<State>
    private let materialOK: Gauge
    private let certificateExpiry: Gauge
    let metricLabel: String

    struct State {
        var material: ConnectionMaterial?
        var fingerprint: MaterialFingerprint
        var problem: ConnectionMaterial.Problem?
        var clients: [String: HTTPClient] = [:]
        /// Requests under way per client; a replaced client is shut down when its count is back to 0.
        var leases: [ObjectIdentifier: Int] = [:]
        var retired: [ObjectIdentifier: HTTPClient] = [:]
        /// Set by `shutdown()`: no client is made after it.
        var closed = false
        /// etcd's session token, from `/v3/auth/authenticate`.
        var sessionToken: String?
        /// The failures logged since the last success (kind and detail), so that each is said once.
        var said: Set<String> = []
        /// The TLS diagnosis of an endpoint's last verification failure, so the probe runs once per failure kind.
        var diagnosed: [String: RegistryFailure] = [:]
    }

    /// `eventLoop`: the one loop every connection of this registry lives on (a watcher that runs on the same loop
    /// then reads a response without a thread hop); nil spreads them over NIO's shared group.
    let eventLoop: (any EventLoop)?

    public init(settings: ConnectionSettings, registry: ConnectionOption.Registry, name: String, logger: Logger,
                poolSize: Int = 8, connectTimeout: TimeAmount = .seconds(2), eventLoop: (any EventLoop)? = nil) {
        self.eventLoop = eventLoop
        self.settings = settings
        self.registry = registry
        self.name = name
        self.logger = logger
        self.poolSize = poolSize
        self.connectTimeout = connectTimeout
        let label = registry == .etcd ? "etcd" : "consul"
        self.metricLabel = label
        self.materialOK = Gauge(label: "signpost_registry_credentials_ok", dimensions: [("registry", label)])
        self.certificateExpiry = Gauge(label: "signpost_registry_client_certificate_expiry_seconds", dimensions: [("registry", label)])
        var initial = State(fingerprint: MaterialFingerprint(settings))
        do {
            let material = try ConnectionMaterial.load(settings)
            initial.material = material
            if let expires = material.clientCertificateExpires { certificateExpiry.record(expires.timeIntervalSince1970) }
            materialOK.record(1)
        } catch {
            // Reported by the watcher's loop, with the endpoint, as its first failure.
            initial.problem = error
            materialOK.record(0)
        }
        state = Mutex(initial)
    }

    /// The problem with the connection's files, if their last reading failed.
    public var materialProblem: String? { state.withLock { $0.problem?.description } }

    /// Reads the files again when they changed (or `force`, for SIGHUP). Returns whether new material was adopted.
    @discardableResult
    public func refresh(force: Bool = false) -> Bool {
        let now = MaterialFingerprint(settings)
        let changed = state.withLock { s in
            guard force || now != s.fingerprint else { return false }
            s.fingerprint = now
            return true
        }
        guard changed else { return false }
        do {
            let material = try ConnectionMaterial.load(settings)
            let old: [HTTPClient] = state.withLock { s in
                s.material = material
                s.problem = nil
                s.diagnosed = [:]
                s.sessionToken = nil
                let replaced = Array(s.clients.values)
                s.clients = [:]
                var idle: [HTTPClient] = []
                for c in replaced {
                    if s.leases[ObjectIdentifier(c), default: 0] == 0 { idle.append(c) } else { s.retired[ObjectIdentifier(c)] = c }
                }
                return idle
            }
            for c in old { c.shutdown { _ in } }
            materialOK.record(1)
            if let expires = material.clientCertificateExpires { certificateExpiry.record(expires.timeIntervalSince1970) }
            logger.info("TLS and credential files read again; new connections use them", metadata: ["registry": "\(name)"])
            return true
        } catch {
            let first = state.withLock { s in
                defer { s.problem = error }
                return s.problem != error
            }
            materialOK.record(0)
            if first {
                logger.error("cannot use a changed TLS or credential file; the previous ones stay in use",
                             metadata: ["registry": "\(name)", "path": "\(error.path)", "reason": "\(error.reason)", "setting": "\(error.setting)"])
            }
            return false
        }
    }

    public var isClosed: Bool { state.withLock { $0.closed } }

    /// Shuts every client down (at the end of the watcher's run).
    public func shutdown() async {
        let all = state.withLock { s in
            defer { s.clients = [:]; s.retired = [:]; s.closed = true }
            return Array(s.clients.values) + Array(s.retired.values)
        }
        for c in all { try? await c.shutdown() }
    }

    /// What `signpost check` says of a registry's connection settings: each file that cannot be used (unreadable,
    /// not PEM, a key that does not match its certificate, an expired certificate), then the warnings.
    public static func check(_ settings: ConnectionSettings, now: Date = Date()) -> (problems: [String], warnings: [String]) {
        var problems: [String] = []
        do { _ = try ConnectionMaterial.load(settings, now: now) } catch { problems.append(error.description) }
        return (problems, settings.warnings)
    }

    // MARK: Requests

    /// A request to `path` on `endpoint`, with the credentials; for a unix socket, the socket's URL.
    func request(_ endpoint: String, _ path: String, method: HTTPMethod = .GET) -> HTTPClientRequest {
        let (url, headers) = target(endpoint, path)
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        return request
    }

    /// The URL of `path` on `endpoint` (for a unix socket, the socket's URL), and the credentials' headers.
    private func target(_ endpoint: String, _ path: String) -> (url: String, headers: HTTPHeaders) {
        var url: String
        if endpoint.hasPrefix("unix://") {
            url = URL(httpURLWithSocketPath: String(endpoint.dropFirst("unix://".count)), uri: path)?.absoluteString ?? endpoint + path
        } else if let serverName = settings.tls.serverName, endpoint.hasPrefix("https://") {
            // The server name stands in the URL (SNI and verification); `dnsOverride` connects to the real host.
            let host = RegistryFailure.host(of: endpoint)
            let written = endpoint.contains("://[") ? "[\(host)]" : host
            url = endpoint.replacingOccurrences(of: "://" + written, with: "://" + serverName) + path
        } else {
            url = endpoint + path
        }
        var headers = HTTPHeaders()
        let (material, session) = state.withLock { ($0.material, $0.sessionToken) }
        switch registry {
        case .consul:
            if let token = material?.token { headers.add(name: "X-Consul-Token", value: token) }
            if let user = settings.user {
                let pair = Data("\(user):\(material?.password ?? "")".utf8).base64EncodedString()
                headers.add(name: "Authorization", value: "Basic \(pair)")
            }
        case .etcd:
            // etcd's gateway passes the header on as gRPC metadata; its value is the bare token.
            if let session, !session.isEmpty { headers.add(name: "Authorization", value: session) }
        }
        return (url, headers)
    }

    /// A GET of `path` (with `query`; failures name the path alone) whose whole answer is read on this
    /// connection's event loop, checked as `jsonBody` checks it: its headers and body. The caller (a watcher whose executor is that loop) resumes on the thread that
    /// read the answer, with no hop to Swift's pool and back: on a quiet machine each hop is a thread woken.
    func fetchJSON(_ endpoint: String, _ path: String, query: String = "", deadline: NIODeadline,
                   isolation: isolated (any Actor)? = #isolation) async throws -> (HTTPHeaders, ByteBuffer) {
        let client = try lease(endpoint)
        defer { release(client) }
        let (url, headers) = target(endpoint, query.isEmpty ? path : path + "?" + query)
        let limit = settings.maxResponseBytes
        let response: HTTPClient.Response
        do {
            let request = try HTTPClient.Request(url: url, method: .GET, headers: headers)
            let task = client.execute(request: request, delegate: ResponseAccumulator(request: request, maxBodySize: limit),
                                      // The delegate on the loop; the channel from the pool (whose group is that loop
                                      // alone, when there is one): a required channel loop would open a connection a request.
                                      eventLoop: eventLoop.map { .delegate(on: $0) } ?? .indifferent,
                                      deadline: deadline, logger: logger)
            response = try await withCheckedThrowingContinuation { continuation in
                task.futureResult.whenComplete { continuation.resume(with: $0) }
            }
        } catch is ResponseAccumulator.ResponseTooBigError {
            throw Self.tooLarge(path, endpoint: endpoint, limit: limit, length: nil)
        } catch {
            throw await diagnose(error, endpoint: endpoint)
        }
        let body = response.body ?? ByteBuffer()
        try checkAnswer(status: response.status, headers: response.headers, body: body, path: path, endpoint: endpoint)
        return (response.headers, body)
    }

    /// An answer over max-response: refused by its Content-Length, or cut off once past the bound.
    static func tooLarge(_ path: String, endpoint: String, limit: Int, length: Int?) -> RegistryFailure {
        let what = length.map { "answered \($0) bytes, over max-response (\(limit) bytes)" } ?? "answered more than max-response (\(limit) bytes); refused unread"
        return RegistryFailure(.tooLarge, endpoint: endpoint, "\(path) \(what)",
                               fix: "raise max-response= on the --registry URL if the registry is really that large")
    }

    /// Whether the material holds a Consul token (for ACL-filtering detection).
    var hasToken: Bool { state.withLock { $0.material?.token != nil } }

    var password: String? { state.withLock { $0.material?.password } }

    func setSessionToken(_ token: String?) {
        if token != nil { Counter(label: "signpost_registry_logins_total", dimensions: [("registry", metricLabel)]).increment() }
        state.withLock { $0.sessionToken = token }
    }
    var sessionToken: String? { state.withLock { $0.sessionToken } }

    /// Sends `request` to `endpoint` and hands the response to `body`, on a client built from the current material.
    /// A failure of the connection comes out as a `RegistryFailure`; a `RegistrySignal` that `body` throws (a
    /// watcher's own news, such as a compacted revision) passes through as it is.
    func execute<T>(_ request: HTTPClientRequest, endpoint: String, deadline: NIODeadline,
                    isolation: isolated (any Actor)? = #isolation,
                    _ body: (HTTPClientResponse) async throws -> T) async throws -> T {
        let client = try lease(endpoint)
        defer { release(client) }
        do {
            let response = try await client.execute(request, deadline: deadline, logger: logger)
            return try await body(response)
        } catch let signal as any RegistrySignal {
            throw signal
        } catch {
            throw await diagnose(error, endpoint: endpoint)
        }
    }

    /// The body of a 200 answer, bounded by `max-response` and checked to be JSON; anything else is a failure that
    /// says what the endpoint answered.
    func jsonBody(_ response: HTTPClientResponse, path: String, endpoint: String) async throws(RegistryFailure) -> ByteBuffer {
        let limit = settings.maxResponseBytes
        if let length = response.headers.first(name: "Content-Length").flatMap(Int.init), length > limit {
            throw Self.tooLarge(path, endpoint: endpoint, limit: limit, length: length)
        }
        let body: ByteBuffer
        do { body = try await response.body.collect(upTo: limit) } catch is NIOTooManyBytesError {
            throw Self.tooLarge(path, endpoint: endpoint, limit: limit, length: nil)
        } catch {
            throw await diagnose(error, endpoint: endpoint)
        }
        try checkAnswer(status: response.status, headers: response.headers, body: body, path: path, endpoint: endpoint)
        return body
    }

    /// A 200 with a JSON body, or the failure that says what the endpoint answered instead.
    private func checkAnswer(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, path: String, endpoint: String) throws(RegistryFailure) {
        let contentType = headers.first(name: "Content-Type")
        guard status == .ok else {
            // A proxy's error page says more as what it is than as its text.
            if Self.isHTML(body, contentType: contentType) {
                throw RegistryFailure(.notJSON, endpoint: endpoint, "\(path) returned HTML, not JSON (HTTP \(status.code): a proxy or another service on this address?)",
                                      fix: "point the --registry URL at the registry's own API")
            }
            throw RegistryFailure.status(status.code, body: body, path: path, endpoint: endpoint, registry: registry)
        }
        try Self.checkJSON(body, contentType: contentType, path: path, endpoint: endpoint)
    }

    /// What a body is: nil for JSON, else "HTML", "an empty body" or its content type.
    static func kindOfBody(_ body: ByteBuffer, contentType: String?) -> String? {
        let first = body.readableBytesView.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
        if first == UInt8(ascii: "{") || first == UInt8(ascii: "[") { return nil }
        let type = contentType?.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        if first == nil { return "an empty body" }
        if type == "text/html" || first == UInt8(ascii: "<") { return "HTML" }
        return type.isEmpty ? "something else" : type
    }

    static func isHTML(_ body: ByteBuffer, contentType: String?) -> Bool { kindOfBody(body, contentType: contentType) == "HTML" }

    /// A body that is not JSON, named by what it is (an HTML page from a proxy, text, nothing).
    static func checkJSON(_ body: ByteBuffer, contentType: String?, path: String, endpoint: String) throws(RegistryFailure) {
        guard let what = kindOfBody(body, contentType: contentType) else { return }
        throw RegistryFailure(.notJSON, endpoint: endpoint, "\(path) returned \(what), not JSON (a proxy or another service on this address?)",
                              fix: "point the --registry URL at the registry's own API")
    }

    /// A body decoded as `T`, or a failure that says the JSON did not parse or had the wrong shape.
    func decode<T: Decodable>(_ type: T.Type, _ body: ByteBuffer, path: String, endpoint: String) throws(RegistryFailure) -> T {
        do { return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView)) } catch {
            // Valid JSON of another kind at the top (an array for an object): said as the shape it should have been.
            if case DecodingError.typeMismatch(_, let context) = error, context.codingPath.isEmpty {
                throw Self.wrongShape(T.self, path: path, endpoint: endpoint)
            }
            throw Self.badJSON(path, endpoint: endpoint, error)
        }
    }

    /// Valid JSON of another kind than the endpoint's (an array where an object belongs), said as the shape it
    /// should have had.
    static func wrongShape<T>(_ type: T.Type, path: String, endpoint: String) -> RegistryFailure {
        let shape = T.self is any ExpressibleByDictionaryLiteral.Type ? "an object" : T.self is any ExpressibleByArrayLiteral.Type ? "an array" : "\(T.self)"
        return RegistryFailure(.badResponse, endpoint: endpoint, "\(path) returned JSON of the wrong shape: expected \(shape)")
    }

    /// A JSON body of the wrong shape or cut short.
    static func badJSON(_ path: String, endpoint: String, _ error: any Error) -> RegistryFailure {
        RegistryFailure(.badResponse, endpoint: endpoint, "\(path) returned JSON that does not parse or has the wrong shape (\(Self.short(error)))")
    }

    /// A decoding error in one line: where in the document (`Node.Checks.[2].Status`) and why. Every registry's
    /// JSON errors are said this way.
    static func short(_ error: any Error) -> String {
        let ns = error as NSError
        if ns.domain == NSCocoaErrorDomain, let debug = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return debug }
        if let decoding = error as? DecodingError {
            switch decoding {
            case .dataCorrupted(let c), .keyNotFound(_, let c), .typeMismatch(_, let c), .valueNotFound(_, let c):
                let at = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                return (at.isEmpty ? "" : "\(at): ") + c.debugDescription
            @unknown default: break
            }
        }
        return "\(error)"
    }

    private func lease(_ endpoint: String) throws(RegistryFailure) -> HTTPClient {
        let result: Result<HTTPClient, RegistryFailure> = state.withLock { s in
            if s.closed { return .failure(RegistryFailure(.other, endpoint: endpoint, "the connection is shut down")) }
            guard let material = s.material else {
                let p = s.problem!
                return .failure(RegistryFailure(.material, endpoint: endpoint, "\(p.setting) \(p.path): \(p.reason)",
                                                fix: "fix the file; it is read again when it changes"))
            }
            let client = s.clients[endpoint] ?? makeClient(endpoint, material)
            s.clients[endpoint] = client
            s.leases[ObjectIdentifier(client), default: 0] += 1
            return .success(client)
        }
        return try result.get()
    }

    private func release(_ client: HTTPClient) {
        let idle: HTTPClient? = state.withLock { s in
            let id = ObjectIdentifier(client)
            s.leases[id, default: 1] -= 1
            guard s.leases[id] == 0 else { return nil }
            s.leases[id] = nil
            return s.retired.removeValue(forKey: id)
        }
        idle?.shutdown { _ in }
    }

    private func makeClient(_ endpoint: String, _ material: ConnectionMaterial) -> HTTPClient {
        let config = clientConfiguration(endpoint, material)
        if let eventLoop { return HTTPClient(eventLoopGroup: eventLoop, configuration: config) }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    /// How every client to a registry endpoint is set up.
    func clientConfiguration(_ endpoint: String, _ material: ConnectionMaterial) -> HTTPClient.Configuration {
        var config = HTTPClient.Configuration()
        if endpoint.hasPrefix("https://") { config.tlsConfiguration = material.tls }
        if let serverName = settings.tls.serverName { config.dnsOverride = [serverName: RegistryFailure.host(of: endpoint)] }
        config.timeout = .init(connect: connectTimeout)
        config.redirectConfiguration = .disallow
        config.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: poolSize)
        // A failed connect fails the requests waiting for it at once: the watchers' own loop (`RegistryLoop`) backs
        // off and moves to the next endpoint. AHC's retry would keep a backoff that grows with the outage (up to
        // 60 s, reset only by a connect that succeeds) and hold each request to a down member for its whole
        // connect timeout, so recovery after a long outage took seconds longer than after a short one (FleetTests).
        config.connectionPool.retryConnectionEstablishment = false
        return config
    }

    /// Classifies `error`; a certificate that did not verify is looked at once more (an expired certificate and
    /// an unknown CA fail alike in the handshake).
    private func diagnose(_ error: any Error, endpoint: String) async -> RegistryFailure {
        let failure = RegistryFailure.classify(error, endpoint: endpoint, settings: settings)
        guard failure.kind == .unknownCA else { return failure }
        if let known = state.withLock({ $0.diagnosed[endpoint] }) { return known }
        let material = state.withLock { $0.material }
        let refined = await TLSProbe.diagnose(endpoint: endpoint, serverName: settings.tls.serverName, tls: material?.tls) ?? failure
        state.withLock { $0.diagnosed[endpoint] = refined }
        return refined
    }

    /// Whether `failure` has not been said since the last success; it is then.
    func isNews(_ failure: RegistryFailure) -> Bool {
        let key = failure.kind.reason + "\u{0}" + failure.detail
        return state.withLock { $0.said.insert(key).inserted }
    }

    /// After a success, every failure is news again.
    func resetNews() { state.withLock { $0.said = [] } }

    /// A success clears the endpoint's TLS diagnosis.
    func succeeded(_ endpoint: String) {
        state.withLock { _ = $0.diagnosed.removeValue(forKey: endpoint) }
    }
}

/// An error a watcher throws to itself from inside a request (a compacted etcd revision): not a connection failure,
/// so `RegistryConnection.execute` passes it through unclassified.
protocol RegistrySignal: Error {}

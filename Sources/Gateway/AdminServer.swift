import Catalog
import DNSWire
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin endpoint: `/health` (200 while the process runs), `/ready` (503 until every registry has
/// loaded, and while the data is older than `--max-stale`), `/metrics` (Prometheus text), and the operator view:
/// `/ui` and its read-only JSON (`/v1/explain`, `/v1/registries`, `/v1/services`, `/v1/changes`, `/v1/traffic`).
/// Only GET is answered.
public final class AdminServer: Service, Sendable {
    public typealias Metrics = @Sendable () -> [UInt8]

    private let address: ListenAddress
    private let group: any EventLoopGroup
    private let store: SnapshotStore
    private let maxStale: Duration?
    private let metrics: Metrics
    private let logger: Logger
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)
    private let view: OperatorView

    public init(address: ListenAddress, group: any EventLoopGroup, store: SnapshotStore, maxStale: Duration?,
                metrics: @escaping Metrics, handler: QueryHandlerSlot, logger: Logger) {
        self.address = address
        self.group = group
        self.store = store
        self.maxStale = maxStale
        self.metrics = metrics
        self.logger = logger
        self.view = OperatorView(slot: handler, metrics: metrics)
    }

    /// Why the gateway is not ready, or nil when it is.
    static func notReady(store: SnapshotStore, maxStale: Duration?) -> String? {
        if let problem = store.problems.first { return problem }
        if !store.snapshot.isLoaded {
            // The registry's own failure, when there is one, says more than "not loaded".
            return (["registry data not loaded yet"] + store.notices).joined(separator: "\n")
        }
        if let maxStale, let age = store.staleness(), age > maxStale {
            return "registry data is \(age.components.seconds)s old, over --max-stale"
        }
        return nil
    }

    /// `ready`, and a line for each registry that serves stale data: from its state file (with the age of its last
    /// confirmation), or cached since it lost contact.
    static func readyText(store: SnapshotStore, now: Double = Date().timeIntervalSince1970) -> String {
        var lines = ["ready"]
        for (registry, confirmed) in store.fromState {
            lines.append("\(registry): stale (from state, age \(Int(max(0, now - confirmed)))s)")
        }
        if lines.count == 1, let age = store.staleness() {
            lines.append("stale (a registry is out of contact; data age \(age.components.seconds)s)")
        }
        lines += store.notices
        return lines.joined(separator: "\n") + "\n"
    }

    @discardableResult
    public func start() async throws -> ListenAddress {
        let store = self.store, maxStale = self.maxStale, metrics = self.metrics, view = self.view, named = address.host.lowercased()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(store: store, maxStale: maxStale, metrics: metrics, view: view, named: named))
                }
            }
        do {
            let ch = try await bootstrap.bind(host: address.host, port: address.port).get()
            channel.withLockedValue { $0 = ch }
            return ListenAddress(host: address.host, port: ch.localAddress?.port ?? address.port)
        } catch {
            throw DNSServer.BindError(description: "cannot listen on \(address) (admin): \(DNSServer.reason(error))")
        }
    }

    public func run() async throws {
        guard let ch = channel.withLockedValue({ $0 }) else { return }
        // The traffic chart's samples: every `OperatorView.sampleInterval`, from the counters `/metrics` exports.
        let view = self.view
        let sampler = group.next().scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(Int64(OperatorView.sampleInterval))) { _ in
            view.sample()
        }
        defer { sampler.cancel() }
        logger.info("admin listening on \(ListenAddress(host: address.host, port: ch.localAddress?.port ?? address.port)) (http)")
        await withGracefulShutdownHandler {
            try? await ch.closeFuture.get()
        } onGracefulShutdown: {
            ch.close(promise: nil)
        }
    }
}

final class AdminHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let store: SnapshotStore
    let maxStale: Duration?
    let metrics: AdminServer.Metrics
    let view: OperatorView
    private let uri = NIOLockedValueBox<String?>(nil)
    private let host = NIOLockedValueBox<String?>(nil)

    /// The host `--admin` names, which a `Host` header may name too.
    let named: String

    init(store: SnapshotStore, maxStale: Duration?, metrics: @escaping AdminServer.Metrics, view: OperatorView, named: String) {
        self.named = named
        self.store = store
        self.maxStale = maxStale
        self.metrics = metrics
        self.view = view
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            uri.withLockedValue { $0 = head.method == .GET ? head.uri : nil }
            host.withLockedValue { $0 = head.headers.first(name: "Host") }
        case .body:
            break
        case .end:
            guard let target = uri.withLockedValue({ $0 }) else {
                respond(context, .methodNotAllowed, "text/plain", Array("read-only: GET only\n".utf8))
                return
            }
            guard Self.trusted(host: host.withLockedValue { $0 }, named: named) else {
                respond(context, .forbidden, "text/plain", Array("Host must be an IP address, localhost or the --admin host\n".utf8))
                return
            }
            let components = URLComponents(string: target)
            let path = components?.path ?? ""
            var query: [String: String] = [:]
            for item in components?.queryItems ?? [] { query[item.name] = item.value ?? "" }
            let (status, contentType, body): (HTTPResponseStatus, String, [UInt8])
            switch path {
            case "/health":
                (status, contentType, body) = (.ok, "text/plain", Array("ok\n".utf8))
            case "/ready":
                if let reason = AdminServer.notReady(store: store, maxStale: maxStale) {
                    (status, contentType, body) = (.serviceUnavailable, "text/plain", Array("not ready: \(reason)\n".utf8))
                } else {
                    (status, contentType, body) = (.ok, "text/plain", Array(AdminServer.readyText(store: store).utf8))
                }
            case "/metrics":
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4", metrics())
            default:
                if let page = view.page(path, query) {
                    (status, contentType, body) = page
                } else {
                    (status, contentType, body) = (.notFound, "text/plain", Array("not found\n".utf8))
                }
            }
            respond(context, status, contentType, body)
        }
    }

    /// A `Host` that is an IP literal, `localhost` or the `--admin` host (with any port), or none (HTTP/1.0). A page
    /// on another origin that re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
    static func trusted(host: String?, named: String) -> Bool {
        guard var h = host?.lowercased() else { return true }
        if h.hasPrefix("["), let close = h.firstIndex(of: "]") { return IPv6(String(h[h.index(after: h.startIndex)..<close])) != nil }
        if let colon = h.lastIndex(of: ":") { h = String(h[..<colon]) }
        return h == "localhost" || h == named || IPv4(h) != nil
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ contentType: String, _ body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        // The status page is one document with its own script and style; it loads nothing else, from anywhere.
        headers.add(name: "Content-Security-Policy",
                    value: "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

import Catalog
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin endpoint: `/health` (200 while the process runs), `/ready` (503 until every registry has
/// loaded, and while the data is older than `--max-stale`), and `/metrics` (Prometheus text).
public final class AdminServer: Service, Sendable {
    public typealias Metrics = @Sendable () -> [UInt8]

    private let address: ListenAddress
    private let group: any EventLoopGroup
    private let store: SnapshotStore
    private let maxStale: Duration?
    private let metrics: Metrics
    private let logger: Logger
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    public init(address: ListenAddress, group: any EventLoopGroup, store: SnapshotStore, maxStale: Duration?,
                metrics: @escaping Metrics, logger: Logger) {
        self.address = address
        self.group = group
        self.store = store
        self.maxStale = maxStale
        self.metrics = metrics
        self.logger = logger
    }

    /// Why the gateway is not ready, or nil when it is.
    static func notReady(store: SnapshotStore, maxStale: Duration?) -> String? {
        if let problem = store.problems.first { return problem }
        if !store.snapshot.isLoaded { return "registry data not loaded yet" }
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
        return lines.joined(separator: "\n") + "\n"
    }

    @discardableResult
    public func start() async throws -> ListenAddress {
        let store = self.store, maxStale = self.maxStale, metrics = self.metrics
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(store: store, maxStale: maxStale, metrics: metrics))
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
    private let uri = NIOLockedValueBox<String>("")

    init(store: SnapshotStore, maxStale: Duration?, metrics: @escaping AdminServer.Metrics) {
        self.store = store
        self.maxStale = maxStale
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            uri.withLockedValue { $0 = head.method == .GET ? head.uri : "" }
        case .body:
            break
        case .end:
            let path = uri.withLockedValue { $0 }.split(separator: "?").first.map(String.init) ?? ""
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
                (status, contentType, body) = (.notFound, "text/plain", Array("not found\n".utf8))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: "\(body.count)")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

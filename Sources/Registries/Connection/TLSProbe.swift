import Catalog
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// A certificate that fails verification fails the handshake alike whether it expired or its CA is unknown. The
/// probe connects once more with verification off, reads the certificate the server presents, and tells which.
enum TLSProbe {
    static func diagnose(endpoint: String, serverName: String?, tls: TLSConfiguration?, now: Date = Date()) async -> RegistryFailure? {
        guard var config = tls, let (host, port) = hostPort(endpoint) else { return nil }
        config.certificateVerification = .none
        guard let leaf = await peerCertificate(host: host, port: port, serverName: serverName, config: config) else { return nil }
        guard let outside = ConnectionMaterial.outOfValidity(leaf, now: now) else { return nil }
        return RegistryFailure(.expiredCertificate, endpoint: endpoint, "the server's certificate \(outside)",
                               fix: outside.hasPrefix("expired") ? "renew the registry's certificate (its --cert-file)" : "check both hosts' clocks")
    }

    private static func hostPort(_ endpoint: String) -> (String, Int)? {
        guard endpoint.hasPrefix("https://") else { return nil }
        let host = RegistryFailure.host(of: endpoint)
        let rest = endpoint.dropFirst("https://".count)
        let afterHost = rest.hasPrefix("[") ? rest.drop { $0 != "]" }.dropFirst() : rest.drop { $0 != ":" }
        let port = afterHost.hasPrefix(":") ? Int(afterHost.dropFirst().prefix { $0.isNumber }) : 443
        return port.map { (host, $0) }
    }

    // Unchecked: its promise is Sendable, and the handler is touched only on its channel's event loop.
    private final class HandshakeWaiter: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = NIOAny
        let promise: EventLoopPromise<Void>
        init(_ promise: EventLoopPromise<Void>) { self.promise = promise }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted = event { promise.succeed() }
            context.fireUserInboundEventTriggered(event)
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { promise.fail(error) }
        func channelInactive(context: ChannelHandlerContext) { promise.fail(ChannelError.eof) }
    }

    private static func peerCertificate(host: String, port: Int, serverName: String?, config: TLSConfiguration) async -> NIOSSLCertificate? {
        guard let context = try? NIOSSLContext(configuration: config) else { return nil }
        let sni = serverName ?? host
        let isIP = sni.contains(":") || sni.allSatisfy { $0.isNumber || $0 == "." }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let handshake = loop.makePromise(of: Void.self)
        do {
            let channel = try await ClientBootstrap(group: loop)
                .connectTimeout(.seconds(2))
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: isIP ? nil : sni))
                        try ch.pipeline.syncOperations.addHandler(HandshakeWaiter(handshake))
                    }
                }
                .connect(host: host, port: port).get()
            defer { channel.close(promise: nil) }
            // A peer that accepts and then says nothing must not hold the watcher up.
            let timeout = loop.scheduleTask(in: .seconds(2)) { handshake.fail(ChannelError.connectTimeout(.seconds(2))) }
            defer { timeout.cancel() }
            try await handshake.futureResult.get()
            return try await channel.nioSSL_peerCertificate().get()
        } catch {
            handshake.fail(error)
            return nil
        }
    }
}

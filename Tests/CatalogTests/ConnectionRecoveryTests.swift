import Foundation
import Logging
import NIOCore
@testable import Registries
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// How a registry connection treats a member that is down: the watchers' loop decides the retries, not the HTTP
/// client's pool.
@Suite("Registry connection recovery")
struct ConnectionRecoveryTests {
    /// A one-connection HTTP server on `port` that answers `{}` to one request.
    static func serveOnce(port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        precondition(bound == 0 && listen(fd, 4) == 0, "cannot listen on \(port)")
        Thread.detachNewThread {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = read(c, &buffer, buffer.count)
            let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            _ = answer.withCString { write(c, $0, strlen($0)) }
            close(c)
        }
        return fd
    }

    /// A loopback port where nothing listens.
    static func closedPort() -> UInt16 { UInt16(freePort()) }

    /// A refused connect is the watcher's loop's to retry, not the HTTP client pool's: the pool's retry held each
    /// request to a down member for its whole connect timeout, with a backoff that grew with the outage (FleetTests
    /// shows the effect end to end: convergence no longer depends on how long quorum was lost). The pool's setting
    /// is asserted, since no clock-free behaviour tells the two apart: both report "connection refused", the
    /// retrying one only later. And a member that is back answers the next request.
    @Test func aDownMemberIsLeftToTheLoopAndAnswersOnceBack() async throws {
        let port = Self.closedPort()
        let endpoint = "http://127.0.0.1:\(port)"
        let connection = RegistryConnection(settings: ConnectionSettings(endpoints: [endpoint]), registry: .consul, name: "test",
                                            logger: Logger(label: "test"), connectTimeout: .seconds(2))
        let material = try ConnectionMaterial.load(connection.settings)
        #expect(connection.clientConfiguration(endpoint, material).connectionPool.retryConnectionEstablishment == false)
        for _ in 0..<3 {
            do {
                _ = try await connection.fetchJSON(endpoint, "/v1/status/leader", deadline: .now() + .seconds(60))
                Issue.record("a closed port answered")
            } catch let failure as RegistryFailure {
                #expect(failure.kind == .connectionRefused, "\(failure)")
            }
        }
        let listener = Self.serveOnce(port: port)
        defer { close(listener) }
        let (_, body) = try await connection.fetchJSON(endpoint, "/v1/status/leader", deadline: .now() + .seconds(300))
        #expect(body.readableBytes == 2)
        await connection.shutdown()
    }
}

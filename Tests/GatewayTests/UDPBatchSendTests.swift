import CUDPBatch
import Foundation
@testable import Gateway
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// sendmmsg(2) stops at the first message it cannot send. The batch goes on past it.
@Suite("UDP batch send")
struct UDPBatchSendTests {
    /// A UDP socket on 127.0.0.1 with a free port, waiting at most a second per receive.
    func receiver() -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return (fd, UInt16(bigEndian: a.sin_port))
    }

    @Test func aFailedMessageInTheMiddleDoesNotDropTheRest() {
        let a = receiver(), b = receiver()
        let sender = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { for fd in [a.fd, b.fd, sender] { close(fd) } }
        // The middle destination is port 0, which UDP refuses to send to (EINVAL).
        let ports: [UInt16] = [a.port, 0, b.port]
        let payloads = ports.indices.map { Array("answer \($0)".utf8) }
        let addresses = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: ports.count)
        let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: ports.count)
        let messages = UnsafeMutablePointer<sp_mmsghdr>.allocate(capacity: ports.count)
        let buffers = payloads.map { p -> UnsafeMutableRawPointer in
            let m = UnsafeMutableRawPointer.allocate(byteCount: p.count, alignment: 1)
            m.copyMemory(from: p, byteCount: p.count)
            return m
        }
        defer { addresses.deallocate(); iovecs.deallocate(); messages.deallocate(); buffers.forEach { $0.deallocate() } }
        for i in ports.indices {
            addresses[i] = sockaddr_in()
            addresses[i].sin_family = sa_family_t(AF_INET)
            addresses[i].sin_addr.s_addr = inet_addr("127.0.0.1")
            addresses[i].sin_port = ports[i].bigEndian
            iovecs[i] = iovec(iov_base: buffers[i], iov_len: payloads[i].count)
            messages[i] = sp_mmsghdr()
            messages[i].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + i)
            messages[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
            messages[i].msg_hdr.msg_iov = iovecs + i
            messages[i].msg_hdr.msg_iovlen = 1
        }
        #expect(UDPBatchServer.sendBatch(sender, messages, count: ports.count) == 2, "the two good answers sent")
        for (r, i) in [(a, 0), (b, 2)] {
            var buffer = [UInt8](repeating: 0, count: 64)
            let n = recv(r.fd, &buffer, buffer.count, 0)
            #expect(n > 0 && Array(buffer[0..<max(n, 0)]) == payloads[i], "answer \(i) arrived")
        }
        #expect(UDPBatchServer.errnoName(EINVAL) == "EINVAL" && UDPBatchServer.errnoName(12345) == "12345")
    }
}

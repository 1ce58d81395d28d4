import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A port the kernel reports free on `address` for the socket `type` (bound to port 0, read back, released): the
/// one way tests pick a port to listen on, or one where nothing listens.
public func freePort(on address: String = "127.0.0.1", type: Int32 = Int32(SOCK_STREAM.rawValue)) -> Int {
    let fd = socket(AF_INET, type, 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr(address)
    a.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length); return getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: a.sin_port))
}

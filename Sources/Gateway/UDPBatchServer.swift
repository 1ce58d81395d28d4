import Atomics
import Catalog
import CUDPBatch
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The UDP front end without NIO (`--udp-engine mmsg`): one SO_REUSEPORT socket and one thread per worker, each
/// receiving up to 32 datagrams per recvmmsg(2) and sending the answers with one sendmmsg(2). Answers that must
/// wait (forwarded misses) are sent later with sendto(2) on the same socket. TCP stays on NIO.
final class UDPBatchServer: Sendable {
    static let batch = 32
    static let bufferSize = 4096

    private let slot: QueryHandlerSlot
    private let eventLoop: any EventLoopGroup
    private let logger: Logger
    /// Bound by `bind`, served by `start`: touched only by the owner while starting and stopping, behind a lock.
    private let sockets = NIOLockedValueBox<[Int32]>([])
    /// Read once per batch: an atomic load, not a lock.
    private let stopping = ManagedAtomic(false)

    init(handler: QueryHandlerSlot, eventLoop: any EventLoopGroup, logger: Logger) {
        self.slot = handler
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Binds `workers` sockets to `address` (see `ReusePort.socketCount`); returns the port.
    func bind(_ address: ListenAddress, workers: Int) throws -> Int {
        let target = try SocketAddress(ipAddress: address.host, port: address.port)
        let count = try ReusePort.socketCount(target, workers: workers)
        var port = address.port
        for _ in 0..<count {
            let target = try SocketAddress(ipAddress: address.host, port: port)
            let fd = socket(Int32(target.protocol.rawValue), Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
            var one: Int32 = 1
            if count > 1 { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            // Wake up now and then to notice shutdown.
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let rc = target.withSockAddr { sa, len in Glibc.bind(fd, sa, socklen_t(len)) }
            guard rc == 0 else {
                let code = errno
                close(fd)
                sockets.withLockedValue { all in
                    for s in all { close(s) }
                    all = []
                }
                throw IOError(errnoCode: code, reason: "bind")
            }
            if port == 0 {
                var storage = sockaddr_storage()
                var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
                port = Int(UInt16(bigEndian: withUnsafeBytes(of: storage) { $0.load(fromByteOffset: 2, as: UInt16.self) }))
            }
            sockets.withLockedValue { $0.append(fd) }
        }
        return port
    }

    func start() {
        for fd in sockets.withLockedValue({ $0 }) {
            let thread = Thread { [self] in self.serve(fd) }
            thread.name = "signpost-udp"
            thread.start()
        }
    }

    /// The threads notice within one receive timeout (200 ms) and return; the process closes the sockets.
    func requestStop() {
        stopping.store(true, ordering: .relaxed)
    }

    /// For a bind that is abandoned before `start()`.
    func closeSockets() {
        sockets.withLockedValue { all in
            for fd in all { close(fd) }
            all = []
        }
    }

    /// One socket's loop: a batch of queries in with recvmmsg(2), their answers out with one sendmmsg(2).
    private func serve(_ fd: Int32) {
        let slots = Slots(count: Self.batch, size: Self.bufferSize)
        defer { slots.deallocate() }
        let waitForOne = sp_msg_waitforone()
        let loop = eventLoop.next()
        // What the kernel wrote into a header (the address length, flags) is reset for the headers it used, not
        // for all 32: at moderate rates a wake-up brings one datagram.
        var used = slots.count
        while !stopping.load(ordering: .relaxed) {
            slots.resetReceiveHeaders(used)
            let received = sp_recvmmsg(fd, slots.inMsgs, UInt32(slots.count), waitForOne, nil)
            used = max(1, Int(received))  // a failed call may still have written the first header
            if received <= 0 { continue }  // timeout (shutdown check) or a transient error
            var out = 0
            let handler = slot.handler  // one handler for the whole batch, even across a reload
            // Durations count from the batch's arrival: one clock reading for all of it.
            let started = handler.observer == nil ? 0 : Uptime.nanoseconds
            for i in 0..<Int(received) {
                if let length = answer(i, slots, into: out, handler, started: started, fd: fd, loop: loop) {
                    slots.queueAnswer(out, length: length, to: i)
                    out += 1
                }
            }
            Self.sendBatch(fd, slots.outMsgs, count: out)
        }
    }

    /// Query `i` of the batch answered into send slot `out`: the answer's length, or nil when nothing goes out in
    /// this batch (dropped, rate-limited, or answered later by a forwarded query's own send).
    @inline(__always)
    private func answer(_ i: Int, _ slots: Slots, into out: Int, _ handler: QueryHandler, started: UInt64, fd: Int32,
                        loop: any EventLoop) -> Int? {
        let raw = slots.query(i), client = slots.names + i, into = slots.answerSlot(out)
        // The fast path writes straight into the send slot: no buffer is allocated for the query or the answer.
        if let length = handler.answerFast(raw, into: UnsafeMutableRawBufferPointer(start: into, count: Slots.answerSize), transport: .udp,
                                           mayRecurse: { handler.access.mayRecurse(sockaddr: client) },
                                           client: { handler.clientLocality { withClientAddress(sockaddr: client, $0) }.0 }) {
            if let observer = handler.observer {
                observer.record(query: raw, response: UnsafeRawBufferPointer(start: into, count: length), transport: .udp,
                                started: started, client: Self.address(client).map { "\($0)" } ?? "-")
            }
            return Self.rateLimit(handler, client, into, length)
        }
        let packet = ByteBuffer(bytes: raw)
        let needsAddress = handler.forwarder != nil || handler.observer != nil || handler.resolver.configuration.locality.mode != .off
        let address = needsAddress ? Self.address(client) : nil
        // The fast paths already declined this one: straight to the general path.
        switch handler.handleWithoutFastPath(packet, transport: .udp, client: address, eventLoop: loop) {
        case .now(let response):
            handler.observe(packet, response, .udp, started, address)
            guard let response, response.readableBytes <= Slots.answerSize else { return nil }
            response.withUnsafeReadableBytes { into.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return Self.rateLimit(handler, client, into, response.readableBytes)
        case .later(let future):
            let name = client.pointee, namelen = slots.inMsgs[i].msg_hdr.msg_namelen
            future.whenSuccess { response in
                handler.observe(packet, response, .udp, started, address)
                guard var response else { return }
                var to = name
                if let rrl = handler.rrl {
                    let decision = withUnsafePointer(to: &to) { rrl.decide(sockaddr: UnsafeRawPointer($0)) }
                    guard let limited = ResponseRateLimiter.apply(decision, to: response) else { return }
                    response = limited
                }
                response.withUnsafeReadableBytes { bytes in
                    _ = withUnsafePointer(to: &to) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes.baseAddress, bytes.count, 0, $0, namelen) }
                    }
                }
            }
            return nil
        }
    }

    /// A socket thread's memory for one batch, allocated once: receive and send slots, the clients' addresses, and
    /// the message headers that point at them.
    private struct Slots {
        static let answerSize = 65536
        let count: Int, size: Int
        let inData: UnsafeMutableRawPointer, outData: UnsafeMutableRawPointer
        let names: UnsafeMutablePointer<sockaddr_storage>
        let inVec: UnsafeMutablePointer<iovec>, outVec: UnsafeMutablePointer<iovec>
        let inMsgs: UnsafeMutablePointer<sp_mmsghdr>, outMsgs: UnsafeMutablePointer<sp_mmsghdr>

        init(count n: Int, size: Int) {
            (count, self.size) = (n, size)
            inData = .allocate(byteCount: n * size, alignment: 16)
            outData = .allocate(byteCount: n * Self.answerSize, alignment: 16)
            names = .allocate(capacity: n)
            inVec = .allocate(capacity: n)
            outVec = .allocate(capacity: n)
            inMsgs = .allocate(capacity: n)
            outMsgs = .allocate(capacity: n)
            for i in 0..<n {
                inVec[i] = iovec(iov_base: inData + i * size, iov_len: size)
                inMsgs[i] = sp_mmsghdr()
                inMsgs[i].msg_hdr.msg_name = UnsafeMutableRawPointer(names + i)
                inMsgs[i].msg_hdr.msg_iov = inVec + i
                inMsgs[i].msg_hdr.msg_iovlen = 1
            }
        }

        func deallocate() {
            inData.deallocate(); outData.deallocate(); names.deallocate()
            inVec.deallocate(); outVec.deallocate(); inMsgs.deallocate(); outMsgs.deallocate()
        }

        func resetReceiveHeaders(_ used: Int) {
            for i in 0..<used {
                inMsgs[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                inMsgs[i].msg_hdr.msg_flags = 0
                inMsgs[i].msg_len = 0
            }
        }

        @inline(__always) func query(_ i: Int) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(start: inData + i * size, count: Int(inMsgs[i].msg_len))
        }

        @inline(__always) func answerSlot(_ out: Int) -> UnsafeMutableRawPointer { outData + out * Self.answerSize }

        /// Send message `out`: `length` bytes of its slot, to the sender of query `i`.
        @inline(__always) func queueAnswer(_ out: Int, length: Int, to i: Int) {
            outVec[out] = iovec(iov_base: answerSlot(out), iov_len: length)
            outMsgs[out] = sp_mmsghdr()
            outMsgs[out].msg_hdr.msg_name = UnsafeMutableRawPointer(names + i)
            outMsgs[out].msg_hdr.msg_namelen = inMsgs[i].msg_hdr.msg_namelen
            outMsgs[out].msg_hdr.msg_iov = outVec + out
            outMsgs[out].msg_hdr.msg_iovlen = 1
        }
    }

    /// `signpost_udp_send_errors_total{errno}`, one counter per errno seen.
    private static let sendErrors = NIOLockedValueBox<[Int32: Counter]>([:])

    /// Sends `count` prepared messages with sendmmsg(2). sendmmsg stops at the first message it cannot send (and
    /// says -1 when that is the first); that message is skipped and counted by errno, and the rest are sent.
    /// Returns how many were sent.
    @discardableResult
    static func sendBatch(_ fd: Int32, _ messages: UnsafeMutablePointer<sp_mmsghdr>, count: Int) -> Int {
        var next = 0, sent = 0
        while next < count {
            let r = sp_sendmmsg(fd, messages + next, UInt32(count - next), 0)
            if r > 0 {
                next += Int(r)
                sent += Int(r)
                continue
            }
            let code = r < 0 ? errno : EIO
            if code == EINTR { continue }
            let counter = sendErrors.withLockedValue { counters in
                if let c = counters[code] { return c }
                let c = Counter(label: "signpost_udp_send_errors_total", dimensions: [("errno", Self.errnoName(code))])
                counters[code] = c
                return c
            }
            counter.increment()
            next += 1
        }
        return sent
    }

    /// `EAGAIN`, `EINVAL`, … for the metric label (a fixed, small set), the number otherwise.
    static func errnoName(_ code: Int32) -> String {
        let names: [Int32: String] = [EAGAIN: "EAGAIN", EINVAL: "EINVAL", ENETUNREACH: "ENETUNREACH", EHOSTUNREACH: "EHOSTUNREACH",
                                      EPERM: "EPERM", EACCES: "EACCES", ENOBUFS: "ENOBUFS", EMSGSIZE: "EMSGSIZE",
                                      ECONNREFUSED: "ECONNREFUSED", EAFNOSUPPORT: "EAFNOSUPPORT", EIO: "EIO"]
        return names[code] ?? String(code)
    }

    /// Response rate limiting on an answer already in its send slot: its length to send (the same, or that of
    /// the truncated stand-in written over it), or nil to drop it.
    static func rateLimit(_ handler: QueryHandler, _ client: UnsafeMutablePointer<sockaddr_storage>, _ slot: UnsafeMutableRawPointer,
                          _ length: Int) -> Int? {
        guard let rrl = handler.rrl else { return length }
        switch rrl.decide(sockaddr: UnsafeRawPointer(client)) {
        case .send: return length
        case .drop: return nil
        case .slip:
            let short = ResponseRateLimiter.slipped(UnsafeRawBufferPointer(start: slot, count: length))
            short.withUnsafeBytes { slot.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return short.count
        }
    }

    static func address(_ storage: UnsafeMutablePointer<sockaddr_storage>) -> SocketAddress? {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            return storage.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: "") }
        case AF_INET6:
            return storage.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: "") }
        default:
            return nil
        }
    }
}

/// When one UDP port gets a socket per worker (SO_REUSEPORT), and how an address in use is still reported.
enum ReusePort {
    /// Port 0 gets one socket without SO_REUSEPORT: Linux may hand an ephemeral port that another SO_REUSEPORT
    /// socket of the same user already holds, and the two servers would then split the traffic silently.
    /// A fixed port gets `workers` sockets, after a probe bound without SO_REUSEPORT proves that nobody else holds
    /// it (a server that set SO_REUSEPORT would otherwise be joined instead of reported as "address in use").
    static func socketCount(_ target: SocketAddress, workers: Int) throws -> Int {
        guard target.port != 0, workers > 1 else { return 1 }
        let fd = socket(Int32(target.protocol.rawValue), Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { close(fd) }
        let rc = target.withSockAddr { sa, len in Glibc.bind(fd, sa, socklen_t(len)) }
        guard rc == 0 else { throw IOError(errnoCode: errno, reason: "bind") }
        return workers
    }
}

import DNSWire
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs a command to completion and returns its exit status and output.
@discardableResult
func run(_ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = arguments
    if let environment { p.environment = environment }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// The `signpost` binary built next to this test bundle (or $SIGNPOST_BIN).
var signpostBinary: String {
    if let env = ProcessInfo.processInfo.environment["SIGNPOST_BIN"] { return env }
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [dir, dir.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("signpost").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return FileManager.default.currentDirectoryPath + "/.build/debug/signpost"
}

/// The release build of `signpost` (`make test` builds it), for tests that need its speed, such as a load at
/// 20k qps; nil when it is missing.
var signpostReleaseBinary: String? {
    let path = FileManager.default.currentDirectoryPath + "/.build/release/signpost"
    return FileManager.default.isExecutableFile(atPath: path) ? path : nil
}

/// A temporary directory, removed when released.
final class TempDir: @unchecked Sendable {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "signpost-e2e-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ name: String, _ text: String) {
        let full = path + "/" + name
        try! FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        // Write-then-rename, as editors and config tools do, so the watcher never sees half a file.
        let tmp = full + ".tmp-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: tmp, contents: Data(text.utf8))
        rename(tmp, full)
    }

    func remove(_ name: String) { try? FileManager.default.removeItem(atPath: path + "/" + name) }
}

/// The real server on a free loopback port, started and stopped by PID.
final class Server: @unchecked Sendable {
    let process = Process()
    let logPath: String
    private(set) var port = 0
    let dir: TempDir

    /// Starts `signpost serve` on 127.0.0.1:`port` (0: the kernel picks) with `catalog/` and `zones/` under `dir`.
    /// Forwarding is off unless `forward` is set: this machine's resolv.conf must never be used by a test.
    init(dir: TempDir, port listenPort: Int = 0, catalog: Bool = true, forward: Bool = false, extra: [String] = [],
         environment: [String: String] = [:], binary: String = signpostBinary) throws {
        self.dir = dir
        logPath = dir.path + "/server.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        try FileManager.default.createDirectory(atPath: dir.path + "/catalog", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.path + "/zones", withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", "--listen", "127.0.0.1:\(listenPort)"] + (catalog ? ["--catalog", dir.path + "/catalog"] : [])
            + ["--zones", dir.path + "/zones"] + (forward ? [] : ["--no-forward"]) + extra
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let line = log_().split(separator: "\n").first(where: { $0.contains("] listening on 127.0.0.1:") && $0.hasSuffix("(udp, tcp)") }),
               let portText = line.split(separator: "listening on 127.0.0.1:").last?.split(separator: " ").first,
               let p = Int(portText),
               // With --admin, its line comes just after the DNS one: wait for it too, so `adminPort` is there.
               !extra.contains("--admin") || adminPort != nil {
                port = p
                return
            }
            guard process.isRunning else { break }
            usleep(20_000)
        }
        stop()
        throw ServerError(message: "server did not start: \(log_())")
    }

    struct ServerError: Error, CustomStringConvertible { var message: String; var description: String { message } }

    func log_() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGTERM, then wait (bounded); SIGKILL if it does not go.
    @discardableResult
    func stop() -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { stop() }

    func dig(_ args: String...) throws -> Dig {
        try Dig(port: port, args)
    }
}

/// dig's answer, parsed from its normal output.
struct Dig: CustomStringConvertible {
    var status = ""
    var flags: Set<String> = []
    var answer: [[String]] = []
    var authority: [[String]] = []
    var additional: [[String]] = []
    var udpSize: Int? = nil
    var raw = ""

    init(port: Int, _ args: [String]) throws {
        let r = try run(["dig", "@127.0.0.1", "-p", "\(port)", "+time=2", "+tries=1", "+nocookie"] + args)
        raw = r.out
        var section: String? = nil
        for line in r.out.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.contains("->>HEADER<<-"), let s = line.split(separator: "status: ").last?.split(separator: ",").first {
                status = String(s)
            } else if line.hasPrefix(";; flags:") {
                let f = line.dropFirst(";; flags:".count).split(separator: ";").first ?? ""
                flags = Set(f.split(separator: " ").map(String.init))
            } else if line.hasPrefix("; EDNS:"), let u = line.split(separator: "udp: ").last {
                udpSize = Int(u.trimmingCharacters(in: .whitespaces))
            } else if line.hasPrefix(";; ANSWER SECTION") { section = "answer" }
            else if line.hasPrefix(";; AUTHORITY SECTION") { section = "authority" }
            else if line.hasPrefix(";; ADDITIONAL SECTION") { section = "additional" }
            else if line.isEmpty || line.hasPrefix(";") { if line.isEmpty { section = nil } }
            else if let s = section {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                switch s {
                case "answer": answer.append(fields)
                case "authority": authority.append(fields)
                default: additional.append(fields)
                }
            }
        }
    }

    /// RDATA of the answer records of `type`, as text.
    func data(_ type: String) -> [String] {
        answer.filter { $0.count > 4 && $0[3] == type }.map { $0[4...].joined(separator: " ") }
    }

    var description: String { raw }
}

/// A plain UDP socket on loopback, for packets no DNS client would send.
final class UDPSocket {
    let fd: Int32
    var address = sockaddr_in()

    /// `source`: the loopback address to send from (127.0.0.1 when nil).
    init(port: Int, source: String? = nil) {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            _ = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // Room for a burst of replies (the kernel caps this at net.core.rmem_max).
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var a = address
        _ = bytes.withUnsafeBytes { buf in
            withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buf.baseAddress, buf.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// The next datagram, or nil after the receive timeout.
    func receive() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buf, buf.count, 0)
        return n >= 0 ? Array(buf[0..<n]) : nil
    }

    /// A datagram already waiting, or nil at once when there is none.
    func receiveNow() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
        return n >= 0 ? Array(buf[0..<n]) : nil
    }

    /// The reply to query `id`, skipping other datagrams; nil when none came within `seconds` (a server that is
    /// slow on a loaded machine gets the whole time, not one receive timeout).
    func reply(id: UInt16, within seconds: TimeInterval = 2) -> Message? {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            if let bytes = receive(), let m = try? Message(from: ByteBuffer(bytes: bytes)), m.header.id == id { return m }
        } while Date() < deadline
        return nil
    }
}

/// A plain TCP connection on loopback.
final class TCPSocket {
    let fd: Int32

    init?(port: Int, timeout: Int = 2) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { close(fd); return nil }
    }
    deinit { close(fd) }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Exactly `count` bytes, or nil on EOF/timeout.
    func read(_ count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: count)
        while out.count < count {
            let n = recv(fd, &buf, count - out.count, 0)
            if n <= 0 { return nil }
            out += buf[0..<n]
        }
        return out
    }

    /// One length-prefixed DNS message.
    func readFrame() -> [UInt8]? {
        guard let len = read(2) else { return nil }
        return read(Int(len[0]) << 8 | Int(len[1]))
    }

    /// True when the server closed the connection (recv returns 0).
    func isClosedByPeer() -> Bool {
        var b: UInt8 = 0
        return recv(fd, &b, 1, 0) == 0
    }
}

func framed(_ bytes: [UInt8]) -> [UInt8] { [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes }

func queryBytes(_ name: String, _ type: UInt16, id: UInt16) -> [UInt8] {
    var h = DNSHeader(id: id)
    h.rd = true
    return Array(Message(header: h, questions: [Question(name: try! DNSName(name), type: type)]).encode().readableBytesView)
}

/// A catalog registration in the file format.
func registration(node: String, address: String, service: String, port: Int = 80, tags: [String] = [],
                  status: String = "passing", serviceAddress: String? = nil) -> String {
    let addr = serviceAddress.map { #", "Address": "\#($0)""# } ?? ""
    return #"""
    {"Node": "\#(node)", "Address": "\#(address)", "NodeMeta": {"zone": "a"},
     "Service": {"ID": "\#(service)-\#(node)", "Service": "\#(service)", "Port": \#(port), "Tags": [\#(tags.map { "\"\($0)\"" }.joined(separator: ","))]\#(addr)},
     "Checks": [{"CheckID": "c-\#(node)", "Name": "check", "Status": "\#(status)", "ServiceID": "\#(service)-\#(node)"}]}
    """#
}

/// A plain HTTP GET on loopback: status and body.
func httpGet(_ url: String) -> (status: Int, body: String) {
    let r = http("GET", url)
    return (r.status, String(decoding: r.body, as: UTF8.self))
}

/// One HTTP/1.1 exchange over a plain TCP socket from this process (`Connection: close`, the body read to EOF),
/// bounded by `timeout`; status 0 when there was no complete response. FoundationNetworking's URLSession traps
/// ("Transfer completed, but there's no response") when a peer dies mid-request, which the failure tests make
/// happen on purpose.
func http(_ method: String, _ url: String, body: [UInt8] = [], timeout: TimeInterval = 2) -> (status: Int, body: [UInt8]) {
    guard let u = URL(string: url), let host = u.host, let port = u.port else { return (0, []) }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return (0, []) }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, host, &a.sin_addr)
    let connected = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else { return (0, []) }
    let path = u.path.isEmpty ? "/" : u.path + (u.query.map { "?" + $0 } ?? "")
    let request = Array("\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
    guard request.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return (0, []) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    guard let end = response.firstIndex(of: UInt8(ascii: "\r")), let headerEnd = (0..<max(0, response.count - 3)).first(where: {
        response[$0] == 13 && response[$0 + 1] == 10 && response[$0 + 2] == 13 && response[$0 + 3] == 10 }) else { return (0, []) }
    let statusLine = String(decoding: response[..<end], as: UTF8.self).split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return (0, []) }
    let headers = String(decoding: response[..<headerEnd], as: UTF8.self).lowercased()
    var payload = Array(response[(headerEnd + 4)...])
    if headers.contains("transfer-encoding: chunked") { payload = unchunked(payload) }
    return (status, payload)
}

/// A chunked body's data.
private func unchunked(_ bytes: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [], i = 0
    while let lineEnd = bytes[i...].firstIndex(of: 13), let size = Int(String(decoding: bytes[i..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16), size > 0 {
        let start = lineEnd + 2
        guard start + size <= bytes.count else { break }
        out += bytes[start..<(start + size)]
        i = start + size + 2
        guard i < bytes.count else { break }
    }
    return out
}

/// One series' value in Prometheus text, by its whole name and labels: `sample(m, #"x_total{a="b"}"#)`.
func sample(_ metrics: String, _ series: String) -> Double? {
    metrics.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
}

extension Server {
    /// The A records for `name`, asked over a plain socket from this process (the suites' `addresses` helpers
    /// ask with dig). Latency polls use it: spawning dig for every probe would time process start-up on a loaded
    /// machine, not Signpost.
    func socketAddresses(_ name: String) -> Set<String> {
        guard let m = socketQuery(name, RRType.a) else { return [] }
        return Set(m.answers.compactMap { record in
            if case .a(let ip) = record.rdata { "\(ip)" } else { nil }
        })
    }

    /// One query over a plain UDP socket from this process (a fresh socket, so no earlier probe's late reply can
    /// be taken for this one's); nil when no reply came within `seconds`.
    func socketQuery(_ name: String, _ type: UInt16, within seconds: TimeInterval = 2) -> Message? {
        let sock = UDPSocket(port: port)
        let id = nextQueryID()
        sock.send(queryBytes(name, type, id: id))
        return sock.reply(id: id, within: seconds)
    }

    /// The response code of a `socketQuery`, nil when no reply came.
    func socketRCode(_ name: String, _ type: UInt16 = RRType.a) -> UInt16? {
        socketQuery(name, type)?.rcode
    }

    /// The admin endpoint's /metrics text (the server must run with `--admin 127.0.0.1:0`).
    func metrics() throws -> String {
        httpGet("http://127.0.0.1:\(try #require(adminPort, "no admin port in the log: \(log_())"))/metrics").body
    }

    /// The admin port from "admin listening on 127.0.0.1:PORT".
    var adminPort: Int? {
        log_().split(separator: "\n").first { $0.contains("admin listening on 127.0.0.1:") }
            .flatMap { $0.split(separator: "admin listening on 127.0.0.1:").last?.split(separator: " ").first }
            .flatMap { Int($0) }
    }
}

/// Starts one of the tests' Python helpers (`script` beside the test files) with its output in `dir`, and waits
/// for it to print `<marker>127.0.0.1:PORT`; returns the process and the port.
func startHelper(_ script: String, _ arguments: [String], in dir: TempDir, marker: String = "listening on ",
                 environment: [String: String] = [:], within seconds: TimeInterval = 10) throws -> (Process, Int) {
    let log = dir.path + "/helper.log"
    FileManager.default.createFile(atPath: log, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(script).path] + arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    process.standardOutput = FileHandle(forWritingAtPath: log)
    process.standardError = process.standardOutput
    try process.run()
    var port = 0
    guard eventually(within: seconds, {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        guard let p = text.split(separator: marker + "127.0.0.1:").last.flatMap({ Int($0.prefix { $0.isNumber }) }), text.contains(marker) else { return false }
        port = p
        return true
    }) != nil else {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        throw Server.ServerError(message: "\(script) did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    }
    return (process, port)
}

/// Where a test that produces a result for the repository writes it: `$SIGNPOST_RESULTS_DIR` (`make bench-results`
/// sets it to bench/results), else a temporary directory, so `make test` leaves the work tree as it found it.
let resultsDirectory: String = {
    if let dir = ProcessInfo.processInfo.environment["SIGNPOST_RESULTS_DIR"], !dir.isEmpty { return dir }
    let dir = NSTemporaryDirectory() + "signpost-results-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}()

/// Network namespaces the test creates and removes itself, each joined to this one by a veth pair in a subnet of its
/// own: 10.N.K.1 on our side, 10.N.K.2 in namespace K (1-based), for `network` N. `names[k]`/`links[k]` are the
/// namespace and our end of its pair. `resolvConf` gives a namespace its own /etc/resolv.conf (`ip netns exec`
/// mounts /etc/netns/<name>/resolv.conf over it), so glibc's resolver inside asks whom the test says.
class NetworkNamespaces {
    let names: [String]
    let links: [String]

    init(prefix: String, network: Int, count: Int) throws {
        let tag = String(UInt32(getpid()) % 100_000)
        names = (1...count).map { "sp-\(prefix)-\(tag)-\($0)" }
        links = (1...count).map { "sp\(prefix.prefix(2))\(tag)x\($0)" }
        for k in 0..<count {
            let (ns, link, net) = (names[k], links[k], "10.\(network).\(k + 1)")
            for command in [["ip", "netns", "add", ns], ["ip", "link", "add", link, "type", "veth", "peer", "name", link + "p"],
                            ["ip", "link", "set", link + "p", "netns", ns], ["ip", "addr", "add", net + ".1/24", "dev", link],
                            ["ip", "link", "set", link, "up"], ["ip", "netns", "exec", ns, "ip", "addr", "add", net + ".2/24", "dev", link + "p"],
                            ["ip", "netns", "exec", ns, "ip", "link", "set", link + "p", "up"], ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]] {
                let r = try run(command)
                guard r.status == 0 else { throw Server.ServerError(message: "\(command.joined(separator: " ")): \(r.err)") }
            }
        }
    }

    /// Namespace `k`'s resolv.conf.
    func resolvConf(_ k: Int, _ text: String) throws {
        let dir = "/etc/netns/\(names[k])"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try text.write(toFile: dir + "/resolv.conf", atomically: true, encoding: .utf8)
    }

    deinit {
        for link in links { _ = try? run(["ip", "link", "del", link]) }
        for ns in names {
            _ = try? run(["ip", "netns", "del", ns])
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(ns)")
        }
    }
}

/// Stops a daemon a test started (knotd, unbound): SIGTERM, then wait for it. Leaves `process` nil.
func terminate(_ process: inout Process?) {
    guard let p = process, p.isRunning else { return }
    kill(p.processIdentifier, SIGTERM)
    p.waitUntilExit()
    process = nil
}

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Something on the registry's address that is not the registry (`BadRegistry/bad_registry.py`).
final class BadRegistry: @unchecked Sendable {
    let dir = TempDir()
    let process: Process
    let port: Int

    init(_ mode: String, environment: [String: String] = [:]) throws {
        (process, port) = try startHelper("BadRegistry/bad_registry.py", [mode], in: dir, environment: environment)
    }

    var url: String { "http://127.0.0.1:\(port)" }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}

/// A proxy's error page, a body cut short, JSON of the wrong shape, an empty body, a body larger than any catalog:
/// each is said as what the endpoint answered, once, on /ready, and none is read past the bound.
@Suite("End to end: a registry address that answers something else", .serialized)
struct UnexpectedAnswerTests {
    @Test(arguments: [("html", "/v1/catalog/services returned HTML, not JSON"), ("truncated", "/v1/catalog/services returned JSON that does not parse"),
                      ("shape", "/v1/catalog/services returned JSON of the wrong shape: expected an object"),
                      ("empty", "/v1/catalog/services returned an empty body, not JSON")])
    func consul(mode: String, phrase: String) throws {
        let bad = try BadRegistry(mode)
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(bad.url)", "--datacenter", "dc1", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.ready.body.contains(phrase) } != nil, "\(server.ready.body)\n\(server.log_())")
        #expect(server.ready.status == 503)
        #expect(eventually(within: 15) { server.registryErrors("consul") >= 3 } != nil)
        #expect(server.logLines(containing: phrase) == 1, "said once: \(server.log_())")
        #expect(!server.log_().contains("NSCocoaErrorDomain") && !server.log_().contains("Code=3840"))
    }

    @Test func etcdBehindAProxy() throws {
        let bad = try BadRegistry("html")
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "etcd:\(bad.url)", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.ready.body.contains("/v3/kv/range returned HTML, not JSON") } != nil, "\(server.ready.body)")
    }

    /// 40 MB of garbage against a 4 MB bound: refused unread, and the process stays small.
    @Test func aBodyOverTheBoundIsRefusedUnread() throws {
        let bad = try BadRegistry("huge", environment: ["SIZE_MB": "40"])
        let server = try Server(dir: TempDir(), catalog: false, extra: ["--registry", "consul:\(bad.url)?max-response=4MB", "--datacenter", "dc1", "--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 15) { server.ready.body.contains("more than max-response (4194304 bytes)") } != nil, "\(server.ready.body)")
        let status = try String(contentsOfFile: "/proc/\(server.process.processIdentifier)/status", encoding: .utf8)
        let rssKB = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        #expect(rssKB > 0 && rssKB < 120 * 1024, "peak RSS \(rssKB) kB")
    }
}

import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `signpost explain` against a running binary, for each registry and each reason an instance is left out; and
/// the status page in a real headless Chromium.
@Suite("End to end: the operator view", .serialized)
struct OperatorViewTests {
    /// `signpost explain` as an operator runs it: through a pipe (so plain text, no colour).
    static func explain(_ server: Server, _ name: String, _ type: String = "A", json: Bool = false) throws -> String {
        let admin = try #require(server.adminPort, "no admin port: \(server.log_())")
        let r = try run([signpostBinary, "explain", name, type, "--server", "127.0.0.1:\(admin)"] + (json ? ["--json"] : []))
        #expect(r.status == 0, "explain \(name) \(type): \(r.err)")
        return r.out
    }

    /// The lines of `text` that start (after spaces) with "out <id> " or "in <id> ": an instance's first line.
    static func line(_ text: String, _ id: String) -> String {
        text.split(separator: "\n").first { $0.contains(" \(id) ") && ($0.contains("  in ") || $0.contains("  out ")) }.map(String.init) ?? ""
    }

    static let catalog = #"""
    [
      {"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web-1", "Service": "web", "Port": 8080, "Tags": ["v2"]},
       "Checks": [{"CheckID": "service:web-1", "Name": "HTTP /health", "Status": "passing", "ServiceID": "web-1"}]},
      {"Node": "n2", "Address": "10.0.0.2", "Service": {"ID": "web-2", "Service": "web", "Port": 8080, "Tags": ["v2"]},
       "Checks": [{"CheckID": "service:web-2", "Name": "HTTP /health", "Status": "critical", "ServiceID": "web-2",
                   "Output": "HTTP GET http://10.0.0.2:8080/health: 503 Service Unavailable"}]},
      {"Node": "n3", "Address": "10.0.0.3", "Service": {"ID": "web-3", "Service": "web", "Port": 8080, "Tags": ["v2"]},
       "Checks": [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "critical", "Output": "Agent not live or unreachable"}]},
      {"Node": "n4", "Address": "10.0.0.4", "Service": {"ID": "web-4", "Service": "web", "Port": 8080, "Tags": ["v2"]},
       "Checks": [{"CheckID": "_service_maintenance:web-4", "Name": "Service Maintenance Mode", "Status": "maintenance",
                   "ServiceID": "web-4", "Output": "deploying 1.4"}]},
      {"Node": "n5", "Address": "10.0.0.5", "Service": {"ID": "web-5", "Service": "web", "Port": 8080, "Tags": ["v1"]}},
      {"Node": "n6", "Address": "10.0.0.6", "Datacenter": "dc2", "Service": {"ID": "web-6", "Service": "web", "Port": 8080, "Tags": ["v2"]}},
      {"Node": "m1", "Address": "10.0.1.1", "Service": {"ID": "many-1", "Service": "many", "Port": 1}},
      {"Node": "m2", "Address": "10.0.1.2", "Service": {"ID": "many-2", "Service": "many", "Port": 1}},
      {"Node": "m3", "Address": "10.0.1.3", "Service": {"ID": "many-3", "Service": "many", "Port": 1}},
      {"Node": "x1", "Address": "10.0.2.1", "Service": {"ID": "bad", "Service": "bad..name", "Port": 1}}
    ]
    """#

    @Test("explain against catalog files: each reason, with the check, its level and output, and the file's line")
    func catalogReasons() throws {
        let dir = TempDir()
        dir.write("catalog/web.json", Self.catalog)
        let server = try Server(dir: dir, extra: ["--admin", "127.0.0.1:0", "--answer-limit", "2"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.adminPort != nil && server.socketRCode("web.service.consul") == RCode.noError } != nil)

        let web = try Self.explain(server, "v2.web.service.consul", "SRV")
        #expect(web.contains("read as     service web, tag v2"), "\(web)")
        #expect(web.contains("answer      NOERROR, 1 record"), "\(web)")
        #expect(Self.line(web, "web-1").contains("answered"), "\(web)")
        #expect(Self.line(web, "web-2").contains("check service:web-2 (HTTP /health) is critical at service level: HTTP GET http://10.0.0.2:8080/health: 503 Service Unavailable"), "\(web)")
        #expect(Self.line(web, "web-3").contains("check serfHealth (Serf Health Status) is critical at node level: Agent not live or unreachable"), "\(web)")
        #expect(Self.line(web, "web-4").contains("check _service_maintenance:web-4 (Service Maintenance Mode) is maintenance at service level: deploying 1.4"), "\(web)")
        #expect(Self.line(web, "web-5").contains("tag v2 not present"), "\(web)")
        #expect(Self.line(web, "web-6").contains("datacenter dc2 not local (dc1)"), "\(web)")
        #expect(web.contains("from \(dir.path)/catalog/web.json:2;"), "web-1's file and line: \(web)")
        #expect(web.contains("file  \(dir.path)/catalog  connected"), "\(web)")
        #expect(!web.contains("\u{1B}["), "no colour in a pipe")
        let admin = try #require(server.adminPort)
        let coloured = try run([signpostBinary, "explain", "web", "--server", "127.0.0.1:\(admin)", "--color"]).out
        #expect(coloured.contains("\u{1B}[31mcheck service:web-2"), "--color paints the reasons red: \(coloured)")

        let many = try Self.explain(server, "many")
        #expect(many.contains("answer      NOERROR, 2 records"), "\(many)")
        #expect(many.split(separator: "\n").filter { $0.contains("answer limit (2 per answer") }.count == 1, "\(many)")

        let skipped = try Self.explain(server, "bad..name")
        #expect(skipped.contains("left out by the registry") && skipped.contains("\"bad..name\" the name has an empty label"), "\(skipped)")

        // The same data as JSON, from the admin endpoint.
        let json = try Self.explain(server, "web.service.consul", "A", json: true)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let instances = try #require(object["instances"] as? [[String: Any]])
        #expect(instances.count == 6)
        let web2 = try #require(instances.first { $0["id"] as? String == "web-2" })
        let checks = try #require(web2["checks"] as? [[String: Any]])
        #expect(checks.first?["output"] as? String == "HTTP GET http://10.0.0.2:8080/health: 503 Service Unavailable")
        #expect(checks.first?["level"] as? String == "service" && checks.first?["excludes"] as? Bool == true)
        #expect(web2["changed"] is NSNumber)
    }

    @Test("explain against etcd: the key and revision, a status in the value, the answer limit, a value left out")
    func etcdReasons() throws {
        let etcd = try EtcdCluster()
        try etcd.put("/services/api/1", #"{"Address": "192.0.2.1", "Port": 8080, "Node": "api-1", "Tags": ["v2"]}"#)
        try etcd.put("/services/api/2", #"{"Address": "192.0.2.2", "Port": 8080, "Status": "critical"}"#)
        try etcd.put("/services/api/3", #"{"Address": "192.0.2.3", "Port": 8080}"#)
        try etcd.put("/services/api/4", #"{"Address": "192.0.2.4", "Port": 8080, "Datacenter": "dc2"}"#)
        try etcd.put("/services/broken/1", "this is not JSON")
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "etcd:\(etcd.endpoints)", "--admin", "127.0.0.1:0", "--answer-limit", "1"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketRCode("api.service.consul") == RCode.noError } != nil, "\(server.log_())")
        let revision = try #require(etcd.ctl(["get", "/services/api/1", "-w", "json"]).out
            .split(separator: "\"mod_revision\":").dropFirst().first?.prefix { $0.isNumber })

        let api = try Self.explain(server, "api.service.consul")
        #expect(api.contains("etcd  \(etcd.endpoints)"), "\(api)")
        #expect(Self.line(api, "2").contains("status critical in the registry's value"), "\(api)")
        #expect(Self.line(api, "4").contains("datacenter dc2 not local (dc1)"), "\(api)")
        #expect(api.split(separator: "\n").filter { $0.contains("answer limit (1 per answer") }.count == 1, "\(api)")
        #expect(api.contains("from etcd key /services/api/1, revision \(revision);"), "\(api)")

        let tagged = try Self.explain(server, "v2.api.service.consul")
        #expect(Self.line(tagged, "3").contains("tag v2 not present"), "\(tagged)")

        let broken = try Self.explain(server, "broken")
        #expect(broken.contains("etcd  /services/broken/1: \"/services/broken/1\""), "\(broken)")

        // The registry out of contact: still answered from the cache, and the registry shown stale with its age.
        etcd.kill(0)
        var stale = ""
        #expect(eventually(within: 15) {
            stale = (try? Self.explain(server, "api")) ?? ""
            return stale.contains("stale (age ")
        } != nil, "\(stale)")
        #expect(stale.contains("answer      NOERROR"), "\(stale)")
    }

    @Test("explain against Consul (the stand-in): a TTL check's note, serfHealth at node level, the Consul index")
    func consulReasons() throws {
        let consul = try ConsulStandIn()
        // As grpc-go and go-micro register: the agent endpoint with a TTL check, failed with a note.
        let (code, _) = try consul.call("PUT", "/v1/agent/service/register",
                                        ["Name": "greeter", "ID": "greeter-1", "Port": 50051, "Tags": ["grpc"],
                                         "Check": ["TTL": "30s", "Status": "passing"]])
        #expect(code == 200)
        try consul.register(node: "g2", address: "192.0.2.22", service: "greeter", id: "greeter-2", port: 50051, nodeStatus: "critical")
        try consul.register(node: "g3", address: "192.0.2.23", service: "greeter", id: "greeter-3", port: 50051)
        try consul.register(node: "g5", address: "192.0.2.25", service: "greeter", id: "greeter-5", port: 50051)
        let (other, _) = try consul.call("PUT", "/v1/agent/service/register",
                                         ["Name": "greeter", "ID": "greeter-4", "Port": 50052, "Check": ["TTL": "30s", "Status": "passing"]])
        #expect(other == 200)
        let server = try Server(dir: TempDir(), catalog: false,
                                extra: ["--registry", "consul:\(consul.url)?wait=2s", "--admin", "127.0.0.1:0", "--answer-limit", "1"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.socketRCode("greeter.service.consul") == RCode.noError } != nil, "\(server.log_())")
        let (failed, _) = try consul.call("PUT", "/v1/agent/check/fail/service:greeter-1?note=rpc%20error:%20connection%20refused")
        #expect(failed == 200)
        let (maintenance, _) = try consul.call("PUT", "/v1/agent/service/maintenance/greeter-4?enable=true&reason=kernel%20upgrade")
        #expect(maintenance == 200)
        var text = ""
        #expect(eventually(within: 5) {
            text = (try? Self.explain(server, "greeter", "SRV")) ?? ""
            return Self.line(text, "greeter-1").contains("critical") && Self.line(text, "greeter-4").contains("critical")
        } != nil, "\(text)")
        #expect(Self.line(text, "greeter-1").contains("is critical at service level: rpc error: connection refused"), "\(text)")
        #expect(Self.line(text, "greeter-2").contains("check serfHealth (Serf) is critical at node level"), "\(text)")
        // Two healthy instances, one per answer: one answered, the other left out by the limit.
        let healthy = [Self.line(text, "greeter-3"), Self.line(text, "greeter-5")]
        #expect(healthy.filter { $0.contains("answered") }.count == 1, "\(text)")
        #expect(healthy.filter { $0.contains("answer limit (1 per answer") }.count == 1, "\(text)")
        #expect(Self.line(text, "greeter-4").contains("check _service_maintenance:greeter-4 (Service Maintenance Mode) is critical at service level: kernel upgrade"), "\(text)")
        #expect(text.contains("from consul service greeter-3 on node g3, index "), "\(text)")
        #expect(text.contains("consul  \(consul.url)"), "\(text)")

        let tag = try Self.explain(server, "grpc.greeter.service.consul", "A")
        #expect(Self.line(tag, "greeter-3").contains("tag grpc not present"), "\(tag)")
        #expect(Self.line(tag, "greeter-5").contains("tag grpc not present"), "\(tag)")
    }
}

/// Headless Chromium, driven by `Browser/cdp_driver.py` over the DevTools protocol: one JSON command per line.
final class HeadlessBrowser {
    let process = Process()
    private let input = Pipe(), output = Pipe()
    private var buffer: [UInt8] = []
    let profile = TempDir()

    static var chromium: String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    init(chromium: String) throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Browser/cdp_driver.py").path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, chromium, profile.path]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        _ = try reply(within: 60)
    }

    deinit {
        try? input.fileHandleForWriting.write(contentsOf: Data("{\"quit\": true}\n".utf8))
        let deadline = Date().addingTimeInterval(15)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }

    struct DriverError: Error, CustomStringConvertible { var description: String }

    private func reply(within seconds: TimeInterval) throws -> [String: Any] {
        let fd = output.fileHandleForReading.fileDescriptor
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                guard let object = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw DriverError(description: "driver said: \(String(decoding: line, as: UTF8.self))")
                }
                if let error = object["error"] { throw DriverError(description: "\(error)") }
                return object
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw DriverError(description: "no reply from the browser driver in \(seconds) s") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(min(left, 1) * 1000)) >= 0 else { continue }
            if p.revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 65536)
                let n = read(fd, &chunk, chunk.count)
                guard n > 0 else { throw DriverError(description: "the browser driver exited") }
                buffer += chunk[..<n]
            }
        }
    }

    private func send(_ command: [String: Any], within seconds: TimeInterval = 30) throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: command)
        try input.fileHandleForWriting.write(contentsOf: data + Data("\n".utf8))
        return try reply(within: seconds)
    }

    func navigate(_ url: String) throws { _ = try send(["navigate": url], within: 60) }

    /// The value of a JavaScript expression in the page.
    func eval(_ expression: String) throws -> Any? { try send(["eval": expression])["value"] }

    func screenshot(_ path: String, width: Int = 1280, height: Int = 900) throws {
        _ = try send(["screenshot": path, "width": width, "height": height], within: 60)
    }

    /// Polls `expression` in the page (over the same DevTools connection) until it is true; the seconds it took.
    func until(_ expression: String, within seconds: TimeInterval) throws -> TimeInterval? {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            if try eval(expression) as? Bool == true { return Date().timeIntervalSince(start) }
            usleep(50_000)
        }
        return try eval(expression) as? Bool == true ? Date().timeIntervalSince(start) : nil
    }
}

@Suite("End to end: the status page in Chromium", .serialized)
struct StatusPageBrowserTests {
    @Test("/ui lists the services, shows web-4 excluded by its check, follows a catalog edit live, and escapes registry text")
    func statusPage() throws {
        let chromium = try #require(HeadlessBrowser.chromium, "chromium is not installed (make test installs it)")
        let dir = TempDir()
        let demo = FileManager.default.currentDirectoryPath + "/zones/catalog"
        for file in try FileManager.default.contentsOfDirectory(atPath: demo) where file.hasSuffix(".json") {
            dir.write("catalog/" + file, try String(contentsOfFile: demo + "/" + file, encoding: .utf8))
        }
        // Check output is the registry's text, and anybody's: it must be shown, never run.
        dir.write("catalog/xss.json", #"""
        {"Node": "evil-1", "Address": "192.0.2.66", "Service": {"ID": "xss-1", "Service": "xss", "Port": 80, "Tags": ["<b>bold</b>"]},
         "Checks": [{"CheckID": "service:xss-1", "Name": "<img src=x onerror=\"window.__pwned=2\">", "Status": "critical", "ServiceID": "xss-1",
                     "Output": "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=3\">"}]}
        """#)
        let server = try Server(dir: dir, extra: ["--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 10) { server.adminPort != nil && server.socketRCode("web.service.consul") == RCode.noError } != nil)
        let admin = try #require(server.adminPort)
        // Some traffic for the chart: answered, and NXDOMAIN.
        for _ in 0..<20 { _ = server.socketRCode("web.service.consul"); _ = server.socketRCode("nothing.service.consul") }

        let browser = try HeadlessBrowser(chromium: chromium)
        try browser.navigate("http://127.0.0.1:\(admin)/ui")
        #expect(try browser.until("document.querySelectorAll('#services tbody tr').length >= 5", within: 15) != nil)
        let names = try browser.eval("[...document.querySelectorAll('#services tbody td.name')].map(e => e.textContent).join(',')") as? String ?? ""
        for service in ["web", "api", "db"] { #expect(names.split(separator: ",").contains(Substring(service)), "\(names)") }

        // web-4 is shown excluded by its critical check, in the explain view a click opens.
        _ = try browser.eval("document.querySelector('#services tbody tr[data-service=\"web\"]').click()")
        #expect(try browser.until("!!document.querySelector('#explain tr[data-instance=\"web-4\"]')", within: 10) != nil)
        let web4 = try browser.eval("document.querySelector('#explain tr[data-instance=\"web-4\"] .why').textContent") as? String ?? ""
        #expect(web4.contains("check service:web-4 (HTTP /health) is critical at service level"), "\(web4)")
        #expect(try browser.eval("document.querySelector('#explain tr[data-instance=\"web-1\"]').className") as? String == "answered")
        // Healthy instances per zone (the demo's Service.Locality): web-4 in us-east-1b is critical.
        #expect(try browser.eval("document.querySelector('#explain .zones').textContent") as? String
            == "healthy by zone: us-east-1/us-east-1a 2 · us-east-1/us-east-1b 1")

        // The hostile service: its check output is text on the page, and nothing of it ran.
        _ = try browser.eval("document.querySelector('#services tbody tr[data-service=\"xss\"]').click()")
        #expect(try browser.until("!!document.querySelector('#explain tr[data-instance=\"xss-1\"]')", within: 10) != nil)
        let why = try browser.eval("document.querySelector('#explain tr[data-instance=\"xss-1\"] .why').textContent") as? String ?? ""
        #expect(why.contains("<script>window.__pwned=1</script>"), "\(why)")
        #expect(try browser.eval("document.querySelectorAll('#explain script, #explain img').length") as? Int == 0)
        #expect(try browser.eval("typeof window.__pwned") as? String == "undefined")

        // A catalog edit shows in Recent changes within 3 s, without a reload.
        #expect(try browser.eval("window.__marker = 'same page'; true") as? Bool == true)
        dir.write("catalog/late.json", #"{"Node": "late-1", "Address": "192.0.2.77", "Service": {"ID": "late-1", "Service": "late", "Port": 80}}"#)
        let seen = try browser.until("!!document.querySelector('#changes tbody tr[data-instance=\"late-1\"]')", within: 10)
        #expect(seen != nil && seen! <= 3, "change shown after \(String(describing: seen)) s")
        #expect(try browser.eval("window.__marker") as? String == "same page", "the page was not reloaded")
        let what = try browser.eval("document.querySelector('#changes tbody tr[data-instance=\"late-1\"] .what').textContent") as? String
        #expect(what == "appeared (passing)")

        // The traffic chart draws the rcodes it has seen, from /metrics' counters.
        #expect(try browser.until("!!document.querySelector('#chart polyline[data-rcode=\"NXDOMAIN\"]')", within: 10) != nil)

        // The screenshot in docs/operations.md, on the web service's explain view, once the chart has a few samples: queries
        // in small bursts (bounded: at most 40 rounds of 10), until three samples show NOERROR traffic.
        for _ in 0..<40 {
            for k in 0..<10 { _ = server.socketRCode(k % 3 == 0 ? "nothing.service.consul" : "web.service.consul") }
            if try browser.eval("document.querySelectorAll('#chart circle').length >= 6") as? Bool == true { break }
            usleep(300_000)
        }
        _ = try browser.eval("document.querySelector('#services tbody tr[data-service=\"web\"]').click()")
        #expect(try browser.until("!!document.querySelector('#explain tr[data-instance=\"web-4\"]')", within: 10) != nil)
        try browser.screenshot(resultsDirectory + "/ui.png", width: 1280, height: 1250)
    }

    @Test("/ui pages 10k services, searches them, and is read-only")
    func tenThousandServices() throws {
        let chromium = try #require(HeadlessBrowser.chromium, "chromium is not installed (make test installs it)")
        let dir = TempDir()
        let registrations = (0..<10_000).map { i in
            #"{"Node": "n\#(i)", "Address": "10.\#(i / 250).\#(i % 250).1", "Service": {"ID": "s\#(i)", "Service": "svc\#(String(format: "%05d", i))", "Port": 80}}"#
        }
        dir.write("catalog/many.json", "[\n" + registrations.joined(separator: ",\n") + "\n]")
        let server = try Server(dir: dir, extra: ["--admin", "127.0.0.1:0"])
        defer { server.stop() }
        #expect(eventually(within: 30) { server.adminPort != nil && server.socketRCode("svc09999.service.consul") == RCode.noError } != nil)
        let admin = try #require(server.adminPort)
        // Read-only: anything but GET is refused.
        #expect(http("POST", "http://127.0.0.1:\(admin)/v1/services").status == 405)
        #expect(http("DELETE", "http://127.0.0.1:\(admin)/ui").status == 405)

        let browser = try HeadlessBrowser(chromium: chromium)
        try browser.navigate("http://127.0.0.1:\(admin)/ui")
        #expect(try browser.until("document.getElementById('page').textContent === '1–100 of 10000'", within: 20) != nil)
        #expect(try browser.eval("document.querySelectorAll('#services tbody tr').length") as? Int == 100)
        _ = try browser.eval("document.getElementById('next').click()")
        #expect(try browser.until("document.getElementById('page').textContent === '101–200 of 10000'", within: 10) != nil)
        #expect(try browser.eval("document.querySelector('#services tbody td.name').textContent") as? String == "svc00100")
        _ = try browser.eval("const s = document.getElementById('search'); s.value = 'svc0999'; s.dispatchEvent(new Event('input'))")
        #expect(try browser.until("document.getElementById('page').textContent === '1–10 of 10'", within: 10) != nil)
        // Still 10 rows after the next refresh (the search and page survive it): the next tick stamps "updated".
        _ = try browser.eval("window.__stamp = document.getElementById('updated').textContent; true")
        #expect(try browser.until("document.getElementById('updated').textContent !== window.__stamp", within: 10) != nil)
        #expect(try browser.eval("document.querySelectorAll('#services tbody tr').length") as? Int == 10)
    }
}

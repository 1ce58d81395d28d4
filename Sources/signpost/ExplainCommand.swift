import ArgumentParser
import AsyncHTTPClient
import Catalog
import Registries
import Foundation
import Gateway

#if canImport(Glibc)
import Glibc
#endif

/// `signpost explain NAME [TYPE]`: asks a running server's admin endpoint why NAME gets the answer it gets.
struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a running Signpost why a name gets its answer: how it was read, the answer, and why each instance is in or out.",
        discussion: "NAME is a DNS name (web.service.consul, v2.web.service.dc1.consul, _web._tcp.service.consul) or a bare service name (web). The server must run with --admin.")

    @Argument(help: "The name to explain; a bare service name means <name>.service.<domain>.")
    var name: String

    @Argument(help: "The query type: A, AAAA, SRV, TXT, ANY … (default A).")
    var type: String = "A"

    @Option(name: .long, help: ArgumentHelp("The server's admin endpoint (its --admin).", valueName: "HOST:PORT"))
    var server: String = "127.0.0.1:8080"

    @Option(name: .long, help: ArgumentHelp("With --locality: answer as for a client at this address (its --client-zone network). Default: no address (Signpost's own --zone).", valueName: "ADDRESS"))
    var client: String?

    @Flag(name: .long, help: "Print the JSON the admin endpoint returns.")
    var json = false

    @Flag(name: .long, inversion: .prefixedNo, help: "Colour the output (default: when standard output is a terminal and NO_COLOR is unset).")
    var color: Bool?

    func run() async throws {
        let target = server.contains("://") ? server : "http://\(server)"
        var query = URLComponents(string: target + "/v1/explain")
        query?.queryItems = [URLQueryItem(name: "name", value: name), URLQueryItem(name: "type", value: type)]
            + (client.map { [URLQueryItem(name: "client", value: $0)] } ?? [])
        guard let url = query?.url?.absoluteString else { throw StartupError(message: "invalid --server \(server)", code: 64) }
        let (status, body) = try await Self.get(url)
        guard status == 200 else {
            throw StartupError(message: "\(server): HTTP \(status): \(String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        if json {
            print(String(decoding: body, as: UTF8.self))
            return
        }
        let explanation: Explanation
        do { explanation = try JSONDecoder().decode(Explanation.self, from: Data(body)) } catch {
            throw StartupError(message: "\(server): not an explanation: \(error)")
        }
        let colour = color ?? (isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil)
        print(ExplainText(colour: colour).render(explanation.printable), terminator: "")
    }

    static func get(_ url: String) async throws -> (Int, [UInt8]) {
        var http = HTTPClient.Configuration()
        http.timeout = .init(connect: .seconds(3), read: .seconds(10))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        do {
            let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 64 << 20)
            try? await client.shutdown()
            return (Int(response.status.code), Array(body.readableBytesView))
        } catch {
            try? await client.shutdown()
            throw StartupError(message: "cannot reach the admin endpoint at \(url.components(separatedBy: "/v1/").first ?? url): \(error) (is the server running with --admin?)")
        }
    }
}

extension Explanation {
    /// With every control character in its text (check output, names, reasons come from registries) shown as `�`,
    /// so a service cannot send escape sequences to the operator's terminal.
    var printable: Explanation {
        guard let data = try? JSONEncoder().encode(self), var object = try? JSONSerialization.jsonObject(with: data) else { return self }
        func clean(_ value: Any) -> Any {
            switch value {
            case let s as String:
                return String(String.UnicodeScalarView(s.unicodeScalars.map {
                    ($0.value < 0x20 && $0 != "\t") || (0x7F...0x9F).contains($0.value) ? "\u{FFFD}" : $0
                }))
            case let a as [Any]: return a.map(clean)
            case let d as [String: Any]: return d.mapValues(clean)
            default: return value
            }
        }
        object = clean(object)
        guard let cleaned = try? JSONSerialization.data(withJSONObject: object),
              let out = try? JSONDecoder().decode(Explanation.self, from: cleaned) else { return self }
        return out
    }
}

/// An explanation as aligned text; with `colour`, ANSI colours for what is answered, warned about and left out.
struct ExplainText {
    var colour: Bool

    private func paint(_ text: String, _ code: String) -> String { colour ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
    private func bold(_ t: String) -> String { paint(t, "1") }
    private func green(_ t: String) -> String { paint(t, "32") }
    private func yellow(_ t: String) -> String { paint(t, "33") }
    private func red(_ t: String) -> String { paint(t, "31") }
    private func dim(_ t: String) -> String { paint(t, "2") }

    private func pad(_ s: String, _ width: Int) -> String { s + String(repeating: " ", count: max(0, width - s.count)) }

    private func ago(_ t: Double?) -> String {
        guard let t else { return "–" }
        let s = max(0, Date().timeIntervalSince1970 - t)
        return s < 60 ? "\(Int(s)) s ago" : s < 3600 ? "\(Int(s / 60)) min ago" : "\(Int(s / 3600)) h ago"
    }

    func render(_ e: Explanation) -> String {
        var out = bold("\(e.name) \(e.type)") + "\n\n"
        var parsed = e.parse.kind
        if let s = e.parse.service { parsed += " \(s)" }
        if let t = e.parse.tag { parsed += ", tag \(t)" }
        if let n = e.parse.namedPort { parsed += ", named port \(n)" }
        if let d = e.parse.datacenter { parsed += ", datacenter \(d)" }
        out += "  read as     \(parsed)\n              \(dim("rule: " + e.parse.rule))\n"
        let rcode = e.answer.rcode == "NOERROR" ? green(e.answer.rcode) : e.answer.rcode == "NXDOMAIN" ? yellow(e.answer.rcode) : red(e.answer.rcode)
        out += "  answer      \(rcode), \(e.answer.answers.count) record\(e.answer.answers.count == 1 ? "" : "s")\n"
        out += records(e.answer.answers, indent: "              ")
        if !e.answer.additional.isEmpty {
            out += "  additional\n" + records(e.answer.additional, indent: "              ")
        }
        if let c = e.client {
            out += "  client      \(c.address ?? "(no address)"): zone \(c.zone ?? "unknown") (\(c.source))\n              \(dim("nearest first: " + c.preference))\n"
        }
        out += "\n" + registries(e)
        if !e.instances.isEmpty { out += "\n" + instances(e.instances) }
        if !e.skipped.isEmpty {
            out += "\n" + bold("  left out by the registry") + "\n"
            for s in e.skipped { out += "    \(s.registry)  \(s.location): \"\(s.name)\" \(red(s.reason))\n" }
        }
        return out
    }

    private func records(_ rs: [Explanation.Record], indent: String) -> String {
        let nameWidth = rs.map(\.name.count).max() ?? 0
        let ttlWidth = rs.map { String($0.ttl).count }.max() ?? 0
        return rs.map { r in
            indent + pad(r.name, nameWidth) + "  " + String(repeating: " ", count: ttlWidth - String(r.ttl).count) + "\(r.ttl)  "
                + pad(r.type, 5) + " " + r.data + "\n"
        }.joined()
    }

    private func registries(_ e: Explanation) -> String {
        var out = bold("  registries") + (e.staleness.map { "  " + yellow("data \(Int($0)) s stale") } ?? "") + "\n"
        let kindWidth = e.registries.map(\.kind.count).max() ?? 0
        let targetWidth = e.registries.map(\.target.count).max() ?? 0
        for r in e.registries {
            var state = r.state
            if let s = r.staleness { state += " (age \(Int(s)) s\(r.fromState != nil ? ", from the state file" : ""))" }
            let painted = r.state == "connected" ? green(state) : r.state == "problem" ? red(state) : yellow(state)
            out += "    \(pad(r.kind, kindWidth))  \(pad(r.target, targetWidth))  \(painted)  \(dim("last change \(ago(r.lastChange)), \(r.restarts) watch restart\(r.restarts == 1 ? "" : "s")"))"
            if let p = r.problem { out += "  " + red(p) }
            out += "\n"
        }
        return out
    }

    private func instances(_ list: [Explanation.Instance]) -> String {
        let answered = list.filter(\.answered).count
        var out = bold("  instances") + "  \(answered) of \(list.count) answered\n"
        let idWidth = list.map(\.id.count).max() ?? 0
        func placement(_ i: Explanation.Instance) -> String { "\(i.node.isEmpty ? "(no node)" : i.node) · \(i.datacenter)" }
        let nodeWidth = list.map(placement).map(\.count).max() ?? 0
        let addressWidth = list.map { "\($0.address):\($0.port)".count }.max() ?? 0
        let indent = String(repeating: " ", count: 6 + idWidth + 2 + nodeWidth + 2 + addressWidth + 2)
        for i in list {
            let health = pad(i.health, 11)
            let paintedHealth = i.health == "passing" ? green(health) : i.health == "warning" ? yellow(health) : red(health)
            let mark = i.answered ? green("in ") : red("out")
            out += "  \(mark) \(pad(i.id, idWidth))  \(pad(placement(i), nodeWidth))  \(pad("\(i.address):\(i.port)", addressWidth))  \(paintedHealth)"
            out += i.answered ? green("answered") + "\n" : red(i.reasons.first ?? "left out") + "\n"
            for reason in i.reasons.dropFirst() { out += indent + String(repeating: " ", count: 13) + red(reason) + "\n" }
            if let l = i.locality, !l.isEmpty { out += indent + dim("in \(l)" + (i.group.map { ", \($0) group" } ?? "")) + "\n" }
            out += indent + dim("from \(i.origin.isEmpty ? i.registry : i.origin); changed \(ago(i.changed))") + "\n"
        }
        return out
    }
}

import DNSWire
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One registry's last-good catalog, as `--state-dir` keeps it: the data, the time the registry last confirmed
/// it, and where the watcher can resume (etcd's revision, Consul's indexes). A restart during a registry outage
/// serves it instead of SERVFAIL.
///
/// On disk: one header line, `SIGNPOST-STATE <format> <body bytes> <FNV-1a 64 of the body, hex>`, then a JSON body
/// (nodes once, instances pointing at them, short keys). The header catches a truncated or corrupted file and a
/// file from a newer format before anything is decoded.
public struct RegistryState: Sendable, Equatable {
    public static let format = 1

    /// The registry's description (its `--registry` URL without secrets), so a file is never read for another.
    public var registry: String
    /// When the registry last confirmed this data, in seconds since the epoch (wall clock: it must survive a restart).
    public var confirmed: Double
    /// Where the watcher resumes: etcd `revision`; Consul `catalogIndex`, `nodesIndex`, `serviceIndexes`, `known`.
    public var resume: [String: String]
    /// The data, by the watcher's own key: an etcd key, or a Consul service name.
    public var entries: [String: [Instance]]
    /// Records read from the file that today's registration rules refuse (a Signpost before a rule was tightened
    /// wrote them), each with why: left out of `entries`, and reported, rather than the whole file refused.
    public var refused: [String] = []

    public init(registry: String, confirmed: Double, resume: [String: String], entries: [String: [Instance]]) {
        self.registry = registry
        self.confirmed = confirmed
        self.resume = resume
        self.entries = entries
    }

    public struct Problem: Error, CustomStringConvertible, Sendable {
        public var path: String
        public var reason: String
        public var description: String { "\(path): \(reason)" }
    }

    // MARK: The file

    public func encoded() throws -> [UInt8] {
        let body = try JSONEncoder().encode(Body(self))
        let header = "SIGNPOST-STATE \(Self.format) \(body.count) \(String(Self.checksum(body), radix: 16))\n"
        return Array(header.utf8) + body
    }

    public static func decode(_ bytes: [UInt8], path: String) throws(Problem) -> RegistryState {
        func fail(_ reason: String) -> Problem { Problem(path: path, reason: reason) }
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")), newline < 200 else { throw fail("not a state file (no header)") }
        let fields = String(decoding: bytes[..<newline], as: UTF8.self).split(separator: " ")
        guard fields.count == 4, fields[0] == "SIGNPOST-STATE", let format = Int(fields[1]), let length = Int(fields[2]),
              let sum = UInt64(fields[3], radix: 16) else { throw fail("not a state file (bad header)") }
        guard format <= Self.format else { throw fail("written by a newer Signpost (format \(format); this one reads \(Self.format))") }
        let body = bytes[(newline + 1)...]
        guard body.count == length else { throw fail("truncated or extended: \(body.count) bytes of \(length)") }
        guard checksum(body) == sum else { throw fail("corrupt: checksum mismatch") }
        do {
            let state = try JSONDecoder().decode(Body.self, from: Data(body)).state()
            guard plausible(state.confirmed) else { throw fail("corrupt: confirmation time \(state.confirmed)") }
            if let r = state.resume["revision"], Int64(r).map({ $0 >= 0 && $0 < Int64.max / 2 }) != true {
                throw fail("corrupt: revision \(r)")
            }
            return state
        } catch let problem as Problem {
            throw Problem(path: path, reason: problem.reason)
        } catch {
            throw fail("undecodable: \(error)")
        }
    }

    /// A confirmation time that can be real: after 2000, and not more than a day ahead of this clock.
    public static func plausible(_ t: Double) -> Bool {
        t.isFinite && t > 946_684_800 && t < Date().timeIntervalSince1970 + 86_400
    }

    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h = FNV1a()
        for b in bytes { h.add(b) }
        return h.value
    }

    /// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix: a temporary file,
    /// fsynced, renamed over the old one, then the directory fsynced.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, sync: Bool = true) throws(Problem) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Problem(path: temporary, reason: String(cString: strerror(errno))) }
        var written = 0
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 { if errno == EINTR { continue }; return false }
                written += n
            }
            return !sync || fsync(fd) == 0
        }
        let reason = ok ? nil : String(cString: strerror(errno))
        close(fd)
        guard ok else { unlink(temporary); throw Problem(path: temporary, reason: reason ?? "write failed") }
        guard rename(temporary, path) == 0 else { throw Problem(path: path, reason: String(cString: strerror(errno))) }
        guard sync else { return }
        let directory = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent,
                             O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 { _ = fsync(directory); close(directory) }
    }
}

// MARK: The JSON body: nodes once, instances pointing at them, defaults left out.

extension RegistryState {
    struct Body: Codable {
        var registry: String
        var confirmed: Double
        var resume: [String: String]
        var nodes: [NodeRecord]
        var entries: [String: [InstanceRecord]]

        init(_ s: RegistryState) {
            var index: [Node: Int] = [:]
            var nodes: [NodeRecord] = []
            var entries: [String: [InstanceRecord]] = [:]
            for (key, instances) in s.entries {
                entries[key] = instances.map { inst in
                    let n = index[inst.node] ?? { index[inst.node] = nodes.count; nodes.append(NodeRecord(inst.node)); return nodes.count - 1 }()
                    return InstanceRecord(inst, node: n)
                }
            }
            (registry, confirmed, resume, self.nodes, self.entries) = (s.registry, s.confirmed, s.resume, nodes, entries)
        }

        func state() throws -> RegistryState {
            var out: [String: [Instance]] = [:]
            var refused: [String] = []
            for (key, records) in entries {
                var instances: [Instance] = []
                for r in records {
                    guard nodes.indices.contains(r.n) else { throw Problem(path: "", reason: "corrupt: node \(r.n) of \(nodes.count)") }
                    // Every node record names its datacenter; the local one is never needed.
                    do { instances.append(try r.instance(node: nodes[r.n], localDatacenter: "")) } catch let error as RegistrationProblem {
                        refused.append("\(key): instance \(r.id): \(error)")
                    }
                }
                if !instances.isEmpty { out[key] = instances }
            }
            var state = RegistryState(registry: registry, confirmed: confirmed, resume: resume, entries: out)
            state.refused = refused
            return state
        }
    }

    struct NodeRecord: Codable {
        var n: String, a: String, dc: String
        var m: [String: String]?
        var l: [String]?

        init(_ node: Node) {
            (n, a, dc) = (node.name, node.address.description, node.datacenter)
            m = node.meta.isEmpty ? nil : node.meta
            l = node.lanAddresses.isEmpty ? nil : node.lanAddresses.map(\.description)
        }

        /// The node's fields as a registration gives them (its tagged LAN addresses by family).
        var lan: (ipv4: String?, ipv6: String?) { RegistryState.byFamily(l ?? []) }
    }

    struct InstanceRecord: Codable {
        var id: String, s: String, n: Int, p: UInt16
        var sa: String?, np: [String: UInt16]?, t: [String]?, m: [String: String]?, w: [UInt16]?, h: Int?, sl: [String]?
        /// The checks and the origin, for the operator view (absent in files written before they were kept).
        var c: [CheckState]?, o: Origin?
        /// The locality: region and zone.
        var lo: Locality?

        init(_ i: Instance, node: Int) {
            (id, s, n, p) = (i.id, i.service, node, i.port)
            sa = i.serviceAddress?.description
            np = i.namedPorts.isEmpty ? nil : i.namedPorts
            t = i.tags.isEmpty ? nil : i.tags
            m = i.meta.isEmpty ? nil : i.meta
            w = i.weightPassing == 1 && i.weightWarning == 1 ? nil : [i.weightPassing, i.weightWarning]
            h = i.health == .passing ? nil : i.health.rawValue
            sl = i.serviceLanAddresses.isEmpty ? nil : i.serviceLanAddresses.map(\.description)
            c = i.checks.isEmpty ? nil : i.checks
            o = i.origin == Origin() ? nil : i.origin
            lo = i.locality
        }

        /// The instance, read back through the same rules as every registry's (`RegistrationRules`): the file
        /// holds what they made, and what they now refuse throws their `RegistrationProblem`.
        func instance(node record: NodeRecord, localDatacenter: String) throws -> Instance {
            guard (w?.count ?? 2) == 2, let health = Health(rawValue: h ?? 0) else { throw Problem(path: "", reason: "corrupt: instance \(id)") }
            let fields = RegistrationFields(
                service: s, id: id, node: record.n, nodeAddress: RegistryState.trimmed(record.a), datacenter: record.dc, nodeMeta: record.m ?? [:],
                nodeLAN: record.lan, address: sa.map(RegistryState.trimmed), port: Int(p), namedPorts: np ?? [:], tags: t ?? [], meta: m ?? [:],
                weights: w.map { .init(passing: Int($0[0]), warning: Int($0[1])) }, serviceLAN: RegistryState.byFamily(sl ?? []),
                // The health as it was folded (a Consul instance's from its checks, an etcd one's own status), and the checks.
                status: health.description,
                checks: (c ?? []).map { .init(id: $0.id, name: $0.name, status: $0.status.description, output: $0.output, nodeLevel: $0.nodeLevel) },
                locality: lo)
            // A record the rules refuse is one they refuse today: `state()` leaves it out and reports it.
            var inst = try RegistrationRules.instance(fields, localDatacenter: localDatacenter)
            inst.origin = o ?? Origin()
            return inst
        }
    }

    /// A hostname as `Address` writes it, with its trailing dot, read as registrations give one.
    static func trimmed(_ text: String) -> String {
        text.hasSuffix(".") && text.count > 1 ? String(text.dropLast()) : text
    }

    /// Tagged LAN addresses, as a registration gives them: one IPv4 and one IPv6.
    static func byFamily(_ addresses: [String]) -> (ipv4: String?, ipv6: String?) {
        (addresses.first { !$0.contains(":") }, addresses.first { $0.contains(":") })
    }

}

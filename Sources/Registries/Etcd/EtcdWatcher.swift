import Catalog
import AsyncHTTPClient
import DNSWire
import Foundation
import Logging
import Metrics
import NIOCore

/// Follows an etcd v3 cluster through its HTTP/JSON gateway: a range read of the prefix, then a
/// watch from the next revision, so no event is missed.
///
/// - A compacted start revision (the watch is cancelled with `compact_revision`) forces a re-list.
/// - Any other failure moves to the next endpoint after a capped exponential backoff with full jitter;
///   the watch resumes from the last revision seen, so changes made meanwhile are replayed. TLS, credentials,
///   backoff and the lost contact are `RegistryConnection`'s and `RegistryLoop`'s, as for every registry.
/// - With a user, it logs in through `/v3/auth/authenticate` and sends the token with each request; a token etcd
///   no longer knows (expired, or etcd restarted) means logging in again and resuming the watch where it was:
///   no gap, no re-list.
/// - While no endpoint answers, the assembler keeps serving the last snapshot and the store reports
///   how stale it is.
/// - A value that parses as none of the formats is logged with its key and skipped; an earlier good value
///   of that key keeps serving (as with catalog files).
public actor EtcdWatcher {
    public struct Configuration: Sendable {
        /// Endpoints (`http://127.0.0.1:2379`, `https://…`), TLS and credentials.
        public var connection: ConnectionSettings
        public var endpoints: [String] { connection.endpoints }
        public var prefix: String
        public var localDatacenter: String
        /// Retries walk the endpoints with at most a second between tries: a member that is back (or a quorum that
        /// is) is found within a second, and a second per try costs a down cluster nothing.
        public var backoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        /// `--state-dir`: the last-good data, loaded at start-up and written on change; nil without one.
        public var state: StateKeeper? = nil
        /// `--max-stale`: a state file confirmed longer ago than this is not served.
        public var maxStale: Duration? = nil
        /// How long a member may take to answer a watch request (its `created` message comes with the response's
        /// head). A member that accepts the connection but does not answer, as a restarting etcd does until it has
        /// caught up, is left for the next endpoint instead of holding the watch until it is ready. etcd answers a
        /// watch request at once when it can; 2 s leaves room for a TLS handshake on a slow link.
        public var watchAnswerTimeout: TimeAmount = .seconds(2)

        public init(connection: ConnectionSettings, prefix: String = "/services/", localDatacenter: String = "dc1") {
            self.connection = connection
            self.prefix = prefix
            self.localDatacenter = localDatacenter
        }
    }

    /// The watch cannot resume where it was: list again.
    struct Compacted: RegistrySignal { var reason = "etcd watch revision compacted; listing again" }

    public let configuration: Configuration
    private let assembler: CatalogAssembler
    private let sourceIndex: Int
    private let logger: Logger
    private let skips: SkipCounters
    public nonisolated let connection: RegistryConnection
    private let loop: RegistryLoop
    /// A fresh login was tried after etcd refused the token; another refusal before the next success is a failure.
    private var reloginTried = false
    /// Current instances per key (a go-micro value may hold several nodes).
    private var keys: [String: Entry] = [:]
    typealias Entry = (service: String, instances: [Instance])
    /// Keys per service, so an update rebuilds one service's list without scanning every key.
    private var keysByService: [String: Set<String>] = [:]
    private var nodeRefs = NodeReferences()
    /// Every event up to here has been applied (a listing's revision, events' mod_revision, progress notifications).
    private var revision: Int64 = 0
    /// The cluster the data came from; a state file from another cluster (or a rebuilt one) is listed again.
    private var clusterID: String? = nil
    private var listed = false
    private var endpointIndex = 0

    public init(configuration: Configuration, assembler: CatalogAssembler, sourceIndex: Int, logger: Logger,
                connection: RegistryConnection? = nil) {
        self.configuration = configuration
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.logger = logger
        self.skips = SkipCounters(registry: "etcd")
        let connection = connection ?? RegistryConnection(settings: configuration.connection, registry: .etcd,
                                                          name: "etcd:" + configuration.endpoints.joined(separator: ","), logger: logger,
                                                          connectTimeout: .seconds(1))
        self.connection = connection
        self.loop = RegistryLoop(connection: connection, assembler: assembler, sourceIndex: sourceIndex, state: configuration.state,
                                 backoff: configuration.backoff, logger: logger)
    }

    /// Runs until cancelled.
    public func run() async {
        if let keeper = configuration.state, let state = keeper.load(maxStale: configuration.maxStale) { await restore(state) }
        let writer = configuration.state.map { keeper in Task { await keeper.run(source: self) } }
        let files = Task { [loop] in await loop.watchFiles() }
        await loop.run({ endpoint, connected in
            func through() async {
                self.reloginTried = false
                await connected()
            }
            try await self.logIn(endpoint)
            if !self.listed { try await self.list(endpoint); await through() }
            try await self.watch(endpoint, onCreated: through)
            throw RegistryFailure(.unreachable, endpoint: endpoint, "the watch stream ended")
        }, recover: { error, endpoint in self.recover(error, endpoint) })
        files.cancel()
        writer?.cancel()
        await writer?.value
        await connection.shutdown()
    }

    /// Errors that are no failure: a compacted revision (list again), a token etcd no longer takes (log in again;
    /// the watch resumes from its revision).
    private func recover(_ error: any Error, _ endpoint: String) -> Bool {
        if let relist = error as? Compacted {
            logger.info("\(relist.reason)", metadata: ["etcd.endpoint": "\(endpoint)"])
            listed = false
            return true
        }
        guard let failure = error as? RegistryFailure, configuration.connection.user != nil else { return false }
        // etcd before 3.4.22 cancels a watch made with an expired token as "permission denied": one fresh login tells.
        // "user name is empty": etcd enabled authentication after we found it off.
        guard failure.kind == .tokenExpired || failure.kind == .permissionDenied || failure.kind == .badCredentials && failure.detail.contains("no user was given"),
              !reloginTried else { return false }
        reloginTried = true
        connection.setSessionToken(nil)
        logger.debug("etcd refused the token; logging in again", metadata: ["etcd.endpoint": "\(endpoint)"])
        return true
    }

    /// With a user and no token yet: `/v3/auth/authenticate`.
    private func logIn(_ endpoint: String) async throws {
        guard let user = configuration.connection.user, connection.sessionToken == nil else { return }
        guard let password = connection.password else { return }
        let body: ByteBuffer
        do {
            body = try await post(endpoint, "/v3/auth/authenticate", EtcdJSON.AuthRequest(name: user, password: password), deadline: .now() + .seconds(10))
        } catch {
            // Authentication is off: go on without a token (asked again at the next connection).
            guard (error as? RegistryFailure)?.kind == .authNotEnabled else { throw error }
            return
        }
        guard let token = try connection.decode(EtcdJSON.AuthResponse.self, body, path: "/v3/auth/authenticate", endpoint: endpoint).token, !token.isEmpty else {
            throw RegistryFailure(.badResponse, endpoint: endpoint, "/v3/auth/authenticate returned no token")
        }
        connection.setSessionToken(token)
    }

    /// The state file's data, served until etcd answers; the watch resumes from its revision (a re-list follows
    /// only if that revision was compacted meanwhile).
    private func restore(_ state: RegistryState) async {
        var entries: [String: Entry] = [:]
        for (key, instances) in state.entries {
            guard let first = instances.first else { continue }
            entries[key] = (ServiceName.key(first.service), instances)
        }
        let catalog = adopt(entries)
        revision = Int64(state.resume["revision"] ?? "") ?? 0
        clusterID = state.resume["cluster"]
        listed = revision > 0
        await assembler.restore(source: sourceIndex, with: catalog, confirmed: state.confirmed)
        logger.info("serving the state file until etcd answers", metadata: ["path": "\(configuration.state!.path)", "etcd.revision": "\(revision)",
                                                                          "etcd.keys": "\(keys.count)"])
    }


    /// The range of the prefix; an empty prefix is the whole keyspace (key and range_end both "\0", as etcdctl's
    /// `get --from-key ""` sends).
    private var range: EtcdJSON.RangeRequest {
        let key = configuration.prefix.isEmpty ? [0] : Array(configuration.prefix.utf8)
        return EtcdJSON.RangeRequest(key: EtcdJSON.base64(key), range_end: EtcdJSON.base64(Self.prefixEnd(configuration.prefix)))
    }

    /// The first key after every key with this prefix.
    static func prefixEnd(_ prefix: String) -> [UInt8] {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xFF { bytes[bytes.count - 1] = last + 1; return bytes }
            bytes.removeLast()
        }
        return [0]
    }

    private func request(_ endpoint: String, _ path: String, _ body: some Encodable) -> HTTPClientRequest {
        var request = connection.request(endpoint, path, method: .POST)
        request.headers.add(name: "Content-Type", value: "application/json")
        // etcd's require-leader (clientv3.WithRequireLeader, through the gateway's gRPC metadata): a member that has
        // lost its leader (no quorum) ends the watch with "no leader" instead of keeping it open and silent, so
        // Signpost sees the outage, serves the cache as stale, and moves to another member.
        request.headers.add(name: "Grpc-Metadata-hasleader", value: "true")
        request.body = .bytes(ByteBuffer(bytes: (try? JSONEncoder().encode(body)) ?? Data()))
        return request
    }

    /// A unary call: its checked JSON body.
    private func post(_ endpoint: String, _ path: String, _ body: some Encodable, deadline: NIODeadline) async throws -> ByteBuffer {
        try await connection.execute(request(endpoint, path, body), endpoint: endpoint, deadline: deadline) { response in
            try await connection.jsonBody(response, path: path, endpoint: endpoint)
        }
    }

    /// Keys per range request while listing; pages keep the memory peak of a large listing small.
    static let pageSize = 2000

    /// Lists the prefix in pages, all read at the revision of the first page, so the result is one
    /// consistent snapshot.
    private func list(_ endpoint: String) async throws {
        var fresh: [String: Entry] = [:]
        var body = range
        body.limit = String(Self.pageSize)
        var pinned: Int64? = nil
        while true {
            if let pinned { body.revision = String(pinned) }
            let bytes = try await post(endpoint, "/v3/kv/range", body, deadline: .now() + .seconds(30))
            let page = try connection.decode(EtcdJSON.RangeResponse.self, bytes, path: "/v3/kv/range", endpoint: endpoint)
            if pinned == nil {
                pinned = Int64(page.header?.revision ?? "0") ?? 0
                clusterID = page.header?.cluster_id
            }
            var lastKey: [UInt8]? = nil
            for kv in page.kvs ?? [] {
                guard let keyBytes = kv.keyBytes, let value = kv.valueBytes else { continue }
                let key = String(decoding: keyBytes, as: UTF8.self)
                lastKey = keyBytes
                switch parse(key: key, value: value, revision: kv.modRevision) {
                case .instances(let entry): fresh[key] = entry
                case .deleted: break
                case .invalid: fresh[key] = keys[key]
                }
            }
            guard page.more == true, let lastKey else { break }
            // The next page starts just after the last key of this one.
            body.key = EtcdJSON.base64(lastKey + [0])
        }
        revision = pinned ?? 0
        let catalog = adopt(fresh)
        await assembler.replace(source: sourceIndex, with: catalog)
        await assembler.setContact(source: sourceIndex, inContact: true)
        configuration.state?.confirmed()
        configuration.state?.changed()
        listed = true
        logger.info("etcd listed", metadata: ["etcd.endpoint": "\(endpoint)", "etcd.revision": "\(revision)", "etcd.keys": "\(keys.count)"])
    }

    /// Takes `entries` as the whole set of keys (a listing, or a state file), and returns the catalog they make.
    private func adopt(_ entries: [String: Entry]) -> SourceCatalog {
        keys = entries
        keysByService = [:]
        for (key, entry) in keys { keysByService[entry.service, default: []].insert(key) }
        nodeRefs.removeAll()
        var catalog = SourceCatalog()
        for (_, entry) in keys {
            catalog.services[entry.service, default: []] += entry.instances
            for inst in entry.instances { nodeRefs.retain(inst.node) }
        }
        catalog.nodes = nodeRefs.nodes
        return catalog
    }

    private func watch(_ endpoint: String, onCreated: () async -> Void) async throws {
        let create = EtcdJSON.WatchCreate(key: range.key, range_end: range.range_end, start_revision: String(revision + 1))
        let path = "/v3/watch", limit = configuration.connection.maxResponseBytes
        // AsyncHTTPClient's deadline bounds the wait for the response's head; the stream then runs unbounded.
        try await connection.execute(request(endpoint, path, EtcdJSON.WatchRequest(create_request: create)), endpoint: endpoint,
                                     deadline: .now() + configuration.watchAnswerTimeout) { response in
            guard response.status == .ok else {
                _ = try await connection.jsonBody(response, path: path, endpoint: endpoint)
                return
            }
            var pending = ByteBuffer()
            for try await var chunk in response.body {
                pending.writeBuffer(&chunk)
                while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = pending.readSlice(length: newline - pending.readerIndex + 1)!
                    try await handle(line, endpoint: endpoint, onCreated: onCreated)
                }
                // One event never needs more than a response may hold; a stream that never ends a line is not etcd.
                if pending.readableBytes > limit {
                    throw RegistryFailure(.tooLarge, endpoint: endpoint, "\(path) sent a line over max-response (\(limit) bytes)")
                }
                pending.discardReadBytes()
            }
        }
    }

    private func handle(_ line: ByteBuffer, endpoint: String, onCreated: () async -> Void) async throws {
        try RegistryConnection.checkJSON(line, contentType: nil, path: "/v3/watch", endpoint: endpoint)
        let message = try connection.decode(EtcdJSON.WatchLine.self, line, path: "/v3/watch", endpoint: endpoint)
        if let error = message.error {
            throw RegistryFailure.status(error.http_code ?? 500, message: error.message ?? "the watch stream failed", path: "/v3/watch",
                                         endpoint: endpoint, registry: .etcd)
        }
        guard let result = message.result else { return }
        guard let events = try await control(result, endpoint: endpoint, onCreated: onCreated) else { return }
        var changedServices: Set<String> = []
        var changedNodes: Set<CatalogSnapshot.NodeKey> = []
        for event in events {
            guard let kv = event.kv, let keyBytes = kv.keyBytes else { continue }
            let key = String(decoding: keyBytes, as: UTF8.self)
            if let r = kv.modRevision { revision = max(revision, r) }
            logger.trace("etcd event", metadata: ["etcd.key": "\(key)", "etcd.type": "\(event.type ?? "PUT")", "etcd.mod_revision": "\(kv.modRevision ?? -1)"])
            let old = keys[key]
            var new: Entry? = nil
            if event.type != "DELETE" {
                guard let value = kv.valueBytes else { continue }
                switch parse(key: key, value: value, revision: kv.modRevision) {
                case .instances(let entry): new = entry
                case .deleted: new = nil
                case .invalid: new = old
                }
            }
            if let old {
                changedServices.insert(old.service)
                keysByService[old.service]?.remove(key)
                for inst in old.instances where nodeRefs.release(inst.node) { changedNodes.insert(NodeReferences.key(inst.node)) }
            }
            if let new {
                changedServices.insert(new.service)
                keysByService[new.service, default: []].insert(key)
                for inst in new.instances where nodeRefs.retain(inst.node) { changedNodes.insert(NodeReferences.key(inst.node)) }
            }
            keys[key] = new
        }
        var services: [String: [Instance]] = [:]
        for name in changedServices {
            services[name] = (keysByService[name] ?? []).flatMap { keys[$0]?.instances ?? [] }
            if keysByService[name]?.isEmpty == true { keysByService[name] = nil }
        }
        var nodes: [CatalogSnapshot.NodeKey: Node?] = [:]
        for key in changedNodes { nodes[key] = .some(nodeRefs.node(key)) }
        await assembler.update(source: sourceIndex, services: services, nodes: nodes)
        configuration.state?.changed()
    }

    /// A watch response's control part: creation (where a restored revision is checked against the cluster),
    /// cancellation, progress. Returns its events, or nil when it has none.
    private func control(_ result: EtcdJSON.WatchResult, endpoint: String, onCreated: () async -> Void) async throws -> [EtcdJSON.Event]? {
        let headerRevision = result.header?.revision.flatMap { Int64($0) }
        let created = result.created == true
        if created {
            // A cluster behind the revision we hold, or another cluster, cannot resume our watch: list again.
            if let h = headerRevision, h < revision { throw Compacted(reason: "etcd is behind the stored revision \(revision) (restored or rebuilt); listing again") }
            if let id = result.header?.cluster_id {
                if let known = clusterID, known != id { throw Compacted(reason: "etcd cluster \(id) is not \(known); listing again") }
                clusterID = id
            }
        }
        if result.canceled == true {
            if let compacted = result.compact_revision, compacted != "0" { throw Compacted() }
            // A create refused for its token or permissions comes back created and cancelled at once, with the
            // gRPC status as its reason ("rpc error: code = PermissionDenied desc = etcdserver: permission denied").
            let reason = result.cancel_reason ?? ""
            let code: UInt = reason.contains("invalid auth token") ? 401 : reason.contains("PermissionDenied") || reason.contains("permission denied") ? 403
                : reason.contains("InvalidArgument") ? 400 : 500
            throw RegistryFailure.status(code, message: reason.isEmpty ? "the watch was cancelled" : reason, path: "/v3/watch", endpoint: endpoint, registry: .etcd)
        }
        if created {
            logger.debug("etcd watch created", metadata: ["etcd.endpoint": "\(endpoint)", "etcd.start_revision": "\(revision + 1)",
                                                      "etcd.header_revision": "\(headerRevision ?? -1)"])
            configuration.state?.confirmed()
            await assembler.setContact(source: sourceIndex, inContact: true)
            await onCreated()
        }
        guard let events = result.events, !events.isEmpty else {
            // A progress notification: every event up to its revision has been sent. (The `created` response's
            // revision is the cluster's, not how far this watch has got.)
            if !created, let h = headerRevision {
                logger.trace("etcd watch progress", metadata: ["etcd.endpoint": "\(endpoint)", "etcd.revision": "\(h)"])
                revision = max(revision, h)
            }
            return nil
        }
        return events
    }

    enum Parsed {
        case instances(Entry)
        /// A gRPC naming "delete" op: the key stands for nothing.
        case deleted
        /// Logged and counted; an earlier good value of the key keeps serving.
        case invalid
    }

    /// A key's value as instances, each knowing its key and `revision` (the key's `mod_revision`).
    private func parse(key: String, value: [UInt8], revision: Int64?) -> Parsed {
        do {
            guard var instances = try EtcdValue.parse(key: key, value: value, prefix: configuration.prefix,
                                                      localDatacenter: configuration.localDatacenter),
                  let first = instances.first else { return .deleted }
            for i in instances.indices { instances[i].origin = Origin(registry: "etcd", location: key, revision: revision) }
            return .instances((ServiceName.key(first.service), instances))
        } catch {
            logger.error("etcd value skipped", metadata: ["registry": "etcd", "etcd.key": "\(key)", "reason": "\(error)"])
            skips.count(error.reason)
            assembler.store.activity.noteSkipped(registry: "etcd", location: key, name: key, reason: "\(error)")
            return .invalid
        }
    }
}

extension EtcdWatcher: StateSource {
    public func currentState() -> (entries: [String: [Instance]], resume: [String: String]) {
        var resume = ["revision": String(revision)]
        resume["cluster"] = clusterID
        return (keys.mapValues(\.instances), resume)
    }
}

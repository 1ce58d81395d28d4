import Catalog
import DNSWire
import Foundation
import Logging

/// Watches the catalog directory (`*.json`, a `file:` registry) and the zones directory (`*.zone`) by
/// polling file metadata, and hands the assembler the whole file catalog whenever anything changed.
/// A file that fails to parse is reported once per change; its last good content keeps serving.
public actor CatalogWatcher {
    public struct Configuration: Sendable {
        public var catalogDirectory: String?
        public var zonesDirectory: String?
        public var localDatacenter: String
        /// How often file metadata is checked. Changes show up within one interval.
        public var pollInterval: Duration

        public init(catalogDirectory: String?, zonesDirectory: String?, localDatacenter: String = "dc1",
                    pollInterval: Duration = .milliseconds(200)) {
            self.catalogDirectory = catalogDirectory
            self.zonesDirectory = zonesDirectory
            self.localDatacenter = localDatacenter
            self.pollInterval = pollInterval
        }
    }

    struct Fingerprint: Equatable {
        var inode: UInt64, size: Int64, mtime: timespec, ctime: timespec
        static func == (a: Fingerprint, b: Fingerprint) -> Bool {
            a.inode == b.inode && a.size == b.size && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
                && a.ctime.tv_sec == b.ctime.tv_sec && a.ctime.tv_nsec == b.ctime.tv_nsec
        }
    }

    struct Tracked<Content> {
        var fingerprint: Fingerprint
        var good: Content?
    }

    public let configuration: Configuration
    private let assembler: CatalogAssembler
    /// This registry's position among the assembler's sources (when there is a catalog directory).
    private let sourceIndex: Int
    private let logger: Logger
    private let skips = SkipCounters(registry: "file")
    private var catalogFiles: [String: Tracked<[Registration]>] = [:]
    private var zoneFiles: [String: Tracked<Zone>] = [:]
    private var delivered = false
    /// Directories currently failing to list, so each outage is reported once, not on every poll.
    private var failingDirectories: Set<String> = []

    /// Loads everything once. Throws if a directory cannot be read; problems in single files
    /// are logged and do not stop start-up.
    public init(configuration: Configuration, assembler: CatalogAssembler, sourceIndex: Int, logger: Logger) throws(CatalogProblem) {
        self.configuration = configuration
        self.assembler = assembler
        self.sourceIndex = sourceIndex
        self.logger = logger
        if let c = configuration.catalogDirectory { _ = try Self.list(c, suffix: ".json") }
        if let z = configuration.zonesDirectory { _ = try Self.list(z, suffix: ".zone") }
    }

    /// A watcher that is the only registry, publishing into `store`.
    public init(configuration: Configuration, store: SnapshotStore, logger: Logger) throws(CatalogProblem) {
        let assembler = CatalogAssembler(sources: configuration.catalogDirectory.map { ["file:\($0)"] } ?? [],
                                         expectsZones: configuration.zonesDirectory != nil,
                                         localDatacenter: configuration.localDatacenter, store: store, logger: logger)
        try self.init(configuration: configuration, assembler: assembler, sourceIndex: 0, logger: logger)
    }

    /// Checks the files once; publishes a snapshot if anything changed. Returns new problems.
    @discardableResult
    public func refresh() async -> [CatalogProblem] {
        var problems: [CatalogProblem] = []
        let dc = configuration.localDatacenter
        var catalogChanged = !delivered, zonesChanged = !delivered
        var skipped: [SkippedName] = []
        if let c = configuration.catalogDirectory {
            catalogChanged = sync(&catalogFiles, directory: c, suffix: ".json", problems: &problems) { path, bytes throws(CatalogProblem) in
                try RegistrationDecoder.decode(bytes: bytes, path: path, defaultDatacenter: dc, skipped: &skipped)
            } || catalogChanged
        }
        // Reported once per change of the file, like a bad file.
        for s in skipped {
            logger.warning("\(s)", metadata: ["registry": "file", "file.path": "\(s.location)", "reason": "\(s.reason.rawValue)"])
            skips.count(s.reason)
            assembler.store.activity.noteSkipped(registry: "file", location: s.location, name: s.name, reason: s.reason.description)
        }
        if let z = configuration.zonesDirectory {
            zonesChanged = sync(&zoneFiles, directory: z, suffix: ".zone", problems: &problems) { path, _ throws(CatalogProblem) in
                try ZoneLoader.load(path: path)
            } || zonesChanged
        }
        for p in problems {
            logger.error("\(p) (keeping the last good content)", metadata: ["file.path": "\(p.path)", "file.line": "\(p.line)"])
        }
        if zonesChanged, configuration.zonesDirectory != nil {
            await assembler.setZones(zoneFiles.keys.sorted().compactMap { zoneFiles[$0]!.good })
        }
        if catalogChanged, configuration.catalogDirectory != nil {
            let regs = catalogFiles.keys.sorted().flatMap { catalogFiles[$0]!.good ?? [] }
            for (node, check) in SourceCatalog.unmatchedChecks(regs) {
                logger.warning("check \"\(check.id)\" on node \"\(node)\" names ServiceID \"\(check.serviceID)\", which no catalog file registers on that node; Consul would refuse it, so it counts for nothing",
                               metadata: ["registry": "file"])
            }
            await assembler.replace(source: sourceIndex, with: SourceCatalog(registrations: regs))
        }
        if (catalogChanged || zonesChanged) {
            let counts = await assembler.counts
            logger.info("catalog loaded", metadata: [
                "catalog.services": "\(counts.services)", "catalog.instances": "\(counts.instances)",
                "catalog.zones": "\(zoneFiles.values.filter { $0.good != nil }.count)",
            ])
        }
        delivered = true
        return problems
    }

    /// Polls until cancelled.
    public func run() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: configuration.pollInterval) } catch { return }
            await refresh()
        }
    }

    /// Validates every file without serving: the `signpost check` path.
    public static func check(catalogDirectory: String?, zonesDirectory: String?, localDatacenter: String) -> [CatalogProblem] {
        var problems: [CatalogProblem] = []
        var all: [Registration] = []
        if let catalogDirectory { do {
            for path in try list(catalogDirectory, suffix: ".json").keys.sorted() {
                do {
                    var skipped: [SkippedName] = []
                    all += try RegistrationDecoder.decode(bytes: try read(path), path: path, defaultDatacenter: localDatacenter,
                                                          skipped: &skipped)
                    // A name that can never be served loads nothing, which a check should say.
                    problems += skipped.map { CatalogProblem(path: $0.location, line: 0, reason: "service \"\($0.name)\" skipped: \($0.reason)") }
                } catch { problems.append(error) }
            }
        } catch { problems.append(error) } }
        for (node, check) in SourceCatalog.unmatchedChecks(all) {
            problems.append(CatalogProblem(path: catalogDirectory ?? "", line: 0,
                                           reason: "check \"\(check.id)\" on node \"\(node)\" names ServiceID \"\(check.serviceID)\", which no file registers on that node"))
        }
        if let zonesDirectory {
            do {
                for path in try list(zonesDirectory, suffix: ".zone").keys.sorted() {
                    do { _ = try ZoneLoader.load(path: path) } catch { problems.append(error) }
                }
            } catch { problems.append(error) }
        }
        return problems
    }

    private func sync<Content>(_ tracked: inout [String: Tracked<Content>], directory: String, suffix: String,
                               problems: inout [CatalogProblem],
                               parse: (String, [UInt8]) throws(CatalogProblem) -> Content) -> Bool {
        let current: [String: Fingerprint]
        do {
            current = try Self.list(directory, suffix: suffix)
        } catch {
            // A directory that vanished or became unreadable keeps its last good content.
            if failingDirectories.insert(directory).inserted { problems.append(error) }
            return false
        }
        if failingDirectories.remove(directory) != nil {
            logger.info("directory readable again", metadata: ["file.path": "\(directory)"])
        }
        var changed = false
        for path in tracked.keys where current[path] == nil {
            tracked.removeValue(forKey: path)
            changed = true
        }
        for (path, fp) in current where tracked[path]?.fingerprint != fp {
            var entry = tracked[path] ?? Tracked(fingerprint: fp, good: nil)
            entry.fingerprint = fp
            do {
                entry.good = try parse(path, try Self.read(path))
                changed = true
            } catch {
                problems.append(error)
            }
            tracked[path] = entry
        }
        return changed
    }

    static func list(_ directory: String, suffix: String) throws(CatalogProblem) -> [String: Fingerprint] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            var isDir: ObjCBool = false
            let reason = FileManager.default.fileExists(atPath: directory, isDirectory: &isDir)
                ? (isDir.boolValue ? "cannot read directory" : "not a directory") : "no such directory"
            throw CatalogProblem(path: directory, line: 0, reason: reason)
        }
        var out: [String: Fingerprint] = [:]
        for name in names where name.hasSuffix(suffix) && !name.hasPrefix(".") {
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            var st = stat()
            guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            out[path] = Fingerprint(inode: UInt64(st.st_ino), size: Int64(st.st_size), mtime: st.st_mtim, ctime: st.st_ctim)
        }
        return out
    }

    static func read(_ path: String) throws(CatalogProblem) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CatalogProblem(path: path, line: 0, reason: "cannot read file")
        }
        return [UInt8](data)
    }
}

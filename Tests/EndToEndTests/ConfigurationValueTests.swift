import Catalog
import Registries
import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix
@testable import signpost
import Testing

/// The one configuration value: flags and file into `Settings`, defaults and checks in `ServeConfiguration`,
/// and what a reload compares. The same `ServeConfiguration.load` the executable and SIGHUP call.
@Suite("Configuration value")
struct ConfigurationValueTests {
    func load(_ arguments: [String], resolvConf: String = "nameserver 192.0.2.53\n") throws -> ServeConfiguration {
        try ServeConfiguration.load(arguments: ["serve"] + arguments, environment: [:], resolvConf: { resolvConf })
    }

    @Test func defaults() throws {
        let c = try load([])
        // Forwarding is on, so the local zones are served (RFC 6303, RFC 6761).
        var resolver = ResolverConfiguration()
        resolver.routes = ForwardRoutes(localZones: true)
        #expect(c.resolver == resolver)
        #expect(try load(["--no-forward"]).resolver == ResolverConfiguration())
        #expect(try load(["--no-local-zones"]).resolver == ResolverConfiguration())
        #expect(c.restartOnly.server.listen == [try ListenAddress(parsing: "127.0.0.1:8600")])
        #expect(c.restartOnly.server.tcpIdleTimeout == .seconds(10))
        #expect(c.restartOnly.registries == [.file(directory: "zones/catalog")])
        #expect(c.forwarding?.upstreams == [Upstream(try SocketAddress(ipAddress: "192.0.2.53", port: 53))])
        #expect(c.forwarding?.timeout == .seconds(2) && c.maxStale == nil && c.rateLimit == nil && !c.queryLog)
    }

    @Test func subSecondDurationsAreExact() throws {
        let c = try load(["--tcp-idle-timeout", "500ms", "--upstream-timeout", "1.5s", "--max-stale", "2m30s", "--node-ttl", "1m"])
        #expect(c.restartOnly.server.tcpIdleTimeout == .milliseconds(500))
        #expect(c.forwarding?.timeout == .milliseconds(1500))
        #expect(c.maxStale == .seconds(150))
        #expect(c.resolver.nodeTTL == 60)
        #expect(throws: StartupError.self) { try load(["--tcp-idle-timeout", "0s"]) }
        #expect(throws: StartupError.self) { try load(["--upstream-timeout", "soon"]) }
    }

    @Test func theFileIsDecodedIntoTheSameValueAndFlagsWin() throws {
        let dir = TempDir()
        dir.write("c.json", """
        {"only-passing": true, "query_log": true, "no-forward": true, "listen": "127.0.0.1:5300", "service_ttl": {"*": "5s", "web": "30s"},
         "upstream-timeout": "250ms", "rrl_rate": 100}
        """)
        let file = try load(["--config", dir.path + "/c.json"])
        #expect(file.resolver.onlyPassing && file.queryLog && file.forwarding == nil)
        #expect(file.restartOnly.server.listen == [try ListenAddress(parsing: "127.0.0.1:5300")])
        #expect(file.resolver.serviceTTL.ttl(for: "web") == 30 && file.resolver.serviceTTL.ttl(for: "db") == 5)
        #expect(file.rateLimit?.rate == 100)
        // Every boolean has a --no- form that turns the file's true off; a list on the command line replaces the file's.
        let flags = try load(["--config", dir.path + "/c.json", "--no-only-passing", "--no-query-log", "--forward",
                              "--listen", "127.0.0.1:5301", "--listen", "127.0.0.1:5302", "--service-ttl", "1s"])
        #expect(!flags.resolver.onlyPassing && !flags.queryLog)
        #expect(flags.forwarding?.timeout == .milliseconds(250), "the file's other forwarding settings still apply")
        #expect(flags.restartOnly.server.listen.map(\.port) == [5301, 5302])
        #expect(flags.resolver.serviceTTL.ttl(for: "web") == 1)
        // The same file and flags give an equal value.
        #expect(try load(["--config", dir.path + "/c.json"]) == file)
    }

    @Test func problemsNameTheFileLineAndSetting() throws {
        let dir = TempDir()
        dir.write("bad.json", "{\n  \"answer-limit\": 3,\n  \"tcp_idle_timeout\": \"fast\"\n}")
        #expect(throws: StartupError.self) { try load(["--config", dir.path + "/bad.json"]) }
        do { _ = try load(["--config", dir.path + "/bad.json"]) } catch let e as StartupError {
            #expect(e.message.hasPrefix("\(dir.path)/bad.json:3: tcp-idle-timeout: expected a duration"), "\(e.message)")
            #expect(e.code == 64)
        }
    }

    @Test func aBareAdminPortIsOnLoopback() throws {
        #expect(try load(["--admin", "9000"]).restartOnly.admin?.description == "127.0.0.1:9000")
        #expect(try load(["--admin", ":9000"]).restartOnly.admin?.description == "127.0.0.1:9000")
        #expect(try load(["--admin", "0.0.0.0:9000"]).restartOnly.admin?.description == "0.0.0.0:9000")
        #expect(try load(["--admin", "[::1]:9000"]).restartOnly.admin?.description == "[::1]:9000")
    }

    @Test func restartOnlyChangesAreNamedFieldByField() throws {
        let a = try load(["--threads", "2"])
        let b = try load(["--threads", "3", "--tcp-max-connections", "9", "--log-level", "debug", "--admin", "127.0.0.1:9000",
                          "--only-passing"])
        #expect(b.restartOnly.changes(from: a.restartOnly) == ["admin", "logLevel", "tcpMaxConnections", "threads", "udpWorkers"])
        #expect(a.restartOnly.changes(from: a.restartOnly).isEmpty)
        // A registry's token or wait is a change too, though its description leaves them out.
        let token = try load(["--registry", "consul:http://127.0.0.1:8500?token=a"]), other = try load(["--registry", "consul:http://127.0.0.1:8500?token=b"])
        #expect(other.restartOnly.changes(from: token.restartOnly) == ["registries"])
        // A reload keeps the bound addresses for the ns glue and the forwarder's "not ourselves" rule.
        let reloaded = try ServeConfiguration.load(arguments: ["serve", "--listen", "127.0.0.2:53"], environment: [:],
                                                   resolvConf: { "nameserver 127.0.0.1\nnameserver 192.0.2.53\n" },
                                                   running: [try ListenAddress(parsing: "127.0.0.1:53")])
        #expect(reloaded.resolver.nameserverAddresses == [Address("127.0.0.1")!])
        #expect(reloaded.forwarding?.upstreams == [Upstream(try SocketAddress(ipAddress: "192.0.2.53", port: 53))])
    }

    @Test func aReloadKeepsTheResolverWhenItsPartIsUnchanged() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let running = try load(["--no-forward"])
        let first = Gateway.Resolver(configuration: running.resolver)
        let slot = QueryHandlerSlot(QueryHandler(configuration: running, resolver: first, store: SnapshotStore(), logger: Logger(label: "t"),
                                                 forwarder: nil, rrl: nil))
        let reloader = Reloader(running: running, slot: slot, forwarder: nil, fileWatchers: [], group: group, logger: Logger(label: "t"))
        #expect(reloader.apply(try load(["--no-forward", "--query-log", "--rrl-rate", "5", "--max-stale", "1m"])))
        #expect(slot.handler.resolver.identity == first.identity && slot.handler.maxStale == .seconds(60))
        #expect(!reloader.apply(try load(["--no-forward", "--node-ttl", "5s"])))
        #expect(slot.handler.resolver.identity != first.identity && slot.handler.resolver.configuration.nodeTTL == 5)
    }
}

/// The `--config` file's table and `serve`'s flags name the same settings: a flag left out of the table would be
/// silently unknown in files, and a row without a flag would be a setting no command line can give.
@Suite("Settings table")
struct SettingsTableTests {
    @Test func theFileTableNamesEveryFlagAndNothingElse() throws {
        let help = Serve.helpMessage(columns: 10_000)
        let regex = try Regex("--([a-z0-9-]+)")
        let flags = Set(help.matches(of: regex).map { String(help[$0.range].dropFirst(2)) }).subtracting(["help", "config"])
        let table = Serve.fileSettings.map(\.name)
        #expect(Set(table) == flags, "only flags: \(flags.subtracting(table).sorted()); only rows: \(Set(table).subtracting(flags).sorted())")
        #expect(table.count == Set(table).count, "a setting twice in the table")
    }
}

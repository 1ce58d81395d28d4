import ArgumentParser
import CPrivileges
import Catalog
import Registries
import DNSWire
import Foundation
import Gateway
import Logging
import Metrics
import NIOCore
import Prometheus
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

@main
struct Signpost: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signpost",
        abstract: "A DNS gateway for service discovery: Consul-style names from a watched registry.",
        version: signpostVersion,
        subcommands: [Serve.self, Check.self, Explain.self],
        defaultSubcommand: Serve.self)

    /// Every failure is one line on stderr and a non-zero exit; never a stack trace.
    static func main() async {
        do {
            var command = try parseAsRoot(Array(CommandLine.arguments.dropFirst()))
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch let error as StartupError {
            FileHandle.standardError.write(Data("signpost: \(error.message)\n".utf8))
            Foundation.exit(error.code)
        } catch {
            if exitCode(for: error) == .success || error is CleanExit { exit(withError: error) }
            if let code = error as? ExitCode { Foundation.exit(code.rawValue) }
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("signpost: \(message) (see 'signpost --help')\n".utf8))
            Foundation.exit(64)
        }
    }
}

struct StartupError: Error, CustomStringConvertible {
    var message: String
    var code: Int32 = 1
    var description: String { message }
}

/// Options shared by `serve` and `check`.
struct CatalogOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("JSON file of settings named like these flags; flags on the command line win.", valueName: "FILE"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Directory of JSON catalog files (Consul /v1/catalog/register bodies); short for --registry file:DIR. Default zones/catalog when no --registry is given.", valueName: "DIR"))
    var catalog: String?

    @Option(name: .long, help: ArgumentHelp("Directory of RFC 1035 master files (*.zone). Default: zones, if it exists.", valueName: "DIR"))
    var zones: String?

    @Option(name: .long, help: "The local datacenter, used for names that give none. Default: the Consul agent's own (from /v1/agent/self) with a consul registry, else dc1.")
    var datacenter: String?

    /// The zones directory to use: an explicit one must exist; the default is optional.
    static func zonesDirectory(_ zones: String?) -> String? {
        if let zones { return zones }
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: "zones", isDirectory: &isDir) && isDir.boolValue ? "zones" : nil
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the catalog and zone files; print path:line: reason for each problem.")

    @OptionGroup var catalogOptions: CatalogOptions

    @Option(name: .long, help: ArgumentHelp("Also check a registry's TLS and credential files (as --registry of serve): readable, PEM, the key matches its certificate, nothing expired.", valueName: "URL"))
    var registry: [String] = []

    func run() async throws {
        var connectionProblems = 0
        for text in registry {
            let spec: RegistrySpec
            do { spec = try RegistrySpec(parsing: text, environment: ProcessInfo.processInfo.environment) } catch {
                throw StartupError(message: error.description, code: 64)
            }
            guard let connection = spec.connection else { continue }
            let (problems, warnings) = RegistryConnection.check(connection)
            for p in problems { print("\(spec): \(p)") }
            for w in warnings { print("\(spec): warning: \(w)") }
            if problems.isEmpty { print("ok: \(spec) (TLS and credential files)") }
            connectionProblems += problems.count
        }
        if connectionProblems > 0 {
            throw StartupError(message: "\(connectionProblems) problem\(connectionProblems == 1 ? "" : "s") found")
        }
        // The file's catalog, zones and datacenter count too; the command line wins.
        var serve = try Serve.parse([])
        serve.catalogOptions = catalogOptions
        let settings = try serve.overFile().catalogOptions
        let zonesDir = CatalogOptions.zonesDirectory(settings.zones)
        let catalog = settings.catalog ?? ServeConfiguration.defaultCatalog
        let problems = CatalogWatcher.check(catalogDirectory: catalog, zonesDirectory: zonesDir,
                                            localDatacenter: settings.datacenter ?? ServeConfiguration.defaultDatacenter)
        for p in problems { print(p) }
        if !problems.isEmpty {
            throw StartupError(message: "\(problems.count) problem\(problems.count == 1 ? "" : "s") found")
        }
        print("ok: \(catalog)\(zonesDir.map { " and \($0)" } ?? "")")
    }
}

extension AnswerOrder: ExpressibleByArgument {}
extension GRPCLBPolicy: ExpressibleByArgument {}
extension Forwarder.Policy: ExpressibleByArgument {}
extension DNSServer.UDPEngine: ExpressibleByArgument {}
extension LocalityMode: ExpressibleByArgument {}

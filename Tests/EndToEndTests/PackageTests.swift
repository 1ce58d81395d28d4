import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The Debian package `make deb` builds (`make test` builds it first): lintian, systemd's unit check, and an
/// install into a throwaway root (dpkg --root, the maintainer scripts run there too), where the installed binary
/// serves the packaged demo catalog with the installed configuration, needs no Swift library, and the package then
/// removes and purges cleanly.
@Suite("Package: the .deb", .serialized)
struct PackageTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The newest `signpost_*.deb` at the top level.
    static func deb() throws -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: repository)) ?? []
        let debs = names.filter { $0.hasPrefix("signpost_") && $0.hasSuffix(".deb") }.map { repository + "/" + $0 }
        let newest = debs.max { a, b in
            let date = { (p: String) in (try? FileManager.default.attributesOfItem(atPath: p)[.modificationDate] as? Date) ?? .distantPast }
            return date(a) < date(b)
        }
        return try #require(newest, "no signpost_*.deb at \(repository): run `make deb` (make test does)")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/lintian"), "lintian is not installed"))
    func lintianReportsNoErrors() throws {
        let r = try run(["lintian", "--fail-on", "error", "--no-tag-display-limit", try Self.deb()])
        #expect(r.status == 0, "lintian:\n\(r.out)\(r.err)")
        #expect(!r.out.contains("E: "), "\(r.out)")
    }

    /// A throwaway root with what dpkg and the maintainer scripts need: a dpkg database and the account files.
    static func root() throws -> TempDir {
        let root = TempDir()
        for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log", "etc"] {
            try FileManager.default.createDirectory(atPath: root.path + "/" + dir, withIntermediateDirectories: true)
        }
        root.write("var/lib/dpkg/status", "")
        root.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        root.write("etc/group", "root:x:0:\n")
        root.write("etc/shadow", "root:*:19000:0:99999:7:::\n")
        root.write("etc/gshadow", "root:*::\n")
        return root
    }

    func dpkg(_ root: TempDir, _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        try run(["dpkg", "--root=\(root.path)", "--force-script-chrootless", "--force-depends", "--log=/dev/null"] + arguments)
    }

    @Test func installedItServesTheDemoAndPurgesCleanly() throws {
        let deb = try Self.deb()
        let root = try Self.root()
        let installed = try dpkg(root, ["-i", deb])
        try #require(installed.status == 0, "dpkg -i: \(installed.out) \(installed.err)")
        let files = ["/usr/bin/signpost", "/lib/systemd/system/signpost.service", "/etc/signpost/signpost.json", "/etc/default/signpost",
                     "/usr/share/man/man1/signpost.1.gz", "/usr/share/doc/signpost/examples/resolved-consul.conf"]
        for file in files { #expect(FileManager.default.fileExists(atPath: root.path + file), "\(file)") }
        // The postinst made the system user, and gave it the state directory.
        let passwd = (try? String(contentsOfFile: root.path + "/etc/passwd", encoding: .utf8)) ?? ""
        let user = passwd.split(separator: "\n").first { $0.hasPrefix("signpost:") }
        #expect(user?.contains("/var/lib/signpost:/usr/sbin/nologin") == true, "\(passwd)")
        let uid = user.flatMap { Int($0.split(separator: ":")[2]) }
        var info = stat()
        #expect(stat(root.path + "/var/lib/signpost", &info) == 0 && Int(info.st_uid) == uid, "owner \(info.st_uid), user \(uid ?? -1)")
        #expect(try run(["dpkg-query", "--root=\(root.path)", "-W", "-f=${Conffiles}", "signpost"]).out.contains("/etc/signpost/signpost.json"))

        // No Swift library: the runtime is linked in.
        let ldd = try run(["ldd", root.path + "/usr/bin/signpost"])
        #expect(ldd.status == 0 && !ldd.out.lowercased().contains("swift") && !ldd.out.contains("Foundation"), "\(ldd.out)")
        #expect(try run([root.path + "/usr/bin/signpost", "--version"]).out.contains("."))

        // The installed binary, the installed configuration (its comments and all), the packaged demo catalog.
        let server = try Server(dir: TempDir(), catalog: false, extra: [
            "--config", root.path + "/etc/signpost/signpost.json", "--catalog", root.path + "/usr/share/signpost/demo-catalog",
            "--state-dir", root.path + "/var/lib/signpost", "--admin", "127.0.0.1:0"], binary: root.path + "/usr/bin/signpost")
        #expect(try server.dig("web.service.consul", "A").status == "NOERROR")
        #expect(!(try server.dig("web.service.consul", "A").data("A").isEmpty))
        server.stop()

        let removed = try dpkg(root, ["--remove", "signpost"])
        #expect(removed.status == 0, "\(removed.err)")
        #expect(!FileManager.default.fileExists(atPath: root.path + "/usr/bin/signpost"))
        #expect(FileManager.default.fileExists(atPath: root.path + "/etc/signpost/signpost.json"), "remove keeps the conffiles")
        let purged = try dpkg(root, ["--purge", "signpost"])
        #expect(purged.status == 0, "\(purged.err)")
        for gone in ["/etc/signpost", "/etc/default/signpost", "/var/lib/signpost", "/usr/share/doc/signpost", "/lib/systemd/system/signpost.service"] {
            #expect(!FileManager.default.fileExists(atPath: root.path + gone), "\(gone) left after purge")
        }
        #expect(try run(["dpkg-query", "--root=\(root.path)", "-W", "signpost"]).status != 0, "dpkg forgot the package")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "systemd-analyze is not installed"))
    func systemdAcceptsTheUnit() throws {
        let root = TempDir()
        let x = try run(["dpkg-deb", "-x", try Self.deb(), root.path])
        try #require(x.status == 0, "\(x.err)")
        // The units it names (targets, slices) and the reload command, from this machine's systemd and procps: a root
        // with them and the package, so verify checks every reference without installing anything here. The man
        // page it names is checked by the install test.
        for dir in ["/usr/bin", "/bin"] { try? FileManager.default.createDirectory(atPath: root.path + dir, withIntermediateDirectories: true) }
        for unit in (try FileManager.default.contentsOfDirectory(atPath: "/lib/systemd/system")) where unit.hasSuffix(".target") || unit.hasSuffix(".slice") {
            try? FileManager.default.copyItem(atPath: "/lib/systemd/system/" + unit, toPath: root.path + "/lib/systemd/system/" + unit)
        }
        for kill in ["/usr/bin/kill", "/bin/kill"] { try? FileManager.default.copyItem(atPath: "/usr/bin/kill", toPath: root.path + kill) }
        let r = try run(["systemd-analyze", "verify", "--man=no", "--root=\(root.path)", "/lib/systemd/system/signpost.service"])
        #expect(r.status == 0, "systemd-analyze verify: \(r.out) \(r.err)")
    }
}

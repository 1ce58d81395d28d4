import CPrivileges
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Switches the whole process (every thread: glibc applies setuid to all of them) to `name`, its group, and no
/// supplementary groups; then checks that root cannot be regained.
func dropPrivileges(to name: String) throws {
    guard let entry = getpwnam(name) else { throw StartupError(message: "--user \(name): no such user", code: 64) }
    let (uid, gid) = (entry.pointee.pw_uid, entry.pointee.pw_gid)
    if getuid() == uid && geteuid() == uid { return }
    guard geteuid() == 0 else {
        throw StartupError(message: "--user \(name): only root can switch users (running as uid \(geteuid()))", code: 64)
    }
    // The main thread first, while we may still signal it: async main parks it where setuid() does not reach.
    let main = getpid()
    if sp_drop_thread_privileges(main, uid, gid) != 0 {
        throw StartupError(message: "--user \(name): could not switch the main thread")
    }
    guard setgroups(0, nil) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
        throw StartupError(message: "--user \(name): \(String(cString: strerror(errno)))")
    }
    guard setuid(0) != 0, geteuid() == uid else { throw StartupError(message: "--user \(name): root privileges could be regained") }
}

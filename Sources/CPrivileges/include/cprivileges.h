#ifndef CPRIVILEGES_H
#define CPRIVILEGES_H
#include <sys/types.h>

/// Switches one thread of this process (by thread ID) to `uid`/`gid` with no supplementary groups, by running
/// the raw syscalls in a SIGUSR2 handler on that thread. Returns 0 on success.
/// glibc's setuid() changes every thread it knows to be running, but skips threads that have called
/// pthread_exit; libdispatch's dispatch_main() (Swift's async main on Linux) parks the main thread that way,
/// in sigsuspend, with its root credentials intact.
int sp_drop_thread_privileges(pid_t tid, uid_t uid, gid_t gid);

#endif

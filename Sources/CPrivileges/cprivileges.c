#define _GNU_SOURCE
#include "cprivileges.h"
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static uid_t target_uid;
static gid_t target_gid;
static atomic_int result;  /* 0: pending, 1: done, -1: failed */

static void drop_here(int sig) {
    (void)sig;
    /* Raw syscalls: they change only the calling thread, and are async-signal-safe. */
    int ok = syscall(SYS_setgroups, 0, NULL) == 0
          && syscall(SYS_setresgid, target_gid, target_gid, target_gid) == 0
          && syscall(SYS_setresuid, target_uid, target_uid, target_uid) == 0;
    atomic_store(&result, ok ? 1 : -1);
}

int sp_drop_thread_privileges(pid_t tid, uid_t uid, gid_t gid) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = drop_here;
    sigemptyset(&sa.sa_mask);
    target_uid = uid;
    target_gid = gid;
    atomic_store(&result, 0);
    if (sigaction(SIGUSR2, &sa, &old) != 0) return -1;
    if (syscall(SYS_tgkill, getpid(), tid, SIGUSR2) != 0) {
        sigaction(SIGUSR2, &old, NULL);
        return -1;
    }
    for (int i = 0; i < 2000 && atomic_load(&result) == 0; i++) usleep(1000);
    sigaction(SIGUSR2, &old, NULL);
    return atomic_load(&result) == 1 ? 0 : -1;
}

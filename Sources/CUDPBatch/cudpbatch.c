#define _GNU_SOURCE
#include <sys/socket.h>
#include <stddef.h>
#include "cudpbatch.h"

_Static_assert(sizeof(struct sp_mmsghdr) == sizeof(struct mmsghdr), "sp_mmsghdr must match mmsghdr");
_Static_assert(offsetof(struct sp_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len), "msg_len offset");

int sp_recvmmsg(int fd, struct sp_mmsghdr *messages, unsigned int count, int flags, struct timespec *timeout) {
    return recvmmsg(fd, (struct mmsghdr *)messages, count, flags, timeout);
}

int sp_sendmmsg(int fd, struct sp_mmsghdr *messages, unsigned int count, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)messages, count, flags);
}

int sp_msg_waitforone(void) { return MSG_WAITFORONE; }

#include <stdatomic.h>

static atomic_uint sp_next_shard;
static __thread unsigned int sp_shard_plus_one;

unsigned int sp_thread_shard(void) {
    unsigned int s = sp_shard_plus_one;
    if (s == 0) {
        s = atomic_fetch_add_explicit(&sp_next_shard, 1, memory_order_relaxed) + 1;
        sp_shard_plus_one = s;
    }
    return s - 1;
}

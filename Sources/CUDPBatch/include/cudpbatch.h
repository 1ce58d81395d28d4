#ifndef SIGNPOST_CUDPBATCH_H
#define SIGNPOST_CUDPBATCH_H
#include <sys/socket.h>
#include <time.h>

/// The same layout as glibc's struct mmsghdr, which Swift's Glibc module hides without _GNU_SOURCE.
struct sp_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// recvmmsg(2) and sendmmsg(2).
int sp_recvmmsg(int fd, struct sp_mmsghdr *messages, unsigned int count, int flags, struct timespec *timeout);
int sp_sendmmsg(int fd, struct sp_mmsghdr *messages, unsigned int count, int flags);

/// MSG_WAITFORONE, also hidden without _GNU_SOURCE.
int sp_msg_waitforone(void);
/// This thread's number, from 0 in the order threads first ask: which shard of a counter table it writes.
unsigned int sp_thread_shard(void);
#endif

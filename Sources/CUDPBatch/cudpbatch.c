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

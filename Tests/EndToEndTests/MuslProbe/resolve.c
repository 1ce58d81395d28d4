/* musl-resolve NAME: getaddrinfo() as an Alpine program calls it, built static with Debian's musl-gcc (musl-tools).
 * musl's stub resolver never retries over TCP: an answer it cannot use over UDP is "not found". */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: musl-resolve NAME\n"); return 2; }
    struct addrinfo hints, *res, *p;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) { fprintf(stderr, "%s: %s\n", argv[1], gai_strerror(rc)); return 1; }
    for (p = res; p; p = p->ai_next) {
        char text[INET6_ADDRSTRLEN];
        const void *addr = p->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
                                                   : (const void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        printf("%s\n", inet_ntop(p->ai_family, addr, text, sizeof text));
    }
    freeaddrinfo(res);
    return 0;
}

/*
 * The null authorization server of bench/extauthz.py: allows every ext_authz HTTP check.
 *
 * It answers each HTTP/1.1 request on 127.0.0.1 with "200 OK" and no body, without looking at
 * it, at a cost of little more than a read and a write per request. Envoy's ext_authz HTTP
 * filter pointed at it shows what the filter itself costs Envoy: no server that decides
 * anything can make that listener faster. Built by the bench with gcc; not part of authd.
 *
 *   null_authz [HEADER...]   listen on a free port, print it on stdout, serve until killed;
 *                            each "name: value" argument is a header of every answer
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNECTIONS 1024
#define BUFFER 65536

static char allow[4096] = "HTTP/1.1 200 OK\r\n";
static size_t allow_length;

struct connection {
    char in[BUFFER];
    size_t used;
};

static struct connection *connections[MAX_CONNECTIONS];

/* Length of the first whole request in buf (head and body), or 0 if it is not all here. */
static size_t request_length(const char *buf, size_t used) {
    const char *end = memmem(buf, used, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - buf) + 4, body = 0;
    for (const char *line = buf; line < end; line++) {
        if (line[0] == '\n' && strncasecmp(line + 1, "content-length:", 15) == 0) {
            body = strtoul(line + 16, NULL, 10);
            break;
        }
    }
    return head + body <= used ? head + body : 0;
}

static void serve(int fd) {
    struct connection *c = connections[fd];
    ssize_t got = read(fd, c->in + c->used, sizeof c->in - c->used);
    if (got <= 0) {
        close(fd);
        free(c);
        connections[fd] = NULL;
        return;
    }
    c->used += (size_t)got;
    char out[BUFFER];
    size_t answers = 0, length;
    while ((length = request_length(c->in, c->used)) > 0 &&
           (answers + 1) * allow_length <= sizeof out) {
        memcpy(out + answers * allow_length, allow, allow_length);
        answers++;
        memmove(c->in, c->in + length, c->used - length);
        c->used -= length;
    }
    if (answers > 0 && write(fd, out, answers * allow_length) < 0)
        perror("null_authz: write");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strlen(allow) + strlen(argv[i]) + 64 > sizeof allow) {
            fprintf(stderr, "null_authz: headers too long\n");
            return 2;
        }
        strcat(allow, argv[i]);
        strcat(allow, "\r\n");
    }
    strcat(allow, "content-length: 0\r\n\r\n");
    allow_length = strlen(allow);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 128) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &size) != 0) {
        perror("null_authz: listen");
        return 1;
    }
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    int poll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(poll, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event ready[64];
    for (;;) {
        int count = epoll_wait(poll, ready, 64, -1);
        if (count < 0 && errno != EINTR) {
            perror("null_authz: epoll_wait");
            return 1;
        }
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd != listener) {
                serve(fd);
                continue;
            }
            int accepted = accept(listener, NULL, NULL);
            if (accepted < 0)
                continue;
            if (accepted >= MAX_CONNECTIONS) {
                close(accepted);
                continue;
            }
            int one = 1;
            setsockopt(accepted, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            connections[accepted] = calloc(1, sizeof(struct connection));
            struct epoll_event more = {.events = EPOLLIN, .data.fd = accepted};
            epoll_ctl(poll, EPOLL_CTL_ADD, accepted, &more);
        }
    }
}

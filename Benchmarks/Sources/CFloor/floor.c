#include "CFloor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

struct rr_floor_tls {
    SSL_CTX *ctx;
    SSL_SESSION *session;
};

struct rr_floor_connection {
    int fd;
    SSL *ssl;
    rr_floor_tls *tls;
    redisReader *reader;
};

rr_floor_tls *rr_floor_tls_new(const char *ca_file, const char *cert_file, const char *key_file) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) goto fail;
    if (cert_file && key_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) goto fail;
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) goto fail;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    rr_floor_tls *tls = calloc(1, sizeof(*tls));
    tls->ctx = ctx;
    return tls;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void rr_floor_tls_free(rr_floor_tls *tls) {
    if (!tls) return;
    if (tls->session) SSL_SESSION_free(tls->session);
    SSL_CTX_free(tls->ctx);
    free(tls);
}

static int send_all(rr_floor_connection *c, const char *data, size_t length) {
    if (c->ssl) {
        size_t written = 0;
        return SSL_write_ex(c->ssl, data, length, &written) == 1 && written == length ? 0 : -1;
    }
    while (length > 0) {
        ssize_t n = send(c->fd, data, length, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

/* Sends a command and reads one whole reply; 0 unless the reply is an error or the I/O fails. */
static int command(rr_floor_connection *c, int argc, const char **argv) {
    size_t lengths[8];
    for (int i = 0; i < argc; i++) lengths[i] = strlen(argv[i]);
    char *formatted = NULL;
    int length = redisFormatCommandArgv(&formatted, argc, argv, lengths);
    if (length < 0) return -1;
    int status = send_all(c, formatted, (size_t)length);
    redisFreeCommand(formatted);
    if (status != 0) return -1;
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) return -1;
        if (reply) {
            int error = ((redisReply *)reply)->type == REDIS_REPLY_ERROR;
            freeReplyObject(reply);
            return error ? -1 : 0;
        }
        char buffer[16384];
        size_t n = 0;
        if (c->ssl) {
            if (SSL_read_ex(c->ssl, buffer, sizeof(buffer), &n) != 1) return -1;
        } else {
            ssize_t r = recv(c->fd, buffer, sizeof(buffer), 0);
            if (r <= 0) return -1;
            n = (size_t)r;
        }
        if (redisReaderFeed(c->reader, buffer, n) != REDIS_OK) return -1;
    }
}

rr_floor_connection *rr_floor_open(const char *host, int port, const char *user, const char *password, rr_floor_tls *tls, int resume) {
    rr_floor_connection *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    c->tls = tls;
    c->reader = redisReaderCreate();
    struct sockaddr_in address;
    memset(&address, 0, sizeof(address));
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &address.sin_addr);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&address, sizeof(address)) != 0) goto fail;
    if (tls) {
        c->ssl = SSL_new(tls->ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set1_host(c->ssl, "localhost");
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        if (resume && tls->session) SSL_set_session(c->ssl, tls->session);
        ERR_clear_error();
        if (SSL_connect(c->ssl) != 1) goto fail;
    }
    const char *hello[] = {"HELLO", "2", "AUTH", user, password};
    if (command(c, 5, hello) != 0) goto fail;
    if (rr_floor_ping(c) != 0) goto fail;
    return c;
fail:
    ERR_clear_error();
    rr_floor_close(c);
    return NULL;
}

int rr_floor_ping(rr_floor_connection *c) {
    const char *ping[] = {"PING"};
    return command(c, 1, ping);
}

int rr_floor_reused(rr_floor_connection *c) {
    return c->ssl ? SSL_session_reused(c->ssl) : 0;
}

void rr_floor_close(rr_floor_connection *c) {
    if (!c) return;
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_SESSION *session = SSL_get1_session(c->ssl);
        if (session && SSL_SESSION_is_resumable(session)) {
            if (c->tls->session) SSL_SESSION_free(c->tls->session);
            c->tls->session = session;
        } else if (session) {
            SSL_SESSION_free(session);
        }
        SSL_free(c->ssl);
    }
    if (c->fd >= 0) close(c->fd);
    redisReaderFree(c->reader);
    free(c);
}

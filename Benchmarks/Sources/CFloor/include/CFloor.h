#ifndef REDISROTATION_CFLOOR_H
#define REDISROTATION_CFLOOR_H
/* The C floor of the benchmarks: one blocking connection with hiredis 0.14.1 as the codec and
 * OpenSSL 3 for TLS, doing what RedisConnection.connect + PING does (TCP connect, TLS handshake,
 * HELLO 2 AUTH, PING), with no Swift in between. */
#include <stdint.h>

typedef struct rr_floor_tls rr_floor_tls;
typedef struct rr_floor_connection rr_floor_connection;

/* A TLS client context trusting ca_file, with an optional client certificate and key; NULL on error. */
rr_floor_tls *rr_floor_tls_new(const char *ca_file, const char *cert_file, const char *key_file);
void rr_floor_tls_free(rr_floor_tls *tls);

/* Connects, handshakes (TLS when tls is not NULL; resuming the session kept by the last close when
 * resume is non-zero), authenticates with HELLO 2 AUTH and answers one PING. NULL on any failure. */
rr_floor_connection *rr_floor_open(const char *host, int port, const char *user, const char *password, rr_floor_tls *tls, int resume);
/* One PING round trip; 0 on success. */
int rr_floor_ping(rr_floor_connection *connection);
/* Whether the TLS handshake resumed a session. */
int rr_floor_reused(rr_floor_connection *connection);
/* Closes (with close_notify under TLS, keeping the session for the next resume). */
void rr_floor_close(rr_floor_connection *connection);

#endif

#ifndef REDISROTATION_COPENSSL_SHIMS_H
#define REDISROTATION_COPENSSL_SHIMS_H
/* Functions for OpenSSL 3 macros that Swift cannot import. No logic: each forwards to its macro. */
#include <stdint.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>

int rr_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int rr_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
long rr_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
long rr_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
int rr_SSL_CTX_add0_chain_cert(SSL_CTX *ctx, X509 *certificate);
int rr_SSL_set_tlsext_host_name(SSL *ssl, const char *name);
uint64_t rr_SSL_OP_NO_RENEGOTIATION(void);
uint64_t rr_SSL_OP_NO_COMPRESSION(void);
int rr_SSL_CTX_get0_chain_certs(SSL_CTX *ctx, STACK_OF(X509) **chain);

int rr_sk_X509_num(const STACK_OF(X509) *stack);
X509 *rr_sk_X509_value(const STACK_OF(X509) *stack, int index);
int rr_sk_X509_INFO_num(const STACK_OF(X509_INFO) *stack);
X509_INFO *rr_sk_X509_INFO_value(const STACK_OF(X509_INFO) *stack, int index);
void rr_sk_X509_INFO_pop_free(STACK_OF(X509_INFO) *stack);
STACK_OF(X509) *rr_sk_X509_new_null(void);
int rr_sk_X509_push(STACK_OF(X509) *stack, X509 *certificate);
void rr_sk_X509_free(STACK_OF(X509) *stack);
int rr_sk_GENERAL_NAME_num(const GENERAL_NAMES *names);
GENERAL_NAME *rr_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int index);
void rr_GENERAL_NAMES_free(GENERAL_NAMES *names);
int rr_sk_ASN1_OBJECT_num(const EXTENDED_KEY_USAGE *usages);
ASN1_OBJECT *rr_sk_ASN1_OBJECT_value(const EXTENDED_KEY_USAGE *usages, int index);
void rr_EXTENDED_KEY_USAGE_free(EXTENDED_KEY_USAGE *usages);

EVP_PKEY *rr_EVP_EC_gen(const char *curve);
void rr_X509V3_set_ctx_nodb(X509V3_CTX *ctx);
unsigned long rr_XN_FLAG_RFC2253(void);
long rr_BIO_set_mem_eof_return(BIO *bio, long value);

#endif

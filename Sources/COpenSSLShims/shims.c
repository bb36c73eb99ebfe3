#include "COpenSSLShims.h"

int rr_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_min_proto_version(ctx, version); }
int rr_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_max_proto_version(ctx, version); }
long rr_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
long rr_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
int rr_SSL_CTX_add0_chain_cert(SSL_CTX *ctx, X509 *certificate) { return (int)SSL_CTX_add0_chain_cert(ctx, certificate); }
int rr_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
uint64_t rr_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
uint64_t rr_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
int rr_SSL_CTX_get0_chain_certs(SSL_CTX *ctx, STACK_OF(X509) **chain) { return (int)SSL_CTX_get0_chain_certs(ctx, chain); }

int rr_sk_X509_num(const STACK_OF(X509) *stack) { return sk_X509_num(stack); }
X509 *rr_sk_X509_value(const STACK_OF(X509) *stack, int index) { return sk_X509_value(stack, index); }
int rr_sk_X509_INFO_num(const STACK_OF(X509_INFO) *stack) { return sk_X509_INFO_num(stack); }
X509_INFO *rr_sk_X509_INFO_value(const STACK_OF(X509_INFO) *stack, int index) { return sk_X509_INFO_value(stack, index); }
void rr_sk_X509_INFO_pop_free(STACK_OF(X509_INFO) *stack) { sk_X509_INFO_pop_free(stack, X509_INFO_free); }
STACK_OF(X509) *rr_sk_X509_new_null(void) { return sk_X509_new_null(); }
int rr_sk_X509_push(STACK_OF(X509) *stack, X509 *certificate) { return sk_X509_push(stack, certificate); }
void rr_sk_X509_free(STACK_OF(X509) *stack) { sk_X509_free(stack); }
int rr_sk_GENERAL_NAME_num(const GENERAL_NAMES *names) { return sk_GENERAL_NAME_num(names); }
GENERAL_NAME *rr_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int index) { return sk_GENERAL_NAME_value(names, index); }
void rr_GENERAL_NAMES_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }
int rr_sk_ASN1_OBJECT_num(const EXTENDED_KEY_USAGE *usages) { return sk_ASN1_OBJECT_num(usages); }
ASN1_OBJECT *rr_sk_ASN1_OBJECT_value(const EXTENDED_KEY_USAGE *usages, int index) { return sk_ASN1_OBJECT_value(usages, index); }
void rr_EXTENDED_KEY_USAGE_free(EXTENDED_KEY_USAGE *usages) { EXTENDED_KEY_USAGE_free(usages); }

EVP_PKEY *rr_EVP_EC_gen(const char *curve) { return EVP_EC_gen(curve); }
void rr_X509V3_set_ctx_nodb(X509V3_CTX *ctx) { X509V3_set_ctx_nodb(ctx); }
unsigned long rr_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }
long rr_BIO_set_mem_eof_return(BIO *bio, long value) { return BIO_set_mem_eof_return(bio, value); }

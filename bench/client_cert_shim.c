/*
 * LD_PRELOAD shim: every OpenSSL context h2load creates presents a client certificate.
 *
 * h2load cannot present a client certificate, and the mTLS scenario of bench/extauthz.py
 * needs one (the sidecar listeners require the caller's X.509-SVID). Rather than put a second
 * Envoy in front to originate mTLS (which costs the shared cores ~45 µs a request), the bench
 * builds this file with gcc and runs h2load with LD_PRELOAD pointing at it.
 * AUTHD_BENCH_CLIENT_CERT and AUTHD_BENCH_CLIENT_KEY name the PEM chain and key.
 * No OpenSSL headers are needed: the handful of declarations below are OpenSSL's ABI.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;

int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);

#define SSL_FILETYPE_PEM 1

static SSL_CTX *with_client_certificate(SSL_CTX *ctx) {
    const char *cert = getenv("AUTHD_BENCH_CLIENT_CERT");
    const char *key = getenv("AUTHD_BENCH_CLIENT_KEY");
    if (ctx == NULL || cert == NULL || key == NULL)
        return ctx;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "client_cert_shim: cannot load %s / %s\n", cert, key);
        abort();
    }
    return ctx;
}

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real)(const SSL_METHOD *);
    if (real == NULL)
        real = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
    return with_client_certificate(real(method));
}

SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *method) {
    static SSL_CTX *(*real)(OSSL_LIB_CTX *, const char *, const SSL_METHOD *);
    if (real == NULL)
        real = (SSL_CTX * (*)(OSSL_LIB_CTX *, const char *, const SSL_METHOD *))
            dlsym(RTLD_NEXT, "SSL_CTX_new_ex");
    return with_client_certificate(real(libctx, propq, method));
}

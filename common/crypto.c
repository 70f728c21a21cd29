/* Secrets sealed with AES-256-GCM under a key derived from the key file (HKDF-SHA256 for
 * gt2, PBKDF2-HMAC-SHA256 for the older gt1), strict base64, SHA-256. OpenSSL 3 EVP
 * only. Derived keys and plaintexts are wiped before their memory is released. */
#include "crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "util.h"

/* gt2, every new seal. The key file is 64 random bytes (gt_key_generate), i.e. already a
 * uniformly random key with 512 bits of entropy: what it needs is a key *extractor and
 * expander* per seal, not a password-stretching KDF. HKDF (RFC 5869) is that tool. The
 * PBKDF2 of gt1 (210,000 iterations) cost ~90 ms of CPU per secret per run and bought
 * nothing against an attacker, who cannot guess 512 random bits at any speed. The salt
 * still makes every seal's key fresh, and the name in the additional data binds a
 * value to its secret: a sealed value copied to another secret's record fails to open. */
#define SEAL2_PREFIX "gt2:"
#define SEAL2_INFO "gantry secret v2"
/* gt1, opened for stores written before gt2; never written any more. */
#define SEAL_PREFIX "gt1:"
#define SEAL_ITER_MIN 10000
#define SEAL_ITER_MAX 10000000
#define SALT_LEN 16
#define NONCE_LEN 12
#define TAG_LEN 16
#define DK_LEN 32
/* gt1's additional data: bound to the blob header only. */
#define SEAL_AAD "gt1"
/* Longest secret name bound into gt2's additional data (names are at most 128). */
#define NAME_MAX_LEN 1024
#define KEY_MIN_LEN 32
#define KEY_MAX_LEN (64 * 1024)
#define KEY_RANDOM_LEN 64
/* EVP update calls take an int length. */
#define EVP_CHUNK (1 << 30)

struct gt_key {
    unsigned char *material;
    size_t len;
    bool exposed;
};

static gt_key *key_new(const void *material, size_t len)
{
    gt_key *key = gt_xcalloc(1, sizeof *key);
    key->material = gt_xmalloc(len);
    memcpy(key->material, material, len);
    key->len = len;
    return key;
}

gt_key *gt_key_from_bytes(const void *material, size_t len)
{
    if (material == NULL || len < KEY_MIN_LEN || len > KEY_MAX_LEN)
        return NULL;
    return key_new(material, len);
}

bool gt_key_file_exposed(const gt_key *key)
{
    return key && key->exposed;
}

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

gt_key *gt_key_load(const char *path, gt_error *err)
{
    gt_key *key = NULL;
    char *text = NULL;
    size_t len = 0;
    gt_error why = {0};
    struct stat st = {0};

    if (stat(path, &st) != 0 && errno == ENOENT) {
        gt_error_set(err, GT_ENOTFOUND,
                     "secrets key file %s: not found (set [secrets] encrypt_key_file)", path);
        goto done;
    }
    gt_err rc = gt_read_file(path, KEY_MAX_LEN, &text, &len, &why);
    if (rc != GT_OK) {
        /* why names the path and the cause ("/x: Permission denied"). */
        gt_error_set(err, rc, "secrets key file %s", why.message);
        goto done;
    }
    size_t n = len;
    while (n > 0 && is_space((unsigned char)text[n - 1]))
        n--;
    if (n == 0) {
        gt_error_set(err, GT_EINVAL, "secrets key file %s is empty", path);
        goto done;
    }
    if (n < KEY_MIN_LEN) {
        gt_error_set(err, GT_EINVAL,
                     "secrets key file %s is too short (%zu bytes; at least %d needed)", path, n,
                     KEY_MIN_LEN);
        goto done;
    }
    key = key_new(text, n);
    /* A warning, not a failure: refusing would break a working install over a chmod. */
    key->exposed = (st.st_mode & (S_IRWXG | S_IRWXO)) != 0;
done:
    if (text)
        gt_secret_wipe_free(text, len);
    return key;
}

gt_err gt_key_generate(const char *path, gt_error *err)
{
    gt_err rc = GT_OK;
    unsigned char raw[KEY_RANDOM_LEN];
    char *b64 = NULL, *text = NULL;
    int fd = -1;
    bool created = false;

    if ((rc = gt_random_bytes(raw, sizeof raw, err)) != GT_OK)
        goto done;
    b64 = gt_base64_encode(raw, sizeof raw);
    text = gt_xasprintf("%s\n", b64);
    /* O_EXCL: never replace a key that sealed secrets depend on (nor follow a symlink). */
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST)
            rc = gt_error_set(err, GT_ECONFLICT,
                              "secrets key file %s already exists; not overwriting it", path);
        else
            rc = gt_error_set(err, e == ENOENT ? GT_ENOTFOUND : e == EACCES ? GT_EPERM : GT_EIO,
                              "secrets key file %s: %s", path, strerror(e));
        goto done;
    }
    created = true;
    size_t left = strlen(text);
    const char *p = text;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = gt_error_set(err, GT_EIO, "secrets key file %s: %s", path, strerror(errno));
            goto done;
        }
        p += w;
        left -= (size_t)w;
    }
    /* 0600 whatever the umask; durable before anything is sealed with it. */
    if (fchmod(fd, 0600) != 0 || fsync(fd) != 0) {
        rc = gt_error_set(err, GT_EIO, "secrets key file %s: %s", path, strerror(errno));
        goto done;
    }
    int closing = fd;
    fd = -1;
    if (close(closing) != 0)
        rc = gt_error_set(err, GT_EIO, "secrets key file %s: %s", path, strerror(errno));
done:
    if (fd >= 0)
        close(fd);
    if (rc != GT_OK && created) /* a half-written key must not be picked up later */
        unlink(path);
    OPENSSL_cleanse(raw, sizeof raw);
    if (b64)
        gt_secret_wipe_free(b64, strlen(b64));
    if (text)
        gt_secret_wipe_free(text, strlen(text));
    return rc;
}

void gt_key_free(gt_key **key)
{
    if (key == NULL || *key == NULL)
        return;
    OPENSSL_cleanse((*key)->material, (*key)->len);
    free((*key)->material);
    OPENSSL_cleanse(*key, sizeof **key);
    free(*key);
    *key = NULL;
}

void gt_key_fingerprint(const gt_key *key, char buf[17])
{
    static const char hex[] = "0123456789abcdef";
    static const char label[] = "gantry-key-id";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    memset(buf, '0', 16);
    buf[16] = '\0';
    if (key == NULL ||
        HMAC(EVP_sha256(), key->material, (int)key->len, (const unsigned char *)label,
             sizeof label - 1, md, &md_len) == NULL || md_len < 8) {
        ERR_clear_error();
        return;
    }
    for (int i = 0; i < 8; i++) {
        buf[2 * i] = hex[md[i] >> 4];
        buf[2 * i + 1] = hex[md[i] & 15];
    }
}

static gt_err openssl_error(gt_error *err, const char *what)
{
    unsigned long e = ERR_get_error();
    char detail[256] = "unknown error";
    if (e != 0)
        ERR_error_string_n(e, detail, sizeof detail);
    ERR_clear_error();
    return gt_error_set(err, GT_EINTERNAL, "%s: %s", what, detail);
}

/* gt1: PBKDF2-HMAC-SHA256(material, salt, iterations). */
static gt_err derive_v1(const gt_key *key, const unsigned char *salt, int iterations,
                        unsigned char dk[DK_LEN], gt_error *err)
{
    if (PKCS5_PBKDF2_HMAC((const char *)key->material, (int)key->len, salt, SALT_LEN,
                          iterations, EVP_sha256(), DK_LEN, dk) != 1)
        return openssl_error(err, "key derivation");
    return GT_OK;
}

/* gt2: HKDF-SHA256(material, salt, info SEAL2_INFO), extract then expand. */
static gt_err derive_v2(const gt_key *key, const unsigned char *salt, unsigned char dk[DK_LEN],
                        gt_error *err)
{
    gt_err rc = GT_OK;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, key->material, key->len);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN);
    params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (char *)SEAL2_INFO,
                                                  strlen(SEAL2_INFO));
    params[4] = OSSL_PARAM_construct_end();
    if (kctx == NULL || EVP_KDF_derive(kctx, dk, DK_LEN, params) != 1)
        rc = openssl_error(err, "key derivation");
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* Runs in through the cipher in int-sized chunks; GCM output length equals input. */
static int cipher_update(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in,
                         size_t len)
{
    while (len > 0) {
        int chunk = len > EVP_CHUNK ? EVP_CHUNK : (int)len, n = 0;
        if (EVP_CipherUpdate(ctx, out, &n, in, chunk) != 1 || n != chunk)
            return 0;
        out += chunk;
        in += chunk;
        len -= (size_t)chunk;
    }
    return 1;
}

/* Sets up AES-256-GCM for encryption (enc = 1) or decryption (0) with the AAD fed in. */
static int gcm_init(EVP_CIPHER_CTX *ctx, int enc, const unsigned char *dk,
                    const unsigned char *nonce, const char *aad, size_t aad_len)
{
    int n = 0;
    return EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
           EVP_CipherInit_ex(ctx, NULL, NULL, dk, nonce, enc) == 1 &&
           EVP_CipherUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)aad_len) == 1;
}

static bool name_ok(const char *name)
{
    return name != NULL && name[0] != '\0' && strlen(name) <= NAME_MAX_LEN;
}

gt_err gt_secret_seal(const gt_key *key, const char *name, const void *plain, size_t len,
                      char **sealed, gt_error *err)
{
    gt_err rc = GT_OK;
    unsigned char dk[DK_LEN];
    unsigned char *blob = NULL;
    char *b64 = NULL, *aad = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    size_t total = 0;

    *sealed = NULL;
    if (key == NULL || (plain == NULL && len > 0)) {
        rc = gt_error_set(err, GT_EINVAL, "secret: no key or no data");
        goto done;
    }
    if (!name_ok(name)) {
        rc = gt_error_set(err, GT_EINVAL, "secret: a sealed value needs the secret's name");
        goto done;
    }
    if (len > SIZE_MAX / 2) {
        rc = gt_error_set(err, GT_EINVAL, "secret: too large (%zu bytes)", len);
        goto done;
    }
    total = SALT_LEN + NONCE_LEN + len + TAG_LEN;
    blob = gt_xmalloc(total);
    unsigned char *salt = blob, *nonce = blob + SALT_LEN, *ct = nonce + NONCE_LEN;
    unsigned char *tag = ct + len;
    aad = gt_xasprintf(SEAL2_PREFIX "%s", name);
    if ((rc = gt_random_bytes(blob, SALT_LEN + NONCE_LEN, err)) != GT_OK ||
        (rc = derive_v2(key, salt, dk, err)) != GT_OK)
        goto done;
    int n = 0;
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL || !gcm_init(ctx, 1, dk, nonce, aad, strlen(aad)) ||
        !cipher_update(ctx, ct, plain, len) || EVP_EncryptFinal_ex(ctx, ct + len, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
        rc = openssl_error(err, "encryption");
        goto done;
    }
    b64 = gt_base64_encode(blob, total);
    *sealed = gt_xasprintf(SEAL2_PREFIX "%s", b64);
done:
    OPENSSL_cleanse(dk, sizeof dk);
    EVP_CIPHER_CTX_free(ctx);
    free(blob);
    free(b64);
    free(aad);
    return rc;
}

/* "gt1:<iterations>:<base64>": returns the iteration count and where the base64 starts. */
static gt_err parse_v1(const char *sealed, int *iterations, const char **b64, gt_error *err)
{
    const char *p = sealed + strlen(SEAL_PREFIX);
    long long v = 0;
    int digits = 0;
    /* Canonical decimal only: no sign, no spaces, no leading zeros. */
    while (p[digits] >= '0' && p[digits] <= '9' && digits < 9) {
        v = v * 10 + (p[digits] - '0');
        digits++;
    }
    if (digits == 0 || p[digits] != ':' || (p[0] == '0'))
        return gt_error_set(err, GT_EINVAL, "sealed secret: bad iteration count");
    if (v < SEAL_ITER_MIN || v > SEAL_ITER_MAX)
        return gt_error_set(err, GT_EINVAL,
                            "sealed secret: iteration count %lld out of range [%d, %d]", v,
                            SEAL_ITER_MIN, SEAL_ITER_MAX);
    *iterations = (int)v;
    *b64 = p + digits + 1;
    return GT_OK;
}

gt_err gt_secret_open(const gt_key *key, const char *name, const char *sealed, char **plain,
                      size_t *len, gt_error *err)
{
    gt_err rc = GT_OK;
    unsigned char dk[DK_LEN];
    unsigned char *blob = NULL;
    size_t blob_len = 0, ct_len = 0;
    char *out = NULL, *aad = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    int iterations = 0;
    const char *b64 = NULL;
    bool v2 = false;
    gt_error why = {0};

    *plain = NULL;
    if (len)
        *len = 0;
    if (key == NULL) {
        rc = gt_error_set(err, GT_EINVAL, "secret: no key");
        goto done;
    }
    if (sealed != NULL && strncmp(sealed, SEAL2_PREFIX, strlen(SEAL2_PREFIX)) == 0) {
        v2 = true;
        b64 = sealed + strlen(SEAL2_PREFIX);
        if (!name_ok(name)) {
            rc = gt_error_set(err, GT_EINVAL, "sealed secret: a gt2 value opens only with the "
                                              "name of its secret");
            goto done;
        }
    } else if (sealed != NULL && strncmp(sealed, SEAL_PREFIX, strlen(SEAL_PREFIX)) == 0) {
        if ((rc = parse_v1(sealed, &iterations, &b64, err)) != GT_OK)
            goto done;
    } else {
        rc = gt_error_set(err, GT_EINVAL, "sealed secret: not in the gt2 (or gt1) format");
        goto done;
    }
    if (gt_base64_decode(b64, &blob, &blob_len, &why) != GT_OK) {
        rc = gt_error_set(err, GT_EINVAL, "sealed secret: %s", why.message);
        goto done;
    }
    if (blob_len < SALT_LEN + NONCE_LEN + TAG_LEN) {
        rc = gt_error_set(err, GT_EINVAL, "sealed secret: too short (%zu bytes)", blob_len);
        goto done;
    }
    ct_len = blob_len - SALT_LEN - NONCE_LEN - TAG_LEN;
    const unsigned char *salt = blob, *nonce = blob + SALT_LEN, *ct = nonce + NONCE_LEN;
    unsigned char tag[TAG_LEN];
    memcpy(tag, ct + ct_len, TAG_LEN);
    if (v2)
        aad = gt_xasprintf(SEAL2_PREFIX "%s", name);
    else
        aad = gt_xstrdup(SEAL_AAD);
    if ((rc = v2 ? derive_v2(key, salt, dk, err) : derive_v1(key, salt, iterations, dk, err)) !=
        GT_OK)
        goto done;
    out = gt_xmalloc(ct_len + 1);
    int n = 0;
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL || !gcm_init(ctx, 0, dk, nonce, aad, strlen(aad)) ||
        !cipher_update(ctx, (unsigned char *)out, ct, ct_len) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) {
        rc = openssl_error(err, "decryption");
        goto done;
    }
    if (EVP_DecryptFinal_ex(ctx, (unsigned char *)out + ct_len, &n) != 1) {
        ERR_clear_error();
        /* GCM cannot tell these apart: the tag covers the key, the data and the name. */
        if (v2)
            rc = gt_error_set(err, GT_ECRYPTO,
                              "cannot decrypt: wrong key file, the data was altered, or the value "
                              "was sealed for another secret than \"%.128s\" (a gt2 value opens "
                              "only under the name it was sealed for)", name);
        else
            rc = gt_error_set(err, GT_ECRYPTO,
                              "cannot decrypt: wrong key file or the data was altered");
        goto done;
    }
    out[ct_len] = '\0';
    *plain = out;
    out = NULL;
    if (len)
        *len = ct_len;
done:
    OPENSSL_cleanse(dk, sizeof dk);
    EVP_CIPHER_CTX_free(ctx);
    if (out) /* never hand out, nor leave behind, an unauthenticated plaintext */
        gt_secret_wipe_free(out, ct_len + 1);
    free(blob);
    free(aad);
    return rc;
}

bool gt_secret_protect_process(void)
{
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
}

void gt_secret_wipe_free(void *p, size_t n)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, n);
    free(p);
}

void gt_sha256_hex(const void *data, size_t n, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(data, n, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
        abort(); /* SHA-256 cannot fail short of a broken OpenSSL install */
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *gt_base64_encode(const void *data, size_t n)
{
    const unsigned char *in = data;
    size_t quads = n / 3 + (n % 3 != 0);
    if (quads > (SIZE_MAX - 1) / 4)
        abort(); /* as gt_xmalloc on an impossible size */
    char *out = gt_xmalloc(quads * 4 + 1);
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict RFC 4648: standard alphabet, padded to a multiple of 4, '=' only as the final
 * one or two characters, no whitespace, and zero unused bits (one encoding per value). */
gt_err gt_base64_decode(const char *s, unsigned char **out, size_t *n, gt_error *err)
{
    gt_err rc = GT_OK;
    unsigned char *buf = NULL;
    *out = NULL;
    if (n)
        *n = 0;
    if (s == NULL) {
        rc = gt_error_set(err, GT_EINVAL, "base64: no input");
        goto done;
    }
    size_t len = strlen(s);
    if (len % 4 != 0) {
        rc = gt_error_set(err, GT_EINVAL, "base64: length %zu is not a multiple of 4", len);
        goto done;
    }
    size_t pad = 0;
    if (len > 0 && s[len - 1] == '=')
        pad = (s[len - 2] == '=') ? 2 : 1;
    size_t dlen = len / 4 * 3 - pad;
    buf = gt_xmalloc(dlen + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int v[4];
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && last && (size_t)k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            if ((v[k] = b64_value(c)) < 0) {
                rc = gt_error_set(err, GT_EINVAL, "base64: invalid character at offset %zu",
                                  i + (size_t)k);
                goto done;
            }
        }
        if (last && ((pad == 1 && (v[2] & 3) != 0) || (pad == 2 && (v[1] & 15) != 0))) {
            rc = gt_error_set(err, GT_EINVAL, "base64: non-zero padding bits");
            goto done;
        }
        uint32_t q = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        unsigned char bytes[3] = {(unsigned char)(q >> 16), (unsigned char)(q >> 8),
                                  (unsigned char)q};
        size_t take = last ? 3 - pad : 3;
        memcpy(buf + o, bytes, take);
        o += take;
    }
    buf[o] = '\0';
    *out = buf;
    buf = NULL;
    if (n)
        *n = o;
done:
    free(buf);
    return rc;
}

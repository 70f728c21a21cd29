/* Secrets, key files, base64 and SHA-256. Small reference sealers written here directly
 * against OpenSSL check both formats from the outside: gt2 through EVP_PKEY_HKDF (crypto.c
 * uses EVP_KDF, another API) and gt1 through PKCS5_PBKDF2_HMAC, which also makes cheap
 * 10000-iteration gt1 blobs for the exhaustive tamper test. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "crypto.h"
#include "util.h"

#define MATERIAL32 "0123456789abcdef0123456789abcdef"
static const char material32[] = MATERIAL32;
static const char decrypt_msg[] = "cannot decrypt: wrong key file or the data was altered";
static const char decrypt_msg_v2[] = "cannot decrypt: wrong key file, the data was altered, or "
                                     "the value was sealed for another secret than";
/* The name every test seals under unless it says otherwise. */
#define NAME "db-password"

static gt_key *test_key(const char *m)
{
    gt_key *key = gt_key_from_bytes(m, strlen(m));
    assert_non_null(key);
    return key;
}

/* HKDF-SHA256 through EVP_PKEY_HKDF (crypto.c uses EVP_KDF "HKDF"). */
static void ref_hkdf(const void *ikm, size_t ikm_len, const void *salt, size_t salt_len,
                     const void *info, size_t info_len, unsigned char *out, size_t out_len)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    assert_non_null(pctx);
    assert_int_equal(EVP_PKEY_derive_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_hkdf_salt(pctx, salt, (int)salt_len), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(pctx, ikm, (int)ikm_len), 1);
    assert_int_equal(EVP_PKEY_CTX_add1_hkdf_info(pctx, info, (int)info_len), 1);
    size_t n = out_len;
    assert_int_equal(EVP_PKEY_derive(pctx, out, &n), 1);
    assert_int_equal(n, out_len);
    EVP_PKEY_CTX_free(pctx);
}

/* The formats, written independently of crypto.c: salt | nonce | ciphertext | tag.
 * iterations > 0: gt1 (PBKDF2, AAD "gt1"); iterations == 0: gt2 (HKDF, AAD "gt2:" name). */
static unsigned char *ref_blob_named(const char *material, const unsigned char salt[16],
                                     const unsigned char nonce[12], int iterations,
                                     const char *name, const void *plain, size_t len,
                                     size_t *blob_len)
{
    unsigned char dk[32];
    char aad[256] = "gt1";
    if (iterations > 0) {
        assert_int_equal(PKCS5_PBKDF2_HMAC(material, (int)strlen(material), salt, 16, iterations,
                                           EVP_sha256(), 32, dk), 1);
    } else {
        ref_hkdf(material, strlen(material), salt, 16, "gantry secret v2", 16, dk, 32);
        snprintf(aad, sizeof aad, "gt2:%s", name);
    }
    size_t total = 16 + 12 + len + 16;
    unsigned char *blob = gt_xmalloc(total);
    memcpy(blob, salt, 16);
    memcpy(blob + 16, nonce, 12);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0;
    assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, dk, nonce), 1);
    assert_int_equal(EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)aad,
                                       (int)strlen(aad)), 1);
    if (len > 0)
        assert_int_equal(EVP_EncryptUpdate(ctx, blob + 28, &n, plain, (int)len), 1);
    assert_int_equal(EVP_EncryptFinal_ex(ctx, blob + 28 + len, &n), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, blob + 28 + len), 1);
    EVP_CIPHER_CTX_free(ctx);
    *blob_len = total;
    return blob;
}

static unsigned char *ref_blob(const char *material, const unsigned char salt[16],
                               const unsigned char nonce[12], int iterations,
                               const void *plain, size_t len, size_t *blob_len)
{
    return ref_blob_named(material, salt, nonce, iterations, NULL, plain, len, blob_len);
}

static char *ref_seal(const char *material, int iterations, const void *plain, size_t len)
{
    unsigned char salt[16], nonce[12];
    assert_int_equal(gt_random_bytes(salt, sizeof salt, NULL), GT_OK);
    assert_int_equal(gt_random_bytes(nonce, sizeof nonce, NULL), GT_OK);
    size_t blob_len;
    unsigned char *blob = ref_blob(material, salt, nonce, iterations, plain, len, &blob_len);
    char *b64 = gt_base64_encode(blob, blob_len);
    char *s = gt_xasprintf("gt1:%d:%s", iterations, b64);
    free(b64);
    free(blob);
    return s;
}

/* A gt2 value sealed by the reference for name. */
static char *ref_seal_v2(const char *material, const char *name, const void *plain, size_t len)
{
    unsigned char salt[16], nonce[12];
    assert_int_equal(gt_random_bytes(salt, sizeof salt, NULL), GT_OK);
    assert_int_equal(gt_random_bytes(nonce, sizeof nonce, NULL), GT_OK);
    size_t blob_len;
    unsigned char *blob = ref_blob_named(material, salt, nonce, 0, name, plain, len, &blob_len);
    char *b64 = gt_base64_encode(blob, blob_len);
    char *s = gt_xasprintf("gt2:%s", b64);
    free(b64);
    free(blob);
    return s;
}

static void assert_opens_named(const gt_key *key, const char *name, const char *sealed,
                               const void *want, size_t want_len)
{
    char *plain = NULL;
    size_t len = 0;
    gt_error err = {0};
    gt_err rc = gt_secret_open(key, name, sealed, &plain, &len, &err);
    if (rc != GT_OK)
        fail_msg("open failed: %s", err.message);
    assert_int_equal(len, want_len);
    if (want_len)
        assert_memory_equal(plain, want, want_len);
    assert_int_equal(plain[len], '\0');
    gt_secret_wipe_free(plain, len);
}

static void assert_opens_to(const gt_key *key, const char *sealed, const void *want,
                            size_t want_len)
{
    assert_opens_named(key, NAME, sealed, want, want_len);
}

static void assert_open_named_fails(const gt_key *key, const char *name, const char *sealed,
                                    gt_err want)
{
    char *plain = (char *)"untouched";
    size_t len = 99;
    gt_error err = {0};
    gt_err rc = gt_secret_open(key, name, sealed, &plain, &len, &err);
    if (rc != want)
        fail_msg("open of \"%.80s\": got %d (%s), want %d", sealed ? sealed : "(null)", rc,
                 err.message, want);
    assert_int_equal(err.code, want);
    assert_null(plain);
    assert_int_equal(len, 0);
    if (want == GT_ECRYPTO && strncmp(sealed, "gt2:", 4) == 0)
        assert_memory_equal(err.message, decrypt_msg_v2, strlen(decrypt_msg_v2));
    else if (want == GT_ECRYPTO)
        assert_string_equal(err.message, decrypt_msg);
}

static void assert_open_fails(const gt_key *key, const char *sealed, gt_err want)
{
    assert_open_named_fails(key, NAME, sealed, want);
}

static void test_round_trip(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    size_t big = 1024 * 1024;
    unsigned char *mib = gt_xmalloc(big);
    assert_int_equal(gt_random_bytes(mib, big, NULL), GT_OK);
    static const char nuls[] = {'a', 0, 'b', 0, 0, (char)0xff, 0};
    struct {
        const void *p;
        size_t n;
    } cases[] = {{"", 0}, {"x", 1}, {nuls, sizeof nuls}, {"hunter2 password", 16}, {mib, big}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *sealed = NULL;
        gt_error err = {0};
        assert_int_equal(gt_secret_seal(key, NAME, cases[i].p, cases[i].n, &sealed, &err), GT_OK);
        assert_int_equal(strncmp(sealed, "gt2:", 4), 0); /* new seals are always gt2 */
        assert_opens_to(key, sealed, cases[i].p, cases[i].n);
        free(sealed);
    }
    /* NULL data with zero length is the empty secret. */
    char *sealed = NULL;
    assert_int_equal(gt_secret_seal(key, NAME, NULL, 0, &sealed, NULL), GT_OK);
    assert_opens_to(key, sealed, "", 0);
    free(sealed);
    free(mib);
    gt_key_free(&key);
    assert_null(key);
    gt_key_free(&key);
    gt_key_free(NULL);
}

static void test_seals_differ(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    char *a = NULL, *b = NULL;
    assert_int_equal(gt_secret_seal(key, NAME, "same", 4, &a, NULL), GT_OK);
    assert_int_equal(gt_secret_seal(key, NAME, "same", 4, &b, NULL), GT_OK);
    assert_string_not_equal(a, b);
    /* Fresh salt and nonce each time. */
    unsigned char *ba = NULL, *bb = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(gt_base64_decode(a + 4, &ba, &na, NULL), GT_OK);
    assert_int_equal(gt_base64_decode(b + 4, &bb, &nb, NULL), GT_OK);
    assert_int_equal(na, 16 + 12 + 4 + 16);
    assert_int_equal(nb, na);
    assert_memory_not_equal(ba, bb, 16);
    assert_memory_not_equal(ba + 16, bb + 16, 12);
    assert_opens_to(key, a, "same", 4);
    assert_opens_to(key, b, "same", 4);
    free(ba);
    free(bb);
    free(a);
    free(b);
    gt_key_free(&key);
}

static void test_format_matches_reference(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    /* Ours opens the references (gt1: any name, or none)... */
    char *ref = ref_seal(material32, 10000, "interop", 7);
    assert_opens_to(key, ref, "interop", 7);
    assert_opens_named(key, NULL, ref, "interop", 7);
    free(ref);
    ref = ref_seal_v2(material32, NAME, "interop", 7);
    assert_opens_to(key, ref, "interop", 7);
    free(ref);
    /* ...and the reference layout decrypts ours: rebuild our blob with its salt/nonce. */
    char *sealed = NULL;
    assert_int_equal(gt_secret_seal(key, NAME, "interop", 7, &sealed, NULL), GT_OK);
    unsigned char *blob = NULL;
    size_t n = 0;
    assert_int_equal(gt_base64_decode(sealed + 4, &blob, &n, NULL), GT_OK);
    size_t n2 = 0;
    unsigned char *again = ref_blob_named(material32, blob, blob + 16, 0, NAME, "interop", 7, &n2);
    assert_int_equal(n, n2);
    assert_memory_equal(blob, again, n);
    free(again);
    free(blob);
    free(sealed);
    gt_key_free(&key);
}

/* The reference HKDF itself, against RFC 5869 appendix A.1. */
static void test_hkdf_reference_vector(void **state)
{
    (void)state;
    unsigned char ikm[22], salt[13], info[10], okm[42];
    memset(ikm, 0x0b, sizeof ikm);
    for (int i = 0; i < 13; i++)
        salt[i] = (unsigned char)i;
    for (int i = 0; i < 10; i++)
        info[i] = (unsigned char)(0xf0 + i);
    ref_hkdf(ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, okm, sizeof okm);
    static const unsigned char want[42] = {
        0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
        0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
        0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65};
    assert_memory_equal(okm, want, sizeof want);
}

/* A gt2 value opens only under the name it was sealed for: copying the "sealed" field
 * of secret A into secret B's record does not hand B's users A's value. */
static void test_name_binding(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    char *a = NULL;
    gt_error err = {0};
    assert_int_equal(gt_secret_seal(key, "secret-a", "value of A", 10, &a, &err), GT_OK);
    assert_opens_named(key, "secret-a", a, "value of A", 10);
    const char *others[] = {"secret-b", "secret-A", "secret-a ", "secret-", "secret-ab", "s"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        assert_open_named_fails(key, others[i], a, GT_ECRYPTO);
    /* the message says what may have happened, naming the secret it was opened as */
    char *plain = NULL;
    gt_error_clear(&err);
    assert_int_equal(gt_secret_open(key, "secret-b", a, &plain, NULL, &err), GT_ECRYPTO);
    assert_non_null(strstr(err.message, "sealed for another secret than \"secret-b\""));
    assert_null(plain);
    /* no name: refused before anything is derived */
    assert_open_named_fails(key, NULL, a, GT_EINVAL);
    assert_open_named_fails(key, "", a, GT_EINVAL);
    char *s = (char *)"untouched";
    assert_int_equal(gt_secret_seal(key, NULL, "x", 1, &s, NULL), GT_EINVAL);
    assert_null(s);
    assert_int_equal(gt_secret_seal(key, "", "x", 1, &s, NULL), GT_EINVAL);
    assert_null(s);
    /* the reference agrees: a blob sealed for B with A's bytes fails under A */
    char *ref = ref_seal_v2(material32, "secret-b", "value of A", 10);
    assert_opens_named(key, "secret-b", ref, "value of A", 10);
    assert_open_named_fails(key, "secret-a", ref, GT_ECRYPTO);
    free(ref);
    /* gt1 values carry no name: they open under any */
    ref = ref_seal(material32, 10000, "old", 3);
    assert_opens_named(key, "secret-a", ref, "old", 3);
    assert_opens_named(key, "anything", ref, "old", 3);
    free(ref);
    free(a);
    gt_key_free(&key);
}

/* Sealed by the gt1 code (commit f61f2d2, before gt2 existed) with this key material;
 * stores written then must keep opening. */
static void test_gt1_fixture_still_opens(void **state)
{
    (void)state;
    static const char material[] = "gantry gt1 fixture key material, 40+ bytes long";
    static const char sealed[] = "gt1:210000:uZl0ChlX/pR3IBJhWg5t6dfg7TOCGgnxMVP72/B62ap3WmWma0mgK2"
                                 "NIFZJEaAITs/d/lYh3T4EhVG4RvFLLuiyN";
    gt_key *key = test_key(material);
    char fp[17];
    gt_key_fingerprint(key, fp);
    assert_string_equal(fp, "e79f9bf92370f1fb"); /* as recorded by that code */
    assert_opens_named(key, "any-name", sealed, "sealed by the gt1 code", 22);
    assert_opens_named(key, NULL, sealed, "sealed by the gt1 code", 22);
    /* and it still fails closed when touched */
    char *bad = gt_xstrdup(sealed);
    bad[20] = bad[20] == 'A' ? 'B' : 'A';
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    gt_key_free(&key);
}

static void test_wrong_key(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    gt_key *other = test_key("another key of at least thirty-two bytes");
    char *sealed = NULL;
    assert_int_equal(gt_secret_seal(key, NAME, "secret", 6, &sealed, NULL), GT_OK);
    assert_open_fails(other, sealed, GT_ECRYPTO);
    /* One byte of key material more (a trailing newline not trimmed) is another key. */
    gt_key *longer = gt_key_from_bytes(MATERIAL32 "\n", sizeof material32);
    assert_open_fails(longer, sealed, GT_ECRYPTO);
    free(sealed);
    gt_key_free(&key);
    gt_key_free(&other);
    gt_key_free(&longer);
}

/* A gt1 value with that iteration count, or gt2 when iterations is 0. */
static char *with_blob(int iterations, const unsigned char *blob, size_t n)
{
    char *b64 = gt_base64_encode(blob, n);
    char *s = iterations ? gt_xasprintf("gt1:%d:%s", iterations, b64) : gt_xasprintf("gt2:%s", b64);
    free(b64);
    return s;
}

/* Every bit position class of every byte: salt, nonce, ciphertext and tag all count. */
static void test_tamper_every_byte(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    char *sealed = ref_seal(material32, 10000, "tamper me, please", 17);
    unsigned char *blob = NULL;
    size_t n = 0;
    assert_int_equal(gt_base64_decode(strchr(sealed + 4, ':') + 1, &blob, &n, NULL), GT_OK);
    assert_int_equal(n, 16 + 12 + 17 + 16);
    for (size_t i = 0; i < n; i++) {
        unsigned char keep = blob[i];
        blob[i] ^= (unsigned char)(1u << (i % 8));
        char *bad = with_blob(10000, blob, n);
        assert_open_fails(key, bad, GT_ECRYPTO);
        free(bad);
        blob[i] = keep;
    }
    /* Truncated and extended blobs. */
    char *bad = with_blob(10000, blob, n - 1);
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    unsigned char *longer = gt_xmalloc(n + 1);
    memcpy(longer, blob, n);
    longer[n] = 0;
    bad = with_blob(10000, longer, n + 1);
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    free(longer);
    /* The iteration count is part of the key: changing it fails too. */
    bad = with_blob(10001, blob, n);
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    /* Untouched, it opens. */
    bad = with_blob(10000, blob, n);
    assert_opens_to(key, bad, "tamper me, please", 17);
    free(bad);
    free(blob);
    free(sealed);

    /* gt2 at full cost (HKDF is cheap): every byte of salt, nonce, ciphertext and tag. */
    assert_int_equal(gt_secret_seal(key, NAME, "tamper me, please", 17, &sealed, NULL), GT_OK);
    assert_int_equal(gt_base64_decode(sealed + 4, &blob, &n, NULL), GT_OK);
    assert_int_equal(n, 16 + 12 + 17 + 16);
    for (size_t i = 0; i < n; i++) {
        blob[i] ^= (unsigned char)(1u << (i % 8));
        bad = with_blob(0, blob, n);
        assert_open_fails(key, bad, GT_ECRYPTO);
        free(bad);
        blob[i] ^= (unsigned char)(1u << (i % 8));
    }
    bad = with_blob(0, blob, n - 1);
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    bad = with_blob(0, blob, n);
    assert_opens_to(key, bad, "tamper me, please", 17);
    free(bad);
    /* the same bytes presented as gt1 do not open either */
    bad = with_blob(210000, blob, n);
    assert_open_fails(key, bad, GT_ECRYPTO);
    free(bad);
    free(blob);
    free(sealed);
    gt_key_free(&key);
}

static void test_malformed(void **state)
{
    (void)state;
    gt_key *key = test_key(material32);
    char *good = ref_seal(material32, 10000, "ok", 2);
    const char *b64 = good + strlen("gt1:10000:");
    char *cases[] = {
        gt_xstrdup(""),
        gt_xstrdup("gt1"),
        gt_xstrdup("gt1:"),
        gt_xstrdup("gt1::"),
        gt_xstrdup("gt1:10000"),
        gt_xstrdup("gt1:10000:"),                       /* empty blob */
        gt_xasprintf("gt2:10000:%s", b64),
        gt_xasprintf("GT1:10000:%s", b64),
        gt_xasprintf(" gt1:10000:%s", b64),
        gt_xasprintf("gt1:abc:%s", b64),
        gt_xasprintf("gt1:-10000:%s", b64),
        gt_xasprintf("gt1:+10000:%s", b64),
        gt_xasprintf("gt1: 10000:%s", b64),
        gt_xasprintf("gt1:010000:%s", b64),             /* not canonical */
        gt_xasprintf("gt1:9999:%s", b64),               /* below the floor */
        gt_xasprintf("gt1:10000001:%s", b64),           /* above the ceiling */
        gt_xasprintf("gt1:99999999999999999999:%s", b64),
        gt_xasprintf("gt1:10000:%s\n", b64),            /* trailing newline */
        gt_xasprintf("gt1:10000:%s=", b64),
        gt_xasprintf("gt1:10000:%.*s", (int)strlen(b64) - 1, b64),
        gt_xstrdup("gt1:10000:not base64 at all!"),
        gt_xstrdup("gt1:10000:AAAA"),                   /* 3 bytes: shorter than the header */
        gt_xstrdup("gt2"),
        gt_xstrdup("gt2:"),                             /* empty blob */
        gt_xstrdup("gt2:AAAA"),
        gt_xstrdup("gt2:not base64!"),
        gt_xasprintf("GT2:%s", b64),
        gt_xasprintf("gt3:%s", b64),
        gt_xasprintf("gt2:%s\n", b64),
        gt_xasprintf("gt2: %s", b64),
        NULL,
    };
    for (size_t i = 0; cases[i]; i++) {
        assert_open_fails(key, cases[i], GT_EINVAL);
        free(cases[i]);
    }
    assert_open_fails(key, NULL, GT_EINVAL);
    /* 43 bytes: one short of salt + nonce + tag. */
    unsigned char zeros[44] = {0};
    char *s = with_blob(10000, zeros, 43);
    assert_open_fails(key, s, GT_EINVAL);
    free(s);
    s = with_blob(0, zeros, 43);
    assert_open_fails(key, s, GT_EINVAL);
    free(s);
    /* 44 bytes: the format holds, authentication fails. */
    s = with_blob(10000, zeros, 44);
    assert_open_fails(key, s, GT_ECRYPTO);
    free(s);
    s = with_blob(0, zeros, 44);
    assert_open_fails(key, s, GT_ECRYPTO);
    free(s);
    free(good);

    char *plain = NULL;
    assert_int_equal(gt_secret_open(NULL, NAME, "gt1:10000:AAAA", &plain, NULL, NULL), GT_EINVAL);
    assert_null(plain);
    gt_key_free(&key);
}

static char *tmp_dir(void)
{
    char tmpl[] = "/tmp/gt-crypto-test-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return gt_xstrdup(tmpl);
}

static void put_file(const char *path, const void *data, size_t n, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_key_load(void **state)
{
    (void)state;
    char *dir = tmp_dir();
    char *path = gt_path_join(dir, "key");
    gt_error err = {0};

    /* Missing. */
    assert_null(gt_key_load(path, &err));
    assert_int_equal(err.code, GT_ENOTFOUND);
    char *want = gt_xasprintf("secrets key file %s: not found (set [secrets] encrypt_key_file)",
                              path);
    assert_string_equal(err.message, want);
    free(want);

    /* Empty, whitespace only, short: GT_EINVAL naming the path. */
    const char *bad[] = {"", " \n\t\r\n", "0123456789abcdef0123456789abcde\n"};
    for (size_t i = 0; i < 3; i++) {
        put_file(path, bad[i], strlen(bad[i]), 0600);
        gt_error_clear(&err);
        assert_null(gt_key_load(path, &err));
        assert_int_equal(err.code, GT_EINVAL);
        assert_non_null(strstr(err.message, path));
    }

    /* Too large. */
    size_t huge = 64 * 1024 + 1;
    char *big = gt_xmalloc(huge);
    memset(big, 'k', huge);
    put_file(path, big, huge, 0600);
    gt_error_clear(&err);
    assert_null(gt_key_load(path, &err));
    assert_int_equal(err.code, GT_EINVAL);
    assert_non_null(strstr(err.message, path));
    free(big);

    /* A directory. */
    gt_error_clear(&err);
    assert_null(gt_key_load(dir, &err));
    assert_int_not_equal(err.code, GT_OK);
    assert_non_null(strstr(err.message, dir));

    /* Exactly 32 bytes with trailing whitespace: trimmed, same key as the bare bytes. */
    put_file(path, MATERIAL32 " \t\r\n\n", sizeof material32 + 4, 0600);
    gt_error_clear(&err);
    gt_key *key = gt_key_load(path, &err);
    assert_non_null(key);
    assert_false(gt_key_file_exposed(key));
    gt_key *bare = test_key(material32);
    char fa[17], fb[17];
    gt_key_fingerprint(key, fa);
    gt_key_fingerprint(bare, fb);
    assert_string_equal(fa, fb);
    assert_string_equal(fa, "042a1524fcefad5b"); /* HMAC-SHA256(key, "gantry-key-id")[:8] */
    char *sealed = NULL;
    assert_int_equal(gt_secret_seal(key, NAME, "from file", 9, &sealed, NULL), GT_OK);
    assert_opens_to(bare, sealed, "from file", 9);
    free(sealed);
    gt_key_free(&key);

    /* Leading whitespace is material. */
    put_file(path, " " MATERIAL32, sizeof material32, 0600);
    key = gt_key_load(path, NULL);
    assert_non_null(key);
    gt_key_fingerprint(key, fa);
    assert_string_not_equal(fa, fb);
    gt_key_free(&key);

    /* Readable by others: loads, flagged. */
    put_file(path, material32, sizeof material32 - 1, 0644);
    key = gt_key_load(path, NULL);
    assert_non_null(key);
    assert_true(gt_key_file_exposed(key));
    gt_key_free(&key);
    gt_key_free(&bare);

    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
}

static void test_key_generate(void **state)
{
    (void)state;
    char *dir = tmp_dir();
    char *path = gt_path_join(dir, "gantry.key");
    char *path2 = gt_path_join(dir, "second.key");
    gt_error err = {0};

    mode_t old = umask(0); /* a permissive umask must not widen the mode */
    gt_err rc = gt_key_generate(path, &err);
    umask(077);
    gt_err rc2 = gt_key_generate(path2, &err);
    umask(old);
    assert_int_equal(rc, GT_OK);
    assert_int_equal(rc2, GT_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);

    char *text = NULL;
    size_t len = 0;
    assert_int_equal(gt_read_file(path, 4096, &text, &len, NULL), GT_OK);
    assert_int_equal(len, 89); /* base64 of 64 bytes, and a newline */
    assert_int_equal(text[88], '\n');
    text[88] = '\0';
    unsigned char *raw = NULL;
    size_t n = 0;
    assert_int_equal(gt_base64_decode(text, &raw, &n, NULL), GT_OK);
    assert_int_equal(n, 64);
    free(raw);

    gt_key *key = gt_key_load(path, &err);
    assert_non_null(key);
    assert_false(gt_key_file_exposed(key));
    gt_key *key2 = gt_key_load(path2, &err);
    assert_non_null(key2);
    char fa[17], fb[17];
    gt_key_fingerprint(key, fa);
    gt_key_fingerprint(key2, fb);
    assert_int_equal(strlen(fa), 16);
    assert_string_not_equal(fa, fb);
    gt_key_free(&key);
    gt_key_free(&key2);

    /* Refuses to overwrite; the file stays as it was. */
    gt_error_clear(&err);
    assert_int_equal(gt_key_generate(path, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, path));
    char *after = NULL;
    assert_int_equal(gt_read_file(path, 4096, &after, NULL, NULL), GT_OK);
    text[88] = '\n';
    assert_string_equal(after, text);
    free(after);
    gt_secret_wipe_free(text, len);

    /* Nor through a dangling symlink. */
    char *link = gt_path_join(dir, "link.key");
    char *target = gt_path_join(dir, "elsewhere");
    assert_int_equal(symlink(target, link), 0);
    gt_error_clear(&err);
    assert_int_not_equal(gt_key_generate(link, &err), GT_OK);
    assert_false(gt_file_exists(target));

    /* Missing directory. */
    char *nodir = gt_path_join(dir, "no/such/dir/key");
    gt_error_clear(&err);
    assert_int_equal(gt_key_generate(nodir, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, nodir));

    unlink(link);
    unlink(path);
    unlink(path2);
    rmdir(dir);
    free(nodir);
    free(link);
    free(target);
    free(path);
    free(path2);
    free(dir);
}

static void test_from_bytes(void **state)
{
    (void)state;
    assert_null(gt_key_from_bytes(material32, 31));
    assert_null(gt_key_from_bytes(NULL, 32));
    char *big = gt_xcalloc(1, 64 * 1024 + 1);
    assert_null(gt_key_from_bytes(big, 64 * 1024 + 1));
    gt_key *key = gt_key_from_bytes(big, 64 * 1024);
    assert_non_null(key);
    assert_false(gt_key_file_exposed(key));
    gt_key_free(&key);
    free(big);
    char fp[17];
    gt_key_fingerprint(NULL, fp);
    assert_int_equal(strlen(fp), 16);
    gt_secret_wipe_free(NULL, 10);
}

static void check_b64(const char *plain, const char *encoded)
{
    char *e = gt_base64_encode(plain, strlen(plain));
    assert_string_equal(e, encoded);
    free(e);
    unsigned char *d = NULL;
    size_t n = 99;
    gt_error err = {0};
    assert_int_equal(gt_base64_decode(encoded, &d, &n, &err), GT_OK);
    assert_int_equal(n, strlen(plain));
    assert_non_null(d);
    assert_memory_equal(d, plain, n);
    assert_int_equal(d[n], '\0');
    free(d);
}

static void test_base64_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10. */
    check_b64("", "");
    check_b64("f", "Zg==");
    check_b64("fo", "Zm8=");
    check_b64("foo", "Zm9v");
    check_b64("foob", "Zm9vYg==");
    check_b64("fooba", "Zm9vYmE=");
    check_b64("foobar", "Zm9vYmFy");
    check_b64("\xff\xfe\xfd", "//79");
    check_b64("\xfb\xef", "++8=");

    /* Every byte value and every length round-trips. */
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    for (size_t len = 0; len <= 256; len++) {
        char *e = gt_base64_encode(all, len);
        assert_int_equal(strlen(e), (len + 2) / 3 * 4);
        unsigned char *d = NULL;
        size_t n = 0;
        assert_int_equal(gt_base64_decode(e, &d, &n, NULL), GT_OK);
        assert_int_equal(n, len);
        if (len)
            assert_memory_equal(d, all, len);
        free(d);
        free(e);
    }
}

static void test_base64_rejects(void **state)
{
    (void)state;
    const char *bad[] = {
        "Zg",       "Zg=",      "Z",        "Zm9vY",    /* length */
        "Z===",     "====",     "=Zm9",     "Zm=v",     /* misplaced padding */
        "Zm9v====", "Zg==Zg==", "Zm9v\n",   " Zm9v",    /* padding mid-stream, spaces */
        "Zm9 ",     "Zm-v",     "Zm_v",     "Zm9v\t",   /* url alphabet, tabs */
        "Zh==",     "Zm9=",     "Zm\x80v",  "Zm.v",     /* non-zero pad bits, bytes */
        NULL,
    };
    for (size_t i = 0; bad[i]; i++) {
        unsigned char *d = (unsigned char *)"untouched";
        size_t n = 7;
        gt_error err = {0};
        gt_err rc = gt_base64_decode(bad[i], &d, &n, &err);
        if (rc != GT_EINVAL)
            fail_msg("accepted bad base64 \"%s\"", bad[i]);
        assert_int_equal(err.code, GT_EINVAL);
        assert_null(d);
        assert_int_equal(n, 0);
    }
    unsigned char *d = NULL;
    assert_int_equal(gt_base64_decode(NULL, &d, NULL, NULL), GT_EINVAL);
}

static void test_sha256(void **state)
{
    (void)state;
    char hex[65];
    gt_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    gt_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    gt_sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* Last: it leaves this test process not dumpable. */
static void test_protect_process(void **state)
{
    (void)state;
    assert_true(gt_secret_protect_process());
    assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    /* a program the process starts is dumpable again once it execs (the kernel resets
     * it): runs keep their core dumps, only the process holding the key loses them */
    if (access("/usr/bin/python3", X_OK) == 0) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            execl("/usr/bin/python3", "python3", "-c",
                  "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))",
                  (char *)NULL);
            _exit(99);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 1); /* PR_GET_DUMPABLE in the child */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_seals_differ),
        cmocka_unit_test(test_format_matches_reference),
        cmocka_unit_test(test_hkdf_reference_vector),
        cmocka_unit_test(test_name_binding),
        cmocka_unit_test(test_gt1_fixture_still_opens),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_tamper_every_byte),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_key_load),
        cmocka_unit_test(test_key_generate),
        cmocka_unit_test(test_from_bytes),
        cmocka_unit_test(test_base64_vectors),
        cmocka_unit_test(test_base64_rejects),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_protect_process),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#include "password.h"

#include <argon2.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "util.h"

/* OWASP's argon2id baseline: 19 MiB, two passes, one lane (~50 ms on a server core). */
enum {
    PW_M_COST = 19456,   /* KiB */
    PW_T_COST = 2,
    PW_LANES = 1,
    PW_SALT_LEN = 16,
    PW_HASH_LEN = 32,
    PW_MIN_RANDOM = 12,
};

/* No 0/O/o, 1/l/I: a temporary password is read off a terminal and typed back. */
static const char pw_alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz";

gt_err gt_password_hash(const char *password, char **hash, gt_error *err)
{
    unsigned char salt[PW_SALT_LEN];
    char *out = NULL;
    gt_err rc = GT_OK;

    if (password == NULL || hash == NULL)
        return gt_error_set(err, GT_EINVAL, "password: missing");
    rc = gt_random_bytes(salt, sizeof salt, err);
    if (rc != GT_OK)
        goto done;
    size_t cap = argon2_encodedlen(PW_T_COST, PW_M_COST, PW_LANES, PW_SALT_LEN, PW_HASH_LEN,
                                   Argon2_id);
    out = gt_xmalloc(cap);
    int arc = argon2id_hash_encoded(PW_T_COST, PW_M_COST, PW_LANES, password, strlen(password),
                                    salt, sizeof salt, PW_HASH_LEN, out, cap);
    if (arc != ARGON2_OK) {
        /* argon2's messages name the failing parameter, never the input. */
        rc = gt_error_set(err, arc == ARGON2_MEMORY_ALLOCATION_ERROR ? GT_ENOMEM : GT_EINTERNAL,
                          "argon2id: %s", argon2_error_message(arc));
        goto done;
    }
    *hash = out;
    out = NULL;
done:
    free(out);
    gt_wipe(salt, sizeof salt);
    return rc;
}

bool gt_password_verify(const char *hash, const char *password)
{
    /* Only our own form: argon2id_verify would also run whatever costs a stored
     * string names, so anything else is refused before it gets there. */
    if (hash == NULL || password == NULL || strncmp(hash, "$argon2id$", 10) != 0)
        return false;
    return argon2id_verify(hash, password, strlen(password)) == ARGON2_OK;
}

char *gt_password_random(size_t n)
{
    if (n < PW_MIN_RANDOM)
        n = PW_MIN_RANDOM; /* the header promises at least this much strength */
    const size_t k = sizeof pw_alphabet - 1;
    /* Rejection sampling: bytes at or above the largest multiple of k would bias
     * the first characters of the alphabet. */
    const unsigned limit = 256 - (256 % (unsigned)k);
    char *out = gt_xmalloc(n + 1);
    unsigned char pool[64];
    size_t have = 0, used = 0;
    for (size_t i = 0; i < n;) {
        if (used == have) {
            if (gt_random_bytes(pool, sizeof pool, NULL) != GT_OK)
                abort(); /* the OS random source failing is not recoverable */
            have = sizeof pool;
            used = 0;
        }
        unsigned b = pool[used++];
        if (b < limit)
            out[i++] = pw_alphabet[b % k];
    }
    out[n] = '\0';
    gt_wipe(pool, sizeof pool);
    return out;
}

char *gt_token_new(void)
{
    unsigned char raw[32];
    if (gt_random_bytes(raw, sizeof raw, NULL) != GT_OK)
        abort(); /* as above */
    char *b64 = gt_base64_encode(raw, sizeof raw);
    gt_wipe(raw, sizeof raw);
    /* Standard base64 to base64url, without the padding. */
    size_t len = strlen(b64);
    for (size_t i = 0; i < len; i++) {
        if (b64[i] == '+')
            b64[i] = '-';
        else if (b64[i] == '/')
            b64[i] = '_';
    }
    while (len > 0 && b64[len - 1] == '=')
        b64[--len] = '\0';
    return b64;
}

/* Sorted by strcmp, for bsearch. */
static const char *const pw_common[] = {
#include "password_common.inc"
};

static int pw_cmp(const void *key, const void *item)
{
    return strcmp(key, *(const char *const *)item);
}

bool gt_password_common(const char *password)
{
    if (password == NULL)
        return false;
    size_t n = strlen(password);
    if (n == 0 || n > 64)
        return false; /* the list holds nothing that long */
    char low[65];
    for (size_t i = 0; i < n; i++)
        low[i] = (char)tolower((unsigned char)password[i]);
    low[n] = '\0';
    bool hit = bsearch(low, pw_common, sizeof pw_common / sizeof pw_common[0], sizeof pw_common[0],
                       pw_cmp) != NULL;
    gt_wipe(low, sizeof low);
    return hit;
}

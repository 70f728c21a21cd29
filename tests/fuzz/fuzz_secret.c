/* libFuzzer harness: the input as a sealed secret for gt_secret_open (fixed key and name)
 * and as base64 for gt_base64_decode. Neither may crash or leak; a strict decoder also
 * means anything it accepts re-encodes to exactly the same text. A gt2 value that opens
 * must not open under another name, and any input sealed as plaintext opens back to
 * itself under its name only. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"

/* The seeds in tests/fuzz/corpus/secret are sealed under this key: gt1 ones with 10000
 * iterations, gt2 ones for the secret called FUZZ_NAME. */
static const char fuzz_key[] = "gantry-fuzz-key-0123456789abcdef-0123456789";
#define FUZZ_NAME "fuzz-secret"

/* Iteration counts above this are only parsed, not derived: at up to 10^7 PBKDF2 rounds
 * per input the fuzzer would spend its time in SHA-256 and hit its per-input timeout. */
#define FUZZ_MAX_ITERATIONS 20000

static long sealed_iterations(const char *s)
{
    if (strncmp(s, "gt1:", 4) != 0)
        return 0;
    char *end = NULL;
    long v = strtol(s + 4, &end, 10);
    return end == s + 4 ? 0 : v;
}

static void check_open(const gt_key *key, const char *name, const char *s, int *opened)
{
    char *plain = NULL;
    size_t len = 0;
    gt_error err = {0};
    gt_err rc = gt_secret_open(key, name, s, &plain, &len, &err);
    if (rc == GT_OK) {
        if (plain == NULL || plain[len] != '\0')
            abort();
        gt_secret_wipe_free(plain, len);
        *opened = 1;
    } else if (plain != NULL || len != 0 || err.code != rc ||
               (rc != GT_EINVAL && rc != GT_ECRYPTO)) {
        abort();
    } else {
        *opened = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    unsigned char *raw = NULL;
    size_t n = 0;
    if (gt_base64_decode(s, &raw, &n, NULL) == GT_OK) {
        char *again = gt_base64_encode(raw, n);
        if (strcmp(again, s) != 0) {
            fprintf(stderr, "base64 accepted a non-canonical encoding\n");
            abort();
        }
        free(again);
        free(raw);
    } else if (raw != NULL) {
        abort(); /* no output on failure */
    }

    gt_key *key = gt_key_from_bytes(fuzz_key, sizeof fuzz_key - 1);
    if (sealed_iterations(s) <= FUZZ_MAX_ITERATIONS) {
        int opened = 0, elsewhere = 0;
        check_open(key, FUZZ_NAME, s, &opened);
        if (opened && strncmp(s, "gt2:", 4) == 0) {
            check_open(key, FUZZ_NAME "2", s, &elsewhere);
            if (elsewhere) {
                fprintf(stderr, "a gt2 value opened under another name\n");
                abort();
            }
        }
    }

    /* The input as a plaintext: seal, open back, and not under another name. */
    char *sealed = NULL, *plain = NULL;
    size_t len = 0;
    if (gt_secret_seal(key, FUZZ_NAME, data, size, &sealed, NULL) != GT_OK ||
        strncmp(sealed, "gt2:", 4) != 0 ||
        gt_secret_open(key, FUZZ_NAME, sealed, &plain, &len, NULL) != GT_OK || len != size ||
        (size && memcmp(plain, data, size) != 0))
        abort();
    gt_secret_wipe_free(plain, len);
    plain = NULL;
    if (gt_secret_open(key, "other", sealed, &plain, &len, NULL) != GT_ECRYPTO || plain != NULL)
        abort();
    free(sealed);
    gt_key_free(&key);
    free(s);
    return 0;
}

/* Secrets and tokens. Sealed formats (text, safe to store), both AES-256-GCM:
 *   "gt2:<base64(salt[16] | nonce[12] | ciphertext | tag[16])>"   (every new seal)
 *     key  = HKDF-SHA256(key file contents, salt, info "gantry secret v2"), 32 bytes
 *     AAD  = "gt2:" + the secret's name, so a value copied to another secret's record
 *            does not open there
 *   "gt1:<iterations>:<base64(salt[16] | nonce[12] | ciphertext | tag[16])>"  (opened only)
 *     key  = PBKDF2-HMAC-SHA256(key file contents, salt, iterations in [10000, 10000000])
 *     AAD  = "gt1" (not bound to a name)
 * Plaintext buffers are wiped before they are freed. */
#ifndef GT_CRYPTO_H
#define GT_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct gt_key gt_key;

/* Loads key material from a file (any bytes, trailing whitespace trimmed, at least 32
 * bytes). GT_ENOTFOUND if missing, GT_EINVAL if too short or empty, naming the path. */
gt_key *gt_key_load(const char *path, gt_error *err) __attribute__((warn_unused_result));
/* A key from len bytes of material (copied); NULL when shorter than 32 bytes or larger
 * than 64 KiB. For tools and tests that already hold the material. */
gt_key *gt_key_from_bytes(const void *material, size_t len) __attribute__((warn_unused_result));
/* True when the file the key came from was accessible to group or others: worth a
 * warning, not an error. */
bool gt_key_file_exposed(const gt_key *key);
/* Creates a new key file (mode 0600, 64 random bytes base64) that must not exist. */
gt_err gt_key_generate(const char *path, gt_error *err);
/* Wipes and frees *key; sets it to NULL. */
void gt_key_free(gt_key **key);
/* Short non-secret fingerprint of the key (hex of HMAC-SHA256(key,"gantry-key-id"), 16 chars), into buf[17]. */
void gt_key_fingerprint(const gt_key *key, char buf[17]);

/* Seals len bytes for the secret called name (gt2); *sealed is a new string the caller
 * frees. GT_EINVAL without a key or a name. */
gt_err gt_secret_seal(const gt_key *key, const char *name, const void *plain, size_t len,
                      char **sealed, gt_error *err);
/* Opens a sealed string of the secret called name (ignored for gt1 values); *plain is
 * NUL-terminated, *len its length; free it with gt_secret_wipe_free. GT_ECRYPTO when
 * the key is wrong, the data was altered or (gt2) it was sealed under another name;
 * GT_EINVAL when sealed is not in a known format, or a gt2 value comes without a name. */
gt_err gt_secret_open(const gt_key *key, const char *name, const char *sealed, char **plain,
                      size_t *len, gt_error *err);
/* Makes this process not dumpable (prctl PR_SET_DUMPABLE 0), for programs that hold the
 * key or secret values: no core dump of it is written, and processes of the same uid
 * without CAP_SYS_PTRACE can neither ptrace it nor read its /proc/<pid>/mem, environ
 * and the like. Children become dumpable again when they exec. True on success. */
bool gt_secret_protect_process(void);
/* Zeroes n bytes of p (not optimized away) and frees p. */
void gt_secret_wipe_free(void *p, size_t n);

/* Hex of SHA-256 of data into out[65]. */
void gt_sha256_hex(const void *data, size_t n, char out[65]);

/* Base64 (standard alphabet, padded). Encode returns a new string; decode returns
 * GT_EINVAL on malformed input. */
char *gt_base64_encode(const void *data, size_t n);
gt_err gt_base64_decode(const char *s, unsigned char **out, size_t *n, gt_error *err);

#endif

/* Password hashing: argon2id (libargon2), m = 19 MiB, t = 2, p = 1, 16-byte salt
 * from the OS, encoded in the standard PHC string form ("$argon2id$v=19$..."). */
#ifndef GT_PASSWORD_H
#define GT_PASSWORD_H

#include <stdbool.h>

#include "error.h"

/* Hashes password; *hash is a new string. */
gt_err gt_password_hash(const char *password, char **hash, gt_error *err);
/* True when password matches hash (constant-time compare inside libargon2). */
bool gt_password_verify(const char *hash, const char *password);
/* A random password of n characters (n >= 12) from an unambiguous alphabet; caller
 * frees. Used for the first admin's temporary password. */
char *gt_password_random(size_t n);
/* True when password, compared without regard to ASCII case, is on Gantry's list of
 * common passwords (common/password_common.inc: about 650 of 8 or more characters, from
 * public lists; shorter ones are refused by length anyway). */
bool gt_password_common(const char *password);
/* A new login token or API key: 32 bytes from the OS random source, base64url
 * without padding (43 chars); caller frees. */
char *gt_token_new(void);

#endif

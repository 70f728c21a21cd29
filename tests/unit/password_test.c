/* argon2id hashing, random temporary passwords and login tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "password.h"
#include "util.h"

static void test_hash_verify(void **state)
{
    (void)state;
    gt_error err = {0};
    char *hash = NULL;
    assert_int_equal(gt_password_hash("correct horse battery", &hash, &err), GT_OK);
    assert_non_null(hash);
    /* The PHC form with the parameters the header promises. */
    assert_non_null(strstr(hash, "$argon2id$v=19$m=19456,t=2,p=1$"));
    assert_null(strstr(hash, "correct"));
    assert_true(gt_password_verify(hash, "correct horse battery"));
    free(hash);
}

static void test_wrong_password(void **state)
{
    (void)state;
    char *hash = NULL;
    assert_int_equal(gt_password_hash("s3cret-pass", &hash, NULL), GT_OK);
    assert_false(gt_password_verify(hash, "s3cret-pasS"));
    assert_false(gt_password_verify(hash, "s3cret-pas"));
    assert_false(gt_password_verify(hash, ""));
    assert_false(gt_password_verify(hash, NULL));
    free(hash);
}

static void test_empty_password(void **state)
{
    (void)state;
    char *hash = NULL;
    assert_int_equal(gt_password_hash("", &hash, NULL), GT_OK);
    assert_true(gt_password_verify(hash, ""));
    assert_false(gt_password_verify(hash, "x"));
    free(hash);
}

static void test_malformed_hash(void **state)
{
    (void)state;
    char *hash = NULL;
    assert_int_equal(gt_password_hash("pw123456", &hash, NULL), GT_OK);
    assert_false(gt_password_verify(NULL, "pw123456"));
    assert_false(gt_password_verify("", "pw123456"));
    assert_false(gt_password_verify("pw123456", "pw123456"));
    assert_false(gt_password_verify("$argon2id$", "pw123456"));
    assert_false(gt_password_verify("$argon2id$v=19$m=19456,t=2,p=1$", "pw123456"));
    /* argon2i / argon2d strings are not ours. */
    char *other = gt_xstrdup(hash);
    memcpy(other, "$argon2i$", 9);
    memmove(other + 9, other + 10, strlen(other + 10) + 1);
    assert_false(gt_password_verify(other, "pw123456"));
    free(other);
    /* Truncated and altered. */
    char *cut = gt_xstrndup(hash, strlen(hash) - 5);
    assert_false(gt_password_verify(cut, "pw123456"));
    free(cut);
    char *alt = gt_xstrdup(hash);
    size_t last = strlen(alt) - 1;
    alt[last] = alt[last] == 'A' ? 'B' : 'A';
    assert_false(gt_password_verify(alt, "pw123456"));
    free(alt);
    /* Garbage in the parameter part. */
    assert_false(gt_password_verify("$argon2id$v=19$m=x,t=2,p=1$c2FsdHNhbHQ$aGFzaA", "pw"));
    free(hash);
}

static void test_hashes_differ(void **state)
{
    (void)state;
    char *a = NULL, *b = NULL;
    assert_int_equal(gt_password_hash("same password", &a, NULL), GT_OK);
    assert_int_equal(gt_password_hash("same password", &b, NULL), GT_OK);
    assert_string_not_equal(a, b); /* fresh salt each time */
    assert_true(gt_password_verify(a, "same password"));
    assert_true(gt_password_verify(b, "same password"));
    free(a);
    free(b);
}

static void test_random_password(void **state)
{
    (void)state;
    static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz";
    bool seen[256] = {false};
    char *prev = NULL;
    for (int i = 0; i < 200; i++) {
        char *p = gt_password_random(16);
        assert_int_equal(strlen(p), 16);
        for (const char *c = p; *c; c++) {
            assert_non_null(strchr(alphabet, *c));
            seen[(unsigned char)*c] = true;
        }
        if (prev)
            assert_string_not_equal(prev, p);
        free(prev);
        prev = p;
    }
    free(prev);
    /* 3200 draws over 56 symbols: every one shows up. */
    for (const char *c = alphabet; *c; c++)
        assert_true(seen[(unsigned char)*c]);
    for (const char *c = "01OolI"; *c; c++)
        assert_false(seen[(unsigned char)*c]);
    /* Below the minimum the header states, the minimum is used. */
    char *small = gt_password_random(4);
    assert_int_equal(strlen(small), 12);
    free(small);
    char *big = gt_password_random(200);
    assert_int_equal(strlen(big), 200);
    free(big);
}

static void test_token(void **state)
{
    (void)state;
    enum { N = 500 };
    char *tokens[N];
    for (int i = 0; i < N; i++) {
        tokens[i] = gt_token_new();
        assert_int_equal(strlen(tokens[i]), 43);
        for (const char *c = tokens[i]; *c; c++) {
            bool ok = (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
                      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_';
            assert_true(ok);
        }
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            assert_string_not_equal(tokens[i], tokens[j]);
    for (int i = 0; i < N; i++)
        free(tokens[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_verify),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_empty_password),
        cmocka_unit_test(test_malformed_hash),
        cmocka_unit_test(test_hashes_differ),
        cmocka_unit_test(test_random_password),
        cmocka_unit_test(test_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* mask.c: every occurrence of every secret value becomes "***", longest first, overlaps
 * merged, in time linear in the output; checked against a naive reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mask.h"
#include "util.h"

static void expect(char *const *env, const char *text, const char *want)
{
    char *got = gt_mask_secrets(text, env);
    if (strcmp(got, want) != 0)
        fail_msg("mask(\"%s\"): got \"%s\", want \"%s\"", text, got, want);
    free(got);
}

static void test_no_secrets(void **state)
{
    (void)state;
    expect(NULL, "", "");
    expect(NULL, "plain output\n", "plain output\n");
    char *none[] = {NULL};
    expect(none, "plain output\n", "plain output\n");
    assert_null(gt_mask_secrets(NULL, none));
    gt_mask *m = gt_mask_new(NULL, NULL);
    assert_true(gt_mask_empty(m));
    assert_null(gt_mask_apply(m, NULL));
    gt_mask_free(&m);
    assert_null(m);
    gt_mask_free(&m);
    gt_mask_free(NULL);
    assert_true(gt_mask_empty(NULL));
    /* entries without '=' or with short values mask nothing */
    char *weak[] = {"NOEQUALS", "A=", "B=x", "C=ab", NULL};
    m = gt_mask_new(weak, NULL);
    assert_true(gt_mask_empty(m));
    gt_mask_free(&m);
    expect(weak, "ab x NOEQUALS A= B=x", "ab x NOEQUALS A= B=x");
}

static void test_basic_start_end(void **state)
{
    (void)state;
    char *env[] = {"TOKEN=s3cr3t-value", NULL};
    expect(env, "token is s3cr3t-value, ok", "token is ***, ok");
    expect(env, "s3cr3t-value at the start", "*** at the start");
    expect(env, "at the end s3cr3t-value", "at the end ***");
    expect(env, "s3cr3t-value", "***");
    expect(env, "s3cr3t-valu", "s3cr3t-valu"); /* a prefix is not the value */
    expect(env, "a s3cr3t-value b s3cr3t-value\nc", "a *** b ***\nc");
    /* the value is what follows the first '=' */
    char *eq[] = {"K=a=b=c", NULL};
    expect(eq, "K=a=b=c", "K=***");
    /* three bytes are masked, two are not */
    char *three[] = {"A=abc", "B=xy", NULL};
    expect(three, "abc xy abcabc", "*** xy ***");
}

static void test_longest_first_and_overlaps(void **state)
{
    (void)state;
    char *env[] = {"SHORT=pass", "LONG=password", NULL};
    expect(env, "my password, my pass", "my ***, my ***");
    char *rev[] = {"LONG=password", "SHORT=pass", NULL};
    expect(rev, "passwordpass", "***");
    /* overlapping occurrences of two values leave no byte of either */
    char *ov[] = {"A=abcd", "B=cdef", NULL};
    expect(ov, "xabcdefy", "x***y");
    expect(ov, "abcd cdef", "*** ***");
    /* overlapping occurrences of one value */
    char *self[] = {"A=aba", NULL};
    expect(self, "xababay", "x***y");
    /* adjacent ones become one */
    char *adj[] = {"A=secret", NULL};
    expect(adj, "secretsecret!", "***!");
    /* a value inside another, the outer not all there */
    char *in[] = {"A=xyz", "B=wxyz1", NULL};
    expect(in, "wxyz2 wxyz1", "w***2 ***");
    /* a long value found after a false start (the automaton's fail links) */
    char *fs[] = {"A=aab", "B=abc", NULL};
    expect(fs, "aaab aabc abd", "a*** *** abd");
    /* duplicates */
    char *dup[] = {"A=same-value", "B=same-value", NULL};
    expect(dup, "x same-value y", "x *** y");
}

static void test_private_key_lines(void **state)
{
    (void)state;
    const char *key = "-----BEGIN OPENSSH PRIVATE KEY-----\r\n"
                      "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
                      "QyNTUxOQAAACBd1TRWPVa1\n"
                      "AAAA==\n"
                      "-----END OPENSSH PRIVATE KEY-----\n";
    char *env[] = {"A=abc123", NULL};
    gt_mask *m = gt_mask_new(env, key);
    char *out = gt_mask_apply(m, "ssh said: b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW "
                                 "and QyNTUxOQAAACBd1TRWPVa1 and AAAA== and abc123\n"
                                 "-----END OPENSSH PRIVATE KEY-----");
    assert_string_equal(out, "ssh said: *** and *** and AAAA== and ***\n***");
    free(out);
    /* the whole key printed as it is */
    out = gt_mask_apply(m, key);
    assert_string_equal(out, "***\r\n***\n***\nAAAA==\n***\n");
    free(out);
    gt_mask_free(&m);
    /* a multi-line value is masked whole and line by line */
    char *multi[] = {"CERT=first line of the value\nsecond line of the value", NULL};
    expect(multi, "[first line of the value\nsecond line of the value]", "[***]");
    expect(multi, "  second line of the value\n", "  ***\n");
}

static void test_invalid_utf8_value(void **state)
{
    (void)state;
    /* output is stored cleaned: the value's bad byte shows as U+FFFD */
    char *env[] = {"K=\xff" "secret", NULL};
    expect(env, "got \xEF\xBF\xBD" "secret!", "got ***!");
    expect(env, "got \xff" "secret!", "got ***!");
}

/* The reference: mark every byte of every occurrence (memmem at every offset), then
 * replace each maximal marked stretch by "***". */
static char *naive(const char *text, char *const *env)
{
    size_t n = strlen(text);
    unsigned char *mark = gt_xcalloc(n + 1, 1);
    for (char *const *e = env; *e; e++) {
        const char *v = strchr(*e, '=') + 1;
        size_t vl = strlen(v);
        if (vl < 3)
            continue;
        for (const char *p = text; (p = memmem(p, (size_t)(text + n - p), v, vl)); p++)
            memset(mark + (p - text), 1, vl);
    }
    gt_buf b = {0};
    gt_buf_append(&b, "", 0);
    for (size_t i = 0; i < n;) {
        if (!mark[i]) {
            gt_buf_append(&b, text + i, 1);
            i++;
            continue;
        }
        gt_buf_append(&b, "***", 3);
        while (i < n && mark[i])
            i++;
    }
    free(mark);
    return gt_buf_steal(&b);
}

static void test_against_reference(void **state)
{
    (void)state;
    srand(7);
    for (int round = 0; round < 400; round++) {
        /* a small alphabet makes overlaps and repeats common */
        int nv = 1 + rand() % 6;
        char *env[8] = {0};
        for (int k = 0; k < nv; k++) {
            int len = 1 + rand() % 6;
            char v[8];
            for (int j = 0; j < len; j++)
                v[j] = "abc"[rand() % 3];
            v[len] = '\0';
            env[k] = gt_xasprintf("V%d=%s", k, v);
        }
        char text[121];
        int tl = rand() % 120;
        for (int j = 0; j < tl; j++)
            text[j] = "abcd"[rand() % 4];
        text[tl] = '\0';
        char *want = naive(text, env);
        char *got = gt_mask_secrets(text, env);
        if (strcmp(want, got) != 0)
            fail_msg("round %d: \"%s\": got \"%s\", want \"%s\"", round, text, got, want);
        free(want);
        free(got);
        for (int k = 0; k < nv; k++)
            free(env[k]);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 1 MiB of output, 1000 secrets: one pass. And the shapes that make a naive matcher
 * quadratic: a run of one byte and values that are long runs of it. */
static void test_one_mib(void **state)
{
    (void)state;
    size_t n = 1u << 20;
    enum { NS = 1000 };
    char **env = gt_xcalloc(NS + 1, sizeof *env);
    for (int k = 0; k < NS; k++)
        env[k] = gt_xasprintf("S%d=secret-%04d-%08x", k, k, (unsigned)(k * 2654435761u));
    char *text = gt_xmalloc(n + 1);
    size_t o = 0;
    int placed = 0;
    while (o + 64 < n) {
        int w = snprintf(text + o, 64, "line %zu of output ", o);
        o += (size_t)w;
        if (o % 7 == 0 || o % 11 == 0) {
            const char *v = strchr(env[placed % NS], '=') + 1;
            memcpy(text + o, v, strlen(v));
            o += strlen(v);
            placed++;
        }
        text[o++] = '\n';
    }
    memset(text + o, 'x', n - o);
    text[n] = '\0';
    double t0 = now_s();
    char *out = gt_mask_secrets(text, env);
    double t = now_s() - t0;
    assert_true(placed > 100);
    assert_null(strstr(out, "secret-"));
    size_t stars = 0;
    for (const char *p = out; (p = strstr(p, "***")); p += 3)
        stars++;
    assert_int_equal(stars, (size_t)placed);
    char *want = naive(text, env); /* memmem per value: correct, values x text */
    assert_string_equal(out, want);
    free(want);
    free(out);
    print_message("1 MiB, %d secrets: %.3f s\n", NS, t);
    if (t > 2.0)
        fail_msg("1 MiB with %d secrets took %.2f s", NS, t);

    /* 1 MiB of 'a' and values a{3}, a{4}, ... a{300}: all of it one "***" */
    for (int k = 0; k < NS; k++)
        free(env[k]);
    int nv = 0;
    for (int len = 3; len <= 300; len++) {
        env[nv] = gt_xmalloc((size_t)len + 3);
        memcpy(env[nv], "A=", 2);
        memset(env[nv] + 2, 'a', (size_t)len);
        env[nv][len + 2] = '\0';
        nv++;
    }
    env[nv] = NULL;
    memset(text, 'a', n);
    t0 = now_s();
    out = gt_mask_secrets(text, env);
    t = now_s() - t0;
    assert_string_equal(out, "***");
    free(out);
    /* a long value that almost matches everywhere: a{999}b, text a...ab */
    for (int k = 0; k < nv; k++)
        free(env[k]);
    env[0] = gt_xmalloc(1000 + 3);
    memcpy(env[0], "A=", 2);
    memset(env[0] + 2, 'a', 999);
    env[0][1001] = 'b';
    env[0][1002] = '\0';
    env[1] = NULL;
    text[n - 1] = 'b';
    double t1 = now_s();
    out = gt_mask_secrets(text, env);
    t += now_s() - t1;
    assert_int_equal(strlen(out), n - 1000 + 3);
    assert_string_equal(out + n - 1000, "***");
    free(out);
    print_message("1 MiB of repeats: %.3f s\n", t);
    if (t > 2.0)
        fail_msg("1 MiB of repeats took %.2f s", t);
    free(env[0]);
    free(env);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_secrets),
        cmocka_unit_test(test_basic_start_end),
        cmocka_unit_test(test_longest_first_and_overlaps),
        cmocka_unit_test(test_private_key_lines),
        cmocka_unit_test(test_invalid_utf8_value),
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_one_mib),
    };
    return cmocka_run_group_tests_name("mask", tests, NULL, NULL);
}

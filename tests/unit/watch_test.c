/* watch.c: subscribers hear the writes to their collection made through another handle
 * (as another process would), first an id NULL call, nothing after unsubscribing, and
 * a re-read call after the store failed to open for a while. On a local file, and on
 * etcd when scripts/test-servers provides one (GANTRY_TEST_ETCD). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "util.h"
#include "watch.h"

typedef struct heard {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    gt_strv ids;    /* "id@rev", "*" for an id NULL call */
} heard;

typedef struct fx {
    char dir[64];
    char *db;
    const gt_strv *etcd;   /* NULL: the local file db */
    char cluster[64];
    int fail_opens;   /* the next this many opens fail */
    int opens;
    gt_store *writer;
    heard h;
} fx;

static int open_store(void *arg, gt_store **store, gt_error *err)
{
    fx *f = arg;
    if (__atomic_fetch_add(&f->opens, 1, __ATOMIC_SEQ_CST) < f->fail_opens)
        return gt_error_set(err, GT_EUNAVAIL, "test: the store is away");
    if (f->etcd) {
        gt_store_etcd_config c = {.hosts = (const char *const *)f->etcd->v,
                                  .n_hosts = f->etcd->n, .cluster_id = f->cluster};
        *store = gt_store_open_etcd(&c, err);
    } else {
        *store = gt_store_open_local(f->db, err);
    }
    return *store ? GT_OK : GT_EUNAVAIL;
}

static void on_change(void *arg, const char *coll, const char *id, int64_t rev)
{
    heard *h = arg;   /* on the watcher's thread: no cmocka assertions here */
    pthread_mutex_lock(&h->mu);
    if (strcmp(coll, "jobs") != 0)
        gt_strv_push_owned(&h->ids, gt_xasprintf("wrong collection %s", coll));
    else
        gt_strv_push_owned(&h->ids, id ? gt_xasprintf("%s@%lld", id, (long long)rev)
                                       : gt_xstrdup("*"));
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Waits (10 s at most) until n calls were heard; returns call i's text (borrowed). */
static const char *heard_at(heard *h, size_t i)
{
    int64_t until = gt_mono_ms() + 10000;
    pthread_mutex_lock(&h->mu);
    while (h->ids.n <= i && gt_mono_ms() < until)
        gt_cond_wait_ms(&h->cv, &h->mu, 100);
    const char *s = h->ids.n > i ? h->ids.v[i] : NULL;
    pthread_mutex_unlock(&h->mu);
    if (s == NULL)
        fail_msg("call %zu never came", i);
    return s;
}

static size_t heard_n(heard *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->ids.n;
    pthread_mutex_unlock(&h->mu);
    return n;
}

static int setup(void **state)
{
    fx *f = gt_xcalloc(1, sizeof *f);
    f->etcd = *state;   /* the prestate */
    snprintf(f->dir, sizeof f->dir, "/tmp/gt-watch-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->db = gt_xasprintf("%s/gantry.db", f->dir);
    char *id = gt_id_new();
    snprintf(f->cluster, sizeof f->cluster, "watch-%s", id);
    free(id);
    f->fail_opens = 0;
    open_store(f, &f->writer, NULL);
    f->opens = 0;
    pthread_mutex_init(&f->h.mu, NULL);
    pthread_cond_init(&f->h.cv, NULL);
    *state = f;
    return f->writer ? 0 : -1;
}

static int teardown(void **state)
{
    fx *f = *state;
    gt_store_free(&f->writer);
    gt_rm_rf(f->dir, NULL);
    gt_strv_free(&f->h.ids);
    pthread_cond_destroy(&f->h.cv);
    pthread_mutex_destroy(&f->h.mu);
    free(f->db);
    free(f);
    return 0;
}

static char *at(const char *id, int64_t rev)
{
    return gt_xasprintf("%s@%lld", id, (long long)rev);
}

static void test_subscribers_hear_writes(void **state)
{
    fx *f = *state;
    gt_watch *w = gt_watch_new(open_store, f, NULL);
    assert_non_null(w);
    int sub = gt_watch_subscribe(w, "jobs", on_change, &f->h);
    assert_true(sub > 0);
    assert_string_equal(heard_at(&f->h, 0), "*");   /* the watch started: re-read */
    int64_t rev = 0;
    assert_int_equal(gt_store_put(f->writer, "other", "x", "{}", GT_REV_ANY, NULL, NULL), GT_OK);
    assert_int_equal(gt_store_put(f->writer, "jobs", "a", "{}", GT_REV_ANY, &rev, NULL), GT_OK);
    char *want = at("a", rev);
    assert_string_equal(heard_at(&f->h, 1), want);
    free(want);
    assert_int_equal(gt_store_delete(f->writer, "jobs", "a", GT_REV_ANY, NULL), GT_OK);
    assert_string_equal(heard_at(&f->h, 2), "a@0");
    gt_watch_unsubscribe(w, sub);
    assert_int_equal(gt_store_put(f->writer, "jobs", "b", "{}", GT_REV_ANY, NULL, NULL), GT_OK);
    usleep(300 * 1000);   /* many polls of the local store; etcd delivers in ms */
    assert_int_equal(heard_n(&f->h), 3);
    gt_watch_free(&w);
    assert_null(w);
    gt_watch_free(&w);   /* NULL is fine */
}

static void test_store_away_at_first(void **state)
{
    fx *f = *state;
    f->fail_opens = 2;   /* about 2 s of retries */
    gt_watch *w = gt_watch_new(open_store, f, NULL);
    assert_non_null(w);
    gt_watch_subscribe(w, "jobs", on_change, &f->h);
    assert_string_equal(heard_at(&f->h, 0), "*");
    assert_true(f->opens >= 3);
    int64_t rev = 0;
    assert_int_equal(gt_store_put(f->writer, "jobs", "c", "{}", GT_REV_ANY, &rev, NULL), GT_OK);
    char *want = at("c", rev);
    assert_string_equal(heard_at(&f->h, 1), want);
    free(want);
    gt_watch_free(&w);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_OFF, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate_setup_teardown(test_subscribers_hear_writes, setup, teardown,
                                                 NULL),
        cmocka_unit_test_prestate_setup_teardown(test_store_away_at_first, setup, teardown, NULL),
    };
    int failed = cmocka_run_group_tests_name("watch/local", tests, NULL, NULL);
    const char *env = getenv("GANTRY_TEST_ETCD");
    if (env == NULL || env[0] == '\0') {
        printf("watch/etcd: SKIPPED: GANTRY_TEST_ETCD is not set "
               "(run under scripts/test-servers)\n");
        return failed ? 1 : 0;
    }
    gt_strv hosts = {0};
    char *list = gt_xstrdup(env), *save = NULL;
    for (char *h = strtok_r(list, ", ", &save); h; h = strtok_r(NULL, ", ", &save))
        gt_strv_push(&hosts, h);
    free(list);
    const struct CMUnitTest on_etcd[] = {
        cmocka_unit_test_prestate_setup_teardown(test_subscribers_hear_writes, setup, teardown,
                                                 &hosts),
        cmocka_unit_test_prestate_setup_teardown(test_store_away_at_first, setup, teardown,
                                                 &hosts),
    };
    failed += cmocka_run_group_tests_name("watch/etcd", on_etcd, NULL, NULL);
    gt_strv_free(&hosts);
    return failed ? 1 : 0;
}

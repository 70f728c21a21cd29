/* The local (SQLite) driver: the conformance suite on a fresh file per test, then what
 * only a file can do: survive a reopen, be shared by handles and processes, refuse a
 * file that is not a store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "store_conformance.h"
#include "util.h"

typedef struct tmp {
    char dir[64];
    int next;
} tmp;

/* A new database path under the test's directory; caller frees. */
static char *tmp_path(tmp *t)
{
    return gt_xasprintf("%s/store-%d.db", t->dir, t->next++);
}

static gt_store *open_path(const char *path)
{
    gt_error err = {0};
    gt_store *s = gt_store_open_local(path, &err);
    if (s == NULL)
        print_error("open %s: %s\n", path, err.message);
    return s;
}

static gt_store *open_fresh(void *ctx)
{
    char *path = tmp_path(ctx);
    gt_store *s = open_path(path);
    free(path);
    return s;
}

static void put_ok(gt_store *s, const char *coll, const char *id, const char *body,
                   int64_t *rev)
{
    gt_error err = {0};
    if (gt_store_put(s, coll, id, body, GT_REV_ANY, rev, &err) != GT_OK)
        fail_msg("put %s/%s: %s", coll, id, err.message);
}

static gt_err put_rc_any(gt_store *s, gt_error *err)
{
    return gt_store_put(s, "things", "new", "{}", GT_REV_ANY, NULL, err);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void test_reopen_persists(void **state)
{
    char *path = tmp_path(*state);
    gt_error err = {0};
    int64_t r1 = 0, r2 = 0, e1 = 0, e = 0;
    gt_store *s = open_path(path);
    assert_non_null(s);
    assert_int_equal(gt_store_index(s, "things", "kind", &err), GT_OK);
    put_ok(s, "things", "a", "{\"kind\":\"x\"}", &r1);
    put_ok(s, "things", "b", "{\"kind\":\"y\"}", NULL);
    assert_int_equal(gt_store_delete(s, "things", "b", GT_REV_ANY, &err), GT_OK);
    put_ok(s, "things", "c", "{\"kind\":\"x\"}", &r2);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e1, &err), GT_OK);
    gt_store_free(&s);
    assert_null(s);

    s = open_path(path);
    assert_non_null(s);
    char *body = NULL;
    int64_t rev = 0;
    assert_int_equal(gt_store_get(s, "things", "a", &body, &rev, &err), GT_OK);
    assert_string_equal(body, "{\"kind\":\"x\"}");
    assert_int_equal(rev, r1);
    free(body);
    /* The index declaration survived: querying by kind is allowed. */
    gt_store_page page;
    assert_int_equal(gt_store_query(s, "things", "kind", "x", NULL, 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.items[0].id, "a");
    assert_string_equal(page.items[1].id, "c");
    gt_store_page_clear(&page);
    /* Revisions keep rising across a reopen, past the deleted document's too. */
    put_ok(s, "things", "b", "{\"kind\":\"y\"}", &rev);
    assert_true(rev > r2);
    /* The lease is still held, with its epoch. */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-b", 60000, &e, &err), GT_ECONFLICT);
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e, &err), GT_OK);
    assert_int_equal(e, e1);
    gt_store_free(&s);
    free(path);
}

static void test_file_layout(void **state)
{
    char *path = tmp_path(*state);
    gt_error err = {0};
    gt_store *s = open_path(path);
    assert_non_null(s);
    assert_string_equal(gt_store_driver(s), "local");
    assert_int_equal(gt_store_index(s, "things", "kind", &err), GT_OK);
    put_ok(s, "things", "a", "{\"kind\":\"x\"}", NULL);

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* Look inside with SQLite itself: WAL mode, and the query uses the index. The SQL
     * mirrors store_local.c's field query. */
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db,
                         "EXPLAIN QUERY PLAN SELECT id, rev, body FROM documents"
                         " WHERE coll = 'things' AND json_extract(body, '$.kind') = ?1"
                         " AND id > ?2 AND json_type(body, '$.kind') = 'text'"
                         " ORDER BY id LIMIT ?3", -1, &q, NULL), SQLITE_OK);
    gt_buf plan = {0};
    while (sqlite3_step(q) == SQLITE_ROW) {
        gt_buf_puts(&plan, (const char *)sqlite3_column_text(q, 3));
        gt_buf_puts(&plan, "\n");
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    if (strstr(plan.data, "gt_ix:kind:things") == NULL || strstr(plan.data, "TEMP B-TREE"))
        fail_msg("query plan does not use the index:\n%s", plan.data);
    gt_buf_free(&plan);
    gt_store_free(&s);
    free(path);
}

static void test_cas_race_two_handles(void **state)
{
    char *path = tmp_path(*state);
    gt_store *a = open_path(path), *b = open_path(path);
    assert_non_null(a);
    assert_non_null(b);
    gt_store_conformance_cas_race(a, b, 200);
    gt_store_free(&a);
    gt_store_free(&b);
    free(path);
}

static void test_apply_race_two_handles(void **state)
{
    char *path = tmp_path(*state);
    gt_store *a = open_path(path), *b = open_path(path);
    assert_non_null(a);
    assert_non_null(b);
    gt_store_conformance_apply_race(a, b, 200);
    gt_store_free(&a);
    gt_store_free(&b);
    free(path);
}

/* Range queries and counts on a field go through its index: the ORDER BY is the
 * index's order (no sort), and count(*) needs no table row (the SQL mirrors
 * store_local.c's). */
static void test_range_plans(void **state)
{
    char *path = tmp_path(*state);
    gt_error err = {0};
    gt_store *s = open_path(path);
    assert_non_null(s);
    assert_int_equal(gt_store_index(s, "timers", "due", &err), GT_OK);
    put_ok(s, "timers", "a", "{\"due\":\"2026\"}", NULL);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    static const char *const queries[] = {
        "SELECT id, rev, body, json_extract(body, '$.due') FROM documents"
        " INDEXED BY \"gt_ix:due:timers\" WHERE coll = 'timers'"
        " AND json_extract(body, '$.due') >= ?2 AND json_extract(body, '$.due') < ?3"
        " AND (json_extract(body, '$.due'), id) > (?4, ?5)"
        " AND json_type(body, '$.due') = 'text' ORDER BY json_extract(body, '$.due'), id"
        " LIMIT ?6",
        "SELECT count(*) FROM documents INDEXED BY \"gt_ix:due:timers\""
        " WHERE coll = 'timers' AND json_extract(body, '$.due') >= ?2"
        " AND json_extract(body, '$.due') < ?3",
    };
    for (size_t i = 0; i < 2; i++) {
        sqlite3_stmt *q = NULL;
        char *sql = gt_xasprintf("EXPLAIN QUERY PLAN %s", queries[i]);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
        gt_buf plan = {0};
        while (sqlite3_step(q) == SQLITE_ROW) {
            gt_buf_puts(&plan, (const char *)sqlite3_column_text(q, 3));
            gt_buf_puts(&plan, "\n");
        }
        sqlite3_finalize(q);
        if (strstr(plan.data, "gt_ix:due:timers (<expr>>? AND <expr><?)") == NULL ||
            strstr(plan.data, "TEMP B-TREE"))
            fail_msg("%s\nplan:\n%s", queries[i], plan.data);
        gt_buf_free(&plan);
        free(sql);
    }
    /* the count's bytecode moves to a table row only lazily, and nothing reads one */
    sqlite3_stmt *q = NULL;
    char *sql = gt_xasprintf("EXPLAIN %s", queries[1]);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *op = (const char *)sqlite3_column_text(q, 1);
        if (strcmp(op, "Column") == 0 && sqlite3_column_int(q, 2) == 0)
            fail_msg("count reads a column of the documents table");
    }
    sqlite3_finalize(q);
    free(sql);
    sqlite3_close(db);
    gt_store_free(&s);
    free(path);
}

static void test_counter_handles_and_threads(void **state)
{
    char *path = tmp_path(*state);
    gt_store *h[4];
    for (int i = 0; i < 4; i++)
        assert_non_null(h[i] = open_path(path));
    gt_store_conformance_counter(h, 4, 50);
    /* One handle shared by threads works too. */
    gt_store *shared[4] = {h[0], h[0], h[0], h[0]};
    gt_store_conformance_counter(shared, 4, 25);
    for (int i = 0; i < 4; i++)
        gt_store_free(&h[i]);
    free(path);
}

/* Child: adds n to the counter with get + CAS, as a separate CLI run would. */
static int child_increments(const char *path, int n)
{
    gt_error err = {0};
    gt_store *s = gt_store_open_local(path, &err);
    int status = s ? 0 : 2;
    for (int done = 0; s && done < n;) {
        char *body = NULL, next[64];
        int64_t rev = 0;
        long long v = 0;
        gt_error_clear(&err);
        gt_err rc = gt_store_get(s, "counter", "c", &body, &rev, &err);
        if (rc == GT_OK && sscanf(body, "{\"n\":%lld}", &v) == 1) {
            snprintf(next, sizeof next, "{\"n\":%lld}", v + 1);
            rc = gt_store_put(s, "counter", "c", next, rev, NULL, &err);
        }
        free(body);
        if (rc == GT_OK) {
            done++;
        } else if (rc != GT_ECONFLICT) {
            fprintf(stderr, "child: %s\n", err.message);
            status = 1;
            break;
        }
    }
    gt_store_free(&s);
    return status;
}

static void test_processes_share_file(void **state)
{
    enum { NPROC = 3, EACH = 40 };
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    assert_non_null(s);
    put_ok(s, "counter", "c", "{\"n\":0}", NULL);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            _exit(child_increments(path, EACH));
    }
    for (int i = 0; i < NPROC; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    gt_error err = {0};
    char *body = NULL;
    assert_int_equal(gt_store_get(s, "counter", "c", &body, NULL, &err), GT_OK);
    char want[32];
    snprintf(want, sizeof want, "{\"n\":%d}", NPROC * EACH);
    assert_string_equal(body, want);
    free(body);
    gt_store_free(&s);
    free(path);
}

typedef struct locker {
    const char *path;
    pthread_barrier_t *bar;
    int rc;
} locker;

/* Holds the write lock for 300 ms through a plain SQLite connection. */
static void *hold_lock(void *arg)
{
    locker *l = arg;
    sqlite3 *db = NULL;
    l->rc = sqlite3_open_v2(l->path, &db, SQLITE_OPEN_READWRITE, NULL);
    if (l->rc == SQLITE_OK)
        l->rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    pthread_barrier_wait(l->bar);
    sleep_ms(300);
    if (l->rc == SQLITE_OK)
        l->rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return NULL;
}

static void test_writer_waits_for_lock(void **state)
{
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    assert_non_null(s);
    pthread_barrier_t bar;
    pthread_t t;
    locker l = {path, &bar, 0};
    pthread_barrier_init(&bar, NULL, 2);
    assert_int_equal(pthread_create(&t, NULL, hold_lock, &l), 0);
    pthread_barrier_wait(&bar);
    /* The lock is held elsewhere: the put waits (busy_timeout), then succeeds. */
    int64_t t0 = gt_mono_ms();
    put_ok(s, "things", "a", "{}", NULL);
    int64_t waited = gt_mono_ms() - t0;
    pthread_join(t, NULL);
    pthread_barrier_destroy(&bar);
    assert_int_equal(l.rc, SQLITE_OK);
    assert_true(waited >= 100);
    gt_store_free(&s);
    free(path);
}

static void test_garbage_file(void **state)
{
    char *path = tmp_path(*state);
    gt_buf junk = {0};
    for (int i = 0; i < 400; i++)
        gt_buf_puts(&junk, "this is not a database, just some text in a file\n");
    gt_error err = {0};
    assert_int_equal(gt_write_file_atomic(path, junk.data, junk.len, 0600, &err), GT_OK);
    gt_buf_free(&junk);
    gt_store *s = gt_store_open_local(path, &err);
    assert_null(s);
    assert_int_equal(err.code, GT_EIO);
    assert_non_null(strstr(err.message, path));
    print_message("garbage file: %s\n", err.message);
    free(path);
}

/* A real store whose pages were overwritten: every call fails cleanly or works. */
static void test_corrupt_file(void **state)
{
    char *path = tmp_path(*state);
    gt_error err = {0};
    gt_store *s = open_path(path);
    assert_non_null(s);
    assert_int_equal(gt_store_index(s, "things", "kind", &err), GT_OK);
    for (int i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof id, "d%03d", i);
        put_ok(s, "things", id, "{\"kind\":\"x\",\"pad\":\"................................\"}",
               NULL);
    }
    gt_store_free(&s);   /* the last close checkpoints the WAL into the file */
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    char junk[4096];
    memset(junk, 0xA5, sizeof junk);
    for (off_t off = 4096; off < 6 * 4096; off += 4096)
        assert_int_equal(pwrite(fd, junk, sizeof junk, off), (ssize_t)sizeof junk);
    close(fd);

    s = gt_store_open_local(path, &err);
    if (s == NULL) {
        assert_int_equal(err.code, GT_EIO);
        print_message("corrupt file at open: %s\n", err.message);
    } else {
        gt_store_page page;
        gt_err rc = gt_store_query(s, "things", "kind", "x", NULL, 1000, &page, &err);
        gt_store_page_clear(&page);
        if (rc == GT_OK) {
            gt_error_clear(&err);
            rc = put_rc_any(s, &err);
        }
        assert_true(rc == GT_OK || rc == GT_EIO);
        print_message("corrupt file in use: %s\n", rc ? err.message : "no error");
        gt_store_free(&s);
    }
    free(path);
}

static void test_bad_paths(void **state)
{
    tmp *t = *state;
    gt_error err = {0};
    char *path = gt_xasprintf("%s/no/such/dir/store.db", t->dir);
    assert_null(gt_store_open_local(path, &err));
    assert_int_equal(err.code, GT_EIO);
    assert_non_null(strstr(err.message, path));
    free(path);
    gt_error_clear(&err);
    assert_null(gt_store_open_local(t->dir, &err));   /* a directory */
    assert_int_equal(err.code, GT_EIO);
    gt_error_clear(&err);
    assert_null(gt_store_open_local("", &err));
    assert_int_equal(err.code, GT_EINVAL);
    /* An existing empty file (say, made by touch) becomes a store. */
    path = tmp_path(t);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    gt_store *s = open_path(path);
    assert_non_null(s);
    put_ok(s, "things", "a", "{}", NULL);
    gt_store_free(&s);
    free(path);
}

/* Rounds of the write-to-wake check; GANTRY_TEST_WAKE_ROUNDS raises it to measure. */
static int wake_rounds(void)
{
    const char *e = getenv("GANTRY_TEST_WAKE_ROUNDS");
    int64_t n = 20;
    if (e && gt_parse_int64(e, 1, 100000, &n, "GANTRY_TEST_WAKE_ROUNDS", NULL) != GT_OK)
        n = 20;
    return (int)n;
}

/* A write through another handle (another process would have its own) wakes a waiter. */
static void test_changes_two_handles(void **state)
{
    char *path = tmp_path(*state);
    gt_store *a = open_path(path), *b = open_path(path);
    assert_non_null(a);
    assert_non_null(b);
    gt_store_conformance_changes_wake(a, b, wake_rounds());
    gt_store_free(&a);
    gt_store_free(&b);
    free(path);
}

/* Child: after 200 ms, writes things/from-child and deletes things/doomed, as another
 * gantry process would. */
static int child_writes(const char *path)
{
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    gt_store *s = gt_store_open_local(path, NULL);
    int bad = s == NULL ||
              gt_store_put(s, "things", "from-child", "{}", GT_REV_NONE, NULL, NULL) != GT_OK ||
              gt_store_delete(s, "things", "doomed", GT_REV_ANY, NULL) != GT_OK;
    gt_store_free(&s);
    return bad;
}

/* A waiter in this process sees what another process writes, before its wait ends. */
static void test_changes_from_another_process(void **state)
{
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    assert_non_null(s);
    put_ok(s, "things", "doomed", "{}", NULL);
    gt_store_changes ch;
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, NULL), GT_OK);
    int64_t since = ch.next;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child_writes(path));
    const char *colls[] = {"things"};
    int64_t t0 = gt_mono_ms();
    size_t seen = 0;
    while (seen < 2 && gt_mono_ms() - t0 < 10000) {
        assert_int_equal(gt_store_changes_wait(s, colls, 1, since, 10000, &ch, NULL), GT_OK);
        for (size_t i = 0; i < ch.n; i++)
            seen += strcmp(ch.v[i].id, "from-child") == 0 ? ch.v[i].rev > 0
                                                          : strcmp(ch.v[i].id, "doomed") == 0 &&
                                                                ch.v[i].rev == 0;
        since = ch.next;
        gt_store_changes_clear(&ch);
    }
    int64_t took = gt_mono_ms() - t0;
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(seen, 2);
    assert_true(took < 5000);   /* the child writes at 200 ms; the waits were 10 s */
    gt_store_free(&s);
    free(path);
}

static void sql_ok(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The log keeps changes_keep positions: it stays that small, and a watcher further
 * behind is told to start over. */
static void test_changes_trimmed(void **state)
{
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    assert_non_null(s);
    gt_store_changes ch;
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, NULL), GT_OK);
    int64_t since = ch.next;
    put_ok(s, "things", "first", "{}", NULL);
    sql_ok(path, "UPDATE sequence SET value = 5 WHERE name = 'changes_keep'");
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%d", i);
        put_ok(s, "things", id, "{}", NULL);
    }
    assert_true(sql_int(path, "SELECT count(*) FROM changes") <= 5);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, since, 1000, &ch, NULL), GT_OK);
    assert_true(ch.reset);
    assert_int_equal(ch.n, 0);
    int64_t next = ch.next;
    assert_int_equal(next, sql_int(path, "SELECT value FROM sequence WHERE name = 'rev'"));
    gt_store_changes_clear(&ch);
    /* from there on it goes on as usual */
    assert_int_equal(gt_store_delete(s, "things", "t3", GT_REV_ANY, NULL), GT_OK);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, next, 1000, &ch, NULL), GT_OK);
    assert_false(ch.reset);
    assert_int_equal(ch.n, 1);
    assert_string_equal(ch.v[0].id, "t3");
    assert_int_equal(ch.v[0].rev, 0);
    gt_store_changes_clear(&ch);
    /* a watcher within what is kept is not reset */
    int64_t rev = 0;
    put_ok(s, "things", "t4", "{}", &rev);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, rev - 2, 0, &ch, NULL), GT_OK);
    assert_false(ch.reset);
    assert_int_equal(ch.n, 2);
    gt_store_changes_clear(&ch);
    gt_store_free(&s);
    free(path);
}

/* A file made before the changes log (schema version 1) gets it on open. */
static void test_changes_schema_upgrade(void **state)
{
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    int64_t rev = 0;
    put_ok(s, "things", "a", "{}", &rev);
    gt_store_free(&s);
    sql_ok(path, "DROP TRIGGER changes_on_insert; DROP TRIGGER changes_on_update;"
                 " DROP TRIGGER changes_on_delete; DROP TABLE changes;"
                 " DELETE FROM sequence WHERE name LIKE 'changes_%'; PRAGMA user_version = 1");
    assert_non_null(s = open_path(path));
    gt_store_changes ch;
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, NULL), GT_OK);
    assert_int_equal(ch.next, rev);
    assert_int_equal(gt_store_delete(s, "things", "a", GT_REV_ANY, NULL), GT_OK);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, rev, 1000, &ch, NULL), GT_OK);
    assert_int_equal(ch.n, 1);
    assert_int_equal(ch.v[0].rev, 0);
    assert_true(ch.next > rev);
    gt_store_changes_clear(&ch);
    assert_int_equal(sql_int(path, "PRAGMA user_version"), 3);
    gt_store_free(&s);
    free(path);
}

/* A version 2 file (no counts) with an index and documents: opening it counts what it
 * holds, and the counts follow the writes after. */
static void test_counts_schema_upgrade(void **state)
{
    char *path = tmp_path(*state);
    gt_store *s = open_path(path);
    gt_error err = {0};
    assert_int_equal(gt_store_index(s, "things", "color", &err), GT_OK);
    put_ok(s, "things", "a", "{\"color\":\"red\"}", NULL);
    put_ok(s, "things", "b", "{\"color\":\"red\"}", NULL);
    put_ok(s, "things", "c", "{\"color\":\"blue\"}", NULL);
    put_ok(s, "things", "d", "{\"color\":7}", NULL);
    gt_store_free(&s);
    sql_ok(path, "DROP TRIGGER \"gt_cnt_i:color:things\"; DROP TRIGGER \"gt_cnt_u:color:things\";"
                 " DROP TRIGGER \"gt_cnt_d:color:things\"; DROP TABLE counts;"
                 " PRAGMA user_version = 2");
    assert_non_null(s = open_path(path));
    assert_int_equal(sql_int(path, "PRAGMA user_version"), 3);
    gt_store_filter red = {.field = "color", .eq = "red"}, blue = {.field = "color", .eq = "blue"};
    int64_t n = -1;
    assert_int_equal(gt_store_count(s, "things", &red, &n, &err), GT_OK);
    assert_int_equal(n, 2);
    put_ok(s, "things", "a", "{\"color\":\"blue\"}", NULL);
    assert_int_equal(gt_store_count(s, "things", &red, &n, &err), GT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(gt_store_count(s, "things", &blue, &n, &err), GT_OK);
    assert_int_equal(n, 2);
    /* a writer that bypasses the driver is counted too: the triggers are in the file */
    sql_ok(path, "DELETE FROM documents WHERE coll = 'things' AND id = 'c'");
    assert_int_equal(gt_store_count(s, "things", &blue, &n, &err), GT_OK);
    assert_int_equal(n, 1);
    gt_store_free(&s);
    free(path);
}

int main(void)
{
    tmp t = {.next = 0};
    snprintf(t.dir, sizeof t.dir, "/tmp/gantry-store-test-XXXXXX");
    if (mkdtemp(t.dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    int failed = gt_store_conformance_run("local", open_fresh, &t);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_reopen_persists, &t),
        cmocka_unit_test_prestate(test_file_layout, &t),
        cmocka_unit_test_prestate(test_cas_race_two_handles, &t),
        cmocka_unit_test_prestate(test_apply_race_two_handles, &t),
        cmocka_unit_test_prestate(test_range_plans, &t),
        cmocka_unit_test_prestate(test_counter_handles_and_threads, &t),
        cmocka_unit_test_prestate(test_processes_share_file, &t),
        cmocka_unit_test_prestate(test_writer_waits_for_lock, &t),
        cmocka_unit_test_prestate(test_garbage_file, &t),
        cmocka_unit_test_prestate(test_corrupt_file, &t),
        cmocka_unit_test_prestate(test_bad_paths, &t),
        cmocka_unit_test_prestate(test_changes_two_handles, &t),
        cmocka_unit_test_prestate(test_changes_from_another_process, &t),
        cmocka_unit_test_prestate(test_changes_trimmed, &t),
        cmocka_unit_test_prestate(test_changes_schema_upgrade, &t),
        cmocka_unit_test_prestate(test_counts_schema_upgrade, &t),
    };
    failed += cmocka_run_group_tests_name("store/local file", tests, NULL, NULL);
    gt_error err = {0};
    if (gt_rm_rf(t.dir, &err) != GT_OK)
        fprintf(stderr, "cleanup: %s\n", err.message);
    return failed ? 1 : 0;
}

/* The local store: one SQLite file shared by every process of a node (CLI runs,
 * daemons). WAL lets readers and one writer work at once; busy_timeout makes a second
 * writer wait instead of failing; every conditional write runs in BEGIN IMMEDIATE, so
 * read-check-write is atomic across processes.
 *
 * Durability: synchronous=FULL. In WAL mode NORMAL can lose the last commits on power
 * loss (never corrupts). The store records execution transitions before they are
 * announced and lease epochs that fence deposed leaders; a commit that is acked and
 * then forgotten would re-run work or hand out an epoch twice. FULL costs one fsync
 * per commit (see the report's figures), cheap next to what the gateway runs.
 *
 * Revisions come from one store-wide sequence (like etcd's revision), so a document
 * deleted and created again never gets back an old revision and a stale CAS fails.
 *
 * Thread-safety: a handle may be shared by threads; a mutex serialises its use (the
 * connection is opened SQLITE_OPEN_NOMUTEX because of that). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store_driver.h"
#include "util.h"

#ifndef GT_STORE_LOCAL_SYNCHRONOUS
#define GT_STORE_LOCAL_SYNCHRONOUS "FULL"   /* overridable only to measure NORMAL */
#endif

/* GATE_TIMEOUT_MS: the in-process queue (write_gate) moves as long as its writers commit;
 * it is as long because hundreds may queue behind a busy disk. */
enum { BUSY_TIMEOUT_MS = 5000, GATE_TIMEOUT_MS = 30000, SCHEMA_VERSION = 3 };

static const char SCHEMA_SQL[] =
    "CREATE TABLE IF NOT EXISTS documents ("
    " coll TEXT NOT NULL, id TEXT NOT NULL, rev INTEGER NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (coll, id));"
    "CREATE TABLE IF NOT EXISTS sequence (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO sequence (name, value) VALUES ('rev', 0);"
    "CREATE TABLE IF NOT EXISTS indexes ("
    " coll TEXT NOT NULL, field TEXT NOT NULL, PRIMARY KEY (coll, field));"
    "CREATE TABLE IF NOT EXISTS leases ("
    " name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL);";

/* Schema version 2: the changes log read by changes_wait. Triggers write it in the
 * transaction of every document write (whatever statement makes it), one row per
 * document holding its latest change: pos is the write's position in the revision
 * sequence (a delete takes a sequence value of its own, so it has a position too).
 * Rows more than changes_keep positions behind the newest are trimmed, and
 * changes_floor records up to where: a watcher further behind gets reset. */
#define CHANGES_TRIM                                                                      \
    " UPDATE sequence SET value = (SELECT max(pos) FROM changes) -"                       \
    "  (SELECT value FROM sequence WHERE name = 'changes_keep')"                          \
    "  WHERE name = 'changes_floor' AND value < (SELECT max(pos) FROM changes) -"         \
    "  (SELECT value FROM sequence WHERE name = 'changes_keep');"                         \
    " DELETE FROM changes WHERE pos <= (SELECT value FROM sequence WHERE name = 'changes_floor');"
#define CHANGES_PUT                                                                       \
    " DELETE FROM changes WHERE coll = NEW.coll AND id = NEW.id;"                         \
    " INSERT INTO changes (pos, coll, id, rev) VALUES (NEW.rev, NEW.coll, NEW.id, NEW.rev);" \
    CHANGES_TRIM
static const char CHANGES_SQL[] =
    "CREATE TABLE IF NOT EXISTS changes ("
    " pos INTEGER PRIMARY KEY, coll TEXT NOT NULL, id TEXT NOT NULL, rev INTEGER NOT NULL);"
    "CREATE UNIQUE INDEX IF NOT EXISTS changes_doc ON changes (coll, id);"
    "INSERT OR IGNORE INTO sequence (name, value) VALUES ('changes_floor', 0);"
    "INSERT OR IGNORE INTO sequence (name, value) VALUES ('changes_keep', 10000);"
    /* positions start at 1: since 0 asks for the current one, so it is none */
    "UPDATE sequence SET value = 1 WHERE name = 'rev' AND value = 0;"
    "CREATE TRIGGER IF NOT EXISTS changes_on_insert AFTER INSERT ON documents BEGIN"
    CHANGES_PUT " END;"
    "CREATE TRIGGER IF NOT EXISTS changes_on_update AFTER UPDATE ON documents BEGIN"
    CHANGES_PUT " END;"
    "CREATE TRIGGER IF NOT EXISTS changes_on_delete AFTER DELETE ON documents BEGIN"
    " UPDATE sequence SET value = value + 1 WHERE name = 'rev';"
    " DELETE FROM changes WHERE coll = OLD.coll AND id = OLD.id;"
    " INSERT INTO changes (pos, coll, id, rev) VALUES"
    "  ((SELECT value FROM sequence WHERE name = 'rev'), OLD.coll, OLD.id, 0);"
    CHANGES_TRIM " END;";
#undef CHANGES_PUT
#undef CHANGES_TRIM

/* Schema version 3: how many documents of a collection hold each string value of an
 * indexed field, kept by triggers per (collection, field) that count_sql creates with
 * the index. gt_store_count with eq reads one row, whatever the history's length;
 * counting index entries took 14 ms at 100,000 executions, for each state /metrics
 * shows. */
static const char COUNTS_SQL[] =
    "CREATE TABLE IF NOT EXISTS counts ("
    " coll TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,"
    " PRIMARY KEY (coll, field, value));";
static const char SQL_COUNT_EQ[] =
    "SELECT n FROM counts WHERE coll = ?1 AND field = ?2 AND value = ?3";

/* The triggers that keep counts for (coll, field), and its rows counted afresh. Names
 * as for the index (see local_index). free() it. */
static char *count_sql(const char *coll, const char *field)
{
#define CNT_V(row) "json_extract(" row ".body, '$.%2$s')"
#define CNT_TEXT(row) "json_type(" row ".body, '$.%2$s') = 'text'"
#define CNT_INC(row)                                                                      \
    " INSERT INTO counts (coll, field, value, n) SELECT '%1$s', '%2$s', " CNT_V(row) ", 1" \
    " WHERE " CNT_TEXT(row) " ON CONFLICT (coll, field, value) DO UPDATE SET n = n + 1;"
#define CNT_DEC(row)                                                                      \
    " UPDATE counts SET n = n - 1 WHERE coll = '%1$s' AND field = '%2$s' AND " CNT_TEXT(row) \
    " AND value = " CNT_V(row) ";"
    return gt_xasprintf(
        "CREATE TRIGGER IF NOT EXISTS \"gt_cnt_i:%2$s:%1$s\" AFTER INSERT ON documents"
        " WHEN NEW.coll = '%1$s' BEGIN" CNT_INC("NEW") " END;"
        "CREATE TRIGGER IF NOT EXISTS \"gt_cnt_u:%2$s:%1$s\" AFTER UPDATE ON documents"
        " WHEN NEW.coll = '%1$s' BEGIN" CNT_DEC("OLD") CNT_INC("NEW") " END;"
        "CREATE TRIGGER IF NOT EXISTS \"gt_cnt_d:%2$s:%1$s\" AFTER DELETE ON documents"
        " WHEN OLD.coll = '%1$s' BEGIN" CNT_DEC("OLD") " END;"
        "DELETE FROM counts WHERE coll = '%1$s' AND field = '%2$s';"
        "INSERT INTO counts (coll, field, value, n) SELECT '%1$s', '%2$s',"
        " json_extract(body, '$.%2$s'), count(*) FROM documents WHERE coll = '%1$s'"
        " AND json_type(body, '$.%2$s') = 'text' GROUP BY 3;",
        coll, field);
#undef CNT_V
#undef CNT_TEXT
#undef CNT_INC
#undef CNT_DEC
}

static const char SQL_BEGIN[] = "BEGIN IMMEDIATE";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";
static const char SQL_GET[] = "SELECT rev, body FROM documents WHERE coll = ?1 AND id = ?2";
static const char SQL_REV[] = "SELECT rev FROM documents WHERE coll = ?1 AND id = ?2";
static const char SQL_NEXT_REV[] =
    "UPDATE sequence SET value = value + 1 WHERE name = 'rev' RETURNING value";
static const char SQL_PUT[] =
    "INSERT INTO documents (coll, id, rev, body) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (coll, id) DO UPDATE SET rev = excluded.rev, body = excluded.body";
static const char SQL_DELETE[] = "DELETE FROM documents WHERE coll = ?1 AND id = ?2";
static const char SQL_INDEXED[] = "SELECT 1 FROM indexes WHERE coll = ?1 AND field = ?2";
static const char SQL_ADD_INDEX[] =
    "INSERT OR IGNORE INTO indexes (coll, field) VALUES (?1, ?2)";
static const char SQL_QUERY_ALL[] =
    "SELECT id, rev, body FROM documents WHERE coll = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
static const char SQL_QUERY_ALL_DESC[] =
    "SELECT id, rev, body FROM documents WHERE coll = ?1 AND (?2 IS NULL OR id < ?2)"
    " ORDER BY id DESC LIMIT ?3";
static const char SQL_LEASE_GET[] =
    "SELECT holder, epoch, expires_ms FROM leases WHERE name = ?1";
static const char SQL_LEASE_PUT[] =
    "INSERT INTO leases (name, holder, epoch, expires_ms) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch,"
    " expires_ms = excluded.expires_ms";

/* Prepared statements, keyed by their SQL: the fixed ones above and one per
 * (collection, field) query, whose SQL embeds both so the partial index applies. */
typedef struct local_stmt {
    char *sql;
    sqlite3_stmt *stmt;
    struct local_stmt *next;
} local_stmt;

/* Writers of one file in this process queue here, first come first served, before they
 * ask SQLite for its write lock. SQLite's busy handler polls with sleeps of up to 100 ms,
 * so among hundreds of writers (a runner of capacity 500) one can lose every round for
 * seconds; a lease renewal that loses so lets the lease lapse. Lease writes go ahead of
 * the queue. Between processes, SQLite's lock still decides. */
typedef struct gate_waiter {
    pthread_cond_t cv;
    bool go;                /* the gate was handed to this waiter */
    struct gate_waiter *next;
} gate_waiter;

typedef struct write_gate {
    char *path;
    int refs;               /* handles using it; guarded by gates_mu */
    struct write_gate *next;
    pthread_mutex_t mu;
    bool held;
    gate_waiter *head[2], *tail[2];   /* [0]: writes, [1]: lease writes */
} write_gate;

static pthread_mutex_t gates_mu = PTHREAD_MUTEX_INITIALIZER;
static write_gate *gates;

typedef struct local_store {
    gt_store base;
    pthread_mutex_t mu;
    sqlite3 *db;
    char *path;
    local_stmt *stmts;
    write_gate *gate;
    bool gated;             /* this handle holds its gate (inside a write transaction) */
    bool urgent;            /* it took a lease: all its writes go ahead (see tx_begin) */
    int64_t busy_since;     /* on_busy: when this wait for another process's lock began */
} local_store;

static write_gate *gate_ref(const char *path)
{
    pthread_mutex_lock(&gates_mu);
    write_gate *g = gates;
    while (g && strcmp(g->path, path) != 0)
        g = g->next;
    if (g == NULL) {
        g = gt_xcalloc(1, sizeof *g);
        g->path = gt_xstrdup(path);
        pthread_mutex_init(&g->mu, NULL);
        g->next = gates;
        gates = g;
    }
    g->refs++;
    pthread_mutex_unlock(&gates_mu);
    return g;
}

static void gate_unref(write_gate *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&gates_mu);
    if (--g->refs == 0) {
        write_gate **pp = &gates;
        while (*pp != g)
            pp = &(*pp)->next;
        *pp = g->next;
        pthread_mutex_destroy(&g->mu);
        free(g->path);
        free(g);
    }
    pthread_mutex_unlock(&gates_mu);
}

/* Waits for the gate, at most GATE_TIMEOUT_MS. */
static bool gate_enter(write_gate *g, int prio)
{
    pthread_mutex_lock(&g->mu);
    if (!g->held) {
        g->held = true;
        pthread_mutex_unlock(&g->mu);
        return true;
    }
    gate_waiter w = {.go = false};
    pthread_cond_init(&w.cv, NULL);
    if (g->tail[prio])
        g->tail[prio]->next = &w;
    else
        g->head[prio] = &w;
    g->tail[prio] = &w;
    int64_t until = gt_mono_ms() + GATE_TIMEOUT_MS;
    while (!w.go && gt_mono_ms() < until)
        gt_cond_wait_ms(&w.cv, &g->mu, until - gt_mono_ms());
    if (!w.go) {   /* timed out: leave the queue */
        gate_waiter **pp = &g->head[prio], *prev = NULL;
        while (*pp != &w) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        *pp = w.next;
        if (g->tail[prio] == &w)
            g->tail[prio] = prev;
    }
    pthread_mutex_unlock(&g->mu);
    pthread_cond_destroy(&w.cv);
    return w.go;
}

/* Hands the gate to the first lease writer, else the first writer, else frees it. */
static void gate_leave(write_gate *g)
{
    pthread_mutex_lock(&g->mu);
    int q = g->head[1] ? 1 : 0;
    gate_waiter *w = g->head[q];
    if (w) {
        g->head[q] = w->next;
        if (g->head[q] == NULL)
            g->tail[q] = NULL;
        w->go = true;   /* held stays true: it passes to w */
        pthread_cond_signal(&w->cv);
    } else {
        g->held = false;
    }
    pthread_mutex_unlock(&g->mu);
}

static const gt_store_ops local_ops;

/* Maps a SQLite failure to a code and a message naming the file. */
static gt_err db_fail(local_store *ls, int rc, const char *what, gt_error *err)
{
    const char *msg = ls->db ? sqlite3_errmsg(ls->db) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return gt_error_set(err, GT_EAGAIN, "%s: %s: busy for %d ms (%s)", ls->path, what,
                            BUSY_TIMEOUT_MS, msg);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return gt_error_set(err, GT_EIO, "%s: not a usable Gantry store: %s", ls->path, msg);
    case SQLITE_NOMEM:
        return gt_error_set(err, GT_ENOMEM, "%s: %s: %s", ls->path, what, msg);
    default:
        return gt_error_set(err, GT_EIO, "%s: %s: %s", ls->path, what, msg);
    }
}

static gt_err prepare(local_store *ls, const char *sql, sqlite3_stmt **out, gt_error *err)
{
    for (local_stmt **pp = &ls->stmts; *pp; pp = &(*pp)->next) {
        local_stmt *c = *pp;
        if (strcmp(c->sql, sql) == 0) {
            *pp = c->next;   /* to the front: the next look finds it first */
            c->next = ls->stmts;
            ls->stmts = c;
            *out = c->stmt;
            return GT_OK;
        }
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(ls->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(ls, rc, "prepare", err);
    local_stmt *c = gt_xmalloc(sizeof *c);
    c->sql = gt_xstrdup(sql);
    c->stmt = st;
    c->next = ls->stmts;
    ls->stmts = c;
    *out = st;
    return GT_OK;
}

/* prepare() for SQL whose "coll = ?1" names the collection: the name goes into the text
 * instead. Bound, it would make SQLite prepare the statement anew on every step: the
 * documents table has partial indexes (WHERE coll = '...'), so the planner's choice
 * depends on ?1, and SQLite re-plans whenever such a parameter is bound again. store.c
 * limits collection names to characters that need no quoting inside '...'. ?1 may still
 * be bound; it is then unused. */
static gt_err prepare_coll(local_store *ls, const char *sql, const char *coll,
                           sqlite3_stmt **out, gt_error *err)
{
    const char *at = strstr(sql, "coll = ?1");
    if (at == NULL)
        return prepare(ls, sql, out, err);
    char *text = gt_xasprintf("%.*scoll = '%s'%s", (int)(at - sql), sql, coll,
                              at + strlen("coll = ?1"));
    gt_err rc = prepare(ls, text, out, err);
    free(text);
    return rc;
}

/* Returns a cached statement to a clean state; accepts NULL. */
static void release(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

static void bind_str(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Runs a statement with no result rows. */
static gt_err exec_simple(local_store *ls, const char *sql, const char *what, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, sql, &st, err);
    if (rc == GT_OK) {
        int src = sqlite3_step(st);
        if (src != SQLITE_DONE && src != SQLITE_ROW)
            rc = db_fail(ls, src, what, err);
    }
    release(st);
    return rc;
}

/* A write transaction. A handle that takes leases (a runner's heartbeat, a controller's
 * or scheduler's role) keeps its holder alive: all its writes (the registry record beside
 * each renewal too) go ahead of the queue (see write_gate), or one stuck behind hundreds
 * of run writes delays the next renewal. */
static gt_err tx_begin(local_store *ls, gt_error *err)
{
    if (!gate_enter(ls->gate, ls->urgent))
        return gt_error_set(err, GT_EAGAIN, "%s: begin: busy for %d ms (queued behind this "
                            "process's other writers)", ls->path, GATE_TIMEOUT_MS);
    ls->gated = true;
    gt_err rc = exec_simple(ls, SQL_BEGIN, "begin", err);
    if (rc != GT_OK) {
        ls->gated = false;
        gate_leave(ls->gate);
    }
    return rc;
}

static gt_err tx_done(local_store *ls, gt_err rc)
{
    if (ls->gated) {
        ls->gated = false;
        gate_leave(ls->gate);
    }
    return rc;
}

/* Commits when rc is GT_OK, else rolls back; returns the first failure. */
static gt_err tx_end(local_store *ls, gt_err rc, gt_error *err)
{
    if (rc == GT_OK) {
        rc = exec_simple(ls, SQL_COMMIT, "commit", err);
        if (rc == GT_OK)
            return tx_done(ls, GT_OK);
    }
    if (!sqlite3_get_autocommit(ls->db))
        exec_simple(ls, SQL_ROLLBACK, "rollback", NULL);
    return tx_done(ls, rc);
}

/* Reads the stored revision of coll/id, if any. */
static gt_err read_rev(local_store *ls, const char *coll, const char *id, bool *exists,
                       int64_t *rev, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare_coll(ls, SQL_REV, coll, &st, err);
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, id);
    int src = sqlite3_step(st);
    *exists = src == SQLITE_ROW;
    if (src == SQLITE_ROW)
        *rev = sqlite3_column_int64(st, 0);
    else if (src != SQLITE_DONE)
        rc = db_fail(ls, src, "read", err);
done:
    release(st);
    return rc;
}

static gt_err next_rev(local_store *ls, int64_t *rev, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, SQL_NEXT_REV, &st, err);
    if (rc != GT_OK)
        goto done;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *rev = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(ls, src == SQLITE_DONE ? SQLITE_CORRUPT : src, "next revision", err);
done:
    release(st);
    return rc;
}

/* ---- open / close ---- */

static gt_err schema_version(local_store *ls, int64_t *version, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, "PRAGMA user_version", &st, err);
    if (rc == GT_OK) {
        int src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            *version = sqlite3_column_int64(st, 0);
        else
            rc = db_fail(ls, src, "read schema version", err);
    }
    release(st);
    return rc;
}

/* Version 2 to 3: counts for the indexes a file already has. */
static int count_existing(local_store *ls, char **errmsg)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(ls->db, "SELECT coll, field FROM indexes", -1, &st, NULL);
    while (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        char *sql = count_sql((const char *)sqlite3_column_text(st, 0),
                              (const char *)sqlite3_column_text(st, 1));
        src = sqlite3_exec(ls->db, sql, NULL, NULL, errmsg);
        free(sql);
    }
    sqlite3_finalize(st);
    return src == SQLITE_DONE ? SQLITE_OK : src;
}

static gt_err open_schema(local_store *ls, gt_error *err)
{
    char *errmsg = NULL;
    int64_t have = 0;
    /* the usual case, a current file, needs no write lock: hundreds of handles open at
     * once in a full runner */
    if (schema_version(ls, &have, NULL) == GT_OK && have == SCHEMA_VERSION)
        return GT_OK;
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        return rc;
    int64_t version = 0;
    if ((rc = schema_version(ls, &version, err)) != GT_OK)
        goto done;
    int src;
    if (version > SCHEMA_VERSION) {
        rc = gt_error_set(err, GT_EIO, "%s: schema version %" PRId64 " is newer than this "
                          "Gantry's (%d)", ls->path, version, SCHEMA_VERSION);
        goto done;
    }
    if (version < SCHEMA_VERSION) {
        src = sqlite3_exec(ls->db, SCHEMA_SQL, NULL, NULL, &errmsg);
        if (src == SQLITE_OK)
            src = sqlite3_exec(ls->db, CHANGES_SQL, NULL, NULL, &errmsg);
        if (src == SQLITE_OK)
            src = sqlite3_exec(ls->db, COUNTS_SQL, NULL, NULL, &errmsg);
        if (src == SQLITE_OK && version < 3)
            src = count_existing(ls, &errmsg);
        if (src == SQLITE_OK)
            src = sqlite3_exec(ls->db, "PRAGMA user_version = 3", NULL, NULL, &errmsg);
        if (src != SQLITE_OK) {
            rc = db_fail(ls, src, "create schema", err);
            goto done;
        }
    }
done:
    sqlite3_free(errmsg);
    return tx_end(ls, rc, err);
}

static gt_err open_pragmas(local_store *ls, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, "PRAGMA journal_mode = WAL", &st, err);
    if (rc != GT_OK)
        goto done;
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = db_fail(ls, src, "set WAL mode", err);
        goto done;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        rc = gt_error_set(err, GT_EIO, "%s: cannot use WAL journal mode (got %s)", ls->path,
                          mode ? mode : "nothing");
        goto done;
    }
    rc = exec_simple(ls, "PRAGMA synchronous = " GT_STORE_LOCAL_SYNCHRONOUS, "set synchronous",
                     err);
done:
    release(st);
    return rc;
}

/* Another process holds the write lock. SQLite's own busy_timeout sleeps up to 100 ms
 * between looks; a writer that looks so seldom loses every round to a process that
 * writes without pause (a controller taking a flood of submissions), and a runner's lease
 * renewal among them lets the lease lapse. With write_gate, one writer per process
 * waits here, so looking every millisecond costs little. */
static int on_busy(void *arg, int count)
{
    local_store *ls = arg;
    int64_t now = gt_mono_ms();
    if (count == 0)
        ls->busy_since = now;
    if (now - ls->busy_since >= BUSY_TIMEOUT_MS)
        return 0;
    struct timespec ts = {0, count < 20 ? 250000L : 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

gt_store *gt_store_open_local(const char *path, gt_error *err)
{
    local_store *ls = NULL;
    if (path == NULL || path[0] == '\0') {
        gt_error_setf(err, GT_EINVAL, "path", "store: no database path");
        goto fail;
    }
    /* Create the file ourselves so it is 0600 from the start; SQLite gives its -wal
     * and -shm files the database file's mode. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        gt_error_set(err, GT_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);

    ls = gt_xcalloc(1, sizeof *ls);
    ls->base.ops = &local_ops;
    ls->path = gt_xstrdup(path);
    ls->gate = gate_ref(path);
    pthread_mutex_init(&ls->mu, NULL);
    int src = sqlite3_open_v2(path, &ls->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        db_fail(ls, src, "open", err);
        goto fail;
    }
    sqlite3_extended_result_codes(ls->db, 1);
    sqlite3_busy_handler(ls->db, on_busy, ls);
    if (open_pragmas(ls, err) != GT_OK || open_schema(ls, err) != GT_OK)
        goto fail;
    return &ls->base;
fail:
    if (ls)
        local_ops.close(&ls->base);
    return NULL;
}

static void local_close(gt_store *s)
{
    local_store *ls = (local_store *)s;
    local_stmt *c = ls->stmts;
    while (c) {
        local_stmt *next = c->next;
        sqlite3_finalize(c->stmt);
        free(c->sql);
        free(c);
        c = next;
    }
    sqlite3_close(ls->db);   /* NULL is a no-op; all statements are finalized */
    pthread_mutex_destroy(&ls->mu);
    gate_unref(ls->gate);
    free(ls->path);
    free(ls);
}

/* ---- documents ---- */

static gt_err is_indexed(local_store *ls, const char *coll, const char *field, bool *yes,
                         gt_error *err);

static gt_err local_index(gt_store *s, const char *coll, const char *field, gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    char *ddl = NULL, *errmsg = NULL;
    bool have = false;
    pthread_mutex_lock(&ls->mu);
    /* declared already (the usual case, every handle declares its indexes on open): no
     * write lock needed; the registry row and the index were committed together */
    gt_err rc = is_indexed(ls, coll, field, &have, NULL);
    if (rc == GT_OK && have)
        goto unlock;
    rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    if ((rc = prepare(ls, SQL_ADD_INDEX, &st, err)) != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, field);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE) {
        rc = db_fail(ls, src, "declare index", err);
        goto done;
    }
    /* A partial expression index per (collection, field); store.c limits both names
     * to characters that need no quoting inside '...' and "...". ':' appears in
     * neither, so index names cannot collide. */
    ddl = sqlite3_mprintf("CREATE INDEX IF NOT EXISTS \"gt_ix:%s:%s\" ON documents"
                          " (json_extract(body, '$.%s'), id) WHERE coll = '%s'",
                          field, coll, field, coll);
    if (ddl == NULL) {
        rc = gt_error_set(err, GT_ENOMEM, "%s: out of memory", ls->path);
        goto done;
    }
    src = sqlite3_exec(ls->db, ddl, NULL, NULL, &errmsg);
    if (src == SQLITE_OK) {
        char *counting = count_sql(coll, field);
        src = sqlite3_exec(ls->db, counting, NULL, NULL, &errmsg);
        free(counting);
    }
    if (src != SQLITE_OK)
        rc = db_fail(ls, src, "create index", err);
done:
    release(st);
    rc = tx_end(ls, rc, err);
unlock:
    pthread_mutex_unlock(&ls->mu);
    sqlite3_free(ddl);
    sqlite3_free(errmsg);
    return rc;
}

static gt_err local_get(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                        gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&ls->mu);
    gt_err rc = prepare_coll(ls, SQL_GET, coll, &st, err);
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, id);
    int src = sqlite3_step(st);
    if (src == SQLITE_DONE) {
        rc = gt_error_set(err, GT_ENOTFOUND, "%s/%s: not found", coll, id);
    } else if (src != SQLITE_ROW) {
        rc = db_fail(ls, src, "read", err);
    } else {
        *rev = sqlite3_column_int64(st, 0);
        const char *text = (const char *)sqlite3_column_text(st, 1);
        *body = gt_xstrndup(text ? text : "", (size_t)sqlite3_column_bytes(st, 1));
    }
done:
    release(st);
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

static gt_err lease_read(local_store *ls, const char *name, gt_store_lease *cur,
                         char **holder_buf, gt_error *err);

/* The fence is read inside the write's BEGIN IMMEDIATE transaction, so no lease change
 * can come between the check and the write. */
static gt_err fence_check(local_store *ls, const gt_store_fence *f, gt_error *err)
{
    gt_store_lease cur;
    char *holder = NULL;
    gt_err rc = lease_read(ls, f->name, &cur, &holder, err);
    if (rc == GT_OK)
        rc = gt_store__fence_check(f, &cur, gt_now_ms(), err);
    free(holder);
    return rc;
}

/* Stores coll/id = body at the next revision (*rev); inside the caller's transaction. */
static gt_err write_doc(local_store *ls, const char *coll, const char *id, const char *body,
                        int64_t *rev, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc;
    if ((rc = next_rev(ls, rev, err)) != GT_OK || (rc = prepare(ls, SQL_PUT, &st, err)) != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, id);
    sqlite3_bind_int64(st, 3, *rev);
    bind_str(st, 4, body);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = db_fail(ls, src, "write", err);
done:
    release(st);
    return rc;
}

/* Deletes coll/id; inside the caller's transaction. */
static gt_err remove_doc(local_store *ls, const char *coll, const char *id, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare_coll(ls, SQL_DELETE, coll, &st, err);
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, id);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = db_fail(ls, src, "delete", err);
done:
    release(st);
    return rc;
}

static gt_err local_put(gt_store *s, const char *coll, const char *id, const char *body,
                        int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                        gt_error *err)
{
    local_store *ls = (local_store *)s;
    bool exists = false;
    int64_t cur = 0, rev = 0;
    pthread_mutex_lock(&ls->mu);
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    if ((fence && (rc = fence_check(ls, fence, err)) != GT_OK) ||
        (rc = read_rev(ls, coll, id, &exists, &cur, err)) != GT_OK ||
        (rc = gt_store__check_rev(coll, id, exists, cur, expect_rev, false, err)) != GT_OK)
        goto done;
    rc = write_doc(ls, coll, id, body, &rev, err);
done:
    rc = tx_end(ls, rc, err);
    if (rc == GT_OK)
        *new_rev = rev;
unlock:
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

static gt_err local_del(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                        gt_error *err)
{
    local_store *ls = (local_store *)s;
    bool exists = false;
    int64_t cur = 0;
    pthread_mutex_lock(&ls->mu);
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    if ((rc = read_rev(ls, coll, id, &exists, &cur, err)) == GT_OK &&
        (rc = gt_store__check_rev(coll, id, exists, cur, expect_rev, true, err)) == GT_OK)
        rc = remove_doc(ls, coll, id, err);
    rc = tx_end(ls, rc, err);
unlock:
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

static gt_err is_indexed(local_store *ls, const char *coll, const char *field, bool *yes,
                         gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, SQL_INDEXED, &st, err);
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, coll);
    bind_str(st, 2, field);
    int src = sqlite3_step(st);
    *yes = src == SQLITE_ROW;
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        rc = db_fail(ls, src, "read indexes", err);
done:
    release(st);
    return rc;
}

static gt_err local_query(gt_store *s, const char *coll, const char *field, const char *value,
                          const char *cursor, size_t limit, bool descending, gt_store_page *page,
                          gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    char *sql = NULL;
    bool indexed = true;
    pthread_mutex_lock(&ls->mu);
    gt_err rc = GT_OK;
    if (field == NULL) {
        rc = prepare_coll(ls, descending ? SQL_QUERY_ALL_DESC : SQL_QUERY_ALL, coll, &st, err);
    } else {
        if ((rc = is_indexed(ls, coll, field, &indexed, err)) != GT_OK)
            goto done;
        if (!indexed) {
            rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                               field);
            goto done;
        }
        /* The expression and the coll term must match the index text for the planner;
         * json_type keeps numbers and objects from matching their text. */
        sql = descending
                  ? gt_xasprintf("SELECT id, rev, body FROM documents WHERE coll = '%s'"
                                 " AND json_extract(body, '$.%s') = ?1 AND (?2 IS NULL OR id < ?2)"
                                 " AND json_type(body, '$.%s') = 'text' ORDER BY id DESC LIMIT ?3",
                                 coll, field, field)
                  : gt_xasprintf("SELECT id, rev, body FROM documents WHERE coll = '%s'"
                                 " AND json_extract(body, '$.%s') = ?1 AND id > ?2"
                                 " AND json_type(body, '$.%s') = 'text' ORDER BY id LIMIT ?3",
                                 coll, field, field);
        rc = prepare(ls, sql, &st, err);
    }
    if (rc != GT_OK)
        goto done;
    int p = 1;
    if (field == NULL)
        bind_str(st, p++, coll);
    else
        bind_str(st, p++, value);
    if (descending && cursor == NULL)
        sqlite3_bind_null(st, p++);            /* no upper bound */
    else
        bind_str(st, p++, cursor ? cursor : ""); /* ids are never empty */
    sqlite3_bind_int64(st, p, (int64_t)limit + 1);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (page->n == limit) {
            gt_store__page_more(page);
            break;
        }
        const char *id = (const char *)sqlite3_column_text(st, 0);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 0);
        const char *body = (const char *)sqlite3_column_text(st, 2);
        size_t body_len = (size_t)sqlite3_column_bytes(st, 2);
        gt_store__page_add(page, id ? id : "", id_len, body ? body : "", body_len,
                           sqlite3_column_int64(st, 1));
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        rc = db_fail(ls, src, "query", err);
done:
    release(st);
    pthread_mutex_unlock(&ls->mu);
    free(sql);
    return rc;
}

/* ---- range queries, counts, apply ---- */

/* FROM and WHERE of a query on a field (format args: field, coll, coll). The coll term
 * matches the partial index's, and INDEXED BY names that index, so a range on the
 * field is not planned over the primary key (SQLite keeps no statistics here). The
 * field's expression must be written as in the index: json_extract(body, '$.<field>'). */
#define FIELD_FROM "documents INDEXED BY \"gt_ix:%s:%s\" WHERE coll = '%s'"

/* Whether strings in [lo, hi) can start with '[' or '{': json_extract gives an object
 * or an array as its JSON text, and only json_type, which reads the body, tells those
 * apart from a string. Other values are never TEXT: the lower bound ('' when open)
 * leaves out numbers, booleans and null, which SQLite orders before any text. */
static bool range_may_hold_containers(const char *lo, const char *hi)
{
    const char *l = lo ? lo : "";
    return (strcmp(l, "\\") < 0 && (hi == NULL || strcmp(hi, "[") > 0)) ||
           (strcmp(l, "|") < 0 && (hi == NULL || strcmp(hi, "{") > 0));
}

static gt_err local_query_range(gt_store *s, const char *coll, const char *field, const char *lo,
                                const char *hi, const char *cursor, size_t limit,
                                gt_store_page *page, gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    char *sql = NULL, *cv = NULL, *cid = NULL, *last_v = NULL;
    bool indexed = true;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ls->mu);
    if (cursor &&
        (rc = gt_store__range_cursor_parse(coll, field, cursor, &cv, &cid, err)) != GT_OK)
        goto done;
    if (field == NULL) {
        sql = gt_xasprintf("SELECT id, rev, body, id FROM documents WHERE coll = ?1"
                           " AND id >= ?2%s%s ORDER BY id LIMIT ?6",
                           hi ? " AND id < ?3" : "", cv ? " AND id > ?5" : "");
    } else {
        if ((rc = is_indexed(ls, coll, field, &indexed, err)) != GT_OK)
            goto done;
        if (!indexed) {
            rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                               field);
            goto done;
        }
        char *v = gt_xasprintf("json_extract(body, '$.%s')", field);
        char *upper = hi ? gt_xasprintf(" AND %s < ?3", v) : gt_xstrdup("");
        char *after = cv ? gt_xasprintf(" AND (%s, id) > (?4, ?5)", v) : gt_xstrdup("");
        sql = gt_xasprintf("SELECT id, rev, body, %s FROM " FIELD_FROM " AND %s >= ?2%s%s"
                           " AND json_type(body, '$.%s') = 'text' ORDER BY %s, id LIMIT ?6",
                           v, field, coll, coll, v, upper, after, field, v);
        free(v);
        free(upper);
        free(after);
    }
    if ((rc = prepare_coll(ls, sql, coll, &st, err)) != GT_OK)
        goto done;
    /* ?1..?6 all exist: the LIMIT is ?6 */
    bind_str(st, 1, coll);
    bind_str(st, 2, lo ? lo : "");
    bind_str(st, 3, hi);
    bind_str(st, 4, cv);
    bind_str(st, 5, cid);
    sqlite3_bind_int64(st, 6, (int64_t)limit + 1);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        if (page->n == limit) {
            page->next_cursor = gt_store__range_cursor(last_v, page->items[page->n - 1].id);
            break;
        }
        const char *body = (const char *)sqlite3_column_text(st, 2);
        const char *v = (const char *)sqlite3_column_text(st, 3);
        gt_store__page_add(page, id ? id : "", (size_t)sqlite3_column_bytes(st, 0),
                           body ? body : "", (size_t)sqlite3_column_bytes(st, 2),
                           sqlite3_column_int64(st, 1));
        free(last_v);
        last_v = gt_xstrndup(v ? v : "", (size_t)sqlite3_column_bytes(st, 3));
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        rc = db_fail(ls, src, "range query", err);
done:
    release(st);
    pthread_mutex_unlock(&ls->mu);
    free(sql);
    free(cv);
    free(cid);
    free(last_v);
    return rc;
}

/* count(*) over the primary key or the field's index: the bodies are not read, except
 * those json_type must look at (range_may_hold_containers). */
static gt_err local_count(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                          gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    char *sql = NULL;
    bool indexed = true;
    gt_err rc = GT_OK;
    const char *lo = f->eq ? f->eq : f->lo;
    pthread_mutex_lock(&ls->mu);
    if (f->field && (rc = is_indexed(ls, coll, f->field, &indexed, err)) != GT_OK)
        goto done;
    if (!indexed) {
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                           f->field);
        goto done;
    }
    if (f->field && f->eq && !f->hi) {
        /* one value: its row of counts (none: 0) */
        if ((rc = prepare(ls, SQL_COUNT_EQ, &st, err)) != GT_OK)
            goto done;
        bind_str(st, 1, coll);
        bind_str(st, 2, f->field);
        bind_str(st, 3, f->eq);
        int src = sqlite3_step(st);
        *n = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        if (src != SQLITE_ROW && src != SQLITE_DONE)
            rc = db_fail(ls, src, "count", err);
        goto done;
    }
    if (f->field == NULL) {
        sql = gt_xasprintf("SELECT count(*) FROM documents WHERE coll = ?1%s%s",
                           f->lo ? " AND id >= ?2" : "", f->hi ? " AND id < ?3" : "");
    } else {
        bool containers = f->eq ? f->eq[0] == '[' || f->eq[0] == '{'
                                : range_may_hold_containers(f->lo, f->hi);
        char *v = gt_xasprintf("json_extract(body, '$.%s')", f->field);
        char *upper = f->hi ? gt_xasprintf(" AND %s < ?3", v) : gt_xstrdup("");
        char *type = containers ? gt_xasprintf(" AND json_type(body, '$.%s') = 'text'", f->field)
                                : gt_xstrdup("");
        sql = gt_xasprintf("SELECT count(*) FROM " FIELD_FROM " AND %s %s ?2%s%s", f->field,
                           coll, coll, v, f->eq ? "=" : ">=", upper, type);
        free(v);
        free(upper);
        free(type);
    }
    if ((rc = prepare_coll(ls, sql, coll, &st, err)) != GT_OK)
        goto done;
    /* binding a parameter the statement lacks is SQLITE_RANGE, harmless here */
    bind_str(st, 1, coll);
    bind_str(st, 2, lo ? lo : "");
    bind_str(st, 3, f->hi);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *n = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(ls, src, "count", err);
done:
    release(st);
    pthread_mutex_unlock(&ls->mu);
    free(sql);
    return rc;
}

/* One BEGIN IMMEDIATE transaction: the fence and every revision are checked, then
 * every write made; any failure rolls all of it back. SQLite keeps the expression
 * indexes in step. */
static gt_err local_apply(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                          gt_error *err)
{
    local_store *ls = (local_store *)s;
    int64_t revs[GT_STORE_MAX_OPS] = {0};
    pthread_mutex_lock(&ls->mu);
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    if (fence && (rc = fence_check(ls, fence, err)) != GT_OK)
        goto done;
    for (size_t i = 0; i < n; i++) {
        bool exists = false;
        int64_t cur = 0;
        if ((rc = read_rev(ls, ops[i].coll, ops[i].id, &exists, &cur, err)) != GT_OK ||
            (rc = gt_store__check_op(&ops[i], i, exists, cur, err)) != GT_OK)
            goto done;
    }
    for (size_t i = 0; i < n && rc == GT_OK; i++) {
        if (ops[i].kind == GT_STORE_OP_PUT)
            rc = write_doc(ls, ops[i].coll, ops[i].id, ops[i].body, &revs[i], err);
        else if (ops[i].kind == GT_STORE_OP_DELETE)
            rc = remove_doc(ls, ops[i].coll, ops[i].id, err);
    }
done:
    rc = tx_end(ls, rc, err);
    for (size_t i = 0; rc == GT_OK && i < n; i++)
        ops[i].new_rev = revs[i];
unlock:
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

/* ---- leases ---- */

/* Reads a lease into *cur; holder is copied into *holder_buf (caller frees). */
static gt_err lease_read(local_store *ls, const char *name, gt_store_lease *cur,
                         char **holder_buf, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, SQL_LEASE_GET, &st, err);
    *cur = (gt_store_lease){"", 0, 0};
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, name);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        *holder_buf = gt_xstrdup(h ? h : "");
        cur->holder = *holder_buf;
        cur->epoch = sqlite3_column_int64(st, 1);
        cur->expires_ms = sqlite3_column_int64(st, 2);
    } else if (src != SQLITE_DONE) {
        rc = db_fail(ls, src, "read lease", err);
    }
done:
    release(st);
    return rc;
}

static gt_err lease_write(local_store *ls, const char *name, const gt_store_lease *l,
                          gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, SQL_LEASE_PUT, &st, err);
    if (rc != GT_OK)
        goto done;
    bind_str(st, 1, name);
    bind_str(st, 2, l->holder);
    sqlite3_bind_int64(st, 3, l->epoch);
    sqlite3_bind_int64(st, 4, l->expires_ms);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = db_fail(ls, src, "write lease", err);
done:
    release(st);
    return rc;
}

static gt_err local_lease_acquire(gt_store *s, const char *name, const char *holder,
                                  int64_t ttl_ms, int64_t *epoch, gt_error *err)
{
    local_store *ls = (local_store *)s;
    char *cur_holder = NULL;
    gt_store_lease cur, next = {"", 0, 0};
    pthread_mutex_lock(&ls->mu);
    ls->urgent = true;
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    /* Read the clock only once the write lock is ours: waiting for it must not
     * shorten the term. */
    if ((rc = lease_read(ls, name, &cur, &cur_holder, err)) != GT_OK ||
        (rc = gt_store__lease_take(name, &cur, holder, gt_now_ms(), ttl_ms, &next, err)) != GT_OK)
        goto done;
    rc = lease_write(ls, name, &next, err);
done:
    rc = tx_end(ls, rc, err);
    if (rc == GT_OK)
        *epoch = next.epoch;
unlock:
    pthread_mutex_unlock(&ls->mu);
    free(cur_holder);
    return rc;
}

static gt_err local_lease_release(gt_store *s, const char *name, const char *holder,
                                  gt_error *err)
{
    local_store *ls = (local_store *)s;
    char *cur_holder = NULL;
    gt_store_lease cur;
    bool store_free = false;
    pthread_mutex_lock(&ls->mu);
    ls->urgent = true;
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        goto unlock;
    if ((rc = lease_read(ls, name, &cur, &cur_holder, err)) != GT_OK ||
        (rc = gt_store__lease_give(name, &cur, holder, gt_now_ms(), &store_free, err)) != GT_OK)
        goto done;
    if (store_free) {
        gt_store_lease freed = {"", cur.epoch, 0};
        rc = lease_write(ls, name, &freed, err);
    }
done:
    rc = tx_end(ls, rc, err);
unlock:
    pthread_mutex_unlock(&ls->mu);
    free(cur_holder);
    return rc;
}

/* ---- change notification ---- */

enum { CHANGES_POLL_MS = 25, CHANGES_MAX = 1000 };

static const char SQL_CHANGES_POS[] = "SELECT value FROM sequence WHERE name = 'rev'";
static const char SQL_CHANGES_FLOOR[] =
    "SELECT value FROM sequence WHERE name = 'changes_floor'";

/* Reads one integer (the first column of the first row) of a cached statement. */
static gt_err read_int(local_store *ls, const char *sql, int64_t *out, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, sql, &st, err);
    if (rc != GT_OK)
        goto done;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(ls, src == SQLITE_DONE ? SQLITE_CORRUPT : src, "read changes", err);
done:
    release(st);
    return rc;
}

/* One look at the log, in one read transaction so the position and the rows agree.
 * *pos is the current position; out gets the rows after since (reset when the log no
 * longer reaches back to since). */
static gt_err changes_read(local_store *ls, const char *const *colls, size_t n_colls,
                           int64_t since, int64_t *pos, gt_store_changes *out, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_buf sql = {0};
    int64_t floor = 0;
    gt_err rc = exec_simple(ls, "BEGIN", "begin", err);
    if (rc != GT_OK)
        return rc;
    if ((rc = read_int(ls, SQL_CHANGES_POS, pos, err)) != GT_OK || since == 0 || *pos <= since)
        goto done;
    if ((rc = read_int(ls, SQL_CHANGES_FLOOR, &floor, err)) != GT_OK)
        goto done;
    if (since < floor) {
        out->reset = true;
        goto done;
    }
    gt_buf_puts(&sql, "SELECT pos, coll, id, rev FROM changes WHERE pos > ?1");
    for (size_t i = 0; i < n_colls; i++)   /* numbered: a bare ? would take number 2 */
        gt_buf_printf(&sql, "%s?%zu", i == 0 ? " AND coll IN (" : ", ", i + 3);
    gt_buf_puts(&sql, n_colls ? ") ORDER BY pos LIMIT ?2" : " ORDER BY pos LIMIT ?2");
    rc = prepare(ls, sql.data, &st, err);
    if (rc != GT_OK)
        goto done;
    sqlite3_bind_int64(st, 1, since);
    sqlite3_bind_int64(st, 2, CHANGES_MAX + 1);
    for (size_t i = 0; i < n_colls; i++)
        bind_str(st, (int)i + 3, colls[i]);
    size_t cap = 0;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == CHANGES_MAX) {   /* more follow: go on after the last one given */
            *pos = out->next;
            break;
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 16;
            out->v = gt_xrealloc(out->v, cap * sizeof *out->v);
        }
        const char *coll = (const char *)sqlite3_column_text(st, 1);
        const char *id = (const char *)sqlite3_column_text(st, 2);
        out->v[out->n++] = (gt_store_change){gt_xstrdup(coll ? coll : ""),
                                             gt_xstrdup(id ? id : ""),
                                             sqlite3_column_int64(st, 3)};
        out->next = sqlite3_column_int64(st, 0);
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        rc = db_fail(ls, src, "read changes", err);
done:
    release(st);
    gt_buf_free(&sql);
    return tx_end(ls, rc, err);
}

/* Polls the log: another process's commit shows only in the file, and a look costs
 * one indexed read of the sequence row (the rows are read only when it moved). */
static gt_err local_changes_wait(gt_store *s, const char *const *colls, size_t n_colls,
                                 int64_t since, long wait_ms, gt_store_changes *out,
                                 gt_error *err)
{
    local_store *ls = (local_store *)s;
    int64_t deadline = gt_mono_ms() + wait_ms, pos = 0, seen = -1;
    gt_err rc = GT_OK;
    for (;;) {
        pthread_mutex_lock(&ls->mu);
        if (seen < 0 || since == 0) {
            rc = changes_read(ls, colls, n_colls, since, &pos, out, err);
        } else {
            rc = read_int(ls, SQL_CHANGES_POS, &pos, err);
            if (rc == GT_OK && pos != seen)
                rc = changes_read(ls, colls, n_colls, since, &pos, out, err);
        }
        pthread_mutex_unlock(&ls->mu);
        if (rc != GT_OK)
            return rc;
        seen = pos;
        if (since == 0 || out->reset || out->n > 0) {
            out->next = pos > out->next ? pos : out->next;
            return GT_OK;
        }
        int64_t left = deadline - gt_mono_ms();
        if (left <= 0)
            break;
        struct timespec ts = {0, (left < CHANGES_POLL_MS ? left : CHANGES_POLL_MS) * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* nothing for these collections: the writes to others up to pos are behind us */
    out->next = pos > since ? pos : since;
    return GT_OK;
}

static const gt_store_ops local_ops = {
    .name = "local",
    .close = local_close,
    .index = local_index,
    .get = local_get,
    .put = local_put,
    .del = local_del,
    .query = local_query,
    .lease_acquire = local_lease_acquire,
    .lease_release = local_lease_release,
    .query_range = local_query_range,
    .count = local_count,
    .apply = local_apply,
    .changes_wait = local_changes_wait,
};

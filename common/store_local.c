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
#include <unistd.h>

#include "store_driver.h"
#include "util.h"

#ifndef GT_STORE_LOCAL_SYNCHRONOUS
#define GT_STORE_LOCAL_SYNCHRONOUS "FULL"   /* overridable only to measure NORMAL */
#endif

enum { BUSY_TIMEOUT_MS = 5000, SCHEMA_VERSION = 1 };

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

typedef struct local_store {
    gt_store base;
    pthread_mutex_t mu;
    sqlite3 *db;
    char *path;
    local_stmt *stmts;
} local_store;

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
    for (local_stmt *c = ls->stmts; c; c = c->next) {
        if (strcmp(c->sql, sql) == 0) {
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

static gt_err tx_begin(local_store *ls, gt_error *err)
{
    return exec_simple(ls, SQL_BEGIN, "begin", err);
}

/* Commits when rc is GT_OK, else rolls back; returns the first failure. */
static gt_err tx_end(local_store *ls, gt_err rc, gt_error *err)
{
    if (rc == GT_OK) {
        rc = exec_simple(ls, SQL_COMMIT, "commit", err);
        if (rc == GT_OK)
            return GT_OK;
    }
    if (!sqlite3_get_autocommit(ls->db))
        exec_simple(ls, SQL_ROLLBACK, "rollback", NULL);
    return rc;
}

/* Reads the stored revision of coll/id, if any. */
static gt_err read_rev(local_store *ls, const char *coll, const char *id, bool *exists,
                       int64_t *rev, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    gt_err rc = prepare(ls, SQL_REV, &st, err);
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

static gt_err open_schema(local_store *ls, gt_error *err)
{
    sqlite3_stmt *st = NULL;
    char *errmsg = NULL;
    gt_err rc = tx_begin(ls, err);
    if (rc != GT_OK)
        return rc;
    int64_t version = 0;
    if ((rc = prepare(ls, "PRAGMA user_version", &st, err)) != GT_OK)
        goto done;
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        rc = db_fail(ls, src, "read schema version", err);
        goto done;
    }
    version = sqlite3_column_int64(st, 0);
    if (version > SCHEMA_VERSION) {
        rc = gt_error_set(err, GT_EIO, "%s: schema version %" PRId64 " is newer than this "
                          "Gantry's (%d)", ls->path, version, SCHEMA_VERSION);
        goto done;
    }
    if (version < SCHEMA_VERSION) {
        src = sqlite3_exec(ls->db, SCHEMA_SQL, NULL, NULL, &errmsg);
        if (src == SQLITE_OK)
            src = sqlite3_exec(ls->db, "PRAGMA user_version = 1", NULL, NULL, &errmsg);
        if (src != SQLITE_OK) {
            rc = db_fail(ls, src, "create schema", err);
            goto done;
        }
    }
done:
    release(st);
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
    pthread_mutex_init(&ls->mu, NULL);
    int src = sqlite3_open_v2(path, &ls->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        db_fail(ls, src, "open", err);
        goto fail;
    }
    sqlite3_extended_result_codes(ls->db, 1);
    sqlite3_busy_timeout(ls->db, BUSY_TIMEOUT_MS);
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
    free(ls->path);
    free(ls);
}

/* ---- documents ---- */

static gt_err local_index(gt_store *s, const char *coll, const char *field, gt_error *err)
{
    local_store *ls = (local_store *)s;
    sqlite3_stmt *st = NULL;
    char *ddl = NULL, *errmsg = NULL;
    pthread_mutex_lock(&ls->mu);
    gt_err rc = tx_begin(ls, err);
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
    gt_err rc = prepare(ls, SQL_GET, &st, err);
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
    gt_err rc = prepare(ls, SQL_DELETE, &st, err);
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
        rc = prepare(ls, descending ? SQL_QUERY_ALL_DESC : SQL_QUERY_ALL, &st, err);
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
    if ((rc = prepare(ls, sql, &st, err)) != GT_OK)
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
    if (f->field == NULL) {
        sql = gt_xasprintf("SELECT count(*) FROM documents WHERE coll = ?1%s%s",
                           f->lo ? " AND id >= ?2" : "", f->hi ? " AND id < ?3" : "");
    } else {
        if ((rc = is_indexed(ls, coll, f->field, &indexed, err)) != GT_OK)
            goto done;
        if (!indexed) {
            rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                               f->field);
            goto done;
        }
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
    if ((rc = prepare(ls, sql, &st, err)) != GT_OK)
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
};

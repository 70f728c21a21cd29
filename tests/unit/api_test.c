/* api.c and model/: routing, validation, references, errors, on a memory store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "json.h"
#include "log.h"
#include "model/model.h"
#include "store.h"
#include "util.h"

typedef struct fx {
    gt_store *store;
    gt_api *api;
    gt_run_options run;
    char dir[64];
    char *key;
} fx;

static int setup(void **state)
{
    fx *f = gt_xcalloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/gt-api-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->key = gt_path_join(f->dir, "secrets.key");
    f->store = gt_store_open_memory(NULL);
    f->run.working_dir = f->dir;
    gt_api_deps d = {.store = f->store, .key_file = f->key, .run = &f->run};
    f->api = gt_api_new(&d, NULL);
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    *state = f;
    return f->api ? 0 : -1;
}

static int teardown(void **state)
{
    fx *f = *state;
    gt_api_free(&f->api);
    gt_store_free(&f->store);
    gt_rm_rf(f->dir, NULL);
    free(f->key);
    free(f);
    return 0;
}

/* Sends a request; returns the status; *body (may be NULL) receives the body. */
static int req(fx *f, const char *method, const char *path, const char *query, const char *body,
               cJSON **out)
{
    gt_api_response r = {0};
    gt_api_handle(f->api, method, path, query, body, body ? strlen(body) : 0, &r);
    assert_non_null(r.body);
    int status = r.status;
    if (out)
        *out = r.body;
    else
        cJSON_Delete(r.body);
    return status;
}

static const char *err_field(const cJSON *b)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "error"),
                                                      "field");
    return cJSON_IsString(f) ? f->valuestring : "";
}

static const char *err_msg(const cJSON *b)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "error"),
                                                      "message");
    return cJSON_IsString(m) ? m->valuestring : "";
}

static void test_routes_and_methods(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "GET", "/api/v1/widgets", NULL, NULL, NULL), 404);
    assert_int_equal(req(f, "GET", "/nope", NULL, NULL, NULL), 404);
    assert_int_equal(req(f, "PUT", "/api/v1/services", NULL, "{}", NULL), 405);
    assert_int_equal(req(f, "GET", "relative", NULL, NULL, NULL), 400);
    assert_int_equal(req(f, "GET", "/api//v1", NULL, NULL, NULL), 400);
    assert_int_equal(req(f, "GET", "/api/v1/services/%zz", NULL, NULL, NULL), 400);
    assert_int_equal(req(f, "GET", "/api/v1/services", "limit=0", NULL, &b), 400);
    assert_string_equal(err_field(b), "limit");
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/services", "colour=red", NULL, &b), 400);
    assert_non_null(strstr(err_msg(b), "colour"));
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/services", "limit=5&cursor=a%20b", NULL, &b), 200);
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(b, "items")));
    cJSON_Delete(b);
    const gt_api_route_info *r = gt_api_routes();
    int n = 0;
    while (r[n].method)
        n++;
    assert_true(n >= 8);
}

static void test_bodies(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL, NULL, &b), 400);
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL, "{\"name\": ", &b), 400);
    assert_non_null(strstr(err_msg(b), "request body:1:"));
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL, "[1]", &b), 400);
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/x\",\"colour\":1}", &b), 400);
    assert_string_equal(err_field(b), "$.colour");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"r\",\"url\":7}", &b),
                     400);
    assert_string_equal(err_field(b), "$.url");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"a/b\",\"url\":\"/x\"}",
                         &b), 400);
    assert_string_equal(err_field(b), "$.name");
    cJSON_Delete(b);
    /* nothing was stored by any of that */
    assert_int_equal(req(f, "GET", "/api/v1/repositories", NULL, NULL, &b), 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "items")), 0);
    cJSON_Delete(b);
}

static void test_crud_and_references(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"git@example.com:a/b.git\"}", &b), 201);
    assert_true(cJSON_GetObjectItemCaseSensitive(b, "revision")->valuedouble >= 1);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(b, "created_at"));
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/x\"}", NULL), 409);
    const char *svc = "{\"name\":\"s\",\"type\":\"python-script\",\"repository\":\"r\","
                      "\"filename\":\"m.py\",\"decorator\":\"d\"}";
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL, svc, &b), 400);
    assert_string_equal(err_field(b), "$.decorator");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/decorators", NULL,
                         "{\"name\":\"d\",\"schema\":{\"type\":\"object\"}}", NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL, svc, NULL), 201);
    assert_int_equal(req(f, "DELETE", "/api/v1/repositories/r", NULL, NULL, &b), 409);
    assert_non_null(strstr(err_msg(b), "service s"));
    cJSON_Delete(b);
    assert_int_equal(req(f, "DELETE", "/api/v1/decorators/d", NULL, NULL, NULL), 409);
    /* patch: merge, null removes, the name cannot change, validation runs on the result */
    assert_int_equal(req(f, "PATCH", "/api/v1/services/s", NULL, "{\"decorator\":null,\"timeout\":9}",
                         &b), 200);
    assert_null(cJSON_GetObjectItemCaseSensitive(b, "decorator"));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(b, "timeout")->valueint, 9);
    cJSON_Delete(b);
    assert_int_equal(req(f, "PATCH", "/api/v1/services/s", NULL, "{\"name\":\"t\"}", NULL), 400);
    assert_int_equal(req(f, "PATCH", "/api/v1/services/s", NULL, "{\"type\":\"executable\","
                         "\"playbooks\":[\"x\"]}", &b), 400);
    assert_string_equal(err_field(b), "$.playbooks");
    cJSON_Delete(b);
    assert_int_equal(req(f, "PATCH", "/api/v1/services/nope", NULL, "{\"timeout\":1}", NULL), 404);
    assert_int_equal(req(f, "DELETE", "/api/v1/decorators/d", NULL, NULL, NULL), 200);
    assert_int_equal(req(f, "DELETE", "/api/v1/services/s", NULL, NULL, NULL), 200);
    assert_int_equal(req(f, "DELETE", "/api/v1/services/s", NULL, NULL, NULL), 404);
    assert_int_equal(req(f, "DELETE", "/api/v1/repositories/r", NULL, NULL, NULL), 200);
}

static void test_secrets_are_write_only(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"k\"}", &b), 400);
    assert_string_equal(err_field(b), "$.value");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"k\",\"value\":\"p4ss\"}",
                         &b), 201);
    char *text = gt_json_print(b);
    assert_null(strstr(text, "p4ss"));
    assert_null(strstr(text, "sealed"));
    free(text);
    cJSON_Delete(b);
    assert_true(gt_file_exists(f->key)); /* generated: not configured explicitly */
    char *raw = NULL;
    assert_int_equal(gt_store_get(f->store, "secrets", "k", &raw, NULL, NULL), GT_OK);
    assert_null(strstr(raw, "p4ss"));
    assert_non_null(strstr(raw, "\"sealed\":\"gt2:")); /* new seals are gt2 */
    free(raw);
    assert_int_equal(req(f, "GET", "/api/v1/secrets", NULL, NULL, &b), 200);
    text = gt_json_print(b);
    assert_null(strstr(text, "sealed"));
    free(text);
    cJSON_Delete(b);
    /* a repository's key must exist */
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/x\",\"private_key_name\":\"nope\"}", &b), 400);
    assert_string_equal(err_field(b), "$.private_key_name");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/x\",\"private_key_name\":\"k\"}", NULL), 201);
    assert_int_equal(req(f, "DELETE", "/api/v1/secrets/k", NULL, NULL, &b), 409);
    assert_non_null(strstr(err_msg(b), "repository r"));
    cJSON_Delete(b);
}

static void test_run_validation_before_anything_runs(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/services/none/run", NULL, NULL, &b), 404);
    cJSON_Delete(b);
    req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL);
    req(f, "POST", "/api/v1/decorators", NULL,
        "{\"name\":\"d\",\"schema\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":"
        "\"integer\",\"minimum\":3}},\"required\":[\"n\"]}}", NULL);
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL,
                         "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                         "\"filename\":\"x\",\"decorator\":\"d\"}", NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/services/s/run", NULL, "{\"inputs\":{\"n\":\"2\"}}", &b),
                     400);
    assert_string_equal(err_field(b), "$.inputs.n");
    assert_non_null(strstr(err_msg(b), "$.inputs.n: "));
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/services/s/run", NULL, "{\"inputs\":[]}", &b), 400);
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/services/s/run", NULL, "{\"bogus\":1}", &b), 400);
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/services/s/run", NULL,
                         "{\"inputs\":{\"n\":5},\"secrets\":[{\"name\":\"missing\",\"target\":\"X\"}]}",
                         &b), 400);
    assert_string_equal(err_field(b), "$.secrets[0].name");
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/executions", NULL, NULL, &b), 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "items")), 0);
    cJSON_Delete(b);
    /* a valid run of an unreachable repository is recorded as failed, with the reason */
    assert_int_equal(req(f, "POST", "/api/v1/services/s/run", NULL, "{\"inputs\":{\"n\":\"5\"}}", &b),
                     201);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring, "failed");
    assert_non_null(strstr(cJSON_GetObjectItemCaseSensitive(b, "error")->valuestring, "fetching"));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "inputs"),
                                                      "n")->valueint, 5);
    const char *id = cJSON_GetObjectItemCaseSensitive(b, "id")->valuestring;
    char *path = gt_xasprintf("/api/v1/executions/%s", id);
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", path, NULL, NULL, &b), 200);
    assert_null(cJSON_GetObjectItemCaseSensitive(b, "owner_pid"));
    cJSON_Delete(b);
    free(path);
    assert_int_equal(req(f, "GET", "/api/v1/executions", "state=failed&service=s", NULL, &b), 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "items")), 1);
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/executions", "state=succeeded&service=s", NULL, &b), 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "items")), 0);
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/executions", "state=sleeping", NULL, NULL), 400);
    assert_int_equal(req(f, "GET", "/api/v1/executions/NOPE", NULL, NULL, NULL), 404);
}

static void test_reaper_marks_dead_owners_lost(void **state)
{
    fx *f = *state;
    /* an execution owned by a process that no longer exists */
    const char *doc = "{\"id\":\"01AAAAAAAAAAAAAAAAAAAAAAAA\",\"service\":\"s\",\"state\":\"running\","
                      "\"runner\":\"local\",\"owner_pid\":999999999,\"owner_start\":1}";
    assert_int_equal(gt_store_put(f->store, "executions", "01AAAAAAAAAAAAAAAAAAAAAAAA", doc,
                                  GT_REV_NONE, NULL, NULL), GT_OK);
    /* and one owned by us, alive */
    char *mine = gt_xasprintf("{\"id\":\"01BBBBBBBBBBBBBBBBBBBBBBBB\",\"service\":\"s\","
                              "\"state\":\"running\",\"runner\":\"local\",\"owner_pid\":%d,"
                              "\"owner_start\":-5}", (int)getpid());
    assert_int_equal(gt_store_put(f->store, "executions", "01BBBBBBBBBBBBBBBBBBBBBBBB", mine,
                                  GT_REV_NONE, NULL, NULL), GT_OK);
    free(mine);
    /* ours has a wrong start time: it is a recycled pid, so lost too */
    assert_int_equal(gt_api_reap_local(f->api), 2);
    assert_int_equal(gt_api_reap_local(f->api), 0);
    cJSON *b = NULL;
    assert_int_equal(req(f, "GET", "/api/v1/executions/01AAAAAAAAAAAAAAAAAAAAAAAA", NULL, NULL, &b),
                     200);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring, "lost");
    cJSON_Delete(b);
}

static gt_err record_dispatch(void *arg, const cJSON *ex, gt_error *err);
static gt_err record_dispatch_fwd(void *arg, const cJSON *ex, gt_error *err)
{
    return record_dispatch(arg, ex, err);
}

/* Every execution of a dead owner is reaped, however many there are (not a first page). */
static void test_reaper_reads_every_page(void **state)
{
    fx *f = *state;
    for (int i = 0; i < 1205; i++) {
        char id[32], *doc;
        snprintf(id, sizeof id, "01C%023d", i);
        doc = gt_xasprintf("{\"id\":\"%s\",\"service\":\"s\",\"state\":\"%s\","
                           "\"runner\":\"local\",\"owner_pid\":999999999,\"owner_start\":1}",
                           id, i % 2 ? "running" : "accepted");
        assert_int_equal(gt_store_put(f->store, "executions", id, doc, GT_REV_NONE, NULL, NULL),
                         GT_OK);
        free(doc);
    }
    assert_int_equal(gt_api_reap_local(f->api), 1205);
    assert_int_equal(gt_api_reap_local(f->api), 0);
    gt_store_page page = {0};
    assert_int_equal(gt_store_query(f->store, "executions", "state", "lost", NULL, 10000, &page,
                                    NULL), GT_OK);
    assert_int_equal(page.n, 1205);
    gt_store_page_clear(&page);
}

/* A malformed stored execution is failed, not dereferenced. */
static void test_malformed_execution(void **state)
{
    fx *f = *state;
    assert_int_equal(gt_store_put(f->store, "executions", "01DDDDDDDDDDDDDDDDDDDDDDDD",
                                  "{\"state\":\"queued\",\"attempt\":1}", GT_REV_NONE, NULL, NULL),
                     GT_OK);
    assert_int_equal(gt_api_execute(f->api, "01DDDDDDDDDDDDDDDDDDDDDDDD", 1, NULL), GT_OK);
    cJSON *b = NULL;
    assert_int_equal(req(f, "GET", "/api/v1/executions/01DDDDDDDDDDDDDDDDDDDDDDDD", NULL, NULL, &b),
                     200);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring, "failed");
    assert_non_null(strstr(cJSON_GetObjectItemCaseSensitive(b, "error")->valuestring, "malformed"));
    cJSON_Delete(b);
    assert_int_equal(gt_store_put(f->store, "executions", "01EEEEEEEEEEEEEEEEEEEEEEEE", "{}",
                                  GT_REV_NONE, NULL, NULL), GT_OK);
    assert_int_equal(req(f, "POST", "/api/v1/executions/01EEEEEEEEEEEEEEEEEEEEEEEE/cancel", NULL,
                         NULL, NULL), 500);
}

static gt_err broker_away(void *arg, const cJSON *ex, gt_error *err)
{
    (void)arg;
    (void)ex;
    return gt_error_set(err, GT_EUNAVAIL, "the broker is away");
}

/* Queued work the broker did not take stays queued (durable: the sweeper announces it);
 * the client is told 202, never an error for a run that will happen. */
static void test_queued_survives_a_failed_dispatch(void **state)
{
    fx *f = *state;
    gt_api_deps d = {.store = f->store, .key_file = f->key, .run = &f->run,
                     .dispatch = broker_away, .queued = true};
    gt_api *server = gt_api_new(&d, NULL);
    req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL);
    req(f, "POST", "/api/v1/services", NULL,
        "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"x\"}", NULL);
    gt_api_response r = {0};
    gt_api_handle(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(r.body, "state")->valuestring, "queued");
    gt_api_response_clear(&r);
    gt_api_free(&server);
}

/* The same Idempotency-Key for the same service names one execution, whatever happens. */
static void test_idempotency_key(void **state)
{
    fx *f = *state;
    gt_strv ids = {0};
    gt_api_deps d = {.store = f->store, .key_file = f->key, .run = &f->run,
                     .dispatch = record_dispatch_fwd, .dispatch_arg = &ids, .queued = true};
    gt_api *server = gt_api_new(&d, NULL);
    req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL);
    req(f, "POST", "/api/v1/services", NULL,
        "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"x\"}", NULL);
    req(f, "POST", "/api/v1/services", NULL,
        "{\"name\":\"t\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"x\"}", NULL);
    gt_api_response a = {0}, b = {0}, c = {0}, bad = {0};
    gt_api_handle_key(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, "key-1", &a);
    gt_api_handle_key(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, "key-1", &b);
    gt_api_handle_key(server, "POST", "/api/v1/services/t/run", NULL, NULL, 0, "key-1", &c);
    assert_int_equal(a.status, 202);
    assert_int_equal(b.status, 200);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b.body, "idempotent_replay")));
    const char *ida = cJSON_GetObjectItemCaseSensitive(a.body, "id")->valuestring;
    assert_string_equal(ida, cJSON_GetObjectItemCaseSensitive(b.body, "id")->valuestring);
    assert_string_not_equal(ida, cJSON_GetObjectItemCaseSensitive(c.body, "id")->valuestring);
    assert_int_equal(ids.n, 2); /* announced once per execution, not per request */
    gt_api_handle_key(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, "bad\nkey", &bad);
    assert_int_equal(bad.status, 400);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(bad.body, "error"), "field")->valuestring,
                        "Idempotency-Key");
    /* the same key with another body: 422, and nothing new runs */
    gt_api_response other = {0}, later = {0};
    const char *body = "{\"inputs\":{\"x\":1}}";
    gt_api_handle_key(server, "POST", "/api/v1/services/s/run", NULL, body, strlen(body), "key-1",
                      &other);
    assert_int_equal(other.status, 422);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(other.body, "error"), "field")->valuestring,
                        "Idempotency-Key");
    assert_int_equal(ids.n, 2);
    /* a key older than 24 hours starts a new run */
    gt_store_page page;
    assert_int_equal(gt_store_query(f->store, "idempotency", NULL, NULL, NULL, 100, &page, NULL),
                     GT_OK);
    for (size_t i = 0; i < page.n; i++) {
        cJSON *doc = cJSON_Parse(page.items[i].body);
        cJSON_ReplaceItemInObject(doc, "created_ms", cJSON_CreateNumber(1000));
        char *t = cJSON_PrintUnformatted(doc);
        assert_int_equal(gt_store_put(f->store, "idempotency", page.items[i].id, t,
                                      page.items[i].rev, NULL, NULL), GT_OK);
        free(t);
        cJSON_Delete(doc);
    }
    gt_store_page_clear(&page);
    gt_api_handle_key(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, "key-1", &later);
    assert_int_equal(later.status, 202);
    assert_string_not_equal(ida, cJSON_GetObjectItemCaseSensitive(later.body, "id")->valuestring);
    assert_int_equal(ids.n, 3);
    gt_api_response_clear(&a);
    gt_api_response_clear(&b);
    gt_api_response_clear(&c);
    gt_api_response_clear(&bad);
    gt_api_response_clear(&other);
    gt_api_response_clear(&later);
    gt_strv_free(&ids);
    gt_api_free(&server);
}

static gt_err record_dispatch(void *arg, const cJSON *ex, gt_error *err)
{
    (void)err;
    gt_strv *ids = arg;
    gt_strv_push(ids, cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring);
    return GT_OK;
}

static void test_dispatched_runs(void **state)
{
    fx *f = *state;
    gt_strv ids = {0};
    gt_api_deps d = {.store = f->store, .key_file = f->key, .run = &f->run,
                     .dispatch = record_dispatch, .dispatch_arg = &ids};
    gt_api *server = gt_api_new(&d, NULL);
    req(f, "POST", "/api/v1/repositories", NULL, "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL);
    req(f, "POST", "/api/v1/services", NULL,
        "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"x\"}", NULL);
    gt_api_response r = {0};
    const char *body = "{\"secrets\":[{\"name\":\"nope\",\"target\":\"X\"}]}";
    gt_api_handle(server, "POST", "/api/v1/services/s/run", NULL, body, strlen(body), &r);
    assert_int_equal(r.status, 400); /* a missing secret is refused before acceptance */
    gt_api_response_clear(&r);
    gt_api_handle(server, "POST", "/api/v1/services/s/run", NULL, NULL, 0, &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(r.body, "state")->valuestring, "accepted");
    assert_int_equal(ids.n, 1);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(r.body, "id")->valuestring, ids.v[0]);
    gt_api_response_clear(&r);
    /* the worker runs it to its end; a second call (a redelivery) changes nothing */
    assert_int_equal(gt_api_execute(f->api, ids.v[0], 0, NULL), GT_OK);
    char *path = gt_xasprintf("/api/v1/executions/%s", ids.v[0]);
    cJSON *b = NULL;
    assert_int_equal(req(f, "GET", path, NULL, NULL, &b), 200);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring, "failed");
    int64_t rev = (int64_t)cJSON_GetObjectItemCaseSensitive(b, "revision")->valuedouble;
    cJSON_Delete(b);
    assert_int_equal(gt_api_execute(f->api, ids.v[0], 0, NULL), GT_OK);
    assert_int_equal(req(f, "GET", path, NULL, NULL, &b), 200);
    assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(b, "revision")->valuedouble, rev);
    cJSON_Delete(b);
    assert_int_equal(gt_api_execute(f->api, "01ZZZZZZZZZZZZZZZZZZZZZZZZ", 0, NULL), GT_ENOTFOUND);
    free(path);
    gt_strv_free(&ids);
    gt_api_free(&server);
}

static void test_model_validation(void **state)
{
    (void)state;
    struct { const char *json; const char *field; } bad[] = {
        {"{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\"}", "$.filename"},
        {"{\"name\":\"s\",\"type\":\"ansible-playbook\",\"repository\":\"r\"}", "$.playbooks"},
        {"{\"name\":\"s\",\"type\":\"ansible-playbook\",\"repository\":\"r\",\"playbooks\":[\"/etc/x\"]}",
         "$.playbooks[0]"},
        {"{\"name\":\"s\",\"type\":\"python-script\",\"repository\":\"r\",\"filename\":\"a/../../b\"}",
         "$.filename"},
        {"{\"name\":\"s\",\"type\":\"python-script\",\"repository\":\"r\",\"filename\":\"a\","
         "\"timeout\":1.5}", "$.timeout"},
        {"{\"name\":\"s\",\"type\":\"python-script\",\"repository\":\"r\",\"filename\":\"a\","
         "\"inventory\":\"x\"}", "$.inventory"},
        {"{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"a\","
         "\"secrets\":[{\"name\":\"k\"}]}", "$.secrets[0].target"},
        {"{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"a\","
         "\"env\":{\"A\":1}}", "$.env.A"},
        {"{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":\"a\","
         "\"retries\":101}", "$.retries"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *doc = cJSON_Parse(bad[i].json);
        gt_error e = {0};
        assert_int_equal(gt_model_service.validate(doc, &e), GT_EINVAL);
        if (strcmp(e.field, bad[i].field) != 0)
            fail_msg("case %zu: field %s, want %s (%s)", i, e.field, bad[i].field, e.message);
        cJSON_Delete(doc);
    }
    cJSON *doc = cJSON_Parse("{\"name\":\"s\",\"type\":\"ansible-playbook\",\"repository\":\"r\","
                             "\"filename\":\"site.yml\"}");
    assert_int_equal(gt_model_service.validate(doc, NULL), GT_OK);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "playbooks"), 0)
                            ->valuestring, "site.yml");
    cJSON_Delete(doc);
    assert_ptr_equal(gt_model_find("service"), &gt_model_service);
    assert_ptr_equal(gt_model_find("secrets"), &gt_model_secret);
    assert_null(gt_model_find("users"));
    char *id = NULL, *msg = gt_execution_message("01ABC", 2);
    int64_t attempt = 0;
    assert_int_equal(gt_execution_message_parse(msg, strlen(msg), &id, &attempt, NULL), GT_OK);
    assert_string_equal(id, "01ABC");
    assert_int_equal(attempt, 2);
    free(id);
    free(msg);
    const char *bad_msgs[] = {"", "[]", "{\"id\":\"x\"}", "{\"id\":\"x\",\"attempt\":0}",
                         "{\"id\":\"a/b\",\"attempt\":1}", "{\"id\":\"x\",\"attempt\":1,\"more\":1}"};
    for (size_t i = 0; i < sizeof bad_msgs / sizeof bad_msgs[0]; i++) {
        gt_error e = {0};
        assert_int_equal(gt_execution_message_parse(bad_msgs[i], strlen(bad_msgs[i]), &id, &attempt, &e),
                         GT_EINVAL);
        assert_true(e.message[0] != '\0');
    }
    assert_true(gt_execution_state_terminal("lost"));
    assert_false(gt_execution_state_terminal("running"));
    assert_false(gt_execution_state_valid("paused"));
}

/* A run's environment never takes loader, interpreter or tool settings: not as a
 * secret's target (service bindings and run requests), not as a service's env key. */
static void test_env_denylist(void **state)
{
    (void)state;
    static const char *const refused[] = {
        "LD_PRELOAD", "LD_LIBRARY_PATH", "ld_audit", "PYTHONWARNINGS", "PYTHONPATH",
        "PYTHONSTARTUP", "PERL5OPT", "PERLLIB", "RUBYOPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS", "BASH_ENV", "ENV", "BASHOPTS", "SHELLOPTS", "PS4", "IFS", "CDPATH",
        "PATH", "Path", "HOME", "TMPDIR", "TZ", "LANG", "LC_ALL", "LANGUAGE", "GIT_SSH_COMMAND",
        "ANSIBLE_CONFIG", "SSH_ASKPASS", "GANTRY_EXECUTION_ID", "GCONV_PATH", "GLIBC_TUNABLES",
        "MALLOC_CHECK_", "OPENSSL_CONF", "SSL_CERT_FILE", "CURL_CA_BUNDLE", NULL};
    static const char *const fine[] = {"API_TOKEN", "DB_PASSWORD", "http_proxy", "HTTPS_PROXY",
                                       "no_proxy", "PATHS", "HOMER", "ENVIRONMENT", "LANGS",
                                       "TZ_NAME", "MY_LD_PRELOAD", NULL};
    for (size_t i = 0; refused[i]; i++) {
        char *json = gt_xasprintf("{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                                  "\"filename\":\"a\",\"secrets\":[{\"name\":\"k\",\"target\":\"OK\"},"
                                  "{\"name\":\"k\",\"type\":\"env\",\"target\":\"%s\"}]}", refused[i]);
        cJSON *doc = cJSON_Parse(json);
        gt_error e = {0};
        assert_int_equal(gt_model_service.validate(doc, &e), GT_EINVAL);
        assert_string_equal(e.field, "$.secrets[1].target");
        char *quoted = gt_xasprintf("\"%s\" cannot receive a secret: ", refused[i]);
        if (strstr(e.message, quoted) == NULL)
            fail_msg("%s: message \"%s\"", refused[i], e.message);
        free(quoted);
        cJSON_Delete(doc);
        free(json);
        /* a run request's bindings go through the same check */
        json = gt_xasprintf("[{\"name\":\"k\",\"target\":\"%s\"}]", refused[i]);
        doc = cJSON_Parse(json);
        gt_error_clear(&e);
        assert_int_equal(gt_service_check_secrets(doc, "$.secrets", &e), GT_EINVAL);
        assert_string_equal(e.field, "$.secrets[0].target");
        cJSON_Delete(doc);
        free(json);
        /* and a service's plain env */
        json = gt_xasprintf("{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                            "\"filename\":\"a\",\"env\":{\"%s\":\"x\"}}", refused[i]);
        doc = cJSON_Parse(json);
        gt_error_clear(&e);
        assert_int_equal(gt_model_service.validate(doc, &e), GT_EINVAL);
        char *field = gt_xasprintf("$.env.%s", refused[i]);
        assert_string_equal(e.field, field);
        assert_non_null(strstr(e.message, "cannot be set by a service"));
        free(field);
        cJSON_Delete(doc);
        free(json);
        assert_non_null(gt_service_env_refused(refused[i], NULL));
    }
    for (size_t i = 0; fine[i]; i++) {
        char *json = gt_xasprintf("{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                                  "\"filename\":\"a\",\"env\":{\"%s\":\"x\"},"
                                  "\"secrets\":[{\"name\":\"k\",\"target\":\"%s\"}]}", fine[i], fine[i]);
        cJSON *doc = cJSON_Parse(json);
        gt_error e = {0};
        if (gt_model_service.validate(doc, &e) != GT_OK)
            fail_msg("%s refused: %s", fine[i], e.message);
        cJSON_Delete(doc);
        free(json);
        assert_null(gt_service_env_refused(fine[i], NULL));
    }
    /* the message says which rule and why */
    const char *pattern = NULL;
    assert_non_null(strstr(gt_service_env_refused("LD_PRELOAD", &pattern), "dynamic loader"));
    assert_string_equal(pattern, "LD_");
    cJSON *doc = cJSON_Parse("[{\"name\":\"dbpass\",\"type\":\"env\",\"target\":\"LD_PRELOAD\"}]");
    gt_error e = {0};
    assert_int_equal(gt_service_check_secrets(doc, "$.secrets", &e), GT_EINVAL);
    assert_string_equal(e.message, "$.secrets[0].target: \"LD_PRELOAD\" cannot receive a secret: "
                                   "LD_* is read by the dynamic loader");
    cJSON_Delete(doc);
}

static void test_allowed_secrets_validation(void **state)
{
    (void)state;
    struct { const char *allowed; const char *field; } bad[] = {
        {"\"k\"", "$.allowed_secrets"},
        {"{}", "$.allowed_secrets"},
        {"[\"k\",1]", "$.allowed_secrets[1]"},
        {"[\"bad/name\"]", "$.allowed_secrets[0]"},
        {"[\"\"]", "$.allowed_secrets[0]"},
        {"[null]", "$.allowed_secrets[0]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *json = gt_xasprintf("{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                                  "\"filename\":\"a\",\"allowed_secrets\":%s}", bad[i].allowed);
        cJSON *doc = cJSON_Parse(json);
        gt_error e = {0};
        assert_int_equal(gt_model_service.validate(doc, &e), GT_EINVAL);
        if (strcmp(e.field, bad[i].field) != 0)
            fail_msg("case %zu: field %s, want %s (%s)", i, e.field, bad[i].field, e.message);
        cJSON_Delete(doc);
        free(json);
    }
    cJSON *svc = cJSON_Parse("{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\","
                             "\"filename\":\"a\",\"allowed_secrets\":[\"granted\"],"
                             "\"secrets\":[{\"name\":\"own\",\"target\":\"OWN\"}]}");
    assert_int_equal(gt_model_service.validate(svc, NULL), GT_OK);
    assert_true(gt_service_grants_secret(svc, "granted"));
    assert_true(gt_service_grants_secret(svc, "own"));
    assert_false(gt_service_grants_secret(svc, "other"));
    assert_false(gt_service_grants_secret(svc, "OWN"));
    assert_false(gt_service_grants_secret(svc, NULL));
    cJSON_Delete(svc);
    svc = cJSON_Parse("{\"name\":\"s\",\"allowed_secrets\":null}");
    assert_false(gt_service_grants_secret(svc, "granted"));
    cJSON_Delete(svc);
}

static int run_with(fx *f, gt_api *api, const char *service, const char *body, cJSON **out)
{
    char *path = gt_xasprintf("/api/v1/services/%s/run", service);
    gt_api_response r = {0};
    gt_api_handle(api ? api : f->api, "POST", path, NULL, body, body ? strlen(body) : 0, &r);
    free(path);
    assert_non_null(r.body);
    int status = r.status;
    if (out)
        *out = r.body;
    else
        cJSON_Delete(r.body);
    return status;
}

/* A run request binds only secrets its service grants; the rest is 403, before anything
 * is recorded, inline and dispatched; and again on the worker. */
static void test_run_binds_only_granted_secrets(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"own\",\"value\":\"own-value\"}",
                         NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL,
                         "{\"name\":\"granted\",\"value\":\"granted-value\"}", NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"dbpass\",\"value\":\"hunter22\"}",
                         NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL), 201);
    /* a grant must name an existing secret */
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL,
                         "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":"
                         "\"x\",\"allowed_secrets\":[\"granted\",\"nope\"]}", &b), 400);
    assert_string_equal(err_field(b), "$.allowed_secrets[1]");
    cJSON_Delete(b);
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL,
                         "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":"
                         "\"x\",\"secrets\":[{\"name\":\"own\",\"target\":\"OWN\"}],"
                         "\"allowed_secrets\":[\"granted\"]}", NULL), 201);
    /* not granted: 403 naming the secret and the service, nothing recorded */
    assert_int_equal(run_with(f, NULL, "s", "{\"secrets\":[{\"name\":\"granted\",\"target\":\"G\"},"
                                            "{\"name\":\"dbpass\",\"type\":\"env\",\"target\":\"X\"}]}",
                              &b), 403);
    assert_string_equal(err_field(b), "$.secrets[1].name");
    assert_non_null(strstr(err_msg(b), "\"dbpass\""));
    assert_non_null(strstr(err_msg(b), "service \"s\""));
    cJSON_Delete(b);
    /* the attack as reported: refused for its target before the grant is looked at */
    assert_int_equal(run_with(f, NULL, "s", "{\"secrets\":[{\"name\":\"dbpass\",\"type\":\"env\","
                                            "\"target\":\"LD_PRELOAD\"}]}", &b), 400);
    assert_string_equal(err_field(b), "$.secrets[0].target");
    assert_non_null(strstr(err_msg(b), "LD_PRELOAD"));
    cJSON_Delete(b);
    /* a secret that does not exist stays a 400 */
    assert_int_equal(run_with(f, NULL, "s", "{\"secrets\":[{\"name\":\"missing\",\"target\":\"X\"}]}",
                              &b), 400);
    assert_string_equal(err_field(b), "$.secrets[0].name");
    cJSON_Delete(b);
    assert_int_equal(req(f, "GET", "/api/v1/executions", NULL, NULL, &b), 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "items")), 0);
    cJSON_Delete(b);
    /* granted ones (allowed_secrets, or the service's own) run */
    assert_int_equal(run_with(f, NULL, "s", "{\"secrets\":[{\"name\":\"granted\",\"target\":\"G\"},"
                                            "{\"name\":\"own\",\"target\":\"OWN2\"}]}", NULL), 201);
    /* a granted secret cannot be deleted */
    assert_int_equal(req(f, "DELETE", "/api/v1/secrets/granted", NULL, NULL, &b), 409);
    assert_non_null(strstr(err_msg(b), "service s"));
    cJSON_Delete(b);

    /* dispatched: refused before it is stored or announced */
    gt_strv ids = {0};
    gt_api_deps d = {.store = f->store, .key_file = f->key, .run = &f->run,
                     .dispatch = record_dispatch, .dispatch_arg = &ids};
    gt_api *server = gt_api_new(&d, NULL);
    assert_int_equal(run_with(f, server, "s", "{\"secrets\":[{\"name\":\"dbpass\",\"target\":\"X\"}]}",
                              &b), 403);
    assert_string_equal(err_field(b), "$.secrets[0].name");
    cJSON_Delete(b);
    assert_int_equal(ids.n, 0);
    /* accepted while granted, revoked before the worker runs it: it fails, unopened */
    assert_int_equal(run_with(f, server, "s", "{\"secrets\":[{\"name\":\"granted\",\"target\":\"G\"}]}",
                              NULL), 202);
    assert_int_equal(ids.n, 1);
    assert_int_equal(req(f, "PATCH", "/api/v1/services/s", NULL, "{\"allowed_secrets\":null}", NULL),
                     200);
    assert_int_equal(gt_api_execute(f->api, ids.v[0], 0, NULL), GT_OK);
    char *path = gt_xasprintf("/api/v1/executions/%s", ids.v[0]);
    assert_int_equal(req(f, "GET", path, NULL, NULL, &b), 200);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring, "failed");
    assert_non_null(strstr(cJSON_GetObjectItemCaseSensitive(b, "error")->valuestring,
                           "is not granted"));
    cJSON_Delete(b);
    free(path);
    /* once revoked, the secret can be deleted */
    assert_int_equal(req(f, "DELETE", "/api/v1/secrets/granted", NULL, NULL, NULL), 200);
    gt_strv_free(&ids);
    gt_api_free(&server);
}

/* A sealed value copied from one secret's record to another's does not open there. */
static void test_sealed_value_bound_to_its_name(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"a\",\"value\":\"value-of-a\"}",
                         NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"b\",\"value\":\"value-of-b\"}",
                         NULL), 201);
    char *raw_a = NULL, *raw_b = NULL;
    int64_t rev_b = 0;
    assert_int_equal(gt_store_get(f->store, "secrets", "a", &raw_a, NULL, NULL), GT_OK);
    assert_int_equal(gt_store_get(f->store, "secrets", "b", &raw_b, &rev_b, NULL), GT_OK);
    cJSON *da = cJSON_Parse(raw_a), *db = cJSON_Parse(raw_b);
    gt_json_set_str(db, "sealed", cJSON_GetObjectItemCaseSensitive(da, "sealed")->valuestring);
    char *moved = gt_json_print(db);
    assert_int_equal(gt_store_put(f->store, "secrets", "b", moved, rev_b, NULL, NULL), GT_OK);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/nonexistent\"}", NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL,
                         "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":"
                         "\"x\",\"secrets\":[{\"name\":\"b\",\"target\":\"B\"}]}", NULL), 201);
    assert_int_equal(run_with(f, NULL, "s", NULL, &b), 500);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "error"),
                                                         "code")->valuestring, "secret_key");
    assert_non_null(strstr(err_msg(b), "secret \"b\""));
    assert_non_null(strstr(err_msg(b), "sealed for another secret"));
    assert_null(strstr(err_msg(b), "value-of-a"));
    cJSON_Delete(b);
    free(moved);
    cJSON_Delete(da);
    cJSON_Delete(db);
    free(raw_a);
    free(raw_b);
}

/* What a run prints or fails with is masked before it is recorded: here the failure
 * message of a fetch, which quotes the repository URL that holds the secret's value. */
static void test_run_error_is_masked(void **state)
{
    fx *f = *state;
    cJSON *b = NULL;
    assert_int_equal(req(f, "POST", "/api/v1/secrets", NULL, "{\"name\":\"k\",\"value\":\"t0p-s3cret\"}",
                         NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/repositories", NULL,
                         "{\"name\":\"r\",\"url\":\"/nonexistent/t0p-s3cret/repo\"}", NULL), 201);
    assert_int_equal(req(f, "POST", "/api/v1/services", NULL,
                         "{\"name\":\"s\",\"type\":\"executable\",\"repository\":\"r\",\"filename\":"
                         "\"x\",\"secrets\":[{\"name\":\"k\",\"target\":\"K\"}]}", NULL), 201);
    assert_int_equal(run_with(f, NULL, "s", NULL, &b), 201);
    const char *error = cJSON_GetObjectItemCaseSensitive(b, "error")->valuestring;
    assert_null(strstr(error, "t0p-s3cret"));
    assert_non_null(strstr(error, "/nonexistent/***/repo"));
    const char *id = cJSON_GetObjectItemCaseSensitive(b, "id")->valuestring;
    char *raw = NULL;
    assert_int_equal(gt_store_get(f->store, "executions", id, &raw, NULL, NULL), GT_OK);
    assert_null(strstr(raw, "t0p-s3cret"));
    free(raw);
    cJSON_Delete(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_routes_and_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crud_and_references, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secrets_are_write_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_validation_before_anything_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_marks_dead_owners_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_reads_every_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_execution, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_survives_a_failed_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dispatched_runs, setup, teardown),
        cmocka_unit_test(test_model_validation),
        cmocka_unit_test(test_env_denylist),
        cmocka_unit_test(test_allowed_secrets_validation),
        cmocka_unit_test_setup_teardown(test_run_binds_only_granted_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sealed_value_bound_to_its_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_error_is_masked, setup, teardown),
    };
    return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}

/* common/dbfile.c: service files read and written, imports planned and applied through
 * the API (in-process, on memory, SQLite and, under scripts/test-servers, etcd stores),
 * and hostile files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "dbfile.h"
#include "json.h"
#include "log.h"
#include "store.h"
#include "util.h"

/* ---------- a store with the API in front of it ---------- */

typedef struct side {
    gt_store *store;
    gt_api *api;
    gt_run_options run;
    char dir[64];
    char *key;
} side;

static void side_open(side *s, gt_store *store)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/gt-db-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    s->key = gt_path_join(s->dir, "secrets.key");
    s->store = store ? store : gt_store_open_memory(NULL);
    assert_non_null(s->store);
    s->run.working_dir = s->dir;
    gt_api_deps d = {.store = s->store, .key_file = s->key, .run = &s->run};
    s->api = gt_api_new(&d, NULL);
    assert_non_null(s->api);
}

static void side_close(side *s)
{
    gt_api_free(&s->api);
    gt_store_free(&s->store);
    gt_rm_rf(s->dir, NULL);
    free(s->key);
}

static void call(void *arg, const char *method, const char *path, const char *query,
                 const cJSON *body, gt_api_response *resp)
{
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    gt_api_handle(((side *)arg)->api, method, path, query, text, text ? strlen(text) : 0, resp);
    free(text);
}

/* Sends a request with a JSON body; returns the status. */
static int req(side *s, const char *method, const char *path, const char *body)
{
    gt_api_response r = {0};
    gt_api_handle(s->api, method, path, NULL, body, body ? strlen(body) : 0, &r);
    int status = r.status;
    if (status >= 400) {
        char *t = cJSON_PrintUnformatted(r.body);
        print_message("%s %s -> %d %s\n", method, path, status, t);
        free(t);
    }
    gt_api_response_clear(&r);
    return status;
}

/* The document the API shows, without what the server adds. */
static cJSON *get_doc(side *s, const char *plural, const char *name)
{
    char *path = gt_xasprintf("/api/v1/%s/%s", plural, name);
    gt_api_response r = {0};
    gt_api_handle(s->api, "GET", path, NULL, NULL, 0, &r);
    free(path);
    if (r.status != 200) {
        gt_api_response_clear(&r);
        return NULL;
    }
    cJSON *d = r.body;
    cJSON_DeleteItemFromObjectCaseSensitive(d, "revision");
    cJSON_DeleteItemFromObjectCaseSensitive(d, "created_at");
    cJSON_DeleteItemFromObjectCaseSensitive(d, "updated_at");
    return d;
}

static void add_secrets(side *s)
{
    assert_int_equal(req(s, "POST", "/api/v1/secrets", "{\"name\":\"deploy-key\",\"value\":\"K3Y-VALUE-123\"}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/secrets", "{\"name\":\"api-token\",\"value\":\"T0KEN-VALUE-456\"}"), 201);
}

/* Every kind of field the three kinds have. */
static void populate(side *s)
{
    add_secrets(s);
    assert_int_equal(req(s, "POST", "/api/v1/decorators",
        "{\"name\":\"vlan\",\"description\":\"VLAN inputs\",\"schema\":{\"$schema\":"
        "\"https://json-schema.org/draft/2020-12/schema\",\"type\":\"object\",\"required\":[\"vlan\"],"
        "\"properties\":{\"vlan\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":4094},"
        "\"name\":{\"type\":\"string\",\"default\":\"true\"},\"ratio\":{\"type\":\"number\",\"default\":0.25}}}}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/repositories",
        "{\"name\":\"netops\",\"url\":\"git@git.example.com:net/ops.git\",\"reference\":\"main\","
        "\"private_key_name\":\"deploy-key\",\"description\":\"multi\\nline: yes # not a comment\"}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/repositories", "{\"name\":\"plain\",\"url\":\"/srv/git/plain\"}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/services",
        "{\"name\":\"add-vlan\",\"type\":\"python-script\",\"repository\":\"netops\",\"filename\":\"add_vlan.py\","
        "\"working_dir\":\"scripts\",\"decorator\":\"vlan\",\"env\":{\"REGION\":\"eu\",\"COUNT\":\"12\"},"
        "\"secrets\":[{\"name\":\"api-token\",\"type\":\"env\",\"target\":\"TOKEN\"}],"
        "\"allowed_secrets\":[\"deploy-key\"],\"timeout\":300,\"retries\":2,\"pool\":\"lab\","
        "\"limits\":{\"memory\":\"256MiB\",\"processes\":64,\"cpu_time\":\"10m\",\"open_files\":256},"
        "\"description\":\"\"}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/services",
        "{\"name\":\"Ansible-Example\",\"type\":\"ansible-playbook\",\"repository\":\"netops\","
        "\"playbooks\":[\"hello-world.yml\",\"more.yml\"],\"working_dir\":\"./\",\"inventory\":\"./inventory.ini\","
        "\"extra_vars\":{\"check\":true,\"n\":null,\"list\":[1,\"2\",{\"a\":\"b\"}]}}"), 201);
    assert_int_equal(req(s, "POST", "/api/v1/services",
        "{\"name\":\"bash-it\",\"type\":\"executable\",\"repository\":\"plain\",\"filename\":\"run.sh\","
        "\"arg_format\":\"--{key}={value}\",\"interpreter\":\"/bin/bash\"}"), 201);
}

static const char *const names[][2] = {
    {"decorators", "vlan"}, {"repositories", "netops"}, {"repositories", "plain"},
    {"services", "add-vlan"}, {"services", "Ansible-Example"}, {"services", "bash-it"},
};

static char *export_text(side *s, bool json)
{
    char *text = NULL;
    size_t n[3];
    gt_error e = {0};
    if (gt_dbfile_export(call, s, json, &text, n, &e) != GT_OK)
        fail_msg("export: %s", e.message);
    return text;
}

static void print_errors(const gt_strv *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        print_message("  %s\n", errs->v[i]);
}

/* Parses, plans and applies text into s; returns the plan's and apply's code. */
static gt_err import_text(side *s, const char *name, const char *text, bool force)
{
    gt_strv errs = {0};
    gt_error e = {0};
    gt_dbfile *f = gt_dbfile_parse(name, text, strlen(text), &errs);
    if (f == NULL) {
        print_errors(&errs);
        gt_strv_free(&errs);
        return GT_EINVAL;
    }
    gt_err rc = gt_dbfile_plan(f, call, s, force, &errs, &e);
    if (rc == GT_OK)
        rc = gt_dbfile_apply(f, call, s, NULL, &e);
    if (rc != GT_OK) {
        print_errors(&errs);
        print_message("  %s\n", e.message);
    }
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
    return rc;
}

/* The first error text for a file that must not parse. */
static char *parse_error(const char *name, const char *text, size_t len)
{
    gt_strv errs = {0};
    gt_dbfile *f = gt_dbfile_parse(name, text, len, &errs);
    if (f != NULL)
        fail_msg("%s parsed, expected an error", name);
    assert_true(errs.n > 0);
    char *first = gt_xstrdup(errs.v[0]);
    gt_strv_free(&errs);
    return first;
}

#define assert_contains(hay, needle)                                                          \
    do {                                                                                      \
        if (strstr((hay), (needle)) == NULL)                                                  \
            fail_msg("\"%s\" does not contain \"%s\"", (hay), (needle));                     \
    } while (0)

/* ---------- round trips ---------- */

static void round_trip(gt_store *into, bool json)
{
    side a, b;
    side_open(&a, NULL);
    side_open(&b, into);
    populate(&a);
    char *text = export_text(&a, json);
    assert_null(strstr(text, "K3Y-VALUE-123")); /* secrets by name only */
    assert_null(strstr(text, "T0KEN-VALUE-456"));
    assert_null(strstr(text, "created_at"));
    add_secrets(&b); /* the target has its own secrets of the same names */
    assert_int_equal(import_text(&b, json ? "x.json" : "x.yml", text, false), GT_OK);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        cJSON *x = get_doc(&a, names[i][0], names[i][1]), *y = get_doc(&b, names[i][0], names[i][1]);
        assert_non_null(x);
        assert_non_null(y);
        if (!cJSON_Compare(x, y, true)) {
            char *tx = cJSON_PrintUnformatted(x), *ty = cJSON_PrintUnformatted(y);
            fail_msg("%s %s differs:\n%s\n%s", names[i][0], names[i][1], tx, ty);
        }
        cJSON_Delete(x);
        cJSON_Delete(y);
    }
    /* and the export of the copy is the same file */
    char *again = export_text(&b, json);
    assert_string_equal(text, again);
    /* importing it again changes nothing, without --force */
    assert_int_equal(import_text(&b, "again", again, false), GT_OK);
    free(again);
    free(text);
    side_close(&a);
    side_close(&b);
}

static void test_round_trip_memory_yaml(void **state)
{
    (void)state;
    round_trip(NULL, false);
}

static void test_round_trip_memory_json(void **state)
{
    (void)state;
    round_trip(NULL, true);
}

static void test_round_trip_local(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-db-local-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = gt_path_join(dir, "gantry.db");
    gt_error e = {0};
    gt_store *s = gt_store_open_local(path, &e);
    if (s == NULL)
        fail_msg("open local: %s", e.message);
    round_trip(s, false);
    gt_rm_rf(dir, NULL);
    free(path);
}

static void test_round_trip_etcd(void **state)
{
    (void)state;
    const char *env = getenv("GANTRY_TEST_ETCD");
    if (env == NULL || env[0] == '\0') {
        print_message("dbfile/etcd: SKIPPED: GANTRY_TEST_ETCD is not set (run under scripts/test-servers)\n");
        return;
    }
    gt_strv hosts = {0};
    char *list = gt_xstrdup(env), *save = NULL;
    for (char *h = strtok_r(list, ", ", &save); h; h = strtok_r(NULL, ", ", &save))
        gt_strv_push(&hosts, h);
    free(list);
    char *id = gt_id_new();
    char cluster[64];
    snprintf(cluster, sizeof cluster, "dbfile-%s", id);
    free(id);
    gt_store_etcd_config cfg = {.hosts = (const char *const *)hosts.v, .n_hosts = hosts.n,
                                .cluster_id = cluster, .timeout_ms = 10000};
    gt_error e = {0};
    gt_store *s = gt_store_open_etcd(&cfg, &e);
    if (s == NULL)
        fail_msg("open etcd: %s", e.message);
    round_trip(s, false);
    gt_strv_free(&hosts);
}

/* ---------- the seed's example ---------- */

static const char seed[] =
    "decorators:\n"
    "  - name: ansible-xr\n"
    "    schema:\n"
    "      $id: https://example.com/device.schema.json\n"
    "      $schema: https://json-schema.org/draft/2020-12/schema\n"
    "      properties:\n"
    "        device_type: {description: The type of device, enum: [ios, eos, nxos], type: string}\n"
    "        host: {description: The hostname or IP address of the device, type: string}\n"
    "      title: Network Device\n"
    "      type: object\n"
    "repositories:\n"
    "  - name: xr-resources\n"
    "    description: XR Resources for testing\n"
    "    url: git@gitlab.com:jh/xr/resources.git\n"
    "    reference: main\n"
    "    private-key-name: xr-gitlab-private\n"
    "services:\n"
    "  - name: Ansible-Example\n"
    "    type: ansible-playbook\n"
    "    description: An ansible playbook to say hello-world\n"
    "    playbooks: [hello-world.yml]\n"
    "    working-directory: ./\n"
    "    repository: xr-resources\n"
    "    decorator: ansible-xr\n"
    "    runtime:\n"
    "      inventory: [./inventory.ini]\n";

static void test_seed_example(void **state)
{
    (void)state;
    gt_strv errs = {0};
    gt_dbfile *f = gt_dbfile_parse("seed.yml", seed, strlen(seed), &errs);
    print_errors(&errs);
    assert_non_null(f);
    gt_dbfile_item *it = NULL;
    assert_int_equal(gt_dbfile_items(f, &it), 3);
    assert_ptr_equal(it[0].kind, &gt_model_decorator);
    assert_ptr_equal(it[1].kind, &gt_model_repository);
    assert_ptr_equal(it[2].kind, &gt_model_service);
    const char *s = NULL;
    assert_int_equal(gt_json_str(it[1].doc, "$", "private_key_name", &s, NULL), GT_OK);
    assert_string_equal(s, "xr-gitlab-private");
    assert_int_equal(gt_json_str(it[2].doc, "$", "working_dir", &s, NULL), GT_OK);
    assert_string_equal(s, "./");
    assert_int_equal(gt_json_str(it[2].doc, "$", "inventory", &s, NULL), GT_OK);
    assert_string_equal(s, "./inventory.ini");
    assert_null(cJSON_GetObjectItemCaseSensitive(it[2].doc, "runtime"));
    gt_dbfile_free(&f);

    /* into a store: the private key must be there first, as a secret */
    side a;
    side_open(&a, NULL);
    f = gt_dbfile_parse("seed.yml", seed, strlen(seed), &errs);
    gt_error e = {0};
    assert_int_equal(gt_dbfile_plan(f, call, &a, false, &errs, &e), GT_EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.v[0], "seed.yml:16: repositories[0].private-key-name: secret "
                        "\"xr-gitlab-private\" is not in the store (secrets are never in a service "
                        "file: create it first with gantry create secret xr-gitlab-private)");
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
    assert_int_equal(req(&a, "POST", "/api/v1/secrets", "{\"name\":\"xr-gitlab-private\",\"value\":\"k\"}"), 201);
    assert_int_equal(import_text(&a, "seed.yml", seed, false), GT_OK);
    cJSON *svc = get_doc(&a, "services", "Ansible-Example");
    assert_non_null(svc);
    assert_int_equal(gt_json_str(svc, "$", "inventory", &s, NULL), GT_OK);
    assert_string_equal(s, "./inventory.ini");
    cJSON_Delete(svc);
    side_close(&a);
}

static void test_seed_only_fields_refused(void **state)
{
    (void)state;
    const char *text = "repositories:\n"
                       "  - name: r\n"
                       "    url: /srv/r\n"
                       "    tags: [cisco, xr]\n"
                       "services:\n"
                       "  - name: s\n"
                       "    type: ansible-playbook\n"
                       "    repository: r\n"
                       "    playbooks: [a.yml]\n"
                       "    runtime:\n"
                       "      check: true\n"
                       "      inventory: [a, b]\n";
    gt_strv errs = {0};
    assert_null(gt_dbfile_parse("f.yml", text, strlen(text), &errs));
    assert_int_equal(errs.n, 3);
    assert_string_equal(errs.v[0], "f.yml:4: repositories[0].tags: \"tags\" is a field of Itential "
                        "Automation Gateway's format that Gantry does not support: remove it");
    assert_contains(errs.v[1], "f.yml:11: services[0].runtime.check: \"check\" is a field of Itential");
    assert_contains(errs.v[2], "f.yml:12: services[0].runtime.inventory: Gantry runs a playbook with one inventory");
    gt_strv_free(&errs);
}

/* ---------- plans: add, conflict, replacement, unchanged ---------- */

static void test_plan_states(void **state)
{
    (void)state;
    side a;
    side_open(&a, NULL);
    assert_int_equal(req(&a, "POST", "/api/v1/repositories", "{\"name\":\"same\",\"url\":\"/srv/same\"}"), 201);
    assert_int_equal(req(&a, "POST", "/api/v1/repositories",
                         "{\"name\":\"other\",\"url\":\"/srv/old\",\"reference\":\"v1\",\"description\":\"old\"}"), 201);
    const char *text = "repositories:\n"
                       "  - {name: same, url: /srv/same}\n"
                       "  - {name: other, url: /srv/new}\n"
                       "  - {name: fresh, url: /srv/fresh}\n";
    gt_strv errs = {0};
    gt_error e = {0};
    gt_dbfile *f = gt_dbfile_parse("p.yml", text, strlen(text), &errs);
    assert_non_null(f);
    gt_dbfile_item *it = NULL;
    assert_int_equal(gt_dbfile_plan(f, call, &a, false, &errs, &e), GT_OK);
    assert_int_equal(gt_dbfile_items(f, &it), 3);
    assert_int_equal(it[0].action, GT_DBFILE_UNCHANGED);
    assert_int_equal(it[1].action, GT_DBFILE_CONFLICT);
    assert_int_equal(it[2].action, GT_DBFILE_ADD);
    /* a conflict refuses the whole import: nothing is written */
    size_t written = 99;
    assert_int_equal(gt_dbfile_apply(f, call, &a, &written, &e), GT_ECONFLICT);
    assert_int_equal(written, 0);
    assert_contains(e.message, "repository other");
    cJSON *d = get_doc(&a, "repositories", "fresh");
    assert_null(d);
    /* with force it is a replacement: the file's fields, and none of the old ones */
    e = (gt_error){0};
    assert_int_equal(gt_dbfile_plan(f, call, &a, true, &errs, &e), GT_OK);
    assert_int_equal(it[1].action, GT_DBFILE_REPLACE);
    assert_int_equal(gt_dbfile_apply(f, call, &a, &written, &e), GT_OK);
    assert_int_equal(written, 2);
    d = get_doc(&a, "repositories", "other");
    char *t = cJSON_PrintUnformatted(d);
    assert_string_equal(t, "{\"name\":\"other\",\"url\":\"/srv/new\"}");
    free(t);
    cJSON_Delete(d);
    d = get_doc(&a, "repositories", "fresh");
    assert_non_null(d);
    cJSON_Delete(d);
    /* and now everything is unchanged */
    assert_int_equal(gt_dbfile_plan(f, call, &a, false, &errs, &e), GT_OK);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(it[i].action, GT_DBFILE_UNCHANGED);
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
    side_close(&a);
}

/* A failure in the middle (here: a secret deleted between plan and apply) leaves what
 * was written; the same import run again finishes it. */
static void test_failure_midway_rerun(void **state)
{
    (void)state;
    side a;
    side_open(&a, NULL);
    assert_int_equal(req(&a, "POST", "/api/v1/secrets", "{\"name\":\"k\",\"value\":\"v\"}"), 201);
    const char *text = "decorators:\n  - {name: d, schema: {type: object}}\n"
                       "repositories:\n  - {name: r, url: /srv/r, private-key-name: k}\n"
                       "services:\n  - {name: s, type: executable, repository: r, filename: x.sh}\n";
    gt_strv errs = {0};
    gt_error e = {0};
    gt_dbfile *f = gt_dbfile_parse("m.yml", text, strlen(text), &errs);
    assert_non_null(f);
    assert_int_equal(gt_dbfile_plan(f, call, &a, false, &errs, &e), GT_OK);
    assert_int_equal(req(&a, "DELETE", "/api/v1/secrets/k", NULL), 200);
    size_t written = 0;
    assert_int_equal(gt_dbfile_apply(f, call, &a, &written, &e), GT_EINVAL);
    assert_int_equal(written, 1);
    assert_contains(e.message, "writing repository \"r\"");
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
    assert_int_equal(req(&a, "POST", "/api/v1/secrets", "{\"name\":\"k\",\"value\":\"v\"}"), 201);
    assert_int_equal(import_text(&a, "m.yml", text, false), GT_OK);
    cJSON *d = get_doc(&a, "services", "s");
    assert_non_null(d);
    cJSON_Delete(d);
    side_close(&a);
}

/* ---------- references ---------- */

static void test_references(void **state)
{
    (void)state;
    side a;
    side_open(&a, NULL);
    assert_int_equal(req(&a, "POST", "/api/v1/repositories", "{\"name\":\"stored\",\"url\":\"/srv/s\"}"), 201);
    const char *text = "repositories:\n"
                       "  - name: in-file\n"
                       "    url: /srv/f\n"
                       "services:\n"
                       "  - {name: a, type: executable, repository: in-file, filename: x}\n"
                       "  - {name: b, type: executable, repository: stored, filename: x}\n"
                       "  - name: c\n"
                       "    type: executable\n"
                       "    filename: x\n"
                       "    repository: nope\n"
                       "    decorator: nodec\n"
                       "    secrets:\n"
                       "      - {name: nosecret, type: env, target: TOKEN}\n";
    gt_strv errs = {0};
    gt_error e = {0};
    gt_dbfile *f = gt_dbfile_parse("services.yml", text, strlen(text), &errs);
    assert_non_null(f);
    assert_int_equal(gt_dbfile_plan(f, call, &a, false, &errs, &e), GT_EINVAL);
    assert_int_equal(errs.n, 3);
    assert_string_equal(errs.v[0], "services.yml:10: services[2].repository: repository \"nope\" is "
                        "neither in this file nor in the store");
    assert_string_equal(errs.v[1], "services.yml:11: services[2].decorator: decorator \"nodec\" is "
                        "neither in this file nor in the store");
    assert_contains(errs.v[2], "services.yml:13: services[2].secrets[0].name: secret \"nosecret\" is not in the store");
    /* nothing was written by the plan */
    assert_null(get_doc(&a, "repositories", "in-file"));
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
    side_close(&a);
}

/* ---------- what the model says, at the file's place ---------- */

static void test_model_errors_mapped(void **state)
{
    (void)state;
    const char *text = "services:\n"
                       "  - name: p\n"
                       "    type: python-script\n"
                       "    repository: r\n"
                       "    filename: a.py\n"
                       "    runtime:\n"
                       "      inventory: [hosts]\n"
                       "  - name: q\n"
                       "    type: executable\n"
                       "    repository: r\n"
                       "    filename: b\n"
                       "    limits:\n"
                       "      cpu-time: forever\n"
                       "  - name: z\n"
                       "    type: ansible-playbook\n"
                       "    repository: r\n"
                       "    working-directory: ../up\n"
                       "    playbooks: [x.yml]\n"
                       "  - {name: t, type: opentofu-plan, repository: r}\n"
                       "  - {name: -bad, type: executable, repository: r, filename: x}\n";
    gt_strv errs = {0};
    assert_null(gt_dbfile_parse("m.yml", text, strlen(text), &errs));
    print_errors(&errs);
    assert_int_equal(errs.n, 5);
    assert_string_equal(errs.v[0], "m.yml:7: services[0].runtime.inventory: only for ansible-playbook services");
    assert_contains(errs.v[1], "m.yml:13: services[1].limits.cpu-time: ");
    assert_string_equal(errs.v[2], "m.yml:17: services[2].working-directory: \"../up\" must not contain \"..\"");
    assert_string_equal(errs.v[3], "m.yml:19: services[3].type: opentofu-plan services are not supported yet");
    assert_contains(errs.v[4], "m.yml:20: services[4].name: \"-bad\" is not a valid name");
    gt_strv_free(&errs);

    /* a decorator's schema is compiled by the schema validator */
    text = "decorators:\n  - name: d\n    schema:\n      type: object\n      properties:\n        x: {type: integr}\n";
    char *m = parse_error("d.yml", text, strlen(text));
    assert_contains(m, "d.yml:6: decorators[0].schema");
    assert_contains(m, "invalid schema");
    free(m);
}

/* ---------- secrets: names only ---------- */

static void test_secret_values_refused(void **state)
{
    (void)state;
    const char *value = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXk=";
    char *text = gt_xasprintf("repositories:\n  - name: r\n    url: /srv/r\n    private-key-name: \"%s\"\n",
                              value);
    char *m = parse_error("s.yml", text, strlen(text));
    assert_contains(m, "s.yml:4: repositories[0].private-key-name: expected the name of a secret");
    assert_null(strstr(m, "BEGIN"));
    assert_null(strstr(m, "b3Bl"));
    free(m);
    free(text);
    text = gt_xstrdup("services:\n  - name: s\n    type: executable\n    repository: r\n    filename: x\n"
                      "    secrets:\n      - {name: tok, type: env, target: TOKEN, value: hunter2hunter2}\n"
                      "    allowed-secrets: [\"p@ss w0rd!\"]\n");
    gt_strv errs = {0};
    assert_null(gt_dbfile_parse("s.yml", text, strlen(text), &errs));
    assert_int_equal(errs.n, 2);
    assert_contains(errs.v[0], "s.yml:7: services[0].secrets[0].value: a secret's value never goes in a service file");
    assert_contains(errs.v[1], "s.yml:8: services[0].allowed-secrets[0]: expected the name of a secret");
    for (size_t i = 0; i < errs.n; i++) {
        assert_null(strstr(errs.v[i], "hunter2"));
        assert_null(strstr(errs.v[i], "p@ss"));
    }
    gt_strv_free(&errs);
    free(text);
    m = parse_error("s.yml", "secrets:\n  - {name: a, value: b}\n", strlen("secrets:\n  - {name: a, value: b}\n"));
    assert_contains(m, "s.yml:2: secrets: secrets are not part of a service file");
    free(m);
}

/* ---------- hostile files ---------- */

static void test_billion_laughs(void **state)
{
    (void)state;
    gt_buf b = {0};
    gt_buf_puts(&b, "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (char c = 'b'; c <= 'j'; c++) {
        gt_buf_printf(&b, "%c: &%c [", c, c);
        for (int i = 0; i < 10; i++)
            gt_buf_printf(&b, "%s*%c", i ? ", " : "", c - 1);
        gt_buf_puts(&b, "]\n");
    }
    char *m = parse_error("lol.yml", b.data, b.len);
    assert_contains(m, "more than 1000000 values, the limit for a service file");
    free(m);
    gt_buf_free(&b);
}

static void test_small_aliases_expand(void **state)
{
    (void)state;
    const char *text = "repositories:\n"
                       "  - &r {name: r1, url: /srv/r, reference: main}\n"
                       "services:\n"
                       "  - name: a\n"
                       "    type: executable\n"
                       "    repository: r1\n"
                       "    filename: x\n"
                       "    env: &env {A: \"1\", B: two}\n"
                       "  - {name: b, type: executable, repository: r1, filename: y, env: *env}\n";
    gt_strv errs = {0};
    gt_dbfile *f = gt_dbfile_parse("al.yml", text, strlen(text), &errs);
    print_errors(&errs);
    assert_non_null(f);
    gt_dbfile_item *it = NULL;
    assert_int_equal(gt_dbfile_items(f, &it), 3);
    assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(it[1].doc, "env"),
                              cJSON_GetObjectItemCaseSensitive(it[2].doc, "env"), true));
    gt_dbfile_free(&f);
    gt_strv_free(&errs);
}

static void test_hostile(void **state)
{
    (void)state;
    static const struct {
        const char *name, *text, *want;
    } cases[] = {
        {"tag.yml", "services:\n  - !!python/object/apply:os.system [\"id\"]\n",
         "tag.yml:2: services[0]: tag tag:yaml.org,2002:python/object/apply:os.system is not accepted"},
        {"tag2.yml", "services: !custom [a]\n", "tag2.yml:1: services: tag !custom is not accepted"},
        {"utf8.yml", "services:\n  - name: \"\xff\xfe\"\n", "utf8.yml:2:12: not valid text: invalid leading UTF-8 octet"},
        {"nul.yml", "services:\n  - name: \"a\\0b\"\n", "nul.yml:2: services[0].name: contains a NUL character"},
        {"dupkey.yml", "repositories:\n  - name: r\n    url: /a\n    url: /b\n",
         "dupkey.yml:4: repositories[0]: key \"url\" appears twice"},
        {"dupname.yml", "repositories:\n  - {name: r, url: /a}\n  - {name: q, url: /a}\n  - {name: r, url: /b}\n",
         "dupname.yml:4: repositories[2].name: \"r\" appears twice in repositories (also repositories[0], line 2)"},
        {"docs.yml", "services: []\n---\nservices: []\n", "docs.yml:2: a second YAML document"},
        {"merge.yml", "repositories:\n  - <<: {name: r}\n    url: /a\n", "merge.yml:2: repositories[0]: merge keys (<<) are not supported"},
        {"inf.yml", "services:\n  - {name: a, timeout: .inf}\n", "inf.yml:2: services[0].timeout: not a finite number"},
        {"big.yml", "services:\n  - {name: a, timeout: 123456789012345678901}\n", "big.yml:2: services[0].timeout: an integer too large"},
        {"alias.yml", "services: *nowhere\n", "alias.yml:1: services: alias *nowhere names no anchor before it"},
        {"keymap.yml", "services:\n  - {[a]: b}\n", "keymap.yml:2: services[0]: a key must be a string, not a list"},
        {"syntax.yml", "services:\n  - name: [a\n", "syntax.yml:3:1: invalid YAML"},
        {"json.json", "{\"services\": [\n  {\"name\": \"x\",,}\n]}\n", "json.json:2:17: invalid JSON"},
        {"scalar.yml", "just text\n", "scalar.yml:1: expected a mapping with decorators, repositories and services"},
        {"empty.yml", "", "empty.yml: empty: expected a mapping"},
        {"top.yml", "servces: []\n", "top.yml:1: servces: unknown field (expected decorators, repositories, services)"},
        {"list.yml", "services: {a: b}\n", "list.yml:1: services: expected a list"},
        {"item.yml", "services: [a]\n", "item.yml:1: services[0]: expected a mapping"},
        {"unknown.yml", "decorators:\n  - {name: d, schema: {}, scheme: {}}\n",
         "unknown.yml:2: decorators[0].scheme: unknown field \"scheme\" (expected one of: name, description, schema)"},
        {"badint.yml", "services:\n  - {name: a, timeout: !!int 1.5}\n", "badint.yml:2: services[0].timeout: does not match its tag"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *m = parse_error(cases[i].name, cases[i].text, strlen(cases[i].text));
        if (strncmp(m, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("%s: got \"%s\", want \"%s...\"", cases[i].name, m, cases[i].want);
        free(m);
    }
    /* deep nesting */
    gt_buf b = {0};
    gt_buf_puts(&b, "decorators:\n  - name: d\n    schema: ");
    for (int i = 0; i < 200; i++)
        gt_buf_puts(&b, "{a: ");
    gt_buf_puts(&b, "1");
    for (int i = 0; i < 200; i++)
        gt_buf_puts(&b, "}");
    char *m = parse_error("deep.yml", b.data, b.len);
    assert_contains(m, "deep.yml:3: decorators[0].schema.a.a.");
    assert_contains(m, "nested more than 64 levels deep");
    free(m);
    gt_buf_free(&b);
    /* too big: refused before it is read */
    m = parse_error("huge.yml", "services: []\n", (size_t)GT_DBFILE_MAX_BYTES + 1);
    assert_contains(m, "huge.yml: 16777217 bytes: larger than 16 MiB, the limit for a service file");
    free(m);
}

/* JSON with escapes libyaml refuses (a surrogate pair) is read by cJSON instead. */
static void test_json_surrogates(void **state)
{
    (void)state;
    const char *text = "{\"decorators\": [{\"name\": \"d\", \"description\": \"\\ud83d\\ude00\", \"schema\": {}}]}";
    gt_strv errs = {0};
    gt_dbfile *f = gt_dbfile_parse("s.json", text, strlen(text), &errs);
    print_errors(&errs);
    assert_non_null(f);
    gt_dbfile_item *it = NULL;
    assert_int_equal(gt_dbfile_items(f, &it), 1);
    const char *d = NULL;
    assert_int_equal(gt_json_str(it[0].doc, "$", "description", &d, NULL), GT_OK);
    assert_string_equal(d, "\xf0\x9f\x98\x80");
    gt_dbfile_free(&f);
    /* and its duplicate keys are still refused */
    text = "{\"decorators\": [{\"name\": \"d\", \"description\": \"\\ud83d\\ude00\", \"schema\": {}, \"name\": \"e\"}]}";
    assert_null(gt_dbfile_parse("s.json", text, strlen(text), &errs));
    assert_string_equal(errs.v[0], "s.json: decorators[0]: key \"name\" appears twice");
    gt_strv_free(&errs);
}

/* ---------- the writer ---------- */

/* Strings that look like other things come back as the same strings. */
static void test_writer_quoting(void **state)
{
    (void)state;
    static const char *const tricky[] = {
        "true", "False", "null", "~", "", "123", "-1.5e3", "0x1F", "0o17", ".inf", ".nan", "yes",
        "no", "- item", "key: value", "# comment", "a #b", "*alias", "&anchor", "!tag", "%dir",
        "@at", "`tick", "{flow}", "[list]", " lead", "trail ", "multi\nline\n", "tab\there",
        "quote\"s", "back\\slash", "\xc3\xa9t\xc3\xa9", "\xe2\x80\xa8", "---", "...", "? q", "<<",
        NULL,
    };
    cJSON *decs = cJSON_CreateArray();
    for (size_t i = 0; tricky[i]; i++) {
        cJSON *d = cJSON_CreateObject();
        char name[16];
        snprintf(name, sizeof name, "d%zu", i);
        gt_json_set_str(d, "name", name);
        gt_json_set_str(d, "description", tricky[i]);
        cJSON *schema = cJSON_AddObjectToObject(d, "schema");
        gt_json_set_str(schema, tricky[i], tricky[i]);
        gt_json_set_num(d, "revision", 3);
        cJSON_AddItemToArray(decs, d);
    }
    for (int json = 0; json < 2; json++) {
        char *text = NULL;
        gt_error e = {0};
        assert_int_equal(gt_dbfile_write(decs, NULL, NULL, json, &text, &e), GT_OK);
        gt_strv errs = {0};
        gt_dbfile *f = gt_dbfile_parse("w", text, strlen(text), &errs);
        print_errors(&errs);
        assert_non_null(f);
        gt_dbfile_item *it = NULL;
        assert_int_equal(gt_dbfile_items(f, &it), cJSON_GetArraySize(decs));
        int i = 0;
        for (const cJSON *d = decs->child; d; d = d->next, i++) {
            cJSON *want = cJSON_Duplicate(d, 1);
            cJSON_DeleteItemFromObjectCaseSensitive(want, "revision");
            if (!cJSON_Compare(want, it[i].doc, true))
                fail_msg("\"%s\" did not come back:\n%s", tricky[i], text);
            cJSON_Delete(want);
        }
        gt_dbfile_free(&f);
        gt_strv_free(&errs);
        free(text);
    }
    cJSON_Delete(decs);
}

/* Every field the API has for the three kinds has a place in the file. */
static void test_every_field_mapped(void **state)
{
    (void)state;
    const gt_model_kind *kinds[] = {&gt_model_decorator, &gt_model_repository, &gt_model_service};
    for (size_t k = 0; k < 3; k++)
        for (size_t i = 0; kinds[k]->fields[i]; i++)
            if (gt_dbfile_field_name(kinds[k], kinds[k]->fields[i]) == NULL)
                fail_msg("%s.%s has no service file field", kinds[k]->plural, kinds[k]->fields[i]);
    assert_string_equal(gt_dbfile_field_name(&gt_model_service, "working_dir"), "working-directory");
    assert_string_equal(gt_dbfile_field_name(&gt_model_service, "inventory"), "runtime.inventory");
    assert_string_equal(gt_dbfile_field_name(&gt_model_repository, "private_key_name"), "private-key-name");
    /* a stored member the format cannot carry is an export error, not a silent loss */
    cJSON *repos = cJSON_Parse("[{\"name\":\"r\",\"url\":\"/a\",\"mystery\":1}]");
    char *text = NULL;
    gt_error e = {0};
    assert_int_equal(gt_dbfile_write(NULL, repos, NULL, false, &text, &e), GT_EINVAL);
    assert_string_equal(e.message, "repository \"r\": field \"mystery\" has no place in a service file");
    cJSON_Delete(repos);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_memory_yaml),
        cmocka_unit_test(test_round_trip_memory_json),
        cmocka_unit_test(test_round_trip_local),
        cmocka_unit_test(test_round_trip_etcd),
        cmocka_unit_test(test_seed_example),
        cmocka_unit_test(test_seed_only_fields_refused),
        cmocka_unit_test(test_plan_states),
        cmocka_unit_test(test_failure_midway_rerun),
        cmocka_unit_test(test_references),
        cmocka_unit_test(test_model_errors_mapped),
        cmocka_unit_test(test_secret_values_refused),
        cmocka_unit_test(test_billion_laughs),
        cmocka_unit_test(test_small_aliases_expand),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_json_surrogates),
        cmocka_unit_test(test_writer_quoting),
        cmocka_unit_test(test_every_field_mapped),
    };
    return cmocka_run_group_tests_name("dbfile", tests, NULL, NULL);
}

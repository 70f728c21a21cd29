/* Tests for common/schema.c: every keyword with its message, compile errors,
 * defaults, limits against hostile input, and the official JSON-Schema-Test-Suite
 * (draft 7) read from $GANTRY_TESTDATA/json-schema-test-suite. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "schema.h"
#include "util.h"

static cJSON *parse(const char *text)
{
    gt_error err = {0};
    cJSON *j = NULL;
    if (gt_json_parse(text, strlen(text), "test", &j, &err) != GT_OK)
        fail_msg("bad test JSON %s: %s", text, err.message);
    return j;
}

static gt_schema *compile_ok(const char *text)
{
    cJSON *js = parse(text);
    gt_error err = {0};
    gt_schema *s = gt_schema_compile(js, &err);
    if (s == NULL)
        fail_msg("schema %s did not compile: %s", text, err.message);
    cJSON_Delete(js);
    return s;
}

/* ---- validation: one row per case, the exact first error or valid ---------------- */

typedef struct vcase {
    const char *schema;
    const char *instance;
    const char *field;    /* NULL: the instance is valid */
    const char *message;
} vcase;

static const vcase vcases[] = {
    /* type */
    {"{\"type\":\"integer\"}", "1.0", NULL, NULL},
    {"{\"type\":\"integer\"}", "1.5", "$", "$: expected an integer, got 1.5"},
    {"{\"type\":\"number\"}", "3", NULL, NULL},
    {"{\"type\":[\"string\",\"null\"]}", "3", "$", "$: expected null or a string, got 3"},
    {"{\"type\":[\"object\",\"array\",\"boolean\"]}", "null", "$",
     "$: expected a boolean, an object or an array, got null"},
    {"{\"type\":\"object\"}", "[]", "$", "$: expected an object, got an array"},
    /* properties, required, additional/pattern properties, propertyNames */
    {"{\"properties\":{\"port\":{\"type\":\"integer\",\"maximum\":65535}}}", "{\"port\":70000}",
     "$.port", "$.port: 70000 is greater than the maximum 65535"},
    {"{\"properties\":{\"host\":{\"type\":\"string\"}},\"required\":[\"host\"]}", "{}", "$",
     "$: missing required property \"host\""},
    {"{\"required\":[\"a\",\"b\"]}", "{\"b\":1}", "$", "$: missing required property \"a\""},
    {"{\"properties\":{\"a\":{}},\"additionalProperties\":false}", "{\"a\":1,\"b c\":2}",
     "$[\"b c\"]", "$[\"b c\"]: property is not allowed"},
    {"{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"string\"}}",
     "{\"a\":1,\"b\":2}", "$.b", "$.b: expected a string, got 2"},
    {"{\"patternProperties\":{\"^x-\":{\"type\":\"string\"}},\"additionalProperties\":false}",
     "{\"x-a\":\"ok\",\"x-b\":1}", "$[\"x-b\"]", "$[\"x-b\"]: expected a string, got 1"},
    {"{\"patternProperties\":{\"^x-\":{}},\"additionalProperties\":false}", "{\"y\":1}", "$.y",
     "$.y: property is not allowed"},
    {"{\"propertyNames\":{\"maxLength\":3}}", "{\"abc\":1,\"abcd\":2}", "$",
     "$: property name \"abcd\" is not valid: must be at most 3 characters long (it is 4)"},
    {"{\"properties\":{\"a\":false}}", "{\"a\":1}", "$.a", "$.a: property is not allowed"},
    {"{\"properties\":{\"a\\\"b\":{\"type\":\"string\"}}}", "{\"a\\\"b\":1}", "$[\"a\\\"b\"]",
     "$[\"a\\\"b\"]: expected a string, got 1"},
    {"{\"minProperties\":2}", "{\"a\":1}", "$", "$: must have at least 2 properties (it has 1)"},
    {"{\"maxProperties\":1}", "{\"a\":1,\"b\":2}", "$",
     "$: must have at most 1 property (it has 2)"},
    {"{\"dependencies\":{\"a\":[\"b\"]}}", "{\"a\":1}", "$",
     "$: property \"a\" requires property \"b\""},
    {"{\"dependencies\":{\"a\":{\"required\":[\"c\"]}}}", "{\"a\":1}", "$",
     "$: missing required property \"c\""},
    {"{\"dependentRequired\":{\"a\":[\"b\"]}}", "{\"a\":1,\"b\":2}", NULL, NULL},
    {"{\"dependentSchemas\":{\"a\":{\"maxProperties\":1}}}", "{\"a\":1,\"b\":2}", "$",
     "$: must have at most 1 property (it has 2)"},
    /* enum, const */
    {"{\"properties\":{\"mode\":{\"enum\":[\"a\",\"b\"]}}}", "{\"mode\":\"x\"}", "$.mode",
     "$.mode: \"x\" is not one of \"a\", \"b\""},
    {"{\"enum\":[1,[2],{\"a\":null}]}", "{\"a\":null}", NULL, NULL},
    {"{\"enum\":[1]}", "1.0", NULL, NULL},
    {"{\"enum\":[false]}", "0", "$", "$: 0 is not one of false"},
    {"{\"const\":1}", "1.0", NULL, NULL},
    {"{\"const\":{\"a\":[1,2]}}", "{\"a\":[1,2.0]}", NULL, NULL},
    {"{\"const\":\"on\"}", "\"off\"", "$", "$: \"off\" is not equal to \"on\""},
    /* numbers */
    {"{\"minimum\":1}", "0", "$", "$: 0 is less than the minimum 1"},
    {"{\"minimum\":1}", "1", NULL, NULL},
    {"{\"maximum\":1.5}", "1.6", "$", "$: 1.6 is greater than the maximum 1.5"},
    {"{\"exclusiveMinimum\":1}", "1", "$", "$: 1 is not greater than the exclusive minimum 1"},
    {"{\"exclusiveMaximum\":5}", "5", "$", "$: 5 is not less than the exclusive maximum 5"},
    {"{\"exclusiveMaximum\":5}", "4.99", NULL, NULL},
    {"{\"multipleOf\":0.0001}", "0.0075", NULL, NULL},
    {"{\"multipleOf\":0.01}", "19.99", NULL, NULL},
    {"{\"multipleOf\":2}", "7", "$", "$: 7 is not a multiple of 2"},
    {"{\"multipleOf\":0.5}", "1000000000.25", "$",
     "$: 1000000000.25 is not a multiple of 0.5"},
    {"{\"minimum\":5}", "\"3\"", NULL, NULL},
    {"{\"type\":\"integer\",\"multipleOf\":0.5}", "1e308", NULL, NULL},
    {"{\"multipleOf\":0.123456789}", "1e308", "$",
     "$: 1e+308 is not a multiple of 0.123456789"},
    /* strings */
    {"{\"minLength\":2}", "\"\\u00e9\"", "$", "$: must be at least 2 characters long (it is 1)"},
    {"{\"maxLength\":2}", "\"\\u00e9\\ud83d\\udca9\"", NULL, NULL},
    {"{\"maxLength\":2}", "\"abc\"", "$", "$: must be at most 2 characters long (it is 3)"},
    {"{\"pattern\":\"\\\\d+\"}", "\"ab12\"", NULL, NULL},
    {"{\"pattern\":\"^\\\\d+$\"}", "\"12\\n\"", "$",
     "$: does not match the pattern \"^\\\\d+$\""},
    {"{\"pattern\":\"^\\\\w+$\"}", "\"h\\u00e9\"", "$",
     "$: does not match the pattern \"^\\\\w+$\""},
    {"{\"pattern\":\"^\\\\u00e9$\"}", "\"\\u00e9\"", NULL, NULL},
    {"{\"pattern\":\"^\\\\p{L}+$\"}", "\"\\u00e9t\\u00e9\"", NULL, NULL},
    /* ECMA-262 readings that PCRE2 does not share by default */
    {"{\"pattern\":\"^\\\\p{Letter}+$\"}", "\"\\u00e9t\\u00e9\"", NULL, NULL},
    {"{\"pattern\":\"^\\\\s$\"}", "\"\\u00a0\"", NULL, NULL},
    {"{\"pattern\":\"^[\\\\sx]+$\"}", "\"x\\u3000\"", NULL, NULL},
    {"{\"pattern\":\"^\\\\S$\"}", "\"\\u2003\"", "$",
     "$: does not match the pattern \"^\\\\S$\""},
    {"{\"pattern\":\"^\\\\d$\"}", "\"\\u09ea\"", "$",
     "$: does not match the pattern \"^\\\\d$\""},
    {"{\"pattern\":\"^[^]$\"}", "\"\\n\"", NULL, NULL},
    /* arrays */
    {"{\"items\":{\"type\":\"integer\"}}", "[1,\"x\"]", "$[1]",
     "$[1]: expected an integer, got a string"},
    {"{\"items\":[{\"type\":\"string\"},{\"type\":\"integer\"}]}", "[\"a\",1,{}]", NULL, NULL},
    {"{\"items\":[{},{}],\"additionalItems\":false}", "[1,2,3]", "$",
     "$: must have at most 2 items (it has 3)"},
    {"{\"items\":[{}],\"additionalItems\":{\"type\":\"string\"}}", "[1,\"a\",2]", "$[2]",
     "$[2]: expected a string, got 2"},
    {"{\"additionalItems\":false}", "[1,2]", NULL, NULL},
    {"{\"prefixItems\":[{\"type\":\"string\"}],\"items\":{\"type\":\"integer\"}}",
     "[\"a\",1,\"b\"]", "$[2]", "$[2]: expected an integer, got a string"},
    {"{\"contains\":{\"const\":1}}", "[2,3]", "$", "$: no item matches the \"contains\" schema"},
    {"{\"contains\":{\"const\":1}}", "[2,1]", NULL, NULL},
    {"{\"contains\":{\"type\":\"integer\"},\"minContains\":2,\"maxContains\":3}", "[1,\"a\"]",
     "$", "$: must have at least 2 items matching the \"contains\" schema (it has 1)"},
    {"{\"contains\":{\"type\":\"integer\"},\"maxContains\":1}", "[1,2]", "$",
     "$: must have at most 1 items matching the \"contains\" schema (it has 2)"},
    {"{\"minItems\":2}", "[1]", "$", "$: must have at least 2 items (it has 1)"},
    {"{\"maxItems\":1}", "[1,2]", "$", "$: must have at most 1 item (it has 2)"},
    {"{\"uniqueItems\":true}", "[1,{\"a\":[1]},{\"a\":[1.0]}]", "$",
     "$: items [1] and [2] are equal; items must be unique"},
    {"{\"uniqueItems\":true}", "[1,true,\"1\",[1],{\"1\":1}]", NULL, NULL},
    /* applicators */
    {"{\"allOf\":[{\"type\":\"integer\"},{\"minimum\":3}]}", "2", "$",
     "$: 2 is less than the minimum 3"},
    {"{\"anyOf\":[{\"type\":\"string\",\"maxLength\":2},{\"type\":\"integer\"}]}", "\"abc\"", "$",
     "$: must be at most 2 characters long (it is 3)"},
    {"{\"anyOf\":[{\"minimum\":5},{\"multipleOf\":2}]}", "3", "$",
     "$: does not match any of the schemas in anyOf"},
    {"{\"anyOf\":[{\"minimum\":5},{\"multipleOf\":2}]}", "4", NULL, NULL},
    {"{\"oneOf\":[{\"minimum\":1},{\"maximum\":5}]}", "3", "$",
     "$: matches both schemas [0] and [1] of oneOf; exactly one must match"},
    {"{\"oneOf\":[{\"minimum\":1},{\"maximum\":5}]}", "7", NULL, NULL},
    {"{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"boolean\"}]}", "\"x\"", "$",
     "$: does not match any of the schemas in oneOf"},
    {"{\"not\":{\"type\":\"null\"}}", "null", "$", "$: must not match the schema in \"not\""},
    {"{\"if\":{\"properties\":{\"kind\":{\"const\":\"tcp\"}}},\"then\":{\"required\":[\"port\"]},"
     "\"else\":{\"required\":[\"path\"]}}",
     "{\"kind\":\"tcp\"}", "$", "$: missing required property \"port\""},
    {"{\"if\":{\"properties\":{\"kind\":{\"const\":\"tcp\"}}},\"then\":{\"required\":[\"port\"]},"
     "\"else\":{\"required\":[\"path\"]}}",
     "{\"kind\":\"unix\"}", "$", "$: missing required property \"path\""},
    {"{\"then\":false}", "1", NULL, NULL},
    /* boolean schemas */
    {"true", "{\"anything\":[1]}", NULL, NULL},
    {"false", "1", "$", "$: value is not allowed"},
    {"{\"items\":false}", "[]", NULL, NULL},
    /* $ref */
    {"{\"definitions\":{\"port\":{\"type\":\"integer\",\"maximum\":65535}},"
     "\"properties\":{\"p\":{\"$ref\":\"#/definitions/port\"}}}",
     "{\"p\":70000}", "$.p", "$.p: 70000 is greater than the maximum 65535"},
    {"{\"$defs\":{\"s\":{\"type\":\"string\"}},\"items\":{\"$ref\":\"#/$defs/s\"}}", "[\"a\",2]",
     "$[1]", "$[1]: expected a string, got 2"},
    {"{\"properties\":{\"child\":{\"$ref\":\"#\"},\"n\":{\"type\":\"integer\"}}}",
     "{\"child\":{\"child\":{\"n\":\"x\"}}}", "$.child.child.n",
     "$.child.child.n: expected an integer, got a string"},
    {"{\"$defs\":{\"a/b~c d\":{\"type\":\"string\"}},\"$ref\":\"#/$defs/a~1b~0c%20d\"}", "1", "$",
     "$: expected a string, got 1"},
    {"{\"$id\":\"http://example.com/root.json\",\"definitions\":{\"A\":{\"$id\":\"#foo\","
     "\"type\":\"integer\"}},\"$ref\":\"#foo\"}",
     "\"x\"", "$", "$: expected an integer, got a string"},
    {"{\"$id\":\"http://example.com/a/root.json\",\"definitions\":{\"B\":{\"$id\":\"b.json\","
     "\"type\":\"integer\"}},\"properties\":{\"b\":{\"$ref\":\"b.json\"}}}",
     "{\"b\":true}", "$.b", "$.b: expected an integer, got a boolean"},
    {"{\"$defs\":{\"a\":{\"$anchor\":\"thing\",\"type\":\"null\"}},\"$ref\":\"#thing\"}", "null",
     NULL, NULL},
    {"{\"items\":[{\"type\":\"integer\"},{\"$ref\":\"#/items/0\"}]}", "[1,\"x\"]", "$[1]",
     "$[1]: expected an integer, got a string"},
    /* draft 7: $ref hides its siblings; 2020-12: it does not */
    {"{\"$defs\":{\"s\":{\"type\":\"string\"}},\"$ref\":\"#/$defs/s\",\"maxLength\":2}", "\"abc\"",
     NULL, NULL},
    {"{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"$defs\":{\"s\":{\"type\":"
     "\"string\"}},\"$ref\":\"#/$defs/s\",\"maxLength\":2}",
     "\"abc\"", "$", "$: must be at most 2 characters long (it is 3)"},
    /* formats */
    {"{\"format\":\"date-time\"}", "\"2024-02-29T23:59:59.5+01:00\"", NULL, NULL},
    {"{\"format\":\"date-time\"}", "\"2023-02-29T00:00:00Z\"", "$",
     "$: \"2023-02-29T00:00:00Z\" is not a valid date-time"},
    {"{\"format\":\"date\"}", "\"2024-13-01\"", "$", "$: \"2024-13-01\" is not a valid date"},
    {"{\"format\":\"time\"}", "\"12:00:00\"", "$", "$: \"12:00:00\" is not a valid time"},
    {"{\"format\":\"time\"}", "\"23:59:60Z\"", NULL, NULL},
    {"{\"format\":\"ipv4\"}", "\"10.0.0.01\"", "$", "$: \"10.0.0.01\" is not a valid ipv4"},
    {"{\"format\":\"ipv4\"}", "\"10.0.0.1\"", NULL, NULL},
    {"{\"format\":\"ipv6\"}", "\"fe80::1%eth0\"", "$", "$: \"fe80::1%eth0\" is not a valid ipv6"},
    {"{\"format\":\"ipv6\"}", "\"::ffff:10.0.0.1\"", NULL, NULL},
    {"{\"format\":\"hostname\"}", "\"db-1.example.com\"", NULL, NULL},
    {"{\"format\":\"hostname\"}", "\"db_1.example.com\"", "$",
     "$: \"db_1.example.com\" is not a valid hostname"},
    {"{\"format\":\"email\"}", "\"ops@example.com\"", NULL, NULL},
    {"{\"format\":\"email\"}", "\"ops@@example.com\"", "$",
     "$: \"ops@@example.com\" is not a valid email"},
    {"{\"format\":\"uri\"}", "\"https://example.com:8443/a?b=c#d\"", NULL, NULL},
    {"{\"format\":\"uri\"}", "\"/relative\"", "$", "$: \"/relative\" is not a valid uri"},
    {"{\"format\":\"color\"}", "\"x\"", NULL, NULL},
    {"{\"format\":\"ipv4\"}", "12", NULL, NULL},
    /* unknown keywords are ignored */
    {"{\"x-ui\":{\"widget\":\"slider\"},\"title\":\"T\"}", "1", NULL, NULL},
    /* paths */
    {"{\"properties\":{\"interfaces\":{\"items\":{\"properties\":{\"mtu\":{\"maximum\":9000}}}}}}",
     "{\"interfaces\":[{},{},{\"mtu\":10000}]}", "$.interfaces[2].mtu",
     "$.interfaces[2].mtu: 10000 is greater than the maximum 9000"},
    {"{\"properties\":{\"max-size\":{\"type\":\"integer\"},\"_ok$\":{\"type\":\"integer\"}}}",
     "{\"_ok$\":1,\"max-size\":\"1\"}", "$[\"max-size\"]",
     "$[\"max-size\"]: expected an integer, got a string"},
    /* values shown in messages are shortened */
    {"{\"enum\":[\"a\"]}",
     "\"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234\"",
     "$",
     "$: \"012345678901234567890123456789012345678901234567890123456789012345678901234...\" "
     "is not one of \"a\""},
};

static void test_keywords(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof vcases / sizeof vcases[0]; i++) {
        const vcase *c = &vcases[i];
        gt_schema *s = compile_ok(c->schema);
        cJSON *inst = parse(c->instance);
        gt_error err = {0};
        gt_err rc = gt_schema_validate(s, inst, &err);
        bool want_ok = c->field == NULL;
        if (want_ok && rc != GT_OK) {
            print_error("case %zu: %s on %s: expected valid, got %s\n", i, c->schema, c->instance,
                        err.message);
            failures++;
        } else if (!want_ok && rc != GT_EINVAL) {
            print_error("case %zu: %s on %s: expected \"%s\", got valid\n", i, c->schema,
                        c->instance, c->message);
            failures++;
        } else if (!want_ok && (strcmp(err.field, c->field) != 0 ||
                                strcmp(err.message, c->message) != 0)) {
            print_error("case %zu: %s on %s:\n  want [%s] %s\n  got  [%s] %s\n", i, c->schema,
                        c->instance, c->field, c->message, err.field, err.message);
            failures++;
        }
        /* A NULL error is allowed and gives the same verdict. */
        assert_int_equal(gt_schema_validate(s, inst, NULL), rc);
        cJSON_Delete(inst);
        gt_schema_free(&s);
        assert_null(s);
    }
    assert_int_equal(failures, 0);
}

/* ---- compile errors --------------------------------------------------------------- */

typedef struct ccase {
    const char *schema;
    const char *field;
    const char *message;  /* exact, or a prefix when it ends in "*" */
} ccase;

static const ccase ccases[] = {
    {"{\"properties\":{\"port\":{\"maximum\":\"x\"}}}", "$.properties.port.maximum",
     "$.properties.port.maximum: expected a number"},
    {"1", "$", "$: expected a schema (an object or a boolean)"},
    {"{\"properties\":{\"a\":[]}}", "$.properties.a", "$.properties.a: expected a schema (an "
                                                      "object or a boolean)"},
    {"{\"type\":\"strng\"}", "$.type", "$.type: unknown type \"strng\""},
    {"{\"type\":[1]}", "$.type", "$.type: expected a type name or an array of type names"},
    {"{\"items\":[{\"type\":{}}]}", "$.items[0].type",
     "$.items[0].type: expected a type name or an array of type names"},
    {"{\"pattern\":\"a(\"}", "$.pattern",
     "$.pattern: invalid regular expression at offset 2: missing closing parenthesis"},
    {"{\"patternProperties\":{\"(\":{}}}", "$.patternProperties[\"(\"]",
     "$.patternProperties[\"(\"]: invalid regular expression*"},
    {"{\"$ref\":\"http://example.com/x.json\"}", "$.$ref",
     "$.$ref: remote refs are not supported: \"http://example.com/x.json\" is not part of this "
     "schema"},
    {"{\"properties\":{\"a\":{\"$ref\":\"other.json#/x\"}}}", "$.properties.a.$ref",
     "$.properties.a.$ref: remote refs are not supported: \"other.json#/x\" is not part of "
     "this schema"},
    {"{\"$ref\":\"#/definitions/nope\"}", "$.$ref",
     "$.$ref: \"#/definitions/nope\" does not resolve to anything in this schema"},
    {"{\"$ref\":\"#nope\"}", "$.$ref", "$.$ref: \"#nope\" does not resolve to anything in this "
                                       "schema"},
    {"{\"$ref\":5}", "$.$ref", "$.$ref: expected a URI reference string"},
    {"{\"$ref\":\"#\"}", "$.$ref", "$.$ref: circular $ref: the reference leads only to itself"},
    {"{\"definitions\":{\"a\":{\"$ref\":\"#/definitions/b\"},\"b\":{\"$ref\":\"#/definitions/a\"}},"
     "\"$ref\":\"#/definitions/a\"}",
     "$.$ref", "$.$ref: circular $ref: the reference leads only to itself"},
    {"{\"required\":\"a\"}", "$.required", "$.required: expected an array of property names"},
    {"{\"required\":[1]}", "$.required", "$.required: expected an array of property names"},
    {"{\"minLength\":-1}", "$.minLength", "$.minLength: expected a non-negative integer"},
    {"{\"maxItems\":1.5}", "$.maxItems", "$.maxItems: expected a non-negative integer"},
    {"{\"multipleOf\":0}", "$.multipleOf", "$.multipleOf: expected a number greater than 0"},
    {"{\"allOf\":[]}", "$.allOf", "$.allOf: expected a non-empty array of schemas"},
    {"{\"anyOf\":{}}", "$.anyOf", "$.anyOf: expected a non-empty array of schemas"},
    {"{\"oneOf\":[{},3]}", "$.oneOf[1]", "$.oneOf[1]: expected a schema (an object or a "
                                         "boolean)"},
    {"{\"exclusiveMinimum\":true}", "$.exclusiveMinimum",
     "$.exclusiveMinimum: expected a number (the draft-4 boolean form is not supported)"},
    {"{\"uniqueItems\":1}", "$.uniqueItems", "$.uniqueItems: expected true or false"},
    {"{\"enum\":1}", "$.enum", "$.enum: expected an array of values"},
    {"{\"format\":1}", "$.format", "$.format: expected a format name"},
    {"{\"dependencies\":{\"a\":[1]}}", "$.dependencies.a",
     "$.dependencies.a: expected an array of property names"},
    {"{\"dependencies\":{\"a\":1}}", "$.dependencies.a",
     "$.dependencies.a: expected a schema (an object or a boolean)"},
    {"{\"properties\":1}", "$.properties", "$.properties: expected an object of schemas"},
    {"{\"definitions\":{\"x\":{\"minimum\":\"1\"}}}", "$.definitions.x.minimum",
     "$.definitions.x.minimum: expected a number"},
    {"{\"not\":{\"if\":{\"then\":{\"else\":{\"contains\":{\"propertyNames\":{\"type\":7}}}}}}}",
     "$.not.if.then.else.contains.propertyNames.type",
     "$.not.if.then.else.contains.propertyNames.type: expected a type name or an array of type "
     "names"},
    {"{\"unevaluatedProperties\":false}", "$.unevaluatedProperties",
     "$.unevaluatedProperties: keyword not supported"},
    {"{\"$id\":7}", "$.$id", "$.$id: expected a URI string"},
};

static void test_compile_errors(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof ccases / sizeof ccases[0]; i++) {
        const ccase *c = &ccases[i];
        cJSON *js = parse(c->schema);
        gt_error err = {0};
        gt_schema *s = gt_schema_compile(js, &err);
        size_t mlen = strlen(c->message);
        bool prefix = mlen > 0 && c->message[mlen - 1] == '*';
        bool msg_ok = prefix ? strncmp(err.message, c->message, mlen - 1) == 0
                             : strcmp(err.message, c->message) == 0;
        if (s != NULL || err.code != GT_EINVAL || strcmp(err.field, c->field) != 0 || !msg_ok) {
            print_error("compile case %zu: %s\n  want [%s] %s\n  got  [%s] %s (%s)\n", i,
                        c->schema, c->field, c->message, err.field, err.message,
                        s ? "compiled" : "rejected");
            failures++;
        }
        gt_schema_free(&s);
        cJSON_Delete(js);
    }
    assert_int_equal(failures, 0);
    gt_schema_free(NULL);
    /* A NULL error pointer is fine too. */
    assert_null(gt_schema_compile(NULL, NULL));
}

/* The compiled schema is a copy: the caller may free its tree at once. */
static void test_schema_is_copied(void **state)
{
    (void)state;
    cJSON *js = parse("{\"properties\":{\"a\":{\"enum\":[\"x\"]}},\"required\":[\"a\"]}");
    gt_schema *s = gt_schema_compile(js, NULL);
    assert_non_null(s);
    cJSON_Delete(js);
    cJSON *inst = parse("{\"a\":\"x\"}");
    assert_int_equal(gt_schema_validate(s, inst, NULL), GT_OK);
    cJSON_Delete(inst);
    gt_schema_free(&s);
}

/* ---- defaults -------------------------------------------------------------------- */

static void test_apply_defaults(void **state)
{
    (void)state;
    gt_schema *s = compile_ok("{\"properties\":{\"port\":{\"type\":\"integer\",\"default\":8080},"
                              "\"host\":{\"default\":\"localhost\"},\"tls\":{\"type\":\"boolean\"},"
                              "\"tags\":{\"default\":[\"a\",{\"b\":1}]}}}");
    cJSON *inst = parse("{\"host\":\"db\"}");
    assert_int_equal(gt_schema_apply_defaults(s, inst), 2);
    assert_int_equal(cJSON_GetObjectItem(inst, "port")->valuedouble, 8080);
    assert_string_equal(cJSON_GetObjectItem(inst, "host")->valuestring, "db");
    assert_null(cJSON_GetObjectItem(inst, "tls"));
    char *text = gt_json_print(inst);
    assert_string_equal(text, "{\"host\":\"db\",\"port\":8080,\"tags\":[\"a\",{\"b\":1}]}");
    free(text);
    /* A second pass adds nothing; a non-object adds nothing. */
    assert_int_equal(gt_schema_apply_defaults(s, inst), 0);
    cJSON *arr = parse("[]");
    assert_int_equal(gt_schema_apply_defaults(s, arr), 0);
    assert_int_equal(gt_schema_apply_defaults(NULL, inst), 0);
    cJSON_Delete(arr);
    cJSON_Delete(inst);
    gt_schema_free(&s);

    /* Through $refs: on the property and on the root. */
    s = compile_ok("{\"$ref\":\"#/definitions/root\",\"definitions\":{\"p\":{\"default\":5},"
                   "\"root\":{\"properties\":{\"a\":{\"$ref\":\"#/definitions/p\"},"
                   "\"b\":{\"$ref\":\"#/definitions/p\",\"default\":6}}}}}");
    inst = parse("{}");
    assert_int_equal(gt_schema_apply_defaults(s, inst), 2);
    assert_int_equal(cJSON_GetObjectItem(inst, "a")->valuedouble, 5);
    assert_int_equal(cJSON_GetObjectItem(inst, "b")->valuedouble, 6);
    cJSON_Delete(inst);
    gt_schema_free(&s);

    s = compile_ok("true");
    inst = parse("{}");
    assert_int_equal(gt_schema_apply_defaults(s, inst), 0);
    cJSON_Delete(inst);
    gt_schema_free(&s);
}

/* ---- hostile input -------------------------------------------------------------- */

static char *repeat(const char *head, const char *mid, const char *tail, int n)
{
    gt_buf b = {0};
    for (int i = 0; i < n; i++)
        gt_buf_puts(&b, head);
    gt_buf_puts(&b, mid);
    for (int i = 0; i < n; i++)
        gt_buf_puts(&b, tail);
    return gt_buf_steal(&b);
}

static void expect_invalid(const char *schema, const char *instance, const char *prefix)
{
    gt_schema *s = compile_ok(schema);
    cJSON *inst = parse(instance);
    gt_error err = {0};
    assert_int_equal(gt_schema_validate(s, inst, &err), GT_EINVAL);
    if (strstr(err.message, prefix) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", prefix, err.message);
    cJSON_Delete(inst);
    gt_schema_free(&s);
}

static void test_limits(void **state)
{
    (void)state;
    /* A deeply nested schema is a compile error, not a stack overflow. */
    char *deep = repeat("{\"not\":", "{}", "}", 400);
    cJSON *js = parse(deep);
    gt_error err = {0};
    assert_null(gt_schema_compile(js, &err));
    assert_non_null(strstr(err.message, "schema nested too deeply"));
    cJSON_Delete(js);
    free(deep);

    /* A deeply nested instance against a recursive schema. */
    char *inst = repeat("[", "1", "]", 900);
    expect_invalid("{\"items\":{\"$ref\":\"#\"}}", inst, "too deeply nested to validate");
    free(inst);

    /* Loops that never reach the instance: caught at run time, whatever wraps them
     * (a "not" around the loop must not turn the failure into a success). */
    expect_invalid("{\"allOf\":[{\"$ref\":\"#\"}]}", "1", "too deeply nested to validate");
    expect_invalid("{\"not\":{\"$ref\":\"#\"}}", "1", "too deeply nested to validate");
    expect_invalid("{\"anyOf\":[{\"$ref\":\"#\"}, true]}", "1", "too deeply nested to validate");

    /* Exponential branching stops at the step budget. */
    gt_buf b = {0};
    gt_buf_puts(&b, "{\"$ref\":\"#/definitions/d0\",\"definitions\":{");
    for (int i = 0; i < 40; i++)
        gt_buf_printf(&b, "\"d%d\":{\"anyOf\":[{\"$ref\":\"#/definitions/d%d\"},"
                          "{\"$ref\":\"#/definitions/d%d\"}]},", i, i + 1, i + 1);
    gt_buf_puts(&b, "\"d40\":false}}");
    expect_invalid(b.data, "1", "validation is too complex");
    gt_buf_free(&b);

    /* Catastrophic backtracking stops at the match limit. */
    expect_invalid("{\"pattern\":\"^(a+)+$\"}", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!\"",
                   "could not evaluate a pattern");

    /* Large but reasonable input stays within limits. */
    gt_buf big = {0};
    gt_buf_puts(&big, "[");
    for (int i = 0; i < 2000; i++)
        gt_buf_printf(&big, "%s{\"id\":%d,\"name\":\"n%d\"}", i ? "," : "", i, i);
    gt_buf_puts(&big, "]");
    gt_schema *s = compile_ok("{\"uniqueItems\":true,\"items\":{\"type\":\"object\",\"required\":"
                              "[\"id\",\"name\"],\"properties\":{\"id\":{\"type\":\"integer\"}}}}");
    cJSON *arr = parse(big.data);
    gt_error_clear(&err);
    assert_int_equal(gt_schema_validate(s, arr, &err), GT_OK);
    cJSON_Delete(arr);
    gt_schema_free(&s);
    gt_buf_free(&big);
}

/* ---- the official JSON-Schema-Test-Suite ----------------------------------------- */

/* Whole files that need what this validator deliberately lacks. */
static const struct {
    const char *file;
    const char *reason;
} excluded_files[] = {
    {"refRemote.json", "every case $refs http://localhost:1234/...: remote refs are not "
                       "supported by design"},
    {"definitions.json", "validates schemas against the draft-07 metaschema, a remote $ref"},
};

/* Single groups (test == NULL) or cases. */
static const struct {
    const char *file;
    const char *group;
    const char *test;
    const char *reason;
} excluded_cases[] = {
    {"ref.json", "remote ref, containing refs itself", NULL,
     "$refs the draft-07 metaschema by its http URL: remote refs are not supported"},
    {"date.json", "validation of date strings",
     "invalid: NUL character after an otherwise valid full-date",
     "cJSON strings are NUL-terminated, so \\u0000 cuts the instance short"},
    {"ipv4.json", "validation of IP addresses", "additional content after an embedded NUL byte",
     "cJSON strings are NUL-terminated, so \\u0000 cuts the instance short"},
};

static const char *const optional_formats[] = {"date-time", "date", "time",  "ipv4",
                                               "ipv6",      "hostname", "email", "uri"};

static const char *exclusion(const char *file, const char *group, const char *test)
{
    for (size_t i = 0; i < sizeof excluded_files / sizeof excluded_files[0]; i++)
        if (strcmp(excluded_files[i].file, file) == 0)
            return excluded_files[i].reason;
    for (size_t i = 0; i < sizeof excluded_cases / sizeof excluded_cases[0]; i++)
        if (strcmp(excluded_cases[i].file, file) == 0 &&
            strcmp(excluded_cases[i].group, group) == 0 &&
            (excluded_cases[i].test == NULL || strcmp(excluded_cases[i].test, test) == 0))
            return excluded_cases[i].reason;
    return NULL;
}

typedef struct tally {
    int total, passed, excluded, failed, excluded_passing;
} tally;

static void run_suite_file(const char *dir, const char *name, tally *all)
{
    char *path = gt_path_join(dir, name);
    char *text = NULL;
    size_t len = 0;
    gt_error err = {0};
    cJSON *groups = NULL;
    tally t = {0};
    /* The suite is trusted test data: cJSON directly, since gt_json_parse refuses
     * \u0000, which a few cases contain (they are excluded below). */
    if (gt_read_file(path, 16 << 20, &text, &len, &err) != GT_OK ||
        (groups = cJSON_ParseWithLength(text, len)) == NULL || !cJSON_IsArray(groups)) {
        if (err.code == GT_OK)
            gt_error_set(&err, GT_EINVAL, "not a JSON array of test groups");
        print_error("%s: cannot load: %s\n", path, err.message);
        all->failed++;
        goto done;
    }
    for (const cJSON *g = groups->child; g; g = g->next) {
        const char *gdesc = cJSON_GetObjectItem(g, "description")->valuestring;
        gt_error cerr = {0};
        gt_schema *s = gt_schema_compile(cJSON_GetObjectItem(g, "schema"), &cerr);
        for (const cJSON *tc = cJSON_GetObjectItem(g, "tests")->child; tc; tc = tc->next) {
            const char *tdesc = cJSON_GetObjectItem(tc, "description")->valuestring;
            bool want = cJSON_IsTrue(cJSON_GetObjectItem(tc, "valid"));
            const char *why = exclusion(name, gdesc, tdesc);
            gt_error verr = {0};
            bool got = s && gt_schema_validate(s, cJSON_GetObjectItem(tc, "data"), &verr) == GT_OK;
            bool pass = s != NULL && got == want;
            t.total++;
            if (why) {
                t.excluded++;
                if (pass)
                    t.excluded_passing++;
            } else if (pass) {
                t.passed++;
            } else {
                t.failed++;
                print_error("FAIL %s / %s / %s: expected %s, %s\n", name, gdesc, tdesc,
                            want ? "valid" : "invalid",
                            s == NULL ? cerr.message : got ? "got valid" : verr.message);
            }
        }
        gt_schema_free(&s);
    }
    printf("  %-28s %3d/%-3d passed", name, t.passed, t.total - t.excluded);
    if (t.excluded)
        printf(" (%d excluded%s)", t.excluded, t.excluded_passing ? ", some now pass" : "");
    printf("\n");
done:
    all->total += t.total;
    all->passed += t.passed;
    all->excluded += t.excluded;
    all->failed += t.failed;
    all->excluded_passing += t.excluded_passing;
    cJSON_Delete(groups);
    free(text);
    free(path);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_official_suite(void **state)
{
    (void)state;
    const char *data = getenv("GANTRY_TESTDATA");
    char *root = gt_path_join(data ? data : "(GANTRY_TESTDATA unset)",
                              "json-schema-test-suite/tests/draft7");
    DIR *d = opendir(root);
    if (d == NULL) {
        printf("SKIPPED: json-schema-test-suite not found at %s\n", root);
        free(root);
        skip();
        return;
    }
    gt_strv files = {0};
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (n > 5 && strcmp(e->d_name + n - 5, ".json") == 0)
            gt_strv_push(&files, e->d_name);
    }
    closedir(d);
    qsort(files.v, files.n, sizeof *files.v, cmp_str);

    tally all = {0};
    printf("json-schema-test-suite draft7, per file:\n");
    for (size_t i = 0; i < files.n; i++)
        run_suite_file(root, files.v[i], &all);
    char *fmt_dir = gt_path_join(root, "optional/format");
    for (size_t i = 0; i < sizeof optional_formats / sizeof optional_formats[0]; i++) {
        char *name = gt_xasprintf("%s.json", optional_formats[i]);
        run_suite_file(fmt_dir, name, &all);
        free(name);
    }
    printf("json-schema-test-suite draft7: %d/%d cases passed (%d excluded)\n", all.passed,
           all.total, all.excluded);
    for (size_t i = 0; i < sizeof excluded_files / sizeof excluded_files[0]; i++)
        printf("  excluded file %s: %s\n", excluded_files[i].file, excluded_files[i].reason);
    for (size_t i = 0; i < sizeof excluded_cases / sizeof excluded_cases[0]; i++)
        printf("  excluded %s / %s%s%s: %s\n", excluded_cases[i].file, excluded_cases[i].group,
               excluded_cases[i].test ? " / " : "",
               excluded_cases[i].test ? excluded_cases[i].test : "", excluded_cases[i].reason);
    if (all.excluded_passing)
        printf("  note: %d excluded cases pass now; the exclusion list may be shortened\n",
               all.excluded_passing);
    free(fmt_dir);
    gt_strv_free(&files);
    free(root);
    assert_int_equal(all.failed, 0);
    assert_int_equal(all.passed + all.excluded, all.total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keywords),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_schema_is_copied),
        cmocka_unit_test(test_apply_defaults),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_official_suite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

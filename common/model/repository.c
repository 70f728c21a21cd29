#include "model/model.h"

#include <stdlib.h>

#include "json.h"
#include "repo.h"

static const char *const fields[] = {"name", "description", "url", "reference",
                                     "private_key_name", NULL};
static const char *const indexes[] = {"private_key_name", NULL};
static const char *const hidden[] = {NULL};

static gt_err validate(cJSON *doc, gt_error *err)
{
    const char *url = NULL, *s = NULL;
    gt_err rc;
    if ((rc = gt_json_only(doc, "$", fields, err)) != GT_OK ||
        (rc = gt_model_check_name(doc, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "description", &s, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "reference", &s, err)) != GT_OK ||
        (rc = gt_model_check_ref(doc, "private_key_name", err)) != GT_OK ||
        (rc = gt_json_str(doc, "$", "url", &url, err)) != GT_OK)
        return rc;
    gt_error why = {0};
    if (gt_repo_url_check(url, "$.url", &why) != GT_OK)
        return gt_error_setf(err, GT_EINVAL, "$.url", "$.url: %s", why.message);
    if (gt_repo_url_has_password(url)) {
        /* A password in the URL would be stored and shown in the clear. Repositories take
         * their credentials from a secret: an ssh key (private_key_name); there is no
         * username/password secret for https yet. */
        char *shown = gt_repo_url_mask(url);
        gt_error_setf(err, GT_EINVAL, "$.url",
                      "$.url: \"%s\" has a password in it; do not put credentials in a URL: "
                      "store an ssh private key as a secret and use an ssh URL with "
                      "private_key_name", shown);
        free(shown);
        return GT_EINVAL;
    }
    return GT_OK;
}

/* A URL stored with a password (before validate refused them) is shown masked. */
static void present(cJSON *doc)
{
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(doc, "url");
    if (cJSON_IsString(url) && gt_repo_url_has_password(url->valuestring)) {
        char *shown = gt_repo_url_mask(url->valuestring);
        gt_json_set_str(doc, "url", shown);
        free(shown);
    }
}

const gt_model_kind gt_model_repository = {
    .plural = "repositories",
    .singular = "repository",
    .fields = fields,
    .indexes = indexes,
    .hidden = hidden,
    .validate = validate,
    .present = present,
};

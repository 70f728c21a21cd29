#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *gt_strerror(gt_err code)
{
    switch (code) {
    case GT_OK: return "ok";
    case GT_ENOMEM: return "out of memory";
    case GT_EINVAL: return "invalid input";
    case GT_ENOTFOUND: return "not found";
    case GT_ECONFLICT: return "conflict";
    case GT_EUNAVAIL: return "unavailable";
    case GT_EAGAIN: return "try again";
    case GT_EIO: return "i/o error";
    case GT_ETIMEDOUT: return "timed out";
    case GT_EPERM: return "permission denied";
    case GT_ECRYPTO: return "cryptographic failure";
    case GT_EINTERNAL: return "internal error";
    }
    return "unknown error";
}

static gt_err set_va(gt_error *err, gt_err code, const char *field, const char *fmt, va_list ap)
{
    if (err == NULL || err->code != GT_OK)
        return code;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    return code;
}

gt_err gt_error_set(gt_error *err, gt_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_va(err, code, NULL, fmt, ap);
    va_end(ap);
    return code;
}

gt_err gt_error_setf(gt_error *err, gt_err code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_va(err, code, field, fmt, ap);
    va_end(ap);
    return code;
}

void gt_error_clear(gt_error *err)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof *err);
}

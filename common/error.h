/* One error type for the whole project: a code, and where a caller needs it,
 * a gt_error with a message and the field (JSON path, flag, file:line) it is about. */
#ifndef GT_ERROR_H
#define GT_ERROR_H

#include <stddef.h>

typedef enum gt_err {
    GT_OK = 0,
    GT_ENOMEM,
    GT_EINVAL,     /* bad input: the message says what and where */
    GT_ENOTFOUND,
    GT_ECONFLICT,  /* revision mismatch, name taken, still in use */
    GT_EUNAVAIL,   /* a dependency does not answer */
    GT_EAGAIN,
    GT_EIO,
    GT_ETIMEDOUT,
    GT_EPERM,
    GT_ECRYPTO,    /* wrong key, tampered data */
    GT_EINTERNAL
} gt_err;

typedef struct gt_error {
    gt_err code;
    char field[256];   /* JSON path, flag or file:line; empty when not about one */
    char message[1024];
} gt_error;

/* Returns a static name for code ("not found", ...). */
const char *gt_strerror(gt_err code);

/* Sets *err once (the lowest layer that knows the cause wins): a later call on an
 * already set error changes nothing. err may be NULL. Returns code. */
gt_err gt_error_set(gt_error *err, gt_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* As gt_error_set, and records the field the error is about. */
gt_err gt_error_setf(gt_error *err, gt_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clears err back to GT_OK. */
void gt_error_clear(gt_error *err);

#endif

/* The store conformance suite: what every driver (local, memory, etcd, mongodb) must do.
 * A driver's test calls gt_store_conformance_run from its main():
 *
 *     static gt_store *open_fresh(void *ctx) { ... return a new, empty store ... }
 *     int main(void) { return gt_store_conformance_run("etcd", open_fresh, &ctx); }
 *
 * open_fresh is called once per test and must return an empty store (a new file, a
 * new key prefix, a new database) whose gt_store_driver() is driver; the suite frees
 * it after the test. A driver that needs a server absent here prints SKIPPED with the
 * reason and returns 0 instead of calling the suite. */
#ifndef GT_STORE_CONFORMANCE_H
#define GT_STORE_CONFORMANCE_H

#include "store.h"

/* Runs the suite as one cmocka group named "store/<driver>"; returns the number of
 * failed tests (0 when all pass), as cmocka_run_group_tests_name does. */
int gt_store_conformance_run(const char *driver, gt_store *(*open_fresh)(void *ctx), void *ctx);

/* Concurrency checks for a driver's own tests (call them inside a cmocka test). Pass
 * several handles on one store, or one handle several times when the driver is
 * thread-safe. */

/* Two threads, through a and b, read one document and write it back with CAS, round
 * after round: asserts exactly one of them wins every round. */
void gt_store_conformance_cas_race(gt_store *a, gt_store *b, int rounds);
/* As gt_store_conformance_cas_race with gt_store_apply of two documents (the contended
 * one and each thread's own): exactly one wins every round, and a loser writes neither. */
void gt_store_conformance_apply_race(gt_store *a, gt_store *b, int rounds);
/* nthreads threads, thread i through handles[i], each add increments to a counter
 * document with get + CAS + retry: asserts no increment is lost. */
void gt_store_conformance_counter(gt_store **handles, int nthreads, int increments);

#endif

/* The process's change watcher (see watch.h). The thread waits on the union of the
 * subscribed collections; a new subscription takes effect at its next wait (WAIT_MS
 * at most), and hears an id NULL call then, since writes before that went unwatched. */
#include "watch.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

enum { WAIT_MS = 500, RETRY_MS = 1000 };

typedef struct sub {
    int id;
    char *coll;
    gt_watch_fn fn;
    void *arg;
    bool watched;   /* the thread's wait covers it: it has had its id NULL call */
} sub;

struct gt_watch {
    gt_watch_open_fn open_store;
    void *open_arg;
    pthread_t thread;
    pthread_mutex_t mu;   /* guards everything below; held while callbacks run */
    pthread_cond_t cv;
    sub *subs;
    size_t n, cap;
    int last_id;
    bool stopping;
};

/* Calls the subscribers of coll (NULL: all) with id (NULL: the "re-read" call); mu held. */
static void notify(gt_watch *w, const char *coll, const char *id, int64_t rev)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->subs[i].watched && (coll == NULL || strcmp(w->subs[i].coll, coll) == 0))
            w->subs[i].fn(w->subs[i].arg, w->subs[i].coll, id, rev);
}

/* The collections to wait on, each once. mu held. */
static void take_colls(gt_watch *w, gt_strv *colls)
{
    gt_strv_free(colls);
    for (size_t i = 0; i < w->n; i++) {
        bool have = false;
        for (size_t k = 0; k < colls->n && !have; k++)
            have = strcmp(colls->v[k], w->subs[i].coll) == 0;
        if (!have)
            gt_strv_push(colls, w->subs[i].coll);
    }
}

/* Gives the subscriptions that the coming wait covers for the first time their id NULL
 * call. mu held. */
static void mark_watched(gt_watch *w, const gt_strv *colls)
{
    for (size_t i = 0; i < w->n; i++) {
        bool covered = false;   /* one that came after take_colls waits for the next round */
        for (size_t k = 0; k < colls->n && !covered; k++)
            covered = strcmp(colls->v[k], w->subs[i].coll) == 0;
        if (covered && !w->subs[i].watched) {
            w->subs[i].watched = true;
            w->subs[i].fn(w->subs[i].arg, w->subs[i].coll, NULL, 0);
        }
    }
}

static void *watch_main(void *arg)
{
    gt_watch *w = arg;
    gt_store *store = NULL;
    gt_strv colls = {0};
    int64_t since = 0;
    bool failing = false;
    pthread_mutex_lock(&w->mu);
    while (!w->stopping) {
        if (w->n == 0) {
            since = 0;   /* whoever subscribes next starts from then */
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        take_colls(w, &colls);
        pthread_mutex_unlock(&w->mu);
        gt_error e = {0};
        gt_err rc = GT_OK;
        gt_store_changes ch = {0};
        if (store == NULL)
            rc = (gt_err)w->open_store(w->open_arg, &store, &e);
        if (rc == GT_OK && since == 0 &&
            (rc = gt_store_changes_wait(store, NULL, 0, 0, 0, &ch, &e)) == GT_OK)
            since = ch.next;
        pthread_mutex_lock(&w->mu);
        if (rc == GT_OK) {
            if (failing) {   /* what happened meanwhile went unseen */
                gt_info("watch: the store answers again");
                failing = false;
                notify(w, NULL, NULL, 0);
            }
            mark_watched(w, &colls);
        }
        pthread_mutex_unlock(&w->mu);
        if (rc == GT_OK) {
            gt_store_changes_clear(&ch);
            rc = gt_store_changes_wait(store, (const char *const *)colls.v, colls.n, since, WAIT_MS,
                                       &ch, &e);
        }
        pthread_mutex_lock(&w->mu);
        if (rc != GT_OK) {
            if (!failing)
                gt_warn("watch: %s (retrying every %d ms)", e.message, RETRY_MS);
            failing = true;
            pthread_mutex_unlock(&w->mu);
            gt_store_free(&store);   /* it may be broken: a new one next time */
            since = 0;
            pthread_mutex_lock(&w->mu);
            if (!w->stopping)
                gt_cond_wait_ms(&w->cv, &w->mu, RETRY_MS);
            continue;
        }
        if (ch.reset) {
            for (size_t i = 0; i < colls.n; i++)
                notify(w, colls.v[i], NULL, 0);
        }
        for (size_t i = 0; i < ch.n; i++)
            notify(w, ch.v[i].coll, ch.v[i].id, ch.v[i].rev);
        since = ch.next;
        gt_store_changes_clear(&ch);
    }
    pthread_mutex_unlock(&w->mu);
    gt_strv_free(&colls);
    gt_store_free(&store);
    return NULL;
}

gt_watch *gt_watch_new(gt_watch_open_fn open_store, void *open_arg, gt_error *err)
{
    gt_watch *w = gt_xcalloc(1, sizeof *w);
    w->open_store = open_store;
    w->open_arg = open_arg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int e = pthread_create(&w->thread, NULL, watch_main, w);
    if (e != 0) {
        gt_error_set(err, GT_EUNAVAIL, "watch: starting its thread: %s", strerror(e));
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return NULL;
    }
    return w;
}

int gt_watch_subscribe(gt_watch *w, const char *coll, gt_watch_fn fn, void *arg)
{
    pthread_mutex_lock(&w->mu);
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 4;
        w->subs = gt_xrealloc(w->subs, w->cap * sizeof *w->subs);
    }
    int id = ++w->last_id;
    w->subs[w->n++] = (sub){id, gt_xstrdup(coll), fn, arg, false};
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return id;
}

void gt_watch_unsubscribe(gt_watch *w, int id)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++) {
        if (w->subs[i].id == id) {
            free(w->subs[i].coll);
            memmove(&w->subs[i], &w->subs[i + 1], (w->n - i - 1) * sizeof *w->subs);
            w->n--;
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
}

void gt_watch_free(gt_watch **pw)
{
    if (pw == NULL || *pw == NULL)
        return;
    gt_watch *w = *pw;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    for (size_t i = 0; i < w->n; i++)
        free(w->subs[i].coll);
    free(w->subs);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    *pw = NULL;
}

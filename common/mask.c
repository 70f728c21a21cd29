/* Masking secret values in text with one Aho-Corasick automaton over all of them: one
 * pass over the text finds, at every position, the longest value ending there, whatever
 * the number of values, so 1 MiB of output with hundreds of secrets costs about as much
 * as with one (a memmem per value would cost values x text).
 *
 * The stretches covered by any occurrence are merged and each becomes one "***". This is
 * "longest first" and more: a value that contains another ("password" and "pass") is
 * masked whole, not as "***word", and two values that overlap in the text ("abcd" and
 * "cdef" in "abcdef") leave no byte of either behind, where replacing one value after
 * the other would leave "ef". */
#include "mask.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Values shorter than 3 bytes are not masked: a 1- or 2-byte value ("1", "on", "no")
 * occurs all over any output, so masking it would turn the output into noise while
 * hiding nothing (with 2 bytes of value, every "***" would tell it anyway), and the empty
 * value matches everywhere. Such a value is not a secret worth the name. */
#define MIN_VALUE 3
/* Lines of a private key (and of any value that spans lines) of at least 16 bytes are
 * masked one by one: a program that prints a key often re-wraps, indents or quotes it.
 * Shorter lines are the last of a base64 body or "-----END ...", common or harmless. */
#define MIN_LINE 16
/* Longer values are masked by their first 16 MiB: an occurrence of the whole needs at
 * least that much output, far more than a run keeps. Keeps node indices in int32. */
#define MAX_PATTERN (16u << 20)
#define MASK "***"

typedef struct pattern {
    const char *p;
    size_t n;
} pattern;

struct gt_mask {
    /* The trie of all values; node 0 is the root. */
    size_t nodes;
    int32_t *fail;          /* the longest proper suffix of this node's string in the trie */
    int32_t *out;           /* length of the longest value that is a suffix of it (0: none) */
    int32_t *depth;
    int32_t *first;         /* first child, or -1 */
    int32_t *next;          /* next sibling, or -1 */
    unsigned char *byte;    /* the byte on the edge into this node */
    /* Child lookup: open addressing; key ((parent << 8) | byte) + 1, 0 when empty. */
    uint64_t *hkey;
    int32_t *hval;
    size_t hbits;
};

static size_t slot(const gt_mask *m, uint64_t key)
{
    return (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - m->hbits));
}

static int32_t child(const gt_mask *m, int32_t parent, unsigned char c)
{
    uint64_t key = (((uint64_t)parent << 8) | c) + 1;
    size_t mask = ((size_t)1 << m->hbits) - 1;
    for (size_t i = slot(m, key);; i = (i + 1) & mask) {
        if (m->hkey[i] == key)
            return m->hval[i];
        if (m->hkey[i] == 0)
            return -1;
    }
}

static int32_t add_child(gt_mask *m, int32_t parent, unsigned char c)
{
    int32_t v = (int32_t)m->nodes++;
    m->fail[v] = 0;
    m->out[v] = 0;
    m->depth[v] = m->depth[parent] + 1;
    m->first[v] = -1;
    m->byte[v] = c;
    m->next[v] = m->first[parent];
    m->first[parent] = v;
    uint64_t key = (((uint64_t)parent << 8) | c) + 1;
    size_t mask = ((size_t)1 << m->hbits) - 1, i = slot(m, key);
    while (m->hkey[i] != 0)
        i = (i + 1) & mask;
    m->hkey[i] = key;
    m->hval[i] = v;
    return v;
}

static void insert(gt_mask *m, const pattern *pt)
{
    int32_t node = 0;
    for (size_t i = 0; i < pt->n; i++) {
        unsigned char c = (unsigned char)pt->p[i];
        int32_t ch = child(m, node, c);
        node = ch >= 0 ? ch : add_child(m, node, c);
    }
    m->out[node] = m->depth[node];
}

/* Breadth first, so a node's fail target (shallower) is done before the node. */
static void link(gt_mask *m)
{
    int32_t *queue = gt_xmalloc(m->nodes * sizeof *queue);
    size_t head = 0, tail = 0;
    for (int32_t v = m->first[0]; v >= 0; v = m->next[v]) {
        m->fail[v] = 0;
        queue[tail++] = v;
    }
    while (head < tail) {
        int32_t u = queue[head++];
        for (int32_t v = m->first[u]; v >= 0; v = m->next[v]) {
            int32_t f = m->fail[u], g;
            while ((g = child(m, f, m->byte[v])) < 0 && f != 0)
                f = m->fail[f];
            m->fail[v] = g >= 0 ? g : 0;
            if (m->out[v] == 0)
                m->out[v] = m->out[m->fail[v]];
            queue[tail++] = v;
        }
    }
    free(queue);
}

typedef struct pattern_list {
    pattern *v;
    size_t n, cap;
    char **owned;           /* copies made here (cleaned values), wiped at the end */
    size_t n_owned;
} pattern_list;

static void add_pattern(pattern_list *l, const char *p, size_t n, size_t min)
{
    if (n < min)
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = gt_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (pattern){p, n > MAX_PATTERN ? MAX_PATTERN : n};
}

/* Each line of p[0..n) (without its "\r") of at least MIN_LINE bytes. */
static void add_lines(pattern_list *l, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        size_t len = (size_t)(e - p);
        if (len > 0 && p[len - 1] == '\r')
            len--;
        add_pattern(l, p, len, MIN_LINE);
        p = nl ? nl + 1 : end;
    }
}

static void add_value(pattern_list *l, const char *v)
{
    size_t n = strlen(v);
    add_pattern(l, v, n, MIN_VALUE);
    if (memchr(v, '\n', n))
        add_lines(l, v, n);
    /* Output is stored as UTF-8 with invalid bytes replaced (gt_utf8_clean): a value
     * with such bytes appears in it in that form. ASCII is always valid, and skipping it
     * spares the copies gt_utf8_clean's growing buffer would leave behind. */
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = (unsigned char)v[i] < 0x80;
    if (ascii)
        return;
    size_t cn = 0;
    char *clean = gt_utf8_clean(v, n, &cn);
    if (cn == n && memcmp(clean, v, n) == 0) {
        gt_wipe(clean, cn);
        free(clean);
        return;
    }
    l->owned = gt_xrealloc(l->owned, (l->n_owned + 1) * sizeof *l->owned);
    l->owned[l->n_owned++] = clean;
    add_pattern(l, clean, cn, MIN_VALUE);
}

static void alloc_nodes(gt_mask *m, size_t total)
{
    size_t cap = total + 1;
    m->fail = gt_xcalloc(cap, sizeof *m->fail);
    m->out = gt_xcalloc(cap, sizeof *m->out);
    m->depth = gt_xcalloc(cap, sizeof *m->depth);
    m->first = gt_xcalloc(cap, sizeof *m->first);
    m->next = gt_xcalloc(cap, sizeof *m->next);
    m->byte = gt_xcalloc(cap, sizeof *m->byte);
    m->hbits = 4;
    while (((size_t)1 << m->hbits) < 2 * cap)
        m->hbits++;
    m->hkey = gt_xcalloc((size_t)1 << m->hbits, sizeof *m->hkey);
    m->hval = gt_xcalloc((size_t)1 << m->hbits, sizeof *m->hval);
    m->nodes = 1;
    m->first[0] = -1;
    m->next[0] = -1;
}

gt_mask *gt_mask_new(char *const *env_entries, const char *key_text)
{
    gt_mask *m = gt_xcalloc(1, sizeof *m);
    pattern_list l = {0};
    for (char *const *e = env_entries; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq)
            add_value(&l, eq + 1);
    }
    if (key_text)
        add_lines(&l, key_text, strlen(key_text));
    size_t total = 0;
    for (size_t i = 0; i < l.n; i++)
        total += l.v[i].n;
    if (total > INT32_MAX - 1) { /* not reachable with real secrets: keep what fits */
        size_t keep = 0, sum = 0;
        while (keep < l.n && sum + l.v[keep].n <= INT32_MAX - 1)
            sum += l.v[keep++].n;
        l.n = keep;
        total = sum;
    }
    alloc_nodes(m, total);
    for (size_t i = 0; i < l.n; i++)
        insert(m, &l.v[i]);
    link(m);
    for (size_t i = 0; i < l.n_owned; i++) {
        gt_wipe(l.owned[i], strlen(l.owned[i]));
        free(l.owned[i]);
    }
    free(l.owned);
    free(l.v);
    return m;
}

bool gt_mask_empty(const gt_mask *m)
{
    return m == NULL || m->nodes <= 1;
}

typedef struct run {
    size_t start, end;      /* covered bytes [start, end] */
} run;

char *gt_mask_apply(const gt_mask *m, const char *text)
{
    if (text == NULL)
        return NULL;
    if (gt_mask_empty(m))
        return gt_xstrdup(text);
    size_t n = strlen(text), nruns = 0, cap = 0;
    run *runs = NULL;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        int32_t g;
        while ((g = child(m, node, c)) < 0 && node != 0)
            node = m->fail[node];
        node = g >= 0 ? g : 0;
        size_t len = (size_t)m->out[node];
        if (len == 0)
            continue;
        /* [i - len + 1, i] ends after every run so far: merge those it overlaps or
         * touches (ends only grow, so they are at the top of the stack) */
        size_t start = i + 1 - len;
        while (nruns > 0 && start <= runs[nruns - 1].end + 1) {
            if (runs[nruns - 1].start < start)
                start = runs[nruns - 1].start;
            nruns--;
        }
        if (nruns == cap) {
            cap = cap ? cap * 2 : 16;
            runs = gt_xrealloc(runs, cap * sizeof *runs);
        }
        runs[nruns++] = (run){start, i};
    }
    size_t covered = 0;
    for (size_t r = 0; r < nruns; r++)
        covered += runs[r].end - runs[r].start + 1;
    char *out = gt_xmalloc(n - covered + nruns * (sizeof MASK - 1) + 1);
    size_t o = 0, at = 0;
    for (size_t r = 0; r < nruns; r++) {
        memcpy(out + o, text + at, runs[r].start - at);
        o += runs[r].start - at;
        memcpy(out + o, MASK, sizeof MASK - 1);
        o += sizeof MASK - 1;
        at = runs[r].end + 1;
    }
    memcpy(out + o, text + at, n - at);
    o += n - at;
    out[o] = '\0';
    free(runs);
    return out;
}

void gt_mask_free(gt_mask **mp)
{
    if (mp == NULL || *mp == NULL)
        return;
    gt_mask *m = *mp;
    size_t cap = m->nodes, hcap = (size_t)1 << m->hbits;
    /* the trie spells the values: edge bytes, and the keys of the lookup table */
    if (m->byte)
        gt_wipe(m->byte, cap);
    if (m->hkey)
        gt_wipe(m->hkey, hcap * sizeof *m->hkey);
    free(m->fail);
    free(m->out);
    free(m->depth);
    free(m->first);
    free(m->next);
    free(m->byte);
    free(m->hkey);
    free(m->hval);
    free(m);
    *mp = NULL;
}

char *gt_mask_secrets(const char *text, char *const *env_entries)
{
    if (text == NULL)
        return NULL;
    gt_mask *m = gt_mask_new(env_entries, NULL);
    char *out = gt_mask_apply(m, text);
    gt_mask_free(&m);
    return out;
}

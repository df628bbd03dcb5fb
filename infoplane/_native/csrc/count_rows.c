/* Rows of a batch of layers, binned or exact: per item, plug-in count statistics of the rows.
 * Built by infoplane/_native/build.py; called through infoplane._native.kernels.count_rows, which checks the
 * arguments, and used by infoplane/estimators/_cpu/count_kernel.py.
 * Compiled with -ffp-contract=off: the sums below are the same roundings, in the same order, as numpy's. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY UINT64_MAX

typedef struct {
    const void *acts; int is_double, mode; int64_t items, n, d;  /* mode: see ip_count_rows */
    const int64_t *labels; int labels_per_item; int label_bits;
    int bins; double scale, offset; const void *edges;
    const double *table;
    double *s_t, *s_ty; int64_t *k_t, *k_ty; int64_t *bad;
    int64_t next; int failed;
} job_t;

typedef struct {
    uint64_t *keys; uint64_t *tab; int32_t *cnt; int32_t *cnt_y; int32_t *used; int64_t *hist;
    int32_t *row_of, *row_used; uint64_t *row_hash, *row_id;  /* rows found by hashing (modes 1, 2) */
    uint16_t *digits;  /* mode 2: the item's cells */
    int64_t n_ids;  /* exact rows: the item's distinct rows, ids 0 .. n_ids - 1 */
    uint64_t mask; int shift;
} work_t;

/* Cell of a value, in [0, bins): the number of float edges <= the value (a scaled floor with a small downward
 * bias, then one exact comparison with the next edge), with "bins" (at or past the last edge) sharing cell 0
 * with values below the first edge. A NaN lands in cell 0; the caller refuses its item. */
static inline uint64_t cell_float(float x, float scale, float offset, float top, int bins,
                                  const float *restrict edge) {
    float u = floorf(x * scale + offset);
    u = u > 0.0f ? u : 0.0f;
    u = u < top ? u : top;
    int idx = (int)u;
    int c = idx + (x >= edge[idx]);
    return (uint64_t)(c >= bins ? c - bins : c);
}

static inline uint64_t cell_double(double x, double scale, double offset, double top, int bins,
                                   const double *restrict edge) {
    double u = floor(x * scale + offset);
    u = u > 0.0 ? u : 0.0;
    u = u < top ? u : top;
    int idx = (int)u;
    int c = idx + (x >= edge[idx]);
    return (uint64_t)(c >= bins ? c - bins : c);
}

/* The functions below exist once per element type (float, double, and uint16_t cells): each macro stamps out
 * one copy per type, C's way of writing a template. */

/* Row keys of one item's [n, d] activations: sum_u cell(a[i, u]) * bins**u, then the label in the low bits.
 * Unit by unit (the last first, Horner's rule), so that each pass runs over all n rows and vectorises.
 * Returns nonzero when a value is not finite (x - x is NaN exactly then). */
#define KEYS(T)                                                                                             \
    static int keys_##T(const T *restrict a, int64_t n, int64_t d, T scale, T offset, int bins,            \
                        const T *restrict edge, const int64_t *restrict y, int label_bits,                  \
                        uint64_t *restrict keys) {                                                          \
        int bad = 0;                                                                                        \
        T top = (T)bins;                                                                                    \
        uint64_t radix = (uint64_t)bins;                                                                    \
        for (int64_t i = 0; i < n; i++) keys[i] = 0;                                                        \
        for (int64_t u = d - 1; u >= 0; u--) {                                                              \
            for (int64_t i = 0; i < n; i++) {                                                               \
                T x = a[i * d + u];                                                                         \
                bad |= !(x - x == (T)0);                                                                    \
                keys[i] = keys[i] * radix + cell_##T(x, scale, offset, top, bins, edge);                    \
            }                                                                                               \
        }                                                                                                   \
        for (int64_t i = 0; i < n; i++) keys[i] = (keys[i] << label_bits) | (uint64_t)y[i];                 \
        return bad;                                                                                         \
    }
KEYS(float)
KEYS(double)

/* Mode 2 (rows too wide for one key): every cell of one item's [n, d] activations, in the same layout. */
#define CELLS(T)                                                                                            \
    static int cells_##T(const T *restrict a, int64_t m, T scale, T offset, int bins, const T *restrict edge, \
                         uint16_t *restrict out) {                                                          \
        int bad = 0;                                                                                        \
        T top = (T)bins;                                                                                    \
        for (int64_t i = 0; i < m; i++) {                                                                   \
            T x = a[i];                                                                                     \
            bad |= !(x - x == (T)0);                                                                        \
            out[i] = (uint16_t)cell_##T(x, scale, offset, top, bins, edge);                                 \
        }                                                                                                   \
        return bad;                                                                                         \
    }
CELLS(float)
CELLS(double)

static inline uint64_t slot_of(uint64_t key, int shift) { return (key * 0x9E3779B97F4A7C15ull) >> shift; }

/* Row ids of one item's [n, d] activations compared as exact values (0.0 and -0.0 equal): each row's id is the
 * number of distinct rows seen before its first occurrence (< n), then the label in the low bits. Rows are
 * found through a hash of their values' bits; a candidate is accepted only when every value is equal.
 * Returns nonzero when a value is not finite. */
#define EXACT(T, U)                                                                                         \
    static int exact_##T(const T *restrict a, int64_t n, int64_t d, const int64_t *restrict y,             \
                         int label_bits, work_t *w) {                                                       \
        int bad = 0;                                                                                        \
        for (int64_t i = 0; i < n * d; i++) { T x = a[i]; bad |= !(x - x == (T)0); }                       \
        if (bad) return 1;                                                                                  \
        uint64_t ids = 0;                                                                                   \
        int64_t nu = 0;                                                                                     \
        for (int64_t i = 0; i < n; i++) {                                                                   \
            const T *r = a + i * d;                                                                         \
            uint64_t h = 0x243F6A8885A308D3ull;                                                             \
            for (int64_t u = 0; u < d; u++) {                                                               \
                T x = r[u] + (T)0; /* -0.0 + 0.0 is +0.0: both zeros hash alike */                          \
                U bits;                                                                                     \
                memcpy(&bits, &x, sizeof bits);                                                             \
                h = (h ^ (uint64_t)bits) * 0x9E3779B97F4A7C15ull;                                           \
                h ^= h >> 32;                                                                               \
            }                                                                                               \
            uint64_t s = slot_of(h, w->shift), id;                                                          \
            for (;;) {                                                                                      \
                int32_t k = w->row_of[s];                                                                   \
                if (k < 0) {                                                                                \
                    w->row_of[s] = (int32_t)i; w->row_hash[s] = h; w->row_id[s] = id = ids++;              \
                    w->row_used[nu++] = (int32_t)s;                                                         \
                    break;                                                                                  \
                }                                                                                           \
                if (w->row_hash[s] == h) {                                                                  \
                    const T *o = a + (int64_t)k * d;                                                        \
                    int64_t u = 0;                                                                          \
                    while (u < d && o[u] == r[u]) u++;                                                      \
                    if (u == d) { id = w->row_id[s]; break; }                                               \
                }                                                                                           \
                s = (s + 1) & w->mask;                                                                      \
            }                                                                                               \
            w->keys[i] = (id << label_bits) | (uint64_t)y[i];                                               \
        }                                                                                                   \
        for (int64_t k = 0; k < nu; k++) w->row_of[w->row_used[k]] = -1;                                    \
        w->n_ids = (int64_t)ids;                                                                            \
        return 0;                                                                                           \
    }
EXACT(float, uint32_t)
EXACT(double, uint64_t)
EXACT(uint16_t, uint16_t)  /* mode 2: rows of cells */

/* The slot of key's cell, made (with count 0, listed in `used`) when the key is new. */
static inline uint64_t cell(work_t *w, uint64_t key, int64_t *nu) {
    uint64_t s = slot_of(key, w->shift);
    while (w->tab[s] != EMPTY && w->tab[s] != key) s = (s + 1) & w->mask;
    if (w->tab[s] == EMPTY) { w->tab[s] = key; w->cnt[s] = 0; w->used[(*nu)++] = (int32_t)s; }
    return s;
}

/* sum_c m_c * table[c] in increasing c (m_c cells hold c samples; none more than top), and empty the histogram. */
static double sum_hist(int64_t *hist, int64_t top, const double *table) {
    double s = 0.0;
    for (int64_t c = 2; c <= top; c++) {
        if (hist[c]) { s += (double)hist[c] * table[c]; hist[c] = 0; }
    }
    hist[1] = 0;
    return s;
}

/* With at most FEW_LABEL_BITS label bits: one pass over the rows counts each row cell and, next to it, the
 * cell's samples of each label. Cells are hash slots, or (dense = 1, exact rows) the row ids themselves. */
#define FEW_LABEL_BITS 4
static void few_labels(const job_t *j, work_t *w, int64_t b, int dense) {
    int64_t n = j->n, nt = 0, nty = 0;
    int lb = j->label_bits;
    uint64_t lmask = (1ull << lb) - 1;
    if (dense) {
        nt = w->n_ids;
        for (int64_t k = 0; k < nt; k++) { w->used[k] = (int32_t)k; w->cnt[k] = 0; }
    }
    for (int64_t i = 0; i < n; i++) {
        uint64_t k = w->keys[i], s = dense ? k >> lb : cell(w, k >> lb, &nt);
        w->cnt[s]++;
        w->cnt_y[(s << lb) | (k & lmask)]++;
    }
    int32_t top = 1;
    for (int64_t k = 0; k < nt; k++) {
        int32_t c = w->cnt[w->used[k]];
        w->hist[c]++;
        top = c > top ? c : top;
    }
    j->k_t[b] = nt;
    j->s_t[b] = sum_hist(w->hist, top, j->table);
    top = 1;
    for (int64_t k = 0; k < nt; k++) {
        uint64_t s = (uint64_t)w->used[k];
        int32_t *cy = w->cnt_y + (s << lb);
        for (uint64_t l = 0; l <= lmask; l++) {
            int32_t c = cy[l];
            if (c) { w->hist[c]++; nty++; top = c > top ? c : top; cy[l] = 0; }
        }
        if (!dense) w->tab[s] = EMPTY;
    }
    j->k_ty[b] = nty;
    j->s_ty[b] = sum_hist(w->hist, top, j->table);
}

static void one_item(const job_t *j, work_t *w, int64_t b) {
    int64_t n = j->n, d = j->d, m = n * d;
    const int64_t *y = j->labels + (j->labels_per_item ? b * n : 0);
    int bad;
    if (j->mode == 2) {
        bad = j->is_double
            ? cells_double((const double *)j->acts + b * m, m, j->scale, j->offset, j->bins,
                           (const double *)j->edges, w->digits)
            : cells_float((const float *)j->acts + b * m, m, (float)j->scale, (float)j->offset, j->bins,
                          (const float *)j->edges, w->digits);
        if (!bad) exact_uint16_t(w->digits, n, d, y, j->label_bits, w);
    } else bad = j->mode == 1
        ? (j->is_double ? exact_double((const double *)j->acts + b * m, n, d, y, j->label_bits, w)
                        : exact_float((const float *)j->acts + b * m, n, d, y, j->label_bits, w))
        : j->is_double
        ? keys_double((const double *)j->acts + b * m, n, d, j->scale, j->offset, j->bins,
                      (const double *)j->edges, y, j->label_bits, w->keys)
        : keys_float((const float *)j->acts + b * m, n, d, (float)j->scale, (float)j->offset, j->bins,
                     (const float *)j->edges, y, j->label_bits, w->keys);
    j->bad[b] = bad;
    if (bad) { j->s_t[b] = j->s_ty[b] = 0.0; j->k_t[b] = j->k_ty[b] = 0; return; }
    if (w->cnt_y) { few_labels(j, w, b, j->mode != 0); return; }
    /* (row, label) cells, then row cells from the occupied (row, label) cells. */
    int64_t nu = 0;
    for (int64_t i = 0; i < n; i++) w->cnt[cell(w, w->keys[i], &nu)]++;
    int32_t top = 1;
    for (int64_t k = 0; k < nu; k++) {
        int32_t s = w->used[k], c = w->cnt[s];
        w->hist[c]++;
        top = c > top ? c : top;
        w->keys[k] = w->tab[s] >> j->label_bits;  /* the rows are not needed any more: reuse their buffer */
        w->keys[n + k] = (uint64_t)c;
        w->tab[s] = EMPTY;
    }
    j->k_ty[b] = nu;
    j->s_ty[b] = sum_hist(w->hist, top, j->table);
    int64_t nt = 0;
    for (int64_t k = 0; k < nu; k++) w->cnt[cell(w, w->keys[k], &nt)] += (int32_t)w->keys[n + k];
    top = 1;
    for (int64_t k = 0; k < nt; k++) {
        int32_t s = w->used[k], c = w->cnt[s];
        w->hist[c]++;
        top = c > top ? c : top;
        w->tab[s] = EMPTY;
    }
    j->k_t[b] = nt;
    j->s_t[b] = sum_hist(w->hist, top, j->table);
}

static void *worker(void *arg) {
    job_t *j = (job_t *)arg;
    int64_t n = j->n;
    int bits = 1;
    while ((1ll << bits) < 2 * n) bits++;
    uint64_t cap = 1ull << bits;
    work_t w;
    w.n_ids = 0;
    w.mask = cap - 1; w.shift = 64 - bits;
    w.keys = malloc(sizeof(uint64_t) * 2 * n);
    w.tab = malloc(sizeof(uint64_t) * cap);
    w.cnt = malloc(sizeof(int32_t) * cap);
    w.used = malloc(sizeof(int32_t) * n);
    w.hist = calloc(n + 1, sizeof(int64_t));
    /* Per-label counts next to each slot: for few labels, and at most 2**22 of them (16 MiB) per thread. */
    int few = j->label_bits <= FEW_LABEL_BITS && (cap << j->label_bits) <= (1ull << 22);
    w.cnt_y = few ? calloc(cap << j->label_bits, sizeof(int32_t)) : NULL;
    w.row_of = w.row_used = NULL; w.row_hash = w.row_id = NULL; w.digits = NULL;
    if (j->mode != 0) {
        w.row_of = malloc(sizeof(int32_t) * cap); w.row_used = malloc(sizeof(int32_t) * n);
        w.row_hash = malloc(sizeof(uint64_t) * cap); w.row_id = malloc(sizeof(uint64_t) * cap);
    }
    if (j->mode == 2) w.digits = malloc(sizeof(uint16_t) * n * j->d);
    int rows_ok = j->mode == 0 || (w.row_of && w.row_used && w.row_hash && w.row_id && (j->mode == 1 || w.digits));
    if (!w.keys || !w.tab || !w.cnt || !w.used || !w.hist || (few && !w.cnt_y) || !rows_ok) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    } else {
        memset(w.tab, 0xff, sizeof(uint64_t) * cap);
        if (j->mode != 0) memset(w.row_of, 0xff, sizeof(int32_t) * cap);
        for (;;) {
            int64_t b = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
            if (b >= j->items) break;
            one_item(j, &w, b);
        }
    }
    free(w.keys); free(w.tab); free(w.cnt); free(w.cnt_y); free(w.used); free(w.hist);
    free(w.row_of); free(w.row_used); free(w.row_hash); free(w.row_id); free(w.digits);
    return NULL;
}

/* mode 0: cells of the fixed-range grid (bins, scale, offset, edges), each row packed into one key;
 * mode 1: rows of exact values (the grid's arguments are not read);
 * mode 2: cells of the grid, rows too wide for one key found by hashing (bins <= 65536).
 * Returns 0, or 1 when memory ran out. */
int ip_count_rows(const void *acts, int is_double, int mode, int64_t items, int64_t n, int64_t d,
                 const int64_t *labels, int labels_per_item, int label_bits,
                 int bins, double scale, double offset, const void *edges, const double *table,
                 double *s_t, double *s_ty, int64_t *k_t, int64_t *k_ty, int64_t *bad, int threads) {
    job_t j = {acts, is_double, mode, items, n, d, labels, labels_per_item, label_bits, bins, scale, offset, edges,
               table, s_t, s_ty, k_t, k_ty, bad, 0, 0};
    if (threads > items) threads = (int)items;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
#ifdef _OPENMP
    /* torch's own OpenMP threads (the same runtime), which would otherwise wait idle on the other cores */
    #pragma omp parallel num_threads(threads)
    worker(&j);
#else
    pthread_t tid[64];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tid[started], NULL, worker, &j) == 0) started++;
    }
    worker(&j);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
#endif
    return j.failed;
}

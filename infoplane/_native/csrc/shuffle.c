/* Each seed's training rows in a random order, drawn as torch.randperm draws them on the CPU.
 * Built by infoplane/_native/build.py, on its own and in front of fused_epoch.c (whose kernel draws each seed's order
 * with shuffle_one in the thread that trains it); called through infoplane._native.kernels.shuffle, which checks
 * the arguments, and used by infoplane/train/shuffle.py, which checks on first use that these draws and the
 * generator states they leave are torch's own, bit for bit.
 *
 * torch.randperm(n, generator=g) on the CPU (for n below 2^32 / 20) fills r[i] = i, then for i = 0 .. n - 2 draws
 * one 32-bit number x from g's Mersenne twister (MT19937) and swaps r[i] with r[i + x % (n - i)]. Applied to a copy
 * of a seed's rows instead of 0 .. n - 1, the same swaps give idx[randperm(n)] directly. x and n - i both fit in
 * 32 bits, so the remainder is taken in 32-bit arithmetic: the same number, a cheaper division. */
#include <stdint.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

static inline uint32_t twist(uint32_t u, uint32_t v) {
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

/* The next 624 words of the state, in place. */
static void regenerate(uint32_t *st) {
    uint32_t *p = st;
    for (int j = MT_N - MT_M; j > 0; j--, p++) *p = p[MT_M] ^ twist(p[0], p[1]);
    for (int j = MT_M - 1; j > 0; j--, p++) *p = p[MT_M - MT_N] ^ twist(p[0], p[1]);
    *p = p[MT_M - MT_N] ^ twist(p[0], st[0]);
}

/* One seed's epoch: `left` and `next` are the generator's counters as torch keeps them (left counts down to the
 * next regeneration, next indexes the state word to temper). */
static void shuffle_one(uint32_t *st, int64_t *left, int64_t *next, const int64_t *idx, int64_t *out, int64_t n) {
    memcpy(out, idx, (size_t)n * sizeof(int64_t));
    int64_t l = *left, k = *next;
    for (int64_t i = 0; i < n - 1; i++) {
        if (--l == 0) {
            regenerate(st);
            l = MT_N;
            k = 0;
        }
        uint32_t y = st[k++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        int64_t z = i + (int64_t)(y % (uint32_t)(n - i));
        int64_t saved = out[i];
        out[i] = out[z];
        out[z] = saved;
    }
    *left = l;
    *next = k;
}

/* Whether every seed's counters are ones a generator can have (left >= 1, next >= 0, left + next <= 625: left
 * counts down from 624 after a regeneration and next counts up from 0, one draw ahead of it), for a size torch
 * draws this way. */
static int shuffle_counters_ok(int S, int64_t n, const int64_t *counters) {
    if (S < 0 || n < 0 || n >= (int64_t)(UINT32_MAX / 20)) return 0;
    for (int s = 0; s < S; s++)
        if (counters[2 * s] < 1 || counters[2 * s + 1] < 0 || counters[2 * s] + counters[2 * s + 1] > MT_N + 1)
            return 0;
    return 1;
}

/* For each of S seeds: out[s] = idx[s] in the order torch.randperm(n) would give from the generator whose twister
 * is states[s] (624 words) with counters counters[s] = (left, next); the states and counters advance as torch's
 * would. Seeds are shared among `threads` threads (OpenMP where built with it); the result does not depend on
 * which thread draws which seed. Returns 0, or -2 for unsupported sizes or counters no generator has. */
int ip_shuffle(int S, int64_t n, uint32_t *states, int64_t *counters, const int64_t *idx, int64_t *out,
               int threads) {
    if (!shuffle_counters_ok(S, n, counters)) return -2;
    if (threads < 1) threads = 1;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
#endif
    for (int s = 0; s < S; s++)
        shuffle_one(states + (int64_t)s * MT_N, counters + 2 * s, counters + 2 * s + 1, idx + (int64_t)s * n,
                    out + (int64_t)s * n, n);
    return 0;
}

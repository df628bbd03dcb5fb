/* One epoch of minibatch training for an ensemble of S small MLPs (Linear + elementwise activation layers,
 * cross-entropy on class indices, Adam or plain SGD), in one call, the seeds shared among threads (torch's own
 * OpenMP threads when built with -fopenmp, see infoplane/_native/build.py; else pthreads started here).
 *
 * Built and loaded by infoplane/train/fused_kernel.py, compiled after shuffle.c (the epoch's orders can be drawn in
 * here, seed by seed), called through infoplane._native.kernels.fused_epoch (which checks the arguments;
 * infoplane/train/fused.py states the layouts); the arithmetic is that of
 * torch's own ops, term by term, so results agree with the autograd path to float32 rounding.
 * Compiled with -ffp-contract=off so that a*b+c is two roundings, as in torch's separate elementwise ops.
 *
 * Layouts. Parameters, gradients and optimiser moments: [S, T] float32, seed-major; inside a seed, layer by
 * layer, the weight [out, in] (row-major, as nn.Linear stores it) then the bias [out]. Activations inside the
 * kernel: [unit][sample], the minibatch padded to a multiple of VB samples, so that the loops over a minibatch
 * are contiguous. The three matrix products of a layer (forward, weight gradient, input gradient) are blocked
 * over samples and units so that several accumulators stay in SIMD registers and each loaded vector serves
 * several of them; the activations and their gradients are elementwise passes over those blocks.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ACT_IDENTITY = 0, ACT_TANH = 1, ACT_RELU = 2, ACT_SIGMOID = 3, ACT_LEAKY = 4, ACT_HARDTANH = 5 };

/* p * r + c inside the exponentials' polynomials: one rounding where the CPU has FMA (half the operations of the
 * elementwise activations' hottest loop), else two. The polynomials' truncation error stays below 0.1 ulp either
 * way; the tests hold both builds within 1.5 ulp of the exact function. */
#if defined(__FMA__)
#define POLY(p, r, c) __builtin_fmaf((p), (r), (c))
#else
#define POLY(p, r, c) ((p) * (r) + (c))
#endif

/* e**x for float32 inputs, vectorisable: 2**n * e**r with |r| <= ln2/2, a degree-7 Taylor polynomial
 * (truncation < 0.1 ulp), and a two-part ln 2 so that r is exact. */
static inline float ip_exp(float x) {
    /* xn takes NaN to -87 so that n converts to int without undefined behaviour; x keeps NaN, so e**NaN is NaN */
    float xn = x > -87.0f ? (x < 88.0f ? x : 88.0f) : -87.0f;
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = nearbyintf(xn * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = POLY(p, r, 1.0f / 720.0f);
    p = POLY(p, r, 1.0f / 120.0f);
    p = POLY(p, r, 1.0f / 24.0f);
    p = POLY(p, r, 1.0f / 6.0f);
    p = POLY(p, r, 0.5f);
    p = POLY(p, r, 1.0f);
    p = POLY(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e**x - 1 for 0 <= x (NaN stays NaN): 2**n (1 + q) - 1 = 2**n q + (2**n - 1) with q = e**r - 1 by its Taylor series
 * (no cancellation for small x, where n = 0 and the result is q itself). */
static inline float ip_expm1_positive(float x) {
    float xn = x < 88.0f ? x : 88.0f;
    x = x > 88.0f ? 88.0f : x;
    float n = nearbyintf(xn * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 40320.0f;
    p = POLY(p, r, 1.0f / 5040.0f);
    p = POLY(p, r, 1.0f / 720.0f);
    p = POLY(p, r, 1.0f / 120.0f);
    p = POLY(p, r, 1.0f / 24.0f);
    p = POLY(p, r, 1.0f / 6.0f);
    p = POLY(p, r, 0.5f);
    p = p * r;
    float q = POLY(r, p, r);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return scale * q + (scale - 1.0f);
}

/* tanh |x| = E / (E + 2) with E = e**2|x| - 1: one exponential and one division for every x (within 1.5 ulp of the
 * exact value, tested; torch's own is within 1). */
static inline float ip_tanh(float x) {
    float a = fabsf(x);
    float e = ip_expm1_positive(2.0f * (a > 9.0f ? 9.0f : a)); /* written so that NaN stays NaN */
    return copysignf(e / (e + 2.0f), x);
}

static inline float ip_sigmoid(float x) { return 1.0f / (1.0f + ip_exp(-x)); }

/* out = act(z); p = {negative_slope or min, max} */
static void activate(int code, const float *p, const float *z, float *out, int64_t n) {
    int64_t i;
    switch (code) {
    case ACT_TANH: for (i = 0; i < n; i++) out[i] = ip_tanh(z[i]); break;
    case ACT_RELU: for (i = 0; i < n; i++) out[i] = z[i] > 0.0f ? z[i] : 0.0f; break;
    case ACT_SIGMOID: for (i = 0; i < n; i++) out[i] = ip_sigmoid(z[i]); break;
    case ACT_LEAKY: { float s = p[0]; for (i = 0; i < n; i++) out[i] = z[i] > 0.0f ? z[i] : z[i] * s; } break;
    case ACT_HARDTANH: {
        float lo = p[0], hi = p[1];
        for (i = 0; i < n; i++) { float v = z[i] < lo ? lo : z[i]; out[i] = v > hi ? hi : v; }
    } break;
    default: memcpy(out, z, (size_t)n * sizeof(float));
    }
}

/* g *= act'(.), from the saved pre-activation z or output a, as torch's *_backward kernels compute it. */
static void activation_grad(int code, const float *p, const float *z, const float *a, float *g, int64_t n) {
    int64_t i;
    switch (code) {
    case ACT_TANH: for (i = 0; i < n; i++) g[i] = g[i] * (1.0f - a[i] * a[i]); break;
    case ACT_SIGMOID: for (i = 0; i < n; i++) g[i] = g[i] * (1.0f - a[i]) * a[i]; break;
    case ACT_RELU: for (i = 0; i < n; i++) g[i] = a[i] > 0.0f ? g[i] : 0.0f; break;
    case ACT_LEAKY: { float s = p[0]; for (i = 0; i < n; i++) g[i] = z[i] > 0.0f ? g[i] : g[i] * s; } break;
    case ACT_HARDTANH: {
        float lo = p[0], hi = p[1];
        for (i = 0; i < n; i++) g[i] = (z[i] <= lo || z[i] >= hi) ? 0.0f : g[i];
    } break;
    default: break;
    }
}

/* Fake quantisation as infoplane.networks.quantize computes it: round((clamp(a, low, high) - low) / step) * step + low,
 * every operation rounded to float32 (torch.round and nearbyintf both round half to even). */
static void quantize(const float *q, const float *a, float *out, int64_t n) {
    float low = q[0], high = q[1], step = q[2];
    for (int64_t i = 0; i < n; i++) {
        float v = a[i] < low ? low : a[i];
        v = v > high ? high : v;
        float r = nearbyintf((v - low) / step);
        float m = r * step;
        out[i] = m + low;
    }
}

/* SIMD vectors of eight float32 lanes (GCC and clang vector extensions, lowered to whatever SIMD the target has;
 * wider vectors measured slower on AVX-512 hardware). Loads and stores go through memcpy: no alignment is assumed
 * and no pointer is type-punned. */
#define VL 8
typedef float vf __attribute__((vector_size(VL * 4)));
#define VB (2 * VL) /* samples per block: two vectors; minibatch rows are padded to a multiple of it */

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vsplat(float x) { return (vf){0} + x; }

/* c + a * b inside the matrix products: one fused rounding where the CPU has FMA (as the BLAS behind torch.mm
 * uses it), else two. Elementwise code elsewhere stays unfused (-ffp-contract=off). */
#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
static inline vf madd(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
static inline vf madd(vf a, vf b, vf c) { return c + a * b; }
#endif

/* The sum of a vector's lanes, pairwise. */
static inline float hsum(vf v) {
    float a = (v[0] + v[4]) + (v[2] + v[6]);
    float b = (v[1] + v[5]) + (v[3] + v[7]);
    return a + b;
}

/* Z[o][b] = sum_k W[o][k] H[k][b] + bias[o] for OB outputs from o and the VB samples from b. */
static inline __attribute__((always_inline)) void forward_block(int OB, const float *W, const float *bias,
                                                               const float *H, float *Z, int64_t din, int64_t Bp,
                                                               int64_t o, int64_t b) {
    vf acc[4][2];
    for (int j = 0; j < OB; j++) acc[j][0] = acc[j][1] = vsplat(0.0f);
    for (int64_t k = 0; k < din; k++) {
        vf h0 = vload(H + k * Bp + b), h1 = vload(H + k * Bp + b + VL);
        for (int j = 0; j < OB; j++) {
            vf w = vsplat(W[(o + j) * din + k]);
            acc[j][0] = madd(w, h0, acc[j][0]);
            acc[j][1] = madd(w, h1, acc[j][1]);
        }
    }
    for (int j = 0; j < OB; j++) {
        vf bo = vsplat(bias[o + j]);
        vstore(Z + (o + j) * Bp + b, acc[j][0] + bo);
        vstore(Z + (o + j) * Bp + b + VL, acc[j][1] + bo);
    }
}

static void forward_layer(const float *W, const float *bias, const float *H, float *Z, int64_t din, int64_t dout,
                          int64_t Bp) {
    for (int64_t b = 0; b < Bp; b += VB) {
        int64_t o = 0;
        for (; o + 4 <= dout; o += 4) forward_block(4, W, bias, H, Z, din, Bp, o, b);
        switch (dout - o) {
        case 3: forward_block(3, W, bias, H, Z, din, Bp, o, b); break;
        case 2: forward_block(2, W, bias, H, Z, din, Bp, o, b); break;
        case 1: forward_block(1, W, bias, H, Z, din, Bp, o, b); break;
        default: break;
        }
    }
}

/* GH[k][b] = sum_o W[o][k] G[o][b] for KB inputs from k and the VB samples from b. */
static inline __attribute__((always_inline)) void input_grad_block(int KB, const float *W, const float *G, float *GH,
                                                                  int64_t din, int64_t dout, int64_t Bp, int64_t k,
                                                                  int64_t b) {
    vf acc[4][2];
    for (int j = 0; j < KB; j++) acc[j][0] = acc[j][1] = vsplat(0.0f);
    for (int64_t o = 0; o < dout; o++) {
        vf g0 = vload(G + o * Bp + b), g1 = vload(G + o * Bp + b + VL);
        for (int j = 0; j < KB; j++) {
            vf w = vsplat(W[o * din + k + j]);
            acc[j][0] = madd(w, g0, acc[j][0]);
            acc[j][1] = madd(w, g1, acc[j][1]);
        }
    }
    for (int j = 0; j < KB; j++) {
        vstore(GH + (k + j) * Bp + b, acc[j][0]);
        vstore(GH + (k + j) * Bp + b + VL, acc[j][1]);
    }
}

static void input_grad(const float *W, const float *G, float *GH, int64_t din, int64_t dout, int64_t Bp) {
    for (int64_t b = 0; b < Bp; b += VB) {
        int64_t k = 0;
        for (; k + 4 <= din; k += 4) input_grad_block(4, W, G, GH, din, dout, Bp, k, b);
        switch (din - k) {
        case 3: input_grad_block(3, W, G, GH, din, dout, Bp, k, b); break;
        case 2: input_grad_block(2, W, G, GH, din, dout, Bp, k, b); break;
        case 1: input_grad_block(1, W, G, GH, din, dout, Bp, k, b); break;
        default: break;
        }
    }
}

/* gW[o][k] = sum_b G[o][b] H[k][b] for OB outputs from o and KB inputs from k (over the padded rows, where G is 0). */
static inline __attribute__((always_inline)) void weight_grad_block(int OB, int KB, const float *G, const float *H,
                                                                   float *gW, int64_t din, int64_t Bp, int64_t o,
                                                                   int64_t k) {
    vf acc[4][3];
    for (int i = 0; i < OB; i++)
        for (int j = 0; j < KB; j++) acc[i][j] = vsplat(0.0f);
    for (int64_t b = 0; b < Bp; b += VL) {
        vf h[3];
        for (int j = 0; j < KB; j++) h[j] = vload(H + (k + j) * Bp + b);
        for (int i = 0; i < OB; i++) {
            vf g = vload(G + (o + i) * Bp + b);
            for (int j = 0; j < KB; j++) acc[i][j] = madd(g, h[j], acc[i][j]);
        }
    }
    for (int i = 0; i < OB; i++)
        for (int j = 0; j < KB; j++) gW[(o + i) * din + k + j] = hsum(acc[i][j]);
}

/* The weight gradients of OB outputs from o, for every input. */
static inline __attribute__((always_inline)) void weight_grad_rows(int OB, const float *G, const float *H, float *gW,
                                                                  int64_t din, int64_t Bp, int64_t o) {
    int64_t k = 0;
    for (; k + 3 <= din; k += 3) weight_grad_block(OB, 3, G, H, gW, din, Bp, o, k);
    switch (din - k) {
    case 2: weight_grad_block(OB, 2, G, H, gW, din, Bp, o, k); break;
    case 1: weight_grad_block(OB, 1, G, H, gW, din, Bp, o, k); break;
    default: break;
    }
}

static void weight_grad(const float *G, const float *H, float *gW, float *gb, int64_t din, int64_t dout, int64_t Bp) {
    int64_t o = 0;
    for (; o + 4 <= dout; o += 4) weight_grad_rows(4, G, H, gW, din, Bp, o);
    switch (dout - o) {
    case 3: weight_grad_rows(3, G, H, gW, din, Bp, o); break;
    case 2: weight_grad_rows(2, G, H, gW, din, Bp, o); break;
    case 1: weight_grad_rows(1, G, H, gW, din, Bp, o); break;
    default: break;
    }
    for (o = 0; o < dout; o++) {
        vf acc = vsplat(0.0f);
        for (int64_t b = 0; b < Bp; b += VL) acc += vload(G + o * Bp + b);
        gb[o] = hsum(acc);
    }
}

/* Gradient of one seed's mean cross-entropy on one minibatch, into grad (that seed's [T] slice).
 * dims: L+1 widths; act/act_p/quant: per hidden layer (L-1 of them), quant[3*l] = {low, high, step} and
 * quantised[l] != 0 where that layer is fake-quantised. Activations are [unit][Bp], Bp = B rounded up to VB; the
 * padded rows hold zero inputs and a zero loss gradient, so they add nothing to any sum.
 * Returns 0, -1 when a label is out of range, -4 when a row is outside 0 .. N - 1. */
static int seed_gradient(int L, const int64_t *dims, const int32_t *act, const float *act_p, const int32_t *quantised,
                         const float *quant, const float *param, float *grad, const float *X, const int64_t *Y,
                         int64_t N, const int64_t *rows, int64_t B, float *work, int64_t *ybuf) {
    /* work: H0 [d0][Bp]; per layer l: Z_l, A_l, Hq_l [d_{l+1}][Bp]; two gradient buffers [dmax][Bp]; two [Bp] rows */
    int64_t Bp = (B + VB - 1) / VB * VB;
    int64_t dmax = 0;
    for (int l = 0; l <= L; l++) dmax = dims[l] > dmax ? dims[l] : dmax;
    float *H0 = work;
    float *cursor = H0 + dims[0] * Bp;
    float *Z[64], *A[64], *H[64];
    const float *in[64];
    for (int l = 0; l < L; l++) {
        Z[l] = cursor; cursor += dims[l + 1] * Bp;
        A[l] = cursor; cursor += dims[l + 1] * Bp;
        H[l] = cursor; cursor += dims[l + 1] * Bp;
    }
    float *g = cursor; cursor += dmax * Bp;
    float *gh = cursor; cursor += dmax * Bp;
    float *mx = cursor; cursor += Bp;
    float *sm = cursor;

    int64_t d0 = dims[0], C = dims[L];
    for (int64_t b = 0; b < B; b++) {
        int64_t r = rows[b];
        if (r < 0 || r >= N) return -4;
        int64_t y = Y[r];
        if (y < 0 || y >= C) return -1;
        ybuf[b] = y;
        const float *x = X + r * d0;
        for (int64_t k = 0; k < d0; k++) H0[k * Bp + b] = x[k];
    }
    for (int64_t k = 0; k < d0; k++)
        for (int64_t b = B; b < Bp; b++) H0[k * Bp + b] = 0.0f;
    /* forward */
    const float *w = param;
    const float *h = H0;
    for (int l = 0; l < L; l++) {
        int64_t din = dims[l], dout = dims[l + 1];
        const float *bias = w + dout * din;
        in[l] = h;
        forward_layer(w, bias, h, Z[l], din, dout, Bp);
        if (l < L - 1) {
            activate(act[l], act_p + 2 * l, Z[l], A[l], dout * Bp);
            if (quantised[l]) {
                quantize(quant + 3 * l, A[l], H[l], dout * Bp);
                h = H[l];
            } else {
                h = A[l];
            }
        }
        w = bias + dout;
    }
    /* d(mean cross-entropy)/d(logits) = (softmax - onehot) / B; zero on the padded rows */
    const float *logits = Z[L - 1];
    float inv = 1.0f / (float)B;
    for (int64_t b = 0; b < Bp; b++) { mx[b] = logits[b]; sm[b] = 0.0f; }
    for (int64_t c = 1; c < C; c++)
        for (int64_t b = 0; b < Bp; b++) mx[b] = logits[c * Bp + b] > mx[b] ? logits[c * Bp + b] : mx[b];
    for (int64_t c = 0; c < C; c++)
        for (int64_t b = 0; b < Bp; b++) {
            float e = ip_exp(logits[c * Bp + b] - mx[b]);
            g[c * Bp + b] = e;
            sm[b] += e;
        }
    for (int64_t c = 0; c < C; c++) {
        float *gc = g + c * Bp;
        for (int64_t b = 0; b < B; b++) gc[b] = (gc[b] / sm[b]) * inv - (ybuf[b] == c ? inv : 0.0f);
        for (int64_t b = B; b < Bp; b++) gc[b] = 0.0f;
    }
    /* backward, last layer first */
    int64_t offsets[65];
    offsets[0] = 0;
    for (int l = 0; l < L; l++) offsets[l + 1] = offsets[l] + dims[l + 1] * dims[l] + dims[l + 1];
    for (int l = L - 1; l >= 0; l--) {
        int64_t din = dims[l], dout = dims[l + 1];
        const float *W = param + offsets[l];
        float *gW = grad + offsets[l];
        weight_grad(g, in[l], gW, gW + dout * din, din, dout, Bp);
        if (l == 0) break;
        input_grad(W, g, gh, din, dout, Bp);
        /* straight through the quantiser: the gradient reaches the activation's own output unchanged */
        activation_grad(act[l - 1], act_p + 2 * (l - 1), Z[l - 1], A[l - 1], gh, din * Bp);
        float *t = g; g = gh; gh = t;
    }
    return 0;
}

/* One more sample for the gradient statistics of one seed: Welford's update, in float64, of the element-wise running
 * mean and sum of squared deviations of every layer's weight gradient (biases left out). count is the number of
 * samples including this one. */
static void gradient_moments(int L, const int64_t *dims, const float *grad, double *mean, double *m2, double count) {
    const float *gl = grad;
    for (int l = 0; l < L; l++) {
        int64_t nw = dims[l + 1] * dims[l];
        for (int64_t i = 0; i < nw; i++) {
            double x = (double)gl[i];
            double delta = x - mean[i];
            mean[i] += delta / count;
            m2[i] += delta * (x - mean[i]);
        }
        mean += nw;
        m2 += nw;
        gl += nw + dims[l + 1];
    }
}

/* Optimiser update of one seed's [T] slice. opt 0: Adam (hyper: lr, beta1, beta2, eps, weight_decay; step is
 * the step count after this update), 1: SGD without momentum (hyper: lr, weight_decay). Same formulas, in the
 * same order, as torch.optim's fused Adam and plain SGD. */
static void update(int opt, const double *hyper, double step, float *p, float *g, float *m, float *v, int64_t T) {
    if (opt == 0) {
        double lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3], wd = hyper[4];
        double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
        float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
        float w1 = (float)(1.0 - beta1), b2 = (float)beta2, w2 = (float)(1.0 - beta2), fe = (float)eps;
        float fwd = (float)wd;
        for (int64_t i = 0; i < T; i++) {
            float gi = g[i];
            if (wd != 0.0) gi = gi + p[i] * fwd;
            float mi = m[i] + w1 * (gi - m[i]);
            float vi = v[i] * b2 + w2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            float denom = sqrtf(vi) / bc2_sqrt + fe;
            p[i] = p[i] - step_size * mi / denom;
        }
    } else {
        float lr = (float)hyper[0], wd = (float)hyper[1];
        for (int64_t i = 0; i < T; i++) {
            float gi = g[i];
            if (wd != 0.0f) gi = gi + p[i] * wd;
            p[i] = p[i] - lr * gi;
        }
    }
}

static int64_t params_per_seed(int L, const int64_t *dims) {
    int64_t T = 0;
    for (int l = 0; l < L; l++) T += dims[l + 1] * dims[l] + dims[l + 1];
    return T;
}

static int64_t weights_per_seed(int L, const int64_t *dims) {
    int64_t W = 0;
    for (int l = 0; l < L; l++) W += dims[l + 1] * dims[l];
    return W;
}

/* Floats of seed_gradient's work buffer for minibatches of at most B rows. */
static int64_t work_floats(int L, const int64_t *dims, int64_t B) {
    int64_t Bp = (B + VB - 1) / VB * VB;
    int64_t dmax = 0, n = dims[0];
    for (int l = 0; l <= L; l++) dmax = dims[l] > dmax ? dims[l] : dmax;
    for (int l = 0; l < L; l++) n += 3 * dims[l + 1];
    return (n + 2 * dmax + 2) * Bp;
}

/* The kernel's activations on an array (for tests of their accuracy against torch). */
void ip_activate(int code, const float *p, const float *z, float *out, int64_t n) { activate(code, p, z, out, n); }

/* The kernel's quantiser on an array (for tests that it reproduces infoplane.networks.quantize bit for bit). */
void ip_quantize(const float *q, const float *a, float *out, int64_t n) { quantize(q, a, out, n); }

struct job {
    int S, L, opt, update_params, status;
    int *next_seed; /* shared by the threads of one call */
    const int64_t *dims, *Y, *order;
    uint32_t *mt_states; /* where not NULL: each seed's order is drawn here first, see ip_fused_epoch */
    int64_t *mt_counters, *order_out;
    const int64_t *rows;
    const int32_t *act, *quantised;
    const float *act_p, *quant, *X;
    float *P, *G, *M, *V;
    int64_t N, n, batch;
    const double *hyper;
    double step0;
    double *stat_mean, *stat_m2, *stat_count;
};

/* Takes the next untrained seed and trains it for the whole epoch, until none is left: the seeds never interact, so
 * threads share nothing but the counter, and a thread that the system holds back leaves its seeds to the others. */
static void *run_job(void *arg) {
    struct job *j = (struct job *)arg;
    int64_t T = params_per_seed(j->L, j->dims);
    int64_t Wn = weights_per_seed(j->L, j->dims);
    int64_t B = j->batch < j->n ? j->batch : j->n;
    if (B < 1) B = 1;
    float *work = (float *)malloc((size_t)work_floats(j->L, j->dims, B) * sizeof(float));
    int64_t *ybuf = (int64_t *)malloc((size_t)B * sizeof(int64_t));
    if (!work || !ybuf) { free(work); free(ybuf); j->status = -3; return NULL; }
    while (j->status == 0) {
        int s = __atomic_fetch_add(j->next_seed, 1, __ATOMIC_RELAXED);
        if (s >= j->S) break;
        if (j->mt_states)
            shuffle_one(j->mt_states + (int64_t)s * MT_N, j->mt_counters + 2 * s, j->mt_counters + 2 * s + 1,
                        j->rows + s * j->n, j->order_out + s * j->n, j->n);
        double step = j->step0;
        for (int64_t start = 0; start < j->n && j->status == 0; start += j->batch) {
            int64_t Bc = j->n - start < j->batch ? j->n - start : j->batch;
            step += 1.0;
            j->status = seed_gradient(j->L, j->dims, j->act, j->act_p, j->quantised, j->quant, j->P + s * T,
                                      j->G + s * T, j->X, j->Y, j->N, j->order + s * j->n + start, Bc, work,
                                      ybuf);
            if (j->status == 0 && j->stat_mean) {
                j->stat_count[s] += 1.0;
                gradient_moments(j->L, j->dims, j->G + s * T, j->stat_mean + s * Wn, j->stat_m2 + s * Wn,
                                 j->stat_count[s]);
            }
            if (j->status == 0 && j->update_params)
                update(j->opt, j->hyper, step, j->P + s * T, j->G + s * T, j->M + s * T, j->V + s * T, T);
            if (!j->update_params) break;
        }
    }
    free(work);
    free(ybuf);
    return NULL;
}

/* One epoch: for each minibatch of the orders [S, n] (the last one holds n % batch rows), every seed's
 * gradient, then its update. *step is the optimiser's step count, advanced once per minibatch. The seeds are
 * shared out among `threads` threads (each takes the next untrained seed for its whole epoch, see run_job): an
 * OpenMP team where built with OpenMP, else pthreads. Each seed's result is the same whichever thread trains it.
 * update_params == 0 computes the first minibatch's gradients only (the trial check).
 * Gradient statistics, where stat_mean is not NULL: every minibatch's weight gradients of seed s go into the
 * running moments stat_mean[s], stat_m2[s] ([S, W] float64, W weights per seed, layer by layer) and
 * stat_count[s] ([S] float64, the number of minibatches so far) by gradient_moments; NULL costs nothing.
 * The orders drawn here, where mt_states is not NULL: the thread that takes seed s first writes order[s] = rows[s]
 * in the order torch.randperm(n) draws from seed s's generator (shuffle_one of shuffle.c, which this file is
 * compiled after: mt_states [S, 624] and mt_counters [S, 2] as ip_shuffle takes them, advanced), so the draws are
 * shared out with the training and each order is in that thread's cache when its training reads it.
 * Returns 0, -1 for a label out of range, -2 for unsupported sizes or generator counters, -3 when memory runs
 * out, -4 for a row of order outside 0 .. N - 1 (X holds N rows). */
int ip_fused_epoch(int S, int L, const int64_t *dims, const int32_t *act, const float *act_p,
                   const int32_t *quantised, const float *quant, float *P, float *G, float *M, float *V,
                   const float *X, const int64_t *Y, int64_t N, int64_t *order, int64_t n, int64_t batch,
                   int opt, const double *hyper, double *step, int update_params, int threads,
                   double *stat_mean, double *stat_m2, double *stat_count,
                   uint32_t *mt_states, int64_t *mt_counters, const int64_t *rows) {
    if (L < 1 || L > 64 || batch < 1) return -2;
    if (mt_states && (!update_params || !shuffle_counters_ok(S, n, mt_counters))) return -2;
    if (threads > S) threads = S;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    struct job jobs[64];
    pthread_t ids[64];
    int started[64] = {0};
    int next_seed = 0;
    for (int t = 0; t < threads; t++) {
        struct job j = {S, L, opt, update_params, 0, &next_seed, dims, Y, order, mt_states, mt_counters, order,
                        rows, act, quantised, act_p, quant, X, P, G, M, V, N, n, batch, hyper, *step, stat_mean,
                        stat_m2, stat_count};
        jobs[t] = j;
    }
#ifdef _OPENMP
    (void)ids; (void)started;
    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) run_job(&jobs[t]);
#else
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
    /* this thread works too; the seeds of a thread that failed to start are left to the others */
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run_job(&jobs[t]);
    }
#endif
    int status = 0;
    for (int t = 0; t < threads; t++) if (jobs[t].status != 0) status = jobs[t].status;
    if (status == 0 && update_params) {
        int64_t batches = n > 0 ? (n + batch - 1) / batch : 0;
        *step += (double)batches;
    }
    return status;
}

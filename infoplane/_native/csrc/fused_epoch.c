/* One epoch of minibatch training for an ensemble of S small MLPs (Linear + elementwise activation layers,
 * cross-entropy on class indices, Adam or plain SGD), in one call, the seeds shared among threads (torch's own
 * OpenMP threads when built with -fopenmp, see infoplane/_native/build.py; else pthreads started here).
 *
 * Built and loaded by infoplane/train/fused_kernel.py, called through infoplane._native.kernels.fused_epoch
 * (which checks the arguments; infoplane/train/fused.py states the layouts); the arithmetic is that of
 * torch's own ops, term by term, so results agree with the autograd path to float32 rounding.
 * Compiled with -ffp-contract=off so that a*b+c is two roundings, as in torch's separate elementwise ops.
 *
 * Layouts. Parameters, gradients and optimiser moments: [S, T] float32, seed-major; inside a seed, layer by
 * layer, the weight [out, in] (row-major, as nn.Linear stores it) then the bias [out]. Activations inside the
 * kernel: [unit][sample] so that the loops over a minibatch are contiguous (and vectorise).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ACT_IDENTITY = 0, ACT_TANH = 1, ACT_RELU = 2, ACT_SIGMOID = 3, ACT_LEAKY = 4, ACT_HARDTANH = 5 };

/* e**x for float32 inputs, vectorisable: 2**n * e**r with |r| <= ln2/2, a degree-7 Taylor polynomial
 * (truncation < 0.1 ulp), and a two-part ln 2 so that r is exact. */
static inline float ip_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = nearbyintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh: the odd Taylor series below |x| = 0.55 (no cancellation there), 1 - 2 / (e**2|x| + 1) above. */
static inline float ip_tanh(float x) {
    float a = fabsf(x);
    float a2 = a * a;
    float s = 6404582.0f / 10854718875.0f;
    s = s * a2 - 929569.0f / 638512875.0f;
    s = s * a2 + 21844.0f / 6081075.0f;
    s = s * a2 - 1382.0f / 155925.0f;
    s = s * a2 + 62.0f / 2835.0f;
    s = s * a2 - 17.0f / 315.0f;
    s = s * a2 + 2.0f / 15.0f;
    s = s * a2 - 1.0f / 3.0f;
    float small = a + a * (a2 * s);
    float e = ip_exp(2.0f * (a < 9.0f ? a : 9.0f));
    float big = 1.0f - 2.0f / (e + 1.0f);
    float t = a < 0.55f ? small : big;
    return copysignf(t, x);
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

static inline float dot(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    for (int w = 8; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0] + tail;
}

static inline float total(const float *a, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i];
    for (int w = 8; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0] + tail;
}

/* Gradient of one seed's mean cross-entropy on one minibatch, into grad (that seed's [T] slice).
 * dims: L+1 widths; act/act_p/quant: per hidden layer (L-1 of them), quant[3*l] = {low, high, step} and
 * quantised[l] != 0 where that layer is fake-quantised. Returns 0, or -1 when a label is out of range. */
static int seed_gradient(int L, const int64_t *dims, const int32_t *act, const float *act_p, const int32_t *quantised,
                         const float *quant, const float *param, float *grad, const float *X, const int64_t *Y,
                         const int64_t *rows, int64_t B, float *work) {
    /* work: H0 [d0][B]; per layer l: Z_l, A_l, Hq_l [d_{l+1}][B]; two gradient buffers [dmax][B] */
    int64_t dmax = 0;
    for (int l = 0; l <= L; l++) dmax = dims[l] > dmax ? dims[l] : dmax;
    float *H0 = work;
    float *cursor = H0 + dims[0] * B;
    float *Z[64], *A[64], *H[64];
    const float *in[64];
    for (int l = 0; l < L; l++) {
        Z[l] = cursor; cursor += dims[l + 1] * B;
        A[l] = cursor; cursor += dims[l + 1] * B;
        H[l] = cursor; cursor += dims[l + 1] * B;
    }
    float *g = cursor; cursor += dmax * B;
    float *gh = cursor;

    int64_t d0 = dims[0];
    for (int64_t b = 0; b < B; b++) {
        const float *x = X + rows[b] * d0;
        for (int64_t k = 0; k < d0; k++) H0[k * B + b] = x[k];
    }
    /* forward */
    const float *w = param;
    const float *h = H0;
    for (int l = 0; l < L; l++) {
        int64_t din = dims[l], dout = dims[l + 1];
        const float *bias = w + dout * din;
        in[l] = h;
        for (int64_t o = 0; o < dout; o++) {
            float *z = Z[l] + o * B;
            const float *wr = w + o * din;
            memset(z, 0, (size_t)B * sizeof(float));
            for (int64_t k = 0; k < din; k++) {
                float wk = wr[k];
                const float *hk = h + k * B;
                for (int64_t b = 0; b < B; b++) z[b] += wk * hk[b];
            }
            float bo = bias[o];
            for (int64_t b = 0; b < B; b++) z[b] += bo;
        }
        if (l < L - 1) {
            activate(act[l], act_p + 2 * l, Z[l], A[l], dout * B);
            if (quantised[l]) {
                quantize(quant + 3 * l, A[l], H[l], dout * B);
                h = H[l];
            } else {
                h = A[l];
            }
        }
        w = bias + dout;
    }
    /* d(mean cross-entropy)/d(logits) = (softmax - onehot) / B */
    int64_t C = dims[L];
    const float *logits = Z[L - 1];
    float inv = 1.0f / (float)B;
    for (int64_t b = 0; b < B; b++) {
        int64_t y = Y[rows[b]];
        if (y < 0 || y >= C) return -1;
        float m = logits[b];
        for (int64_t c = 1; c < C; c++) m = logits[c * B + b] > m ? logits[c * B + b] : m;
        float s = 0.0f;
        for (int64_t c = 0; c < C; c++) { float e = ip_exp(logits[c * B + b] - m); g[c * B + b] = e; s += e; }
        for (int64_t c = 0; c < C; c++) g[c * B + b] = (g[c * B + b] / s) * inv - (c == y ? inv : 0.0f);
    }
    /* backward, last layer first */
    int64_t offsets[65];
    offsets[0] = 0;
    for (int l = 0; l < L; l++) offsets[l + 1] = offsets[l] + dims[l + 1] * dims[l] + dims[l + 1];
    for (int l = L - 1; l >= 0; l--) {
        int64_t din = dims[l], dout = dims[l + 1];
        const float *W = param + offsets[l];
        float *gW = grad + offsets[l];
        float *gb = gW + dout * din;
        for (int64_t o = 0; o < dout; o++) {
            const float *go = g + o * B;
            for (int64_t k = 0; k < din; k++) gW[o * din + k] = dot(go, in[l] + k * B, B);
            gb[o] = total(go, B);
        }
        if (l == 0) break;
        for (int64_t k = 0; k < din; k++) {
            float *out = gh + k * B;
            memset(out, 0, (size_t)B * sizeof(float));
            for (int64_t o = 0; o < dout; o++) {
                float wk = W[o * din + k];
                const float *go = g + o * B;
                for (int64_t b = 0; b < B; b++) out[b] += wk * go[b];
            }
        }
        /* straight through the quantiser: the gradient reaches the activation's own output unchanged */
        activation_grad(act[l - 1], act_p + 2 * (l - 1), Z[l - 1], A[l - 1], gh, din * B);
        float *t = g; g = gh; gh = t;
    }
    return 0;
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

static int64_t work_floats(int L, const int64_t *dims, int64_t B) {
    int64_t dmax = 0, n = dims[0];
    for (int l = 0; l <= L; l++) dmax = dims[l] > dmax ? dims[l] : dmax;
    for (int l = 0; l < L; l++) n += 3 * dims[l + 1];
    return (n + 2 * dmax) * B;
}

/* The kernel's activations on an array (for tests of their accuracy against torch). */
void ip_activate(int code, const float *p, const float *z, float *out, int64_t n) { activate(code, p, z, out, n); }

/* The kernel's quantiser on an array (for tests that it reproduces infoplane.networks.quantize bit for bit). */
void ip_quantize(const float *q, const float *a, float *out, int64_t n) { quantize(q, a, out, n); }

struct job {
    int S, L, first, stride, opt, update_params, status;
    const int64_t *dims, *Y, *order;
    const int32_t *act, *quantised;
    const float *act_p, *quant, *X;
    float *P, *G, *M, *V;
    int64_t n, batch;
    const double *hyper;
    double step0;
};

/* Seeds first, first + stride, ... for the whole epoch: the seeds never interact, so threads share nothing. */
static void *run_job(void *arg) {
    struct job *j = (struct job *)arg;
    int64_t T = params_per_seed(j->L, j->dims);
    int64_t B = j->batch < j->n ? j->batch : j->n;
    float *work = (float *)malloc((size_t)work_floats(j->L, j->dims, B > 0 ? B : 1) * sizeof(float));
    if (!work) { j->status = -3; return NULL; }
    double step = j->step0;
    for (int64_t start = 0; start < j->n && j->status == 0; start += j->batch) {
        int64_t Bc = j->n - start < j->batch ? j->n - start : j->batch;
        step += 1.0;
        for (int s = j->first; s < j->S && j->status == 0; s += j->stride) {
            j->status = seed_gradient(j->L, j->dims, j->act, j->act_p, j->quantised, j->quant, j->P + s * T,
                                      j->G + s * T, j->X, j->Y, j->order + s * j->n + start, Bc, work);
            if (j->status == 0 && j->update_params)
                update(j->opt, j->hyper, step, j->P + s * T, j->G + s * T, j->M + s * T, j->V + s * T, T);
        }
        if (!j->update_params) break;
    }
    free(work);
    return NULL;
}

/* One epoch: for each minibatch of the orders [S, n] (the last one holds n % batch rows), every seed's
 * gradient, then its update. *step is the optimiser's step count, advanced once per minibatch. The seeds are
 * shared out among `threads` threads (each takes every threads-th seed for the whole epoch): an OpenMP team
 * where built with OpenMP, else pthreads.
 * update_params == 0 computes the first minibatch's gradients only (the trial check). Returns 0, -1 for a
 * label out of range, -2 for unsupported sizes, -3 when memory runs out. */
int ip_fused_epoch(int S, int L, const int64_t *dims, const int32_t *act, const float *act_p,
                   const int32_t *quantised, const float *quant, float *P, float *G, float *M, float *V,
                   const float *X, const int64_t *Y, const int64_t *order, int64_t n, int64_t batch,
                   int opt, const double *hyper, double *step, int update_params, int threads) {
    if (L < 1 || L > 64 || batch < 1) return -2;
    if (threads > S) threads = S;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    struct job jobs[64];
    pthread_t ids[64];
    int started[64] = {0};
    for (int t = 0; t < threads; t++) {
        struct job j = {S, L, t, threads, opt, update_params, 0, dims, Y, order, act, quantised, act_p, quant, X,
                        P, G, M, V, n, batch, hyper, *step};
        jobs[t] = j;
    }
#ifdef _OPENMP
    (void)ids; (void)started;
    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) run_job(&jobs[t]);
#else
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
    /* this thread takes job 0, and the jobs of any thread that failed to start */
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

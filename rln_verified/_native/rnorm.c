/* Fused CPU kernel of R-LayerNorm / Bayesian R-LayerNorm for float32 planes (proofs/norm.md, N0-N3, N11).
 *
 * A group is a contiguous (P, L) plane of M = P L floats. Every per-group quantity is accumulated in double,
 * so the float32 kernel computes the same formula as the eager path with at least its accuracy (N11).
 * Window sums use reflect padding: 3 along L (and 3 along P when two_d). The fma() calls round once where a
 * product and a sum would round twice. C99 plus pthreads and GCC/Clang vector extensions (v4d, v8d); no Python or
 * torch headers, so it compiles in well under a second. Loaded through ctypes by rln_verified/_native.py.
 *
 * Three layouts of the element passes, all float64 and all covered by N11:
 *   - planes of width 8 (two_d): a row is one 8-lane vector and the window sums are lane shuffles (stats8, bwd8);
 *   - rows of a multiple of 8: 8-lane vectors with the row neighbours from unaligned loads, walking down 8-column
 *     strips in two_d (stats_strips, out8, bwd_strips);
 *   - any other width: the flat loops (centre, plane_box_*, plane_vv_pad).
 * The N11 check draws widths of each kind (tests/test_native.py, rln_verified/verify/norm.py).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* Partial sums kept apart in reductions: LANES / 4 independent vector accumulators, so a sum is not bound by
 * the latency of one chain of additions. */
enum { LANES = 16 };

/* ---- window sums --------------------------------------------------------------------------------------- */

/* Adjoint of box_row: zero-padded 3-sums, with the reflected lanes folded onto 1 and n-2. */
static void box_row_adj(const double *z, double *out, i64 n) {
    if (n == 2) {
        out[0] = z[0] + 2.0 * z[1];
        out[1] = 2.0 * z[0] + z[1];
        return;
    }
    out[0] = z[0] + z[1];
    for (i64 i = 1; i < n - 1; ++i) out[i] = z[i - 1] + z[i] + z[i + 1];
    out[n - 1] = z[n - 2] + z[n - 1];
    out[1] += z[0];
    out[n - 2] += z[n - 1];
}

/* 1-D reuse weights (count of windows holding position i, with multiplicity) / 3 (N0). */
static int reuse_weights(i64 n, double *w) {
    double *ones = (double *)malloc(sizeof(double) * (size_t)n);
    if (!ones) return 2; /* out of memory: the caller fails the call (w is left unset) */
    for (i64 i = 0; i < n; ++i) ones[i] = 1.0;
    box_row_adj(ones, w, n);
    for (i64 i = 0; i < n; ++i) w[i] /= 3.0;
    free(ones);
    return 0;
}

/* ---- psi (PSI-1, PSI-3: the float64 split t0 = 0.1 with 7 series terms) ------------------------------ */

static double psi(double t) {
    if (isnan(t) || t < 0) return NAN;
    if (isinf(t)) return t;
    if (t <= 0.1) {
        const double w = t / (2.0 + t), z = w * w;
        const double a = 1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z * (1.0 / 13
                         + z * (1.0 / 15))))));
        return 2.0 * z / (1.0 + w) + 2.0 * w * z * a;
    }
    return log1p(t) - t / (1.0 + t);
}

/* psi'(t) = t/(1+t)^2 (PSI-3), clamped to its exact bound 1/4 (PSI-4). */
static double dpsi(double t) {
    if (isinf(t)) return 0.0;
    const double w = 1.0 / (1.0 + t);
    double d = (t * w) * w;
    return d > 0.25 ? 0.25 : d;
}

/* Saved per group for backward: mean, 1/sigma, r and a = 1/(sigma f); f, u and d log f/dt follow from them
 * without a transcendental function: 1/f = a sigma, 1 - u = 1/f^2. */
enum { NSTAT = 4 };

/* Forward scalars. Bayesian: f = exp(alpha psi(t)), so a = exp(-alpha psi)/sigma and, with em = expm1(-alpha psi),
 * u = 1 - exp(-2 alpha psi) = -em (2 + em), both free of cancellation. (a = (1 + em)/sigma would lose
 * exp(-alpha psi) below 2^-53: y = 0 at alpha psi > 37, where the formula's y is a normal float32.)
 * Plain: f = 1 + t, u = 0. */
static void fwd_scalars(double v, double nu, double eps, double lam, double alpha, int bayes, double *isig, double *r,
                        double *a, double *u) {
    const double ve = v + eps, sig = sqrt(ve);
    *isig = 1.0 / sig;
    *r = nu / ve;
    const double t = lam * *r;
    if (bayes) {
        const double z = -alpha * psi(t), em = expm1(z);
        *a = exp(z) / sig;
        *u = -em * (2.0 + em);
    } else {
        *a = 1.0 / (sig * (1.0 + t));
        *u = 0.0;
    }
}

/* Scratch arrays are spaced by a non-multiple of 4 KiB, and placed half a page away (mod 4 KiB) from the output,
 * so that a load from one array never waits on a store to another at the same address bits (4K aliasing). */
enum { PAD = 72, SLACK = 512 };

static i64 stride(i64 m) { return m + PAD; }

/* The scratch start, within [scr, scr + SLACK), whose distance to `out` is 2 KiB modulo 4 KiB. */
static double *place(double *scr, const void *out) {
    const uintptr_t d = ((uintptr_t)scr - (uintptr_t)out + 4096u - 2048u) & 4095u;
    return scr + ((4096u - d) & 4095u) / sizeof(double);
}

/* ---- a tiny parallel-for over groups ------------------------------------------------------------------ */

typedef void (*group_fn)(void *ctx, i64 g0, i64 g1, double *scratch, double *acc);

typedef struct { group_fn fn; void *ctx; i64 g0, g1; double *scratch, *acc; } Job;

static void *run_job(void *arg) {
    Job *j = (Job *)arg;
    j->fn(j->ctx, j->g0, j->g1, j->scratch, j->acc);
    return NULL;
}

/* Runs fn over [0, groups) in `threads` slices. Each slice gets its own scratch (scratch_len doubles) and a
 * zeroed accumulator (acc_len doubles); the accumulators are summed into acc_out (slice order, so the result
 * does not depend on scheduling). Returns nonzero when memory runs out. */
static int parallel_groups(group_fn fn, void *ctx, i64 groups, i64 scratch_len, i64 acc_len, double *acc_out,
                           int threads, i64 work) {
    if (threads > 1 && work < (1 << 18)) threads = 1; /* below ~256k elements one thread is faster */
    if (threads > groups) threads = (int)groups;
    if (threads > 64) threads = 64;
    if (threads < 1) threads = 1;
    Job jobs[64];
    pthread_t tid[64];
    int started[64] = {0};
    /* every slice's scratch and accumulator start on a 64-byte boundary (whole vectors, no split lines) */
    const i64 sl = (scratch_len + 7) / 8 * 8, al = (acc_len + 7) / 8 * 8, per = sl + al;
    double *mem = (double *)calloc((size_t)(threads * per + 8), sizeof(double));
    if (!mem) return 2;
    double *base = (double *)(((uintptr_t)mem + 63u) & ~(uintptr_t)63u);
    for (int k = 0; k < threads; ++k) {
        jobs[k].fn = fn;
        jobs[k].ctx = ctx;
        jobs[k].g0 = groups * k / threads;
        jobs[k].g1 = groups * (k + 1) / threads;
        jobs[k].scratch = base + k * per;
        jobs[k].acc = base + k * per + sl;
    }
    for (int k = 1; k < threads; ++k) started[k] = pthread_create(&tid[k], NULL, run_job, &jobs[k]) == 0;
    run_job(&jobs[0]);
    for (int k = 1; k < threads; ++k) {
        if (started[k]) pthread_join(tid[k], NULL);
        else run_job(&jobs[k]);
    }
    for (i64 q = 0; q < acc_len; ++q) {
        double t = 0.0;
        for (int k = 0; k < threads; ++k) t += jobs[k].acc[q];
        acc_out[q] = t;
    }
    free(mem);
    return 0;
}

/* ---- whole-plane window sums (one pass each over a contiguous (p, l) plane, then O(p) edge fixes) ----- */

/* h = horizontal window sums of d (reflect at both ends of every row). */
static void plane_box_h(const double *restrict d, double *restrict h, i64 p, i64 l) {
    const i64 m = p * l;
#pragma omp simd
    for (i64 j = 1; j < m - 1; ++j) h[j] = d[j - 1] + d[j] + d[j + 1];
    for (i64 i = 0; i < p; ++i) {
        const i64 a = i * l, e = a + l - 1;
        h[a] = d[a + 1] + d[a] + d[a + 1];
        h[e] = d[e - 1] + d[e] + d[e - 1];
    }
}

/* o = adjoint of plane_box_h applied to z. */
static void plane_box_h_adj(const double *restrict z, double *restrict o, i64 p, i64 l) {
    const i64 m = p * l;
#pragma omp simd
    for (i64 j = 1; j < m - 1; ++j) o[j] = z[j - 1] + z[j] + z[j + 1];
    for (i64 i = 0; i < p; ++i) {
        const i64 a = i * l, e = a + l - 1;
        if (l == 2) {
            o[a] = z[a] + 2.0 * z[e];
            o[e] = 2.0 * z[a] + z[e];
        } else {
            o[a] = z[a] + z[a + 1];
            o[e] = z[e - 1] + z[e];
            o[a + 1] += z[a];
            o[e - 1] += z[e];
        }
    }
}

/* o = vertical window sums of h (reflect at the first and last row); p >= 2. */
static void plane_box_v(const double *restrict h, double *restrict o, i64 p, i64 l) {
    const i64 m = p * l;
#pragma omp simd
    for (i64 j = l; j < m - l; ++j) o[j] = h[j - l] + h[j] + h[j + l];
    const double *r1 = h + l, *rp = h + (p - 2) * l, *last = h + (p - 1) * l;
#pragma omp simd
    for (i64 j = 0; j < l; ++j) {
        o[j] = r1[j] + h[j] + r1[j];
        o[m - l + j] = rp[j] + last[j] + rp[j];
    }
}

/* o = adjoint of plane_box_v applied to z; p >= 2. */
static void plane_box_v_adj(const double *restrict z, double *restrict o, i64 p, i64 l) {
    const i64 m = p * l;
#pragma omp simd
    for (i64 j = l; j < m - l; ++j) o[j] = z[j - l] + z[j] + z[j + l];
    for (i64 j = 0; j < l; ++j) {
        o[j] = z[j] + z[j + l];
        o[m - l + j] = z[m - 2 * l + j] + z[m - l + j];
    }
    if (p == 2) {
        for (i64 j = 0; j < l; ++j) {
            o[j] = z[j] + 2.0 * z[l + j];
            o[l + j] = 2.0 * z[j] + z[l + j];
        }
        return;
    }
    for (i64 j = 0; j < l; ++j) {
        o[l + j] += z[j];
        o[m - 2 * l + j] += z[m - l + j];
    }
}

/* Padded rows: a row starts 4 cells into its slot of l + 8 (32-byte aligned when the slot is), two pad cells
 * each side in use. With the pads set by pad5 from the row's own ends, the symmetric 5-tap (1, 2, 3, 2, 1) gives
 * (B^T B z)_j of the reflect window at every position of the row, ends included: B^T B has rows (2, 3, 1) and
 * (3, 6, 2, 1) there, which p[-1] = z0 + 3 z1, p[-2] = -3 z0 - 5 z1 (and the mirror image at the right end)
 * reproduce (proofs/norm.md, N11). Needs l >= 4. */
static i64 pad_stride(i64 l) { return l + 8; }

static void pad5_at(double *zp, i64 p, i64 l, i64 ps, i64 off) {
    for (i64 i = 0; i < p; ++i) {
        double *o = zp + i * ps + off;
        o[-1] = o[0] + 3.0 * o[1];
        o[-2] = -3.0 * o[0] - 5.0 * o[1];
        o[l] = o[l - 1] + 3.0 * o[l - 2];
        o[l + 1] = -3.0 * o[l - 1] - 5.0 * o[l - 2];
    }
}

static void pad5(double *zp, i64 p, i64 l) { pad5_at(zp, p, l, pad_stride(l), 4); }

static inline double tap5(const double *z, i64 j) {
    return fma(3.0, z[j], fma(2.0, z[j - 1] + z[j + 1], z[j - 2] + z[j + 2]));
}

/* Four doubles as one value (a GCC/Clang vector extension; lowered to whatever SIMD the target has). aligned(8):
 * loads and stores through it may be unaligned. */
typedef double v4d __attribute__((vector_size(32), aligned(8)));

/* zp (padded rows) = (B_v^T B_v) x along the columns of a flat (p, l) plane, p >= 4: the 5-tap (1, 2, 3, 2, 1)
 * inside, rows (2, 3, 1) and (3, 6, 2, 1) at the ends (see pad5). Four columns at a time go down the plane with
 * the last four rows held in registers, so each row is read once. */
static void plane_vv_pad(const double *restrict x, double *restrict zp, i64 p, i64 l) {
    const i64 ps = pad_stride(l);
    i64 j = 0;
    for (; j + 4 <= l; j += 4) {
        const double *restrict xj = x + j;
        double *restrict oj = zp + 4 + j;
        v4d a = *(const v4d *)xj, b = *(const v4d *)(xj + l), c = *(const v4d *)(xj + 2 * l);
        v4d d = *(const v4d *)(xj + 3 * l);
        *(v4d *)oj = (a + a) + (b + b + b) + c;
        *(v4d *)(oj + ps) = (a + a + a) + 6.0 * b + (c + c) + d;
        for (i64 i = 2; i < p - 2; ++i) {
            const v4d e = *(const v4d *)(xj + (i + 2) * l);
            *(v4d *)(oj + i * ps) = (a + e) + 2.0 * (b + d) + 3.0 * c;
            a = b;
            b = c;
            c = d;
            d = e;
        }
        /* a, b, c, d now hold rows p - 4 .. p - 1 */
        *(v4d *)(oj + (p - 2) * ps) = a + (b + b) + 6.0 * c + (d + d + d);
        *(v4d *)(oj + (p - 1) * ps) = b + (c + c + c) + (d + d);
    }
    for (; j < l; ++j) {
        const double *restrict xj = x + j;
        double *restrict oj = zp + 4 + j;
        oj[0] = 2.0 * xj[0] + 3.0 * xj[l] + xj[2 * l];
        oj[ps] = 3.0 * xj[0] + 6.0 * xj[l] + 2.0 * xj[2 * l] + xj[3 * l];
        for (i64 i = 2; i < p - 2; ++i)
            oj[i * ps] = (xj[(i - 2) * l] + xj[(i + 2) * l]) + 2.0 * (xj[(i - 1) * l] + xj[(i + 1) * l])
                         + 3.0 * xj[i * l];
        oj[(p - 2) * ps] = xj[(p - 4) * l] + 2.0 * xj[(p - 3) * l] + 6.0 * xj[(p - 2) * l] + 3.0 * xj[(p - 1) * l];
        oj[(p - 1) * ps] = xj[(p - 3) * l] + 3.0 * xj[(p - 2) * l] + 2.0 * xj[(p - 1) * l];
    }
    pad5(zp, p, l);
}

typedef struct {
    i64 p, l, m, channels;
    int two_d, bayes, mode; /* mode: 0 no affine, 1 per channel (index g % channels), 2 elementwise (length m) */
    double eps, lam, alpha;
    double inv_m; /* 1/m, for the backward's per-group scalars (a product, where a division per group would wait) */
    const float *w, *b;
    double *wf; /* reuse weight of every plane element, wp_i wl_j (N0) */
    double *wp, *wl; /* its factors: wp (p values, all 1 unless two_d) and wl (l values, 64-byte aligned) */
} Cfg;

static int make_cfg(Cfg *c, i64 p, i64 l, int two_d, int bayes, double eps, double lam, double alpha, int mode,
                    const float *w, const float *b, i64 channels) {
    if (p < 1 || l < 2 || (two_d && p < 2)) return 1;
    c->p = p; c->l = l; c->m = p * l; c->inv_m = 1.0 / (double)c->m; c->channels = channels > 0 ? channels : 1;
    c->two_d = two_d; c->bayes = bayes; c->mode = mode; c->eps = eps; c->lam = lam; c->alpha = alpha;
    c->w = w; c->b = b;
    /* one block: wf (m), wl (l rounded up to 8), wp (p), wl on a 64-byte boundary */
    const i64 lr = (l + 7) / 8 * 8;
    c->wf = (double *)malloc(sizeof(double) * (size_t)(c->m + lr + p + 8));
    if (!c->wf) return 2;
    c->wl = (double *)(((uintptr_t)(c->wf + c->m) + 63u) & ~(uintptr_t)63u);
    c->wp = c->wl + lr;
    double *wp = c->wp, *wl = c->wl;
    int rc = reuse_weights(l, wl);
    if (rc == 0 && two_d) rc = reuse_weights(p, wp);
    else if (rc == 0) for (i64 i = 0; i < p; ++i) wp[i] = 1.0;
    if (rc) { free(c->wf); c->wf = NULL; return rc; }
    for (i64 i = 0; i < p; ++i)
        for (i64 j = 0; j < l; ++j) c->wf[i * l + j] = wp[i] * wl[j];
    return 0;
}

static void free_cfg(Cfg *c) { free(c->wf); }

/* One pass over a group: h = horizontal window sums of x_c = x - mean (reflect), and the sums sum x_c^2 and
 * sum w x_c^2 (reuse weights, N0). x_c itself is not kept: (double)x - mean is recomputed, bit for bit, where
 * it is needed again. */
static void centre(const Cfg *c, const float *restrict x, double mean, double *restrict h, double *ss_out,
                   double *ssw_out) {
    const double *restrict wf = c->wf;
    const i64 m = c->m, l = c->l;
    double ss = 0.0, ssw = 0.0;
#pragma omp simd reduction(+ : ss, ssw)
    for (i64 j = 1; j < m - 1; ++j) {
        const double t = (double)x[j] - mean;
        h[j] = ((double)x[j - 1] - mean) + t + ((double)x[j + 1] - mean);
        const double t2 = t * t;
        ss += t2;
        ssw = fma(wf[j], t2, ssw);
    }
    const double t0 = (double)x[0] - mean, t1 = (double)x[m - 1] - mean;
    ss += t0 * t0 + t1 * t1;
    ssw += wf[0] * (t0 * t0) + wf[m - 1] * (t1 * t1);
    for (i64 a = 0; a < m; a += l) {
        const i64 e = a + l - 1;
        const double xa = (double)x[a] - mean, xa1 = (double)x[a + 1] - mean;
        const double xe = (double)x[e] - mean, xe1 = (double)x[e - 1] - mean;
        h[a] = xa1 + xa + xa1;
        h[e] = xe1 + xe + xe1;
    }
    *ss_out = ss;
    *ssw_out = ssw;
}


/* ---- 8-lane vector paths (AVX-512 builds; elsewhere the flat loops run) ------------------------------------
 *
 * Planes of width 8: a row is one 8-lane vector, the window sums are lane shuffles. Rows of a multiple of 8:
 * 8-lane vectors down 8-column strips. Without AVX-512 a 64-byte vector would be split and passed through memory,
 * slower than the flat loops, so these paths are compiled only where it is present (RLN_VEC8). */

#if defined(__AVX512F__)
#define RLN_VEC8 1
#include <immintrin.h>

typedef double v8d __attribute__((vector_size(64), aligned(8)));
typedef i64 v8i __attribute__((vector_size(64)));
#if defined(__clang__)
#define SHUF(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#define SHUF2(v, w, ...) __builtin_shufflevector(v, w, __VA_ARGS__)
#else
#define SHUF(v, ...) __builtin_shuffle(v, (v8i){__VA_ARGS__})
#define SHUF2(v, w, ...) __builtin_shuffle(v, w, (v8i){__VA_ARGS__})
#endif

/* 8 floats to doubles in one instruction (GCC splits the generic vector conversion into four) */
static inline v8d ld8f(const float *p) { return (v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p)); }
static inline v8d fma8(v8d a, v8d b, v8d c) { return (v8d)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c); }
static inline void st8f(float *p, v8d v) { _mm256_storeu_ps(p, _mm512_cvtpd_ps((__m512d)v)); }
/* a + b issued as fma(a, 1, b): the same rounding, but on the multiply pipes, which the conversions and additions
 * of these loops otherwise leave idle */
static inline v8d addm(v8d a, v8d b) { return (v8d)_mm512_fmadd_pd((__m512d)a, _mm512_set1_pd(1.0), (__m512d)b); }
static inline v8d splat8(double a) { return (v8d){a, a, a, a, a, a, a, a}; }
static inline double hsum8(v8d v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
/* Horizontal window sums of one row, reflected at both ends: lanes (1 0 1), (0 1 2), ..., (6 7 6). */
static inline v8d box8(v8d d) {
    return addm(SHUF(d, 1, 0, 1, 2, 3, 4, 5, 6), d) + SHUF(d, 1, 2, 3, 4, 5, 6, 7, 6);
}

/* One group of a (p, 8) plane, p >= 2, from rows held as vectors: mean, sum x_c^2, sum w x_c^2 and the sum of
 * squared window sums. */
static void stats8(const Cfg *c, const float *restrict x, double *mean_out, double *ss_out, double *ssw_out,
                   double *sbx_out) {
    const i64 p = c->p, m = c->m;
    v8d sa = splat8(0.0), sb = sa;
    i64 i = 0;
    for (; i + 2 <= p; i += 2) {
        sa = addm(ld8f(x + 8 * i), sa);
        sb = addm(ld8f(x + 8 * i + 8), sb);
    }
    if (i < p) sa = addm(ld8f(x + 8 * i), sa);
    const double mean = hsum8(sa + sb) / (double)m;
    const v8d mv = splat8(mean);
    const double *restrict wf = c->wf;
    v8d q = splat8(0.0), qw = q, qb = q, qi = q;
    v8d d0 = ld8f(x) - mv, d1 = ld8f(x + 8) - mv;
    v8d h0 = box8(d0), h1 = box8(d1);
    q = fma8(d0, d0, fma8(d1, d1, q));
    qw = fma8(*(const v8d *)wf, d0 * d0, fma8(*(const v8d *)(wf + 8), d1 * d1, qw));
    v8d t = addm(h1, h0) + h1; /* row 0, reflected at the top */
    qb = fma8(t, t, qb);
    for (i = 2; i < p; ++i) {
        const v8d d2 = ld8f(x + 8 * i) - mv, h2 = box8(d2);
        if (i < p - 2) { /* wp_i = 1: sum w x_c^2 takes wl once, below */
            qi = fma8(d2, d2, qi);
        } else {
            q = fma8(d2, d2, q);
            qw = fma8(*(const v8d *)(wf + 8 * i), d2 * d2, qw);
        }
        t = addm(h0, h1) + h2; /* row i - 1 */
        qb = fma8(t, t, qb);
        h0 = h1;
        h1 = h2;
    }
    t = addm(h0, h1) + h0; /* row p - 1, reflected at the bottom */
    qb = fma8(t, t, qb);
    q = q + qi;
    qw = fma8(*(const v8d *)c->wl, qi, qw);
    *mean_out = mean; *ss_out = hsum8(q); *ssw_out = hsum8(qw); *sbx_out = hsum8(qb);
}


/* One group of a (p, l) plane with l a multiple of 8, in strips of 8 columns: each row's part of a strip is one
 * vector, its horizontal window sums take the neighbours from unaligned loads (reflected lanes at the row ends),
 * and the vertical window sums (two_d) run down the strip with the last rows held in registers. The window sum
 * of x_c at j is formed as ((x_(j-1) + x_(j+1)) - 2 mean) + x_c,j (N11 counts its rounding). */
static void stats_strips(const Cfg *c, const float *restrict x, double *mean_out, double *ss_out, double *ssw_out,
                         double *sbx_out) {
    const i64 p = c->p, l = c->l, m = c->m;
    v8d sa = splat8(0.0), sb = sa;
    i64 j = 0;
    for (; j + 16 <= m; j += 16) {
        sa = addm(ld8f(x + j), sa);
        sb = addm(ld8f(x + j + 8), sb);
    }
    if (j < m) sa = addm(ld8f(x + j), sa);
    const double mean = hsum8(sa + sb) / (double)m;
    const v8d mv = splat8(mean), m2 = splat8(2.0 * mean);
    v8d q = splat8(0.0), qw = q, qb = q, qb2 = q;
    if (!c->two_d) { /* rows on their own: wp = 1, no vertical sums */
        v8d q2 = q, qw2 = q;
        for (i64 i = 0; i < p; ++i) { /* the interior chunks in pairs (two sets of sums), the end chunks apart */
            const float *r = x + i * l;
            {
                const v8d cur = ld8f(r), xp = SHUF(cur, 1, 0, 1, 2, 3, 4, 5, 6);
                const v8d xn = l == 8 ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 6) : ld8f(r + 1);
                const v8d d = cur - mv, h = addm(addm(xp, xn) - m2, d);
                q = fma8(d, d, q);
                qw = fma8(*(const v8d *)c->wl, d * d, qw);
                qb = fma8(h, h, qb);
            }
            i64 j0 = 8;
            for (; j0 + 16 < l; j0 += 16) {
                const v8d d = ld8f(r + j0) - mv, h = addm(addm(ld8f(r + j0 - 1), ld8f(r + j0 + 1)) - m2, d);
                const v8d e = ld8f(r + j0 + 8) - mv, k = addm(addm(ld8f(r + j0 + 7), ld8f(r + j0 + 9)) - m2, e);
                q2 = fma8(d, d, q2); /* reuse weight 1 inside: these count in both sums */
                qw2 = fma8(e, e, qw2);
                qb = fma8(h, h, qb);
                qb2 = fma8(k, k, qb2);
            }
            for (; j0 < l; j0 += 8) {
                const v8d cur = ld8f(r + j0), xp = ld8f(r + j0 - 1);
                const v8d xn = j0 + 8 == l ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 6) : ld8f(r + j0 + 1);
                const v8d d = cur - mv, h = addm(addm(xp, xn) - m2, d);
                q = fma8(d, d, q);
                qw = fma8(*(const v8d *)(c->wl + j0), d * d, qw);
                qb = fma8(h, h, qb);
            }
        }
        const v8d inner = q2 + qw2;
        *mean_out = mean; *ss_out = hsum8(q + inner); *ssw_out = hsum8(qw + inner); *sbx_out = hsum8(qb + qb2);
        return;
    }
    for (i64 j0 = 0; j0 < l; j0 += 8) {
        const int first = j0 == 0, last = j0 + 8 == l;
        const v8d wlv = *(const v8d *)(c->wl + j0);
        v8d h0 = splat8(0.0), h1 = h0;
        /* the strip's sums of x_c^2: qi over the rows of weight wp_i = 1, qe and qew (wp_i x_c^2) over the others;
         * sum w x_c^2 takes wl once per strip */
        v8d qi = splat8(0.0), qe = qi, qew = qi;
        for (i64 i = 0; i < p; ++i) {
            const float *r = x + i * l + j0;
            const v8d cur = ld8f(r), d = cur - mv;
            const v8d xp = first ? SHUF(cur, 1, 0, 1, 2, 3, 4, 5, 6) : ld8f(r - 1);
            const v8d xn = last ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 6) : ld8f(r + 1);
            const v8d h = addm(addm(xp, xn) - m2, d);
            if (i < 2 || i >= p - 2) {
                qe = fma8(d, d, qe);
                qew = fma8(splat8(c->wp[i]), d * d, qew);
            } else {
                qi = fma8(d, d, qi);
            }
            if (!c->two_d) {
                qb = fma8(h, h, qb);
            } else if (i == 0) {
                h0 = h;
            } else if (i == 1) {
                const v8d t = h + h0 + h; /* row 0, reflected at the top */
                qb = fma8(t, t, qb);
                h1 = h;
            } else {
                const v8d t = addm(h0, h1) + h; /* row i - 1 */
                qb2 = fma8(t, t, qb2);
                h0 = h1;
                h1 = h;
            }
        }
        if (c->two_d) {
            const v8d t = h0 + h1 + h0; /* row p - 1, reflected at the bottom */
            qb = fma8(t, t, qb);
        }
        q = q + (qi + qe);
        qw = fma8(wlv, qi + qew, qw);
    }
    *mean_out = mean; *ss_out = hsum8(q); *ssw_out = hsum8(qw); *sbx_out = hsum8(qb + qb2);
}

/* y of one group with m a multiple of 8: y = x_c a gamma + beta, as the general loop in fwd_groups. */
static void out8(const Cfg *c, const float *restrict x, float *restrict y, double mean, double ka, i64 g) {
    const i64 m = c->m;
    const v8d mv = splat8(mean);
    if (c->mode == 1) {
        const i64 ch = g % c->channels;
        /* y = x_c sc + beta, as the flat loop: x sc + (beta - mean sc) would round mean sc, an error of
         * 2^-53 |mean sc| that survives where x_c is small against mean (a constant plane of 1e30 gave 7.7e15, not
         * beta: N1) */
        const double s = ka * (double)c->w[ch];
        const v8d sc = splat8(s), bv = splat8(c->b ? (double)c->b[ch] : 0.0);
        for (i64 j = 0; j < m; j += 8) st8f(y + j, fma8(ld8f(x + j) - mv, sc, bv));
    } else if (c->mode == 2) {
        const v8d kv = splat8(ka);
        if (c->b) {
            for (i64 j = 0; j < m; j += 8) st8f(y + j, fma8((ld8f(x + j) - mv) * kv, ld8f(c->w + j), ld8f(c->b + j)));
        } else {
            for (i64 j = 0; j < m; j += 8) st8f(y + j, ((ld8f(x + j) - mv) * kv) * ld8f(c->w + j));
        }
    } else {
        const v8d kv = splat8(ka);
        for (i64 j = 0; j < m; j += 8) st8f(y + j, (ld8f(x + j) - mv) * kv);
    }
}

/* ---- the per-group scalars of 8 groups at once (Bayesian forward; proofs/norm.md, N11 "vector scalars") ----
 * psi and expm1 in 8 lanes, for t finite and >= 0 and z finite; any other lane takes the scalar fwd_scalars.
 * Every group takes this routine (a short block is padded), so a group's values never depend on its neighbours
 * or its position in the batch. */

/* log(w) for finite w >= 1: w = m 2^e with m in [sqrt(1/2), sqrt(2)], log m = 2 atanh(s), s = (m - 1)/(m + 1),
 * |s| <= 0.1716, as 2 s + s z Q(z), z = s^2, Q the atanh series to z^10 (next term < 2^-56 of the sum). */
static inline v8d vlog_ge1(v8d w) {
    __m512d m = _mm512_getmant_pd((__m512d)w, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __m512d e = _mm512_getexp_pd((__m512d)w);
    const __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
    e = _mm512_mask_add_pd(e, big, e, _mm512_set1_pd(1.0));
    const v8d mv = (v8d)m, s = (mv - 1.0) / (mv + 1.0), z = s * s;
    v8d q = splat8(2.0 / 23);
    q = fma8(q, z, splat8(2.0 / 21));
    q = fma8(q, z, splat8(2.0 / 19));
    q = fma8(q, z, splat8(2.0 / 17));
    q = fma8(q, z, splat8(2.0 / 15));
    q = fma8(q, z, splat8(2.0 / 13));
    q = fma8(q, z, splat8(2.0 / 11));
    q = fma8(q, z, splat8(2.0 / 9));
    q = fma8(q, z, splat8(2.0 / 7));
    q = fma8(q, z, splat8(2.0 / 5));
    q = fma8(q, z, splat8(2.0 / 3));
    const v8d ev = (v8d)e;
    const v8d lm = fma8(s * z, q, s + s);
    /* e ln2 split: ln2_hi has 11 trailing zero bits, so e ln2_hi is exact for |e| < 2^11 */
    return fma8(ev, splat8(6.93147180369123816490e-01), fma8(ev, splat8(1.90821492927058770002e-10), lm));
}

/* psi(t) for finite t >= 0 (PSI-1): the series branch of psi() for t <= 0.1, else log1p(t) - t/(1 + t) with
 * log1p(t) = log(w) t/(w - 1), w = 1 + t rounded (the standard correction; w - 1 >= 0.1). */
static inline v8d vpsi(v8d t) {
    const v8d w = 1.0 + t;
    const v8d big = fma8(vlog_ge1(w), t / (w - 1.0), -(t / w));
    const v8d ws = t / (2.0 + t), z = ws * ws;
    v8d a = splat8(1.0 / 15);
    a = fma8(a, z, splat8(1.0 / 13));
    a = fma8(a, z, splat8(1.0 / 11));
    a = fma8(a, z, splat8(1.0 / 9));
    a = fma8(a, z, splat8(1.0 / 7));
    a = fma8(a, z, splat8(1.0 / 5));
    a = fma8(a, z, splat8(1.0 / 3));
    const v8d small = 2.0 * z / (1.0 + ws) + 2.0 * ws * z * a;
    const __mmask8 lo = _mm512_cmp_pd_mask((__m512d)t, _mm512_set1_pd(0.1), _CMP_LE_OQ);
    return (v8d)_mm512_mask_blend_pd(lo, (__m512d)big, (__m512d)small);
}

/* expm1(z) for finite z <= 0: z = k ln2 + r, |r| <= ln2/2, expm1(r) by its Taylor series to r^13/13! (next term
 * < 2^-56 |r|), then expm1(z) = 2^k expm1(r) + (2^k - 1). z below -800 is -1 to double precision. *ex gets exp(z)
 * = 2^k expm1(r) + 2^k from the same reduction, accurate relative to itself down to the subnormals. */
static inline v8d vexpm1_neg(v8d z, v8d *ex) {
    z = (v8d)_mm512_max_pd(_mm512_set1_pd(-800.0), (__m512d)z); /* max returns its second operand for a NaN */
    const v8d k = (v8d)_mm512_roundscale_pd((__m512d)(z * 1.4426950408889634), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const v8d r = fma8(-k, splat8(1.90821492927058770002e-10), fma8(-k, splat8(6.93147180369123816490e-01), z));
    v8d p = splat8(1.0 / 6227020800.0);
    p = fma8(p, r, splat8(1.0 / 479001600.0));
    p = fma8(p, r, splat8(1.0 / 39916800.0));
    p = fma8(p, r, splat8(1.0 / 3628800.0));
    p = fma8(p, r, splat8(1.0 / 362880.0));
    p = fma8(p, r, splat8(1.0 / 40320.0));
    p = fma8(p, r, splat8(1.0 / 5040.0));
    p = fma8(p, r, splat8(1.0 / 720.0));
    p = fma8(p, r, splat8(1.0 / 120.0));
    p = fma8(p, r, splat8(1.0 / 24.0));
    p = fma8(p, r, splat8(1.0 / 6.0));
    p = fma8(p, r, splat8(0.5));
    const v8d er = fma8(r * r, p, r);
    const __m512d k2 = _mm512_scalef_pd(_mm512_set1_pd(1.0), (__m512d)k);
    *ex = fma8((v8d)k2, er, (v8d)k2);
    return fma8((v8d)k2, er, (v8d)k2 - 1.0);
}

/* fwd_scalars for groups [0, n), n <= 8, from v[] and nu[]; writes stats (NSTAT per group) and u (float32). */
static void fwd_scalars8(const double *v, const double *nu, i64 n, const Cfg *c, double *stats, float *u_out) {
    double vb[8], nb[8];
    for (int k = 0; k < 8; ++k) {
        vb[k] = k < n ? v[k] : 1.0;
        nb[k] = k < n ? nu[k] : 0.0;
    }
    const v8d ve = *(const v8d *)vb + c->eps, sig = (v8d)_mm512_sqrt_pd((__m512d)ve);
    const v8d isig = 1.0 / sig, r = *(const v8d *)nb / ve, t = c->lam * r;
    const __mmask8 ok = _mm512_cmp_pd_mask((__m512d)t, _mm512_set1_pd(DBL_MAX), _CMP_LE_OQ)
                        & _mm512_cmp_pd_mask((__m512d)t, _mm512_setzero_pd(), _CMP_GE_OQ);
    v8d ex;
    const v8d em = vexpm1_neg(-c->alpha * vpsi((v8d)_mm512_maskz_mov_pd(ok, (__m512d)t)), &ex);
    const v8d a = ex / sig, u = -em * (2.0 + em) + 0.0; /* + 0: u = +0 where em = +0, as the scalar route gives */
    for (i64 k = 0; k < n; ++k) {
        double *st = stats + NSTAT * k;
        if ((ok >> k) & 1) {
            st[1] = isig[k]; st[2] = r[k]; st[3] = a[k];
            u_out[k] = (float)u[k];
        } else { /* NaN, infinite or negative t: the scalar routine's special cases */
            double uk;
            fwd_scalars(vb[k], nb[k], c->eps, c->lam, c->alpha, 1, st + 1, st + 2, st + 3, &uk);
            u_out[k] = (float)uk;
        }
    }
}
#else
#define RLN_VEC8 0
#define stats8(...) ((void)0)
#define stats_strips(...) ((void)0)
#define out8(...) ((void)0)
#define fwd_scalars8(...) ((void)0)
#endif /* __AVX512F__ */

/* ---- forward ------------------------------------------------------------------------------------------ */

typedef struct {
    Cfg c;
    const float *x;
    float *y, *u_out;
    double *stats; /* per group: NSTAT values */
} Fwd;

/* Groups per block: the statistics of a block are taken first, then its scalars in one tight loop (the
 * transcendental calls of different groups overlap instead of waiting on each other), then its outputs. */
static i64 fwd_block(i64 m) {
    const i64 b = 8192 / m;
    return b < 1 ? 1 : (b > 64 ? 64 : b);
}

static void fwd_groups(void *vctx, i64 g0, i64 g1, double *scr, double *acc) {
    (void)acc;
    Fwd *f = (Fwd *)vctx;
    const Cfg *c = &f->c;
    const i64 p = c->p, l = c->l, m = c->m, nb = fwd_block(m);
    const double cw = c->two_d ? 9.0 : 3.0;
    scr = place(scr, f->y + g0 * m);
    double *restrict h = scr;
    double vb[64], nub[64];
    const int row8 = RLN_VEC8 && c->two_d && l == 8 && p >= 2;
    const int strips = RLN_VEC8 && !row8 && l % 8 == 0 && (!c->two_d || p >= 2);
    for (i64 gb = g0; gb < g1; gb += nb) {
        const i64 ge = gb + nb < g1 ? gb + nb : g1;
        for (i64 g = gb; g < ge; ++g) {
            const float *restrict x = f->x + g * m;
            double mean, ss, ssw, sbx = 0.0;
            if (row8) {
                stats8(c, x, &mean, &ss, &ssw, &sbx);
            } else if (strips) {
                stats_strips(c, x, &mean, &ss, &ssw, &sbx);
            } else {
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (i64 j = 0; j < m; ++j) sum += (double)x[j];
            mean = sum / (double)m;
            centre(c, x, mean, h, &ss, &ssw);
            }
            if (row8 || strips) {
            } else if (c->two_d) {
                const double *r1 = h + l, *rp = h + (p - 2) * l, *last = h + (p - 1) * l;
                double part[LANES] = {0};
                i64 j = l;
                for (; j + LANES <= m - l; j += LANES) {
#pragma omp simd
                    for (int k = 0; k < LANES; ++k) {
                        const double t = h[j + k - l] + h[j + k] + h[j + k + l];
                        part[k] = fma(t, t, part[k]);
                    }
                }
                for (; j < m - l; ++j) {
                    const double t = h[j - l] + h[j] + h[j + l];
                    part[0] += t * t;
                }
                for (int k = 0; k < LANES; ++k) sbx += part[k];
#pragma omp simd reduction(+ : sbx)
                for (i64 q = 0; q < l; ++q) {
                    const double t0 = r1[q] + h[q] + r1[q], t1 = rp[q] + last[q] + rp[q];
                    sbx += t0 * t0 + t1 * t1;
                }
            } else {
                double part[LANES] = {0};
                i64 j = 0;
                for (; j + LANES <= m; j += LANES) {
#pragma omp simd
                    for (int k = 0; k < LANES; ++k) part[k] = fma(h[j + k], h[j + k], part[k]);
                }
                for (; j < m; ++j) part[0] += h[j] * h[j];
                for (int k = 0; k < LANES; ++k) sbx += part[k];
            }
            const double nu = (ssw - sbx / (cw * cw)) / (double)m;
            vb[g - gb] = ss / (double)m;
            nub[g - gb] = nu < 0.0 ? 0.0 : nu; /* a NaN stays NaN */
            f->stats[NSTAT * g] = mean;
        }
        if (RLN_VEC8 && c->bayes) {
            for (i64 g = gb; g < ge; g += 8)
                fwd_scalars8(vb + (g - gb), nub + (g - gb), ge - g < 8 ? ge - g : 8, c, f->stats + NSTAT * g,
                             f->u_out + g);
        } else {
            for (i64 g = gb; g < ge; ++g) {
                double *st = f->stats + NSTAT * g;
                double u;
                fwd_scalars(vb[g - gb], nub[g - gb], c->eps, c->lam, c->alpha, c->bayes, st + 1, st + 2, st + 3, &u);
                f->u_out[g] = (float)u;
            }
        }
        for (i64 g = gb; g < ge; ++g) {
            const double ka = f->stats[NSTAT * g + 3];
            const double mean = f->stats[NSTAT * g];
            const float *restrict x = f->x + g * m;
            float *restrict y = f->y + g * m;
            if (RLN_VEC8 && m % 8 == 0) {
                out8(c, x, y, mean, ka, g);
            } else if (c->mode == 1) {
                const i64 ch = g % c->channels;
                const double sc = ka * (double)c->w[ch];
                const double bi = c->b ? (double)c->b[ch] : 0.0;
#pragma omp simd
                for (i64 j = 0; j < m; ++j) y[j] = (float)fma((double)x[j] - mean, sc, bi);
            } else if (c->mode == 2) {
                const float *restrict w = c->w, *restrict b = c->b;
                if (b) {
#pragma omp simd
                    for (i64 j = 0; j < m; ++j) y[j] = (float)fma(((double)x[j] - mean) * ka, (double)w[j], (double)b[j]);
                } else {
#pragma omp simd
                    for (i64 j = 0; j < m; ++j) y[j] = (float)(((double)x[j] - mean) * ka * (double)w[j]);
                }
            } else {
#pragma omp simd
                for (i64 j = 0; j < m; ++j) y[j] = (float)(((double)x[j] - mean) * ka);
            }
        }
    }
}

int rln_forward_f32(const float *x, i64 groups, i64 p, i64 l, int two_d, int bayes, double eps, double lam,
                    double alpha, int mode, const float *w, const float *b, i64 channels, float *y, float *u_out,
                    double *stats, int threads) {
    Fwd f;
    const int bad = make_cfg(&f.c, p, l, two_d, bayes, eps, lam, alpha, mode, w, b, channels);
    if (bad) return bad;
    f.x = x; f.y = y; f.u_out = u_out; f.stats = stats;
    const int rc = parallel_groups(fwd_groups, &f, groups, stride(f.c.m) + SLACK, 0, NULL, threads,
                                   groups * f.c.m);
    free_cfg(&f.c);
    return rc;
}

/* ---- backward ----------------------------------------------------------------------------------------- */

enum { ACC_W = 8 };
static i64 acc_b(i64 k) { return ACC_W + (k + 7) / 8 * 8; }

typedef struct {
    Cfg c;
    const float *x, *gy, *gu;
    const double *stats;
    float *gx;
} Bwd;


#if RLN_VEC8
/* Adjoint of box8: the lanes each element is read by, (0 1), (0 0 1 2), (1 2 3), ..., (5 6 7 7), (6 7). */
static inline v8d box8_adj(v8d z) {
    const v8d zero = splat8(0.0);
    return (z + SHUF2(z, zero, 1, 2, 3, 4, 5, 6, 7, 8)) + (SHUF2(z, zero, 8, 0, 1, 2, 3, 4, 5, 6)
                                                           + SHUF2(z, zero, 8, 0, 8, 8, 8, 8, 7, 8));
}

/* Backward of one group of a (p, 8) plane, p = 2 or 3, mode 0 or 1 (the general loop's formulas, rows as vectors;
 * taller planes of width 8 take bwd_strips). scr holds 2 p rows. */
static void bwd8(const Bwd *bw, i64 g, double *restrict scr, double *acc) {
    const Cfg *c = &bw->c;
    const i64 p = c->p, m = c->m;
    const float *restrict x = bw->x + g * m, *restrict gy = bw->gy + g * m;
    const double *st = bw->stats + NSTAT * g;
    const double mean = st[0], isig = st[1], r = st[2], ka = st[3];
    const double t = c->lam * r;
    double dlogf, q, one_m_u = 1.0;
    if (c->bayes) {
        const double inv_f = ka / isig;
        dlogf = c->alpha * dpsi(t);
        q = dlogf * inv_f;
        one_m_u = inv_f * inv_f;
    } else {
        dlogf = 1.0 / (1.0 + t);
        q = dlogf * dlogf;
    }
    const v8d mv = splat8(mean);
    double *restrict gr = scr, *restrict vr = scr + 8 * p; /* Bh^T Bh x_c rows, then B_v of them */
    v8d s1 = splat8(0.0), s2 = s1;
    for (i64 i = 0; i < p; ++i) {
        const v8d d = ld8f(x + 8 * i) - mv, gv = ld8f(gy + 8 * i);
        s1 += gv;
        s2 += gv * d;
        *(v8d *)(gr + 8 * i) = box8_adj(box8(d));
    }
    const double gy_sum = hsum8(s1), gyxc = hsum8(s2);
    const double wc = c->mode == 1 ? (double)c->w[g % c->channels] : 1.0;
    const double gg_sum = gy_sum * wc, ggxc = gyxc * wc;
    if (c->mode == 1) {
        acc[ACC_W + g % c->channels] += gyxc * ka;
        acc[acc_b(c->channels) + g % c->channels] += gy_sum;
    }
    const double a_sum = ggxc * isig;
    double g_t = -a_sum * q;
    if (c->bayes && bw->gu) g_t += (double)bw->gu[g] * 2.0 * dlogf * one_m_u;
    const double coef = (g_t * c->lam) * (2.0 * c->inv_m) * (isig * isig);
    const double k_xc = -(a_sum * c->inv_m) * ka * isig + coef * (1.0 - r);
    const double k_0 = -(gg_sum * c->inv_m) * ka;
    const double k_b = -coef * (1.0 / 81.0);
    const double k_1 = k_xc - coef;
    const double ga = c->mode == 1 ? ka * wc : ka;
    /* vertical window sums (reflect), then their adjoint row by row */
    for (i64 i = 0; i < p; ++i) {
        const v8d *up = (const v8d *)(gr + 8 * (i == 0 ? 1 : i - 1)), *dn = (const v8d *)(gr + 8 * (i == p - 1 ? p - 2 : i + 1));
        *(v8d *)(vr + 8 * i) = *up + *(const v8d *)(gr + 8 * i) + *dn;
    }
    const v8d cv = splat8(coef), k1v = splat8(k_1), kbv = splat8(k_b), k0v = splat8(k_0), gav = splat8(ga);
    const double *restrict wf = c->wf;
    float *restrict gx = bw->gx + g * m;
    for (i64 i = 0; i < p; ++i) {
        v8d w = *(const v8d *)(vr + 8 * i);
        if (i > 0) w += *(const v8d *)(vr + 8 * (i - 1));
        if (i < p - 1) w += *(const v8d *)(vr + 8 * (i + 1));
        if (i == 1) w += *(const v8d *)vr;
        if (i == p - 2) w += *(const v8d *)(vr + 8 * (p - 1));
        const v8d d = ld8f(x + 8 * i) - mv, gv = ld8f(gy + 8 * i);
        const v8d o = gv * gav + ((cv * *(const v8d *)(wf + 8 * i) + k1v) * d + (kbv * w + k0v));
        st8f(gx + 8 * i, o);
    }
    acc[0] += g_t * r;
}


/* The per-group backward scalars of the general loop in bwd_groups (proofs/norm.md, N3), from the sums
 * gg_sum = sum g_y gamma and ggxc = sum g_y gamma x_c. */
typedef struct { double g_t, coef, k_1, k_b, k_0; } BwdK;

static BwdK bwd_scalars(const Bwd *bw, i64 g, double gg_sum, double ggxc) {
    const Cfg *c = &bw->c;
    const double *st = bw->stats + NSTAT * g;
    const double isig = st[1], r = st[2], ka = st[3];
    const double t = c->lam * r;
    double dlogf, q, one_m_u = 1.0;
    if (c->bayes) {
        const double inv_f = ka / isig;
        dlogf = c->alpha * dpsi(t);
        q = dlogf * inv_f;
        one_m_u = inv_f * inv_f;
    } else {
        dlogf = 1.0 / (1.0 + t);
        q = dlogf * dlogf;
    }
    const double cw = c->two_d ? 9.0 : 3.0;
    const double a_sum = ggxc * isig;
    BwdK k;
    k.g_t = -a_sum * q;
    if (c->bayes && bw->gu) k.g_t += (double)bw->gu[g] * 2.0 * dlogf * one_m_u;
    k.coef = (k.g_t * c->lam) * (2.0 * c->inv_m) * (isig * isig);
    const double k_xc = -(a_sum * c->inv_m) * ka * isig + k.coef * (1.0 - r);
    k.k_0 = -(gg_sum * c->inv_m) * ka;
    k.k_b = -k.coef * (1.0 / (cw * cw));
    k.k_1 = k_xc - k.coef;
    return k;
}

/* Backward of one group with l a multiple of 8 (and p >= 4 when two_d), rows as 8-lane vectors: x_c into
 * scratch (padded rows in the last-dims layout), (B_v^T B_v) x_c into padded rows (two_d), then B^T B as the
 * 5-tap along the rows (pad5) in the output pass, or as box8_adj(box8(.)) of each row where l = 8 (2d, planes of
 * at most 2048 elements). The general loop's formulas. */
static void bwd_strips(const Bwd *bw, i64 g, double *restrict scr, double *acc) {
    const Cfg *c = &bw->c;
    /* padded rows of l + 16 with the row at +8: every row starts on a 64-byte boundary and its 8-lane neighbours
     * on either side lie inside the slot */
    const i64 p = c->p, l = c->l, m = c->m, ps = l + 16;
    const float *restrict x = bw->x + g * m, *restrict gy = bw->gy + g * m;
    const double mean = bw->stats[NSTAT * g], ka = bw->stats[NSTAT * g + 3];
    const v8d mv = splat8(mean);
    const int elem = c->mode == 2;
    const i64 kw = c->mode == 1 ? c->channels : (elem ? m : 0);
    /* x_c row i at xc + i xs + x0 */
    const i64 xs = c->two_d ? l : ps, x0 = c->two_d ? 0 : 8;
    double *restrict xc = scr, *restrict zp = scr + stride(p * ps);
    v8d s1 = splat8(0.0), s2 = s1, s1b = s1, s2b = s1;
    const v8d kav = splat8(ka);
    const v8d two = splat8(2.0), three = splat8(3.0), six = splat8(6.0);
    const int fused = c->two_d && !elem && m <= 2048;
    if (fused) {
        /* one walk down each 8-column strip: the sums of g_y and g_y x_c, and zp = (B_v^T B_v) x_c with the last
         * four rows in registers (plane_vv_pad) */
        for (i64 j = 0; j < l; j += 8) {
            const float *restrict xj = x + j, *restrict gj = gy + j;
            double *restrict oj = zp + 8 + j;
            v8d a = ld8f(xj) - mv, b = ld8f(xj + l) - mv, cc = ld8f(xj + 2 * l) - mv;
            v8d d = ld8f(xj + 3 * l) - mv;
            {
                const v8d g0 = ld8f(gj), g1 = ld8f(gj + l), g2 = ld8f(gj + 2 * l), g3 = ld8f(gj + 3 * l);
                s1 += g0 + g1;
                s1b += g2 + g3;
                s2 = fma8(g0, a, fma8(g1, b, s2));
                s2b = fma8(g2, cc, fma8(g3, d, s2b));
            }
            *(v8d *)oj = fma8(two, a, fma8(three, b, cc));
            *(v8d *)(oj + ps) = fma8(three, a, fma8(six, b, fma8(two, cc, d)));
            for (i64 i = 2; i < p - 2; ++i) {
                const v8d e = ld8f(xj + (i + 2) * l) - mv, ge = ld8f(gj + (i + 2) * l);
                if (i & 1) { s1b += ge; s2b = fma8(ge, e, s2b); } else { s1 += ge; s2 = fma8(ge, e, s2); }
                *(v8d *)(oj + i * ps) = fma8(three, cc, fma8(two, b + d, a + e));
                a = b;
                b = cc;
                cc = d;
                d = e;
            }
            *(v8d *)(oj + (p - 2) * ps) = fma8(six, cc, fma8(two, b, fma8(three, d, a)));
            *(v8d *)(oj + (p - 1) * ps) = fma8(three, cc, fma8(two, d, b));
        }
    }
    for (i64 i = 0; i < (fused ? 0 : p); ++i) {
        const float *restrict xi = x + i * l, *restrict gi = gy + i * l;
        double *restrict xr = xc + i * xs + x0;
        if (elem) {
            const float *restrict w = c->w + i * l;
            double *restrict aw = acc + ACC_W + i * l, *restrict ab = acc + acc_b(kw) + i * l;
            for (i64 j = 0; j < l; j += 8) {
                const v8d d = ld8f(xi + j) - mv, gv = ld8f(gi + j), gg = gv * ld8f(w + j);
                *(v8d *)(xr + j) = d;
                s1 += gg;
                s2 = fma8(gg, d, s2);
                *(v8d *)(aw + j) = fma8(gv, d * kav, *(const v8d *)(aw + j));
                *(v8d *)(ab + j) = *(const v8d *)(ab + j) + gv;
            }
        } else {
            i64 j = 0;
            for (; j + 16 <= l; j += 16) {
                const v8d d = ld8f(xi + j) - mv, gv = ld8f(gi + j);
                const v8d e = ld8f(xi + j + 8) - mv, hv = ld8f(gi + j + 8);
                if (!c->two_d) {
                    *(v8d *)(xr + j) = d;
                    *(v8d *)(xr + j + 8) = e;
                }
                s1 += gv;
                s2 = fma8(gv, d, s2);
                s1b += hv;
                s2b = fma8(hv, e, s2b);
            }
            if (j < l) {
                const v8d d = ld8f(xi + j) - mv, gv = ld8f(gi + j);
                if (!c->two_d) *(v8d *)(xr + j) = d;
                s1 += gv;
                s2 = fma8(gv, d, s2);
            }
        }
    }
    double gg_sum = hsum8(s1 + s1b), ggxc = hsum8(s2 + s2b);
    const double wc = c->mode == 1 ? (double)c->w[g % c->channels] : 1.0;
    if (c->mode == 1) {
        acc[ACC_W + g % c->channels] += ggxc * ka;
        acc[acc_b(kw) + g % c->channels] += gg_sum;
    }
    if (!elem) {
        gg_sum *= wc;
        ggxc *= wc;
    }
    const BwdK k = bwd_scalars(bw, g, gg_sum, ggxc);
    const double ga = c->mode == 1 ? ka * wc : ka;
    const double *restrict zb;
    if (fused) {
        if (l != 8) pad5_at(zp, p, l, ps, 8); /* width 8: the horizontal B^T B in lanes (box8, box8_adj) below */
        zb = zp;
    } else if (c->two_d) {
        /* zp = (B_v^T B_v) x_c down each 8-column strip, the last four rows in registers (plane_vv_pad) */
        for (i64 j = 0; j < l; j += 8) {
            const float *restrict xj = x + j; /* x_c recomputed from x: half the bytes of a stored copy */
            double *restrict oj = zp + 8 + j;
            v8d a = ld8f(xj) - mv, b = ld8f(xj + l) - mv, cc = ld8f(xj + 2 * l) - mv;
            v8d d = ld8f(xj + 3 * l) - mv;
            *(v8d *)oj = fma8(two, a, fma8(three, b, cc));
            *(v8d *)(oj + ps) = fma8(three, a, fma8(splat8(6.0), b, fma8(two, cc, d)));
            for (i64 i = 2; i < p - 2; ++i) {
                const v8d e = ld8f(xj + (i + 2) * l) - mv;
                *(v8d *)(oj + i * ps) = fma8(three, cc, fma8(two, b + d, a + e));
                a = b;
                b = cc;
                cc = d;
                d = e;
            }
            *(v8d *)(oj + (p - 2) * ps) = fma8(splat8(6.0), cc, fma8(two, b, fma8(three, d, a)));
            *(v8d *)(oj + (p - 1) * ps) = fma8(three, cc, fma8(two, d, b));
        }
        pad5_at(zp, p, l, ps, 8);
        zb = zp;
    } else {
        pad5_at(xc, p, l, ps, 8);
        zb = xc;
    }
    const v8d k1v = splat8(k.k_1), kbv = splat8(k.k_b), k0v = splat8(k.k_0), gav = splat8(ga);
    const double *restrict wl = c->wl;
    float *restrict gx = bw->gx + g * m;
    if (fused && l == 8) { /* one vector per row: (B_h^T B_h) of the row by lane shuffles, as in bwd8. Its own loop:
                            * a branch inside the general one below slowed the last-dims rows by 5% */
        const v8d wlv = *(const v8d *)wl;
        for (i64 i = 0; i < p; ++i) {
            const v8d cj = fma8(splat8(k.coef * c->wp[i]), wlv, k1v);
            const v8d t5 = box8_adj(box8(*(const v8d *)(zb + i * ps + 8)));
            st8f(gx + 8 * i, fma8(ld8f(gy + 8 * i), gav, fma8(cj, ld8f(x + 8 * i) - mv, fma8(kbv, t5, k0v))));
        }
        acc[0] += k.g_t * bw->stats[NSTAT * g + 2];
        return;
    }
    for (i64 i = 0; i < p; ++i) {
        const double *restrict zr = zb + i * ps + 8, *restrict xr = xc + i * xs + x0;
        /* coef w_j + k_1 = fma(coef wp_i, wl_j, k_1); wl_j = 1 between the two end vectors of the row */
        const v8d cv = splat8(k.coef * c->wp[i]);
        const v8d c_first = fma8(cv, *(const v8d *)wl, k1v), c_last = fma8(cv, *(const v8d *)(wl + l - 8), k1v);
        const v8d c_mid = fma8(cv, splat8(1.0), k1v);
        const float *restrict gi = gy + i * l, *restrict xi = x + i * l;
        float *restrict o = gx + i * l;
        for (i64 j = 0; j < l; j += 8) {
            const v8d t5 = fma8(three, *(const v8d *)(zr + j),
                                fma8(two, *(const v8d *)(zr + j - 1) + *(const v8d *)(zr + j + 1),
                                     *(const v8d *)(zr + j - 2) + *(const v8d *)(zr + j + 2)));
            v8d gv = ld8f(gi + j);
            if (elem) gv = gv * ld8f(c->w + i * l + j);
            const v8d cj = j == 0 ? c_first : (j == l - 8 ? c_last : c_mid);
            const v8d d = c->two_d ? ld8f(xi + j) - mv : *(const v8d *)(xr + j);
            st8f(o + j, fma8(gv, gav, fma8(cj, d, fma8(kbv, t5, k0v))));
        }
    }
    acc[0] += k.g_t * bw->stats[NSTAT * g + 2];
}
#else
#define bwd8(...) ((void)0)
#define bwd_strips(...) ((void)0)
#endif /* RLN_VEC8 */

/* acc layout: [0] dL/dlambda; K = C (mode 1) or m (mode 2) values of dL/dw from ACC_W, and of dL/db from acc_b(K),
 * each run starting on a 64-byte boundary */
static void bwd_groups(void *vctx, i64 g0, i64 g1, double *scr, double *acc) {
    Bwd *bw = (Bwd *)vctx;
    const Cfg *c = &bw->c;
    const i64 p = c->p, l = c->l, m = c->m;
    scr = place(scr, bw->gx + g0 * m);
    const i64 sm = stride(p * pad_stride(l));
    double *restrict xc = scr, *restrict h = scr + sm, *restrict t2 = scr + 2 * sm;
    const double *restrict wf = c->wf;
    const double cw = c->two_d ? 9.0 : 3.0;
    const i64 kw = c->mode == 1 ? c->channels : (c->mode == 2 ? m : 0);
    /* planes of width 8 and 4 or more rows take the strips (whose fused walk measured 12% faster than bwd8) */
    const int row8 = RLN_VEC8 && c->two_d && l == 8 && p >= 2 && p < 4 && c->mode != 2;
    const int strips = RLN_VEC8 && !row8 && l % 8 == 0 && (!c->two_d || p >= 4);
    for (i64 g = g0; g < g1; ++g) {
        if (row8) {
            bwd8(bw, g, scr, acc);
            continue;
        }
        if (strips) {
            bwd_strips(bw, g, scr, acc);
            continue;
        }
        const float *restrict x = bw->x + g * m, *restrict gy = bw->gy + g * m;
        const double *st = bw->stats + NSTAT * g;
        const double mean = st[0], isig = st[1], r = st[2], ka = st[3];
        const double t = c->lam * r;
        double dlogf, q, one_m_u = 1.0;
        if (c->bayes) {
            const double inv_f = ka / isig;
            dlogf = c->alpha * dpsi(t);
            q = dlogf * inv_f;
            one_m_u = inv_f * inv_f;
        } else {
            dlogf = 1.0 / (1.0 + t);
            q = dlogf * dlogf;
        }
        /* long rows use the 5-tap form of B^T B (pad5): last dims keep x_c itself in padded rows, 2d keeps x_c
         * flat and (B_v^T B_v) x_c in padded rows; short rows (and 2d maps of fewer than 4 rows) use flat passes */
        const int five = l >= 16 && (!c->two_d || p >= 4), padded = five && !c->two_d;
        const i64 xs = padded ? pad_stride(l) : l, x0 = padded ? 4 : 0; /* x_c row i starts at xc + i xs + x0 */
        double gg_sum = 0.0, ggxc = 0.0, gy_sum = 0.0, gyxc = 0.0;
        for (i64 i = 0; i < (padded ? p : 1); ++i) { /* row by row into padded rows, else the plane in one run */
            const i64 a = i * l, n = padded ? l : m;
            double *restrict xr = xc + i * xs + x0;
            const float *restrict xi = x + a, *restrict gi = gy + a;
            if (c->mode == 2) {
                const float *restrict w = c->w + a;
                double *restrict aw = acc + ACC_W + a, *restrict ab = acc + acc_b(kw) + a;
#pragma omp simd reduction(+ : gg_sum, ggxc)
                for (i64 j = 0; j < n; ++j) {
                    const double d = (double)xi[j] - mean;
                    xr[j] = d;
                    const double gyj = (double)gi[j];
                    const double gg = gyj * (double)w[j];
                    gg_sum += gg;
                    ggxc = fma(gg, d, ggxc);
                    aw[j] += gyj * (d * ka);
                    ab[j] += gyj;
                }
            } else {
#pragma omp simd reduction(+ : gy_sum, gyxc)
                for (i64 j = 0; j < n; ++j) {
                    const double d = (double)xi[j] - mean;
                    xr[j] = d;
                    gy_sum += (double)gi[j];
                    gyxc = fma((double)gi[j], d, gyxc);
                }
            }
        }
        if (c->mode != 2) {
            const double wc = c->mode == 1 ? (double)c->w[g % c->channels] : 1.0;
            gg_sum = gy_sum * wc;
            ggxc = gyxc * wc;
            if (c->mode == 1) {
                acc[ACC_W + g % c->channels] += gyxc * ka;
                acc[acc_b(kw) + g % c->channels] += gy_sum;
            }
        }
        const double a_sum = ggxc * isig;
        double g_t = -a_sum * q;
        if (c->bayes && bw->gu) g_t += (double)bw->gu[g] * 2.0 * dlogf * one_m_u;
        const double coef = (g_t * c->lam) * (2.0 * c->inv_m) * (isig * isig);
        /* gx = gg a + (k_xc + coef (w_j - 1)) x_c - coef/c^2 (B^T B x_c)_j + k_0  (proofs/norm.md, N3) */
        const double k_xc = -(a_sum * c->inv_m) * ka * isig + coef * (1.0 - r);
        const double k_0 = -(gg_sum * c->inv_m) * ka;
        const double k_b = -coef * (1.0 / (cw * cw));
        const double k_1 = k_xc - coef;
        /* gx = ... + k_b (B^T B x_c)_j, B^T B = (B_v^T B_v) (B_h^T B_h) */
        float *restrict gx = bw->gx + g * m;
        const float *restrict w = c->w;
        const int elem = c->mode == 2;
        const double ga = c->mode == 1 ? ka * (double)c->w[g % c->channels] : ka;
        if (!five) {
            plane_box_h(xc, h, p, l);
            const double *restrict z = h;
            if (c->two_d) {
                plane_box_v(h, t2, p, l);
                plane_box_v_adj(t2, h, p, l);
            }
            plane_box_h_adj(z, t2, p, l);
            if (elem) {
#pragma omp simd
                for (i64 j = 0; j < m; ++j)
                    gx[j] = (float)fma((double)gy[j] * (double)w[j], ga, fma(fma(coef, wf[j], k_1), xc[j], fma(k_b, t2[j], k_0)));
            } else {
#pragma omp simd
                for (i64 j = 0; j < m; ++j)
                    gx[j] = (float)fma((double)gy[j], ga, fma(fma(coef, wf[j], k_1), xc[j], fma(k_b, t2[j], k_0)));
            }
        } else {
            /* zp: padded rows whose 5-tap along the row is (B^T B x_c)_j (pad5) */
            double *restrict zp = h;
            if (c->two_d) plane_vv_pad(xc, zp, p, l);
            else pad5(xc, p, l);
            const double *restrict zb = c->two_d ? zp : xc;
            for (i64 i = 0; i < p; ++i) {
                const i64 a = i * l;
                const double *restrict zr = zb + i * pad_stride(l) + 4, *restrict xr = xc + i * xs + x0;
                const double *restrict wr = wf + a;
                const float *restrict gr = gy + a;
                float *restrict o = gx + a;
                if (elem) {
                    const float *restrict wer = w + a;
#pragma omp simd
                    for (i64 j = 0; j < l; ++j)
                        o[j] = (float)fma((double)gr[j] * (double)wer[j], ga,
                                          fma(fma(coef, wr[j], k_1), xr[j], fma(k_b, tap5(zr, j), k_0)));
                } else {
#pragma omp simd
                    for (i64 j = 0; j < l; ++j)
                        o[j] = (float)fma((double)gr[j], ga, fma(fma(coef, wr[j], k_1), xr[j], fma(k_b, tap5(zr, j), k_0)));
                }
            }
        }
        acc[0] += g_t * r; /* dL/dlambda */
    }
}

/* Backward. Writes dL/dx, and as float32 dL/dlambda' = dL/dlambda * dlam (g_lam, one value) and, when not NULL,
 * dL/dw and dL/db (K values each; K = C in mode 1, m in mode 2). */
int rln_backward_f32(const float *x, const float *gy, const float *gu, i64 groups, i64 p, i64 l, int two_d,
                     int bayes, double eps, double lam, double dlam, double alpha, int mode, const float *w,
                     i64 channels, const double *stats, float *gx, float *g_lam, float *g_w, float *g_b, int threads) {
    Bwd bw;
    const int bad = make_cfg(&bw.c, p, l, two_d, bayes, eps, lam, alpha, mode, w, NULL, channels);
    if (bad) return bad;
    bw.x = x; bw.gy = gy; bw.gu = gu; bw.stats = stats; bw.gx = gx;
    const i64 kw = mode == 1 ? bw.c.channels : (mode == 2 ? bw.c.m : 0);
    const i64 acc_len = acc_b(kw) + kw;
    double *acc = (double *)malloc(sizeof(double) * (size_t)acc_len);
    if (!acc) { free_cfg(&bw.c); return 2; }
    const int rc = parallel_groups(bwd_groups, &bw, groups, 3 * stride(p * pad_stride(l)) + SLACK, acc_len, acc, threads,
                                   groups * bw.c.m);
    g_lam[0] = (float)(acc[0] * dlam); /* d lambda / d (its source): 1, or the N8 parameterization's derivative */
    if (g_w) for (i64 q = 0; q < kw; ++q) g_w[q] = (float)acc[ACC_W + q];
    if (g_b) for (i64 q = 0; q < kw; ++q) g_b[q] = (float)acc[acc_b(kw) + q];
    free(acc);
    free_cfg(&bw.c);
    return rc;
}

/* The 8-lane psi and expm1 of the Bayesian forward's scalars (fwd_scalars8), for the N11 check against mpmath:
 * psi(t[k]) for finite t[k] >= 0 and expm1(z[k]) for z[k] <= 0 or NaN, k < n. Returns 1, writing nothing, where
 * the vector paths are not compiled. */
int rln_vector_psi_expm1(const double *t, const double *z, i64 n, double *psi_out, double *em_out) {
#if RLN_VEC8
    for (i64 k0 = 0; k0 < n; k0 += 8) {
        double tb[8], zb[8];
        for (int k = 0; k < 8; ++k) {
            tb[k] = k0 + k < n ? t[k0 + k] : 1.0;
            zb[k] = k0 + k < n ? z[k0 + k] : -1.0;
        }
        v8d ex;
        const v8d ps = vpsi(*(const v8d *)tb), em = vexpm1_neg(*(const v8d *)zb, &ex);
        for (int k = 0; k < 8 && k0 + k < n; ++k) {
            psi_out[k0 + k] = ps[k];
            em_out[k0 + k] = em[k];
        }
    }
    return 0;
#else
    (void)t; (void)z; (void)n; (void)psi_out; (void)em_out;
    return 1;
#endif
}

/* The scalar psi (builds without the vector paths, and lanes the 8-lane routine leaves to it), for the same check:
 * psi(t[k]) for k < n. */
void rln_scalar_psi(const double *t, i64 n, double *out) {
    for (i64 k = 0; k < n; ++k) out[k] = psi(t[k]);
}

int rln_abi_version(void) { return 6; }
/* 1 when the 8-lane vector paths are compiled in (AVX-512 builds), 0 when every width takes the flat loops */
int rln_vector_paths(void) { return RLN_VEC8; }
int rln_stats_per_group(void) { return NSTAT; }

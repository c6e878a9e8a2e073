/* Fused CPU kernel of R-LayerNorm / Bayesian R-LayerNorm for float32 planes (proofs/norm.md, N0-N3, N11).
 *
 * A group is a contiguous (P, L) plane of M = P L floats. Every per-group quantity is accumulated in double,
 * so the float32 kernel computes the same formula as the eager path with at least its accuracy (N11).
 * Window sums use reflect padding: 3 along L (and 3 along P when two_d). The fma() calls round once where a
 * product and a sum would round twice. C99 plus pthreads and one GCC/Clang vector extension (v4d); no Python or
 * torch headers, so it compiles in well under a second. Loaded through ctypes by rln_verified/_native.py.
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
    double d = (t / (1.0 + t)) / (1.0 + t);
    return d > 0.25 ? 0.25 : d;
}

/* Saved per group for backward: mean, 1/sigma, r and a = 1/(sigma f); f, u and d log f/dt follow from them
 * without a transcendental function: 1/f = a sigma, 1 - u = 1/f^2. */
enum { NSTAT = 4 };

/* Forward scalars. Bayesian: f = exp(alpha psi(t)), so with em = expm1(-alpha psi(t)), a = (1 + em)/sigma and
 * u = 1 - exp(-2 alpha psi) = -em (2 + em), both free of cancellation. Plain: f = 1 + t, u = 0. */
static void fwd_scalars(double v, double nu, double eps, double lam, double alpha, int bayes, double *isig, double *r,
                        double *a, double *u) {
    const double ve = v + eps, sig = sqrt(ve);
    *isig = 1.0 / sig;
    *r = nu / ve;
    const double t = lam * *r;
    if (bayes) {
        const double em = expm1(-alpha * psi(t));
        *a = (1.0 + em) / sig;
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
    const i64 per = scratch_len + acc_len;
    double *mem = (double *)calloc((size_t)(threads * per + 1), sizeof(double));
    if (!mem) return 2;
    for (int k = 0; k < threads; ++k) {
        jobs[k].fn = fn;
        jobs[k].ctx = ctx;
        jobs[k].g0 = groups * k / threads;
        jobs[k].g1 = groups * (k + 1) / threads;
        jobs[k].scratch = mem + k * per;
        jobs[k].acc = mem + k * per + scratch_len;
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

static void pad5(double *zp, i64 p, i64 l) {
    for (i64 i = 0; i < p; ++i) {
        double *o = zp + i * pad_stride(l) + 4;
        o[-1] = o[0] + 3.0 * o[1];
        o[-2] = -3.0 * o[0] - 5.0 * o[1];
        o[l] = o[l - 1] + 3.0 * o[l - 2];
        o[l + 1] = -3.0 * o[l - 1] - 5.0 * o[l - 2];
    }
}

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
    const float *w, *b;
    double *wf; /* reuse weight of every plane element, wp_i wl_j (N0) */
} Cfg;

static int make_cfg(Cfg *c, i64 p, i64 l, int two_d, int bayes, double eps, double lam, double alpha, int mode,
                    const float *w, const float *b, i64 channels) {
    if (p < 1 || l < 2 || (two_d && p < 2)) return 1;
    c->p = p; c->l = l; c->m = p * l; c->channels = channels > 0 ? channels : 1;
    c->two_d = two_d; c->bayes = bayes; c->mode = mode; c->eps = eps; c->lam = lam; c->alpha = alpha;
    c->w = w; c->b = b;
    double *wp = (double *)malloc(sizeof(double) * (size_t)p), *wl = (double *)malloc(sizeof(double) * (size_t)l);
    c->wf = (double *)malloc(sizeof(double) * (size_t)c->m);
    if (!wp || !wl || !c->wf) { free(wp); free(wl); free(c->wf); return 2; }
    int rc = reuse_weights(l, wl);
    if (rc == 0 && two_d) rc = reuse_weights(p, wp);
    else if (rc == 0) for (i64 i = 0; i < p; ++i) wp[i] = 1.0;
    if (rc) { free(wp); free(wl); free(c->wf); c->wf = NULL; return rc; }
    for (i64 i = 0; i < p; ++i)
        for (i64 j = 0; j < l; ++j) c->wf[i * l + j] = wp[i] * wl[j];
    free(wp);
    free(wl);
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
    for (i64 gb = g0; gb < g1; gb += nb) {
        const i64 ge = gb + nb < g1 ? gb + nb : g1;
        for (i64 g = gb; g < ge; ++g) {
            const float *restrict x = f->x + g * m;
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (i64 j = 0; j < m; ++j) sum += (double)x[j];
            const double mean = sum / (double)m;
            double ss, ssw, sbx = 0.0;
            centre(c, x, mean, h, &ss, &ssw);
            if (c->two_d) {
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
        for (i64 g = gb; g < ge; ++g) {
            double *st = f->stats + NSTAT * g;
            double u;
            fwd_scalars(vb[g - gb], nub[g - gb], c->eps, c->lam, c->alpha, c->bayes, st + 1, st + 2, st + 3, &u);
            f->u_out[g] = (float)u;
        }
        for (i64 g = gb; g < ge; ++g) {
            const double ka = f->stats[NSTAT * g + 3];
            const double mean = f->stats[NSTAT * g];
            const float *restrict x = f->x + g * m;
            float *restrict y = f->y + g * m;
            if (c->mode == 1) {
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

typedef struct {
    Cfg c;
    const float *x, *gy, *gu;
    const double *stats;
    float *gx;
} Bwd;

/* acc layout: [0] dL/dlambda; mode 1: [1, 1+C) dL/dw, [1+C, 1+2C) dL/db; mode 2: [1, 1+m) dL/dw, [1+m, 1+2m) dL/db */
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
    for (i64 g = g0; g < g1; ++g) {
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
                double *restrict aw = acc + 1 + a, *restrict ab = acc + 1 + kw + a;
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
                acc[1 + g % c->channels] += gyxc * ka;
                acc[1 + kw + g % c->channels] += gy_sum;
            }
        }
        const double a_sum = ggxc * isig;
        double g_t = -a_sum * q;
        if (c->bayes && bw->gu) g_t += (double)bw->gu[g] * 2.0 * dlogf * one_m_u;
        const double coef = (g_t * c->lam) * (2.0 / (double)m) * (isig * isig);
        /* gx = gg a + (k_xc + coef (w_j - 1)) x_c - coef/c^2 (B^T B x_c)_j + k_0  (proofs/norm.md, N3) */
        const double k_xc = -(a_sum / (double)m) * ka * isig + coef * (1.0 - r);
        const double k_0 = -(gg_sum / (double)m) * ka;
        const double k_b = -coef / (cw * cw);
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
    const i64 acc_len = 1 + 2 * kw;
    double *acc = (double *)malloc(sizeof(double) * (size_t)acc_len);
    if (!acc) { free_cfg(&bw.c); return 2; }
    const int rc = parallel_groups(bwd_groups, &bw, groups, 3 * stride(p * pad_stride(l)) + SLACK, acc_len, acc, threads,
                                   groups * bw.c.m);
    g_lam[0] = (float)(acc[0] * dlam); /* d lambda / d (its source): 1, or the N8 parameterization's derivative */
    if (g_w) for (i64 q = 0; q < kw; ++q) g_w[q] = (float)acc[1 + q];
    if (g_b) for (i64 q = 0; q < kw; ++q) g_b[q] = (float)acc[1 + kw + q];
    free(acc);
    free_cfg(&bw.c);
    return rc;
}

int rln_abi_version(void) { return 5; }
int rln_stats_per_group(void) { return NSTAT; }

/* Batch-1 sparse GEMV over an input-channel-major weight copy (ActTail / TEAL decode kernel).
 *
 *   y[o] = bias[o] + sum_{j < k} vals[j] * wt[idx[j], o]       wt: [d_in, d_out] row-major (= W^T)
 *
 * Only the k selected rows of W^T are read, each once and contiguously, so the weight traffic
 * is k * d_out elements instead of d_in * d_out: the ideal speed-up of a memory-bound GEMV is
 * d_in / k = 1 / (1 - s).
 *
 * Threads split the *output* range (each thread owns y[o0:o1], so no reduction between threads
 * and no atomics); inside a thread the output is tiled so the accumulator stays in L1 while the
 * selected rows stream from memory, four rows per pass to cut accumulator loads and stores.
 *
 * The *_exact variants accumulate in double: every product of two floats is exact in double and
 * the sum of up to d_in of them carries a relative error near 1e-16, so the one final rounding
 * gives the correctly rounded float result (ties aside) whatever the order of summation. The
 * kernel and a torch fp64 reference then agree bit for bit, which makes greedy decode
 * reproducible across implementations; it costs 1.1-1.5x at 7B shapes, ~2x on cache-resident ones.
 * Compiled at first use by acttail/kernels/cpu.py with -O3 -march=native -fopenmp; the OpenMP
 * runtime is the one torch already loaded (same soname), so torch and this kernel share a pool.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <omp.h>

#define TILE 2048      /* floats of y per tile: 8 KiB, comfortably inside a 32 KiB L1d */
#define ALIGN 16       /* split outputs on 64-byte boundaries */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = ((uint32_t)h) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void range_for_thread(int64_t d_out, int tid, int nt, int64_t *o0, int64_t *o1) {
    int64_t chunk = (d_out + nt - 1) / nt;
    chunk = (chunk + ALIGN - 1) / ALIGN * ALIGN;
    *o0 = (int64_t)tid * chunk;
    *o1 = *o0 + chunk;
    if (*o0 > d_out) *o0 = d_out;
    if (*o1 > d_out) *o1 = d_out;
}

static void rows_f32_range(const float *restrict wt, int64_t d_out, const int64_t *restrict idx,
                           const float *restrict vals, int64_t k, const float *restrict bias,
                           float *restrict y, int64_t o0, int64_t o1) {
    for (int64_t t0 = o0; t0 < o1; t0 += TILE) {
        const int64_t t1 = (t0 + TILE < o1) ? t0 + TILE : o1;
        const int64_t n = t1 - t0;
        float *restrict acc = y + t0;
        if (bias) memcpy(acc, bias + t0, n * sizeof(float));
        else memset(acc, 0, n * sizeof(float));
        int64_t j = 0;
        for (; j + 4 <= k; j += 4) {
            const float v0 = vals[j], v1 = vals[j + 1], v2 = vals[j + 2], v3 = vals[j + 3];
            const float *restrict r0 = wt + idx[j] * d_out + t0;
            const float *restrict r1 = wt + idx[j + 1] * d_out + t0;
            const float *restrict r2 = wt + idx[j + 2] * d_out + t0;
            const float *restrict r3 = wt + idx[j + 3] * d_out + t0;
            for (int64_t o = 0; o < n; ++o) acc[o] += v0 * r0[o] + v1 * r1[o] + v2 * r2[o] + v3 * r3[o];
        }
        for (; j < k; ++j) {
            const float v = vals[j];
            const float *restrict r = wt + idx[j] * d_out + t0;
            for (int64_t o = 0; o < n; ++o) acc[o] += v * r[o];
        }
    }
}

#define DTILE 1024    /* doubles of y per tile in the exact variant: 8 KiB */

static void rows_f32_exact_range(const float *restrict wt, int64_t d_out, const int64_t *restrict idx,
                                 const float *restrict vals, int64_t k, const float *restrict bias,
                                 float *restrict y, int64_t o0, int64_t o1) {
    double acc[DTILE];
    for (int64_t t0 = o0; t0 < o1; t0 += DTILE) {
        const int64_t t1 = (t0 + DTILE < o1) ? t0 + DTILE : o1;
        const int64_t n = t1 - t0;
        for (int64_t o = 0; o < n; ++o) acc[o] = bias ? (double)bias[t0 + o] : 0.0;
        int64_t j = 0;
        for (; j + 4 <= k; j += 4) {
            const double v0 = vals[j], v1 = vals[j + 1], v2 = vals[j + 2], v3 = vals[j + 3];
            const float *restrict r0 = wt + idx[j] * d_out + t0;
            const float *restrict r1 = wt + idx[j + 1] * d_out + t0;
            const float *restrict r2 = wt + idx[j + 2] * d_out + t0;
            const float *restrict r3 = wt + idx[j + 3] * d_out + t0;
            for (int64_t o = 0; o < n; ++o)
                acc[o] += v0 * (double)r0[o] + v1 * (double)r1[o] + v2 * (double)r2[o] + v3 * (double)r3[o];
        }
        for (; j < k; ++j) {
            const double v = vals[j];
            const float *restrict r = wt + idx[j] * d_out + t0;
            for (int64_t o = 0; o < n; ++o) acc[o] += v * (double)r[o];
        }
        for (int64_t o = 0; o < n; ++o) y[t0 + o] = (float)acc[o];
    }
}

static void rows_bf16_range(const uint16_t *restrict wt, int64_t d_out, const int64_t *restrict idx,
                            const float *restrict vals, int64_t k, const float *restrict bias,
                            float *restrict y, int64_t o0, int64_t o1) {
    for (int64_t t0 = o0; t0 < o1; t0 += TILE) {
        const int64_t t1 = (t0 + TILE < o1) ? t0 + TILE : o1;
        const int64_t n = t1 - t0;
        float *restrict acc = y + t0;
        if (bias) memcpy(acc, bias + t0, n * sizeof(float));
        else memset(acc, 0, n * sizeof(float));
        int64_t j = 0;
        for (; j + 2 <= k; j += 2) {
            const float v0 = vals[j], v1 = vals[j + 1];
            const uint16_t *restrict r0 = wt + idx[j] * d_out + t0;
            const uint16_t *restrict r1 = wt + idx[j + 1] * d_out + t0;
            for (int64_t o = 0; o < n; ++o) acc[o] += v0 * bf16_to_f32(r0[o]) + v1 * bf16_to_f32(r1[o]);
        }
        for (; j < k; ++j) {
            const float v = vals[j];
            const uint16_t *restrict r = wt + idx[j] * d_out + t0;
            for (int64_t o = 0; o < n; ++o) acc[o] += v * bf16_to_f32(r[o]);
        }
    }
}

typedef void (*rows_f32_range_fn)(const float *, int64_t, const int64_t *, const float *, int64_t,
                                  const float *, float *, int64_t, int64_t);

/* Run one fp32 range kernel over all outputs, split across nthreads OpenMP threads. */
static void rows_f32_split(rows_f32_range_fn range, const float *wt, int64_t d_out, const int64_t *idx,
                           const float *vals, int64_t k, const float *bias, float *y, int nthreads) {
    int nt = nthreads > 1 ? nthreads : 1;
    if (nt == 1) { range(wt, d_out, idx, vals, k, bias, y, 0, d_out); return; }
#pragma omp parallel num_threads(nt)
    {
        int64_t o0, o1;
        range_for_thread(d_out, omp_get_thread_num(), omp_get_num_threads(), &o0, &o1);
        if (o0 < o1) range(wt, d_out, idx, vals, k, bias, y, o0, o1);
    }
}

/* y = bias + sum_j vals[j] * wt[idx[j], :]  (fp32 weights). */
void acttail_rows_f32(const float *wt, int64_t d_out, const int64_t *idx, const float *vals, int64_t k,
                      const float *bias, float *y, int nthreads) {
    rows_f32_split(rows_f32_range, wt, d_out, idx, vals, k, bias, y, nthreads);
}

/* y = bias + sum_j vals[j] * wt[idx[j], :], accumulated in double and rounded once (see top). */
void acttail_rows_f32_exact(const float *wt, int64_t d_out, const int64_t *idx, const float *vals, int64_t k,
                            const float *bias, float *y, int nthreads) {
    rows_f32_split(rows_f32_exact_range, wt, d_out, idx, vals, k, bias, y, nthreads);
}

/* Same with bf16 weights (raw uint16 bits), fp32 accumulation and output. */
void acttail_rows_bf16(const uint16_t *wt, int64_t d_out, const int64_t *idx, const float *vals, int64_t k,
                       const float *bias, float *y, int nthreads) {
    int nt = nthreads > 1 ? nthreads : 1;
    if (nt == 1) { rows_bf16_range(wt, d_out, idx, vals, k, bias, y, 0, d_out); return; }
#pragma omp parallel num_threads(nt)
    {
        int64_t o0, o1;
        range_for_thread(d_out, omp_get_thread_num(), omp_get_num_threads(), &o0, &o1);
        if (o0 < o1) rows_bf16_range(wt, d_out, idx, vals, k, bias, y, o0, o1);
    }
}

/* Threshold selection: idx/vals <- the entries with |x| > t, in index order; returns their count. */
int64_t acttail_select_threshold(const float *x, int64_t d_in, float t, int64_t *idx, float *vals) {
    int64_t k = 0;
    for (int64_t j = 0; j < d_in; ++j) {
        const float v = x[j];
        if (fabsf(v) > t) { idx[k] = j; vals[k] = v; ++k; }
    }
    return k;
}

/* k-th largest of a[0:n] (0-based rank r = k - 1 from the top), quickselect in place. */
static float kth_largest(float *a, int64_t n, int64_t r) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        float p = a[mid];
        /* median of three as the pivot, against sorted-input worst cases */
        float x0 = a[lo], x2 = a[hi];
        if ((x0 >= p) != (x0 >= x2)) p = x0;
        else if ((x2 >= p) != (x2 >= x0)) p = x2;
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > p) ++i;
            while (a[j] < p) --j;
            if (i <= j) { float tmp = a[i]; a[i] = a[j]; a[j] = tmp; ++i; --j; }
        }
        if (r <= j) hi = j;
        else if (r >= i) lo = i;
        else return a[r];
    }
    return a[lo];
}

/* TopK selection by magnitude: the k entries of largest |x| (ties at the boundary: lowest index
 * first), written in index order; scratch holds d_in floats. Returns k. */
int64_t acttail_select_topk(const float *x, int64_t d_in, int64_t k, int64_t *idx, float *vals, float *scratch) {
    if (k <= 0) return 0;
    if (k >= d_in) {
        for (int64_t j = 0; j < d_in; ++j) { idx[j] = j; vals[j] = x[j]; }
        return d_in;
    }
    for (int64_t j = 0; j < d_in; ++j) scratch[j] = fabsf(x[j]);
    const float thr = kth_largest(scratch, d_in, k - 1);
    int64_t above = 0;
    for (int64_t j = 0; j < d_in; ++j) above += fabsf(x[j]) > thr;
    int64_t ties = k - above, n = 0;
    for (int64_t j = 0; j < d_in; ++j) {
        const float a = fabsf(x[j]);
        if (a > thr || (a == thr && ties-- > 0)) { idx[n] = j; vals[n] = x[j]; ++n; }
    }
    return n;
}

/* Fused TopK selection + GEMV for one fp32 token (workspace: idx, vals, scratch of d_in each). */
void acttail_topk_rows_f32(const float *wt, int64_t d_in, int64_t d_out, const float *x, int64_t k,
                           const float *bias, float *y, int nthreads, int64_t *idx, float *vals, float *scratch) {
    const int64_t n = acttail_select_topk(x, d_in, k, idx, vals, scratch);
    acttail_rows_f32(wt, d_out, idx, vals, n, bias, y, nthreads);
}

/* The fused TopK + GEMV with the exact (double-accumulating) product. */
void acttail_topk_rows_f32_exact(const float *wt, int64_t d_in, int64_t d_out, const float *x, int64_t k,
                                 const float *bias, float *y, int nthreads, int64_t *idx, float *vals,
                                 float *scratch) {
    const int64_t n = acttail_select_topk(x, d_in, k, idx, vals, scratch);
    acttail_rows_f32_exact(wt, d_out, idx, vals, n, bias, y, nthreads);
}

/* Fused threshold selection (|x| > t) + GEMV for one fp32 token; returns the kept count. */
int64_t acttail_threshold_rows_f32(const float *wt, int64_t d_in, int64_t d_out, const float *x, float t,
                                   const float *bias, float *y, int nthreads, int64_t *idx, float *vals) {
    const int64_t n = acttail_select_threshold(x, d_in, t, idx, vals);
    acttail_rows_f32(wt, d_out, idx, vals, n, bias, y, nthreads);
    return n;
}

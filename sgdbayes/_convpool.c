/*
 * A first convolution fused with the 2x2 max-pool after it, for k models side by side
 * (sgdbayes.models.convpool documents the contract; the lowered CNN path calls these
 * through ctypes, which releases the GIL during the call).
 *
 *   z[b, c, y, x]   = sum_{i, ty, tx} w[c, i, ty, tx] * x[b, i, y + ty - 1, x + tx - 1]
 *                     + bias[c]   (3x3 kernel, stride 1, zero padding 1; bias optional)
 *   out[b, c, p, q] = max over the window (2p + u, 2q + v), u, v in {0, 1}, scanned
 *                     (0,0) (0,1) (1,0) (1,1); a later entry replaces the running maximum
 *                     when it is greater or NaN (torch's max_pool2d rule), and idx keeps
 *                     u * 2 + v of the entry kept
 *   relu: out = max(out, 0) after the pool (NaN stays NaN, as torch.relu)
 *
 * The convolution's input is data (no gradient to it); the backward gives the weight
 * gradient only:  gw[c, i, ty, tx] = sum_{b, p, q} g[b, c, p, q] * x[b, i, y* + ty - 1,
 * x* + tx - 1] at the kept entry (y*, x*), over the outputs that pass the ReLU (all but
 * out <= 0, as torch's threshold_backward); gb[c] = sum of those g (when a bias is given).
 *
 * Layout (the lowered image layout): x [B, k*Cin, H, W], out / idx / g [B, k*Cout, H/2, W/2],
 * weights [k*Cout, Cin, 3, 3]; wt is the forward's copy [k, Cin*9, Cout]. Every model is
 * computed on its own, in the same order whatever k is, so model j's numbers do not depend
 * on the models beside it. The 8-wide loops are compiled for AVX2 + FMA as well as the
 * baseline where GCC's function multi-versioning exists (picked at load by the CPU's features).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CP_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CP_CLONES
#endif

/* an unaligned vector load */
#define CP_LOAD(V, P) memcpy(&(V), (P), sizeof(V))

#define DEFINE_CONVPOOL(T, IT, SUF)                                                                     \
/* x[i] of one model and example, zero-padded to [Cin, H+2, W+2] */                                     \
static void pad_##SUF(const T *x, ptrdiff_t ch_stride, int Cin, int H, int W, T *xp) {                  \
    const int Hp = H + 2, Wp = W + 2;                                                                   \
    memset(xp, 0, sizeof(T) * (size_t)Cin * Hp * Wp);                                                   \
    for (int i = 0; i < Cin; i++)                                                                       \
        for (int y = 0; y < H; y++)                                                                     \
            memcpy(xp + ((size_t)i * Hp + y + 1) * Wp + 1, x + i * ch_stride + (size_t)y * W,           \
                   sizeof(T) * W);                                                                      \
}                                                                                                       \
                                                                                                        \
typedef T vec_##SUF __attribute__((vector_size(8 * sizeof(T))));                                        \
typedef IT ivec_##SUF __attribute__((vector_size(8 * sizeof(T))));                                      \
                                                                                                        \
                                                                                                        \
CP_CLONES                                                                                               \
int convpool3_fwd_##SUF(int B, int k, int Cin, int Cout, int H, int W, int relu, const T *x,            \
                        const T *wt, const T *bias, T *out, uint8_t *idx) {                             \
    if (B < 0 || k < 0 || Cin <= 0 || Cout <= 0 || H < 2 || W < 2) return -2;                           \
    const int Hp = H + 2, Wp = W + 2, PH = H / 2, PW = W / 2, R = Cin * 9, C8 = (Cout + 7) / 8 * 8;     \
    T *xp = (T *)malloc(sizeof(T) * (size_t)Cin * Hp * Wp);                                             \
    if (xp == NULL) return -1;                                                                          \
    const ptrdiff_t plane = (ptrdiff_t)H * W, oplane = (ptrdiff_t)PH * PW;                              \
    const vec_##SUF zero = {0};                                                                         \
    for (int b = 0; b < B; b++) {                                                                       \
        for (int j = 0; j < k; j++) {                                                                   \
            pad_##SUF(x + ((ptrdiff_t)b * k * Cin + (ptrdiff_t)j * Cin) * plane, plane, Cin, H, W, xp); \
            const T *wj = wt + (size_t)j * R * C8, *bj = bias == NULL ? NULL : bias + (size_t)j * C8;   \
            T *oj = out + ((ptrdiff_t)b * k * Cout + (ptrdiff_t)j * Cout) * oplane;                     \
            uint8_t *ij = idx + ((ptrdiff_t)b * k * Cout + (ptrdiff_t)j * Cout) * oplane;               \
            for (int c0 = 0; c0 < Cout; c0 += 8) {                                                      \
                vec_##SUF init = zero;                                                                  \
                if (bj != NULL) CP_LOAD(init, bj + c0);                                                 \
                const int nc = Cout - c0 < 8 ? Cout - c0 : 8;                                           \
                for (int p = 0; p < PH; p++)                                                            \
                    for (int q = 0; q < PW; q++) {                                                      \
                        /* the window's four entries, 8 channels each, in registers */                  \
                        vec_##SUF a0 = init, a1 = init, a2 = init, a3 = init;                           \
                        for (int i = 0; i < Cin; i++)                                                   \
                            for (int ty = 0; ty < 3; ty++) {                                            \
                                const T *xr = xp + ((size_t)i * Hp + 2 * p + ty) * Wp + 2 * q;          \
                                const T *wr = wj + (size_t)((i * 3 + ty) * 3) * C8 + c0;                \
                                for (int tx = 0; tx < 3; tx++) {                                        \
                                    vec_##SUF w;                                                        \
                                    CP_LOAD(w, wr + (size_t)tx * C8);                                   \
                                    a0 += w * xr[tx];                                                   \
                                    a1 += w * xr[tx + 1];                                               \
                                    a2 += w * xr[Wp + tx];                                              \
                                    a3 += w * xr[Wp + tx + 1];                                          \
                                }                                                                       \
                            }                                                                           \
                        /* max_pool2d's rule: a later entry is kept when greater or NaN */              \
                        vec_##SUF best = a0;                                                            \
                        ivec_##SUF arg = {0}, m;                                                        \
                        m = (a1 > best) | (a1 != a1);                                                   \
                        best = (vec_##SUF)(((ivec_##SUF)a1 & m) | ((ivec_##SUF)best & ~m));             \
                        arg = (arg & ~m) | (m & 1);                                                     \
                        m = (a2 > best) | (a2 != a2);                                                   \
                        best = (vec_##SUF)(((ivec_##SUF)a2 & m) | ((ivec_##SUF)best & ~m));             \
                        arg = (arg & ~m) | (m & 2);                                                     \
                        m = (a3 > best) | (a3 != a3);                                                   \
                        best = (vec_##SUF)(((ivec_##SUF)a3 & m) | ((ivec_##SUF)best & ~m));             \
                        arg = (arg & ~m) | (m & 3);                                                     \
                        const ptrdiff_t o = (ptrdiff_t)c0 * oplane + (ptrdiff_t)p * PW + q;             \
                        for (int cc = 0; cc < nc; cc++) {                                               \
                            const T v = best[cc];                                                       \
                            oj[o + cc * oplane] = (relu && v < (T)0) ? (T)0 : v;                        \
                            ij[o + cc * oplane] = (uint8_t)arg[cc];                                     \
                        }                                                                               \
                    }                                                                                   \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    free(xp);                                                                                           \
    return 0;                                                                                           \
}                                                                                                       \
                                                                                                        \
CP_CLONES                                                                                               \
int convpool3_bwd_##SUF(int B, int k, int Cin, int Cout, int H, int W, int relu, const T *x,            \
                        const T *out, const uint8_t *idx, const T *g, T *gw, T *gb) {                   \
    if (B < 0 || k < 0 || Cin <= 0 || Cout <= 0 || H < 2 || W < 2) return -2;                           \
    const int Hp = H + 2, Wp = W + 2, PW = W / 2, R = Cin * 9, C8 = (Cout + 7) / 8 * 8;                 \
    const ptrdiff_t plane = (ptrdiff_t)H * W, oplane = plane / 4;                                       \
    /* padded input, and the gradient at the convolution's output [H*W, C8]: g at the kept              \
       entry of each window (0 where the ReLU blocks it), 0 at the other three */                       \
    T *xp = (T *)malloc(sizeof(T) * ((size_t)Cin * Hp * Wp + (size_t)plane * C8));                      \
    if (xp == NULL) return -1;                                                                          \
    T *dz = xp + (size_t)Cin * Hp * Wp;                                                                 \
    memset(gw, 0, sizeof(T) * (size_t)k * Cout * R);                                                    \
    if (gb != NULL) memset(gb, 0, sizeof(T) * (size_t)k * Cout);                                        \
    for (int b = 0; b < B; b++) {                                                                       \
        for (int j = 0; j < k; j++) {                                                                   \
            pad_##SUF(x + ((ptrdiff_t)b * k * Cin + (ptrdiff_t)j * Cin) * plane, plane, Cin, H, W, xp); \
            const ptrdiff_t base = ((ptrdiff_t)b * k * Cout + (ptrdiff_t)j * Cout) * oplane;            \
            memset(dz, 0, sizeof(T) * (size_t)plane * C8);                                              \
            const ptrdiff_t off[4] = {0, C8, (ptrdiff_t)W * C8, (ptrdiff_t)(W + 1) * C8};               \
            for (int c = 0; c < Cout; c++) {                                                            \
                const ptrdiff_t oc0 = base + (ptrdiff_t)c * oplane;                                     \
                const T *gc = g + oc0, *oc = out + oc0;                                                 \
                const uint8_t *ic = idx + oc0;                                                          \
                for (int p = 0; p < H / 2; p++) {                                                       \
                    T *row = dz + (ptrdiff_t)2 * p * W * C8 + c;                                        \
                    for (int q = 0; q < PW; q++) {                                                      \
                        const int pq = p * PW + q;                                                      \
                        /* relu's backward passes nothing where its output is <= 0 */                   \
                        row[(ptrdiff_t)2 * q * C8 + off[ic[pq]]] =                                      \
                            (relu && oc[pq] <= (T)0) ? (T)0 : gc[pq];                                   \
                    }                                                                                   \
                }                                                                                       \
                if (gb != NULL) {                                                                       \
                    T s = 0;                                                                            \
                    for (ptrdiff_t pq = 0; pq < oplane; pq++)                                           \
                        s += (relu && oc[pq] <= (T)0) ? (T)0 : gc[pq];                                  \
                    gb[(size_t)j * Cout + c] += s;                                                      \
                }                                                                                       \
            }                                                                                           \
            /* gw[c, i, ty, tx] += sum over positions of dz[pos, c] * xpad[i, pos + (ty, tx)]:          \
               8 channels x the 9 taps of one input channel in registers */                             \
            for (int c0 = 0; c0 < Cout; c0 += 8) {                                                      \
                const int nc = Cout - c0 < 8 ? Cout - c0 : 8;                                           \
                for (int i = 0; i < Cin; i++) {                                                         \
                    vec_##SUF a[9];                                                                     \
                    for (int t = 0; t < 9; t++) a[t] = (vec_##SUF){0};                                  \
                    for (int y = 0; y < H; y++)                                                         \
                        for (int xx = 0; xx < W; xx++) {                                                \
                            vec_##SUF d;                                                                \
                            CP_LOAD(d, dz + ((ptrdiff_t)y * W + xx) * C8 + c0);                         \
                            const T *xr = xp + ((size_t)i * Hp + y) * Wp + xx;                          \
                            a[0] += d * xr[0];                                                          \
                            a[1] += d * xr[1];                                                          \
                            a[2] += d * xr[2];                                                          \
                            a[3] += d * xr[Wp];                                                         \
                            a[4] += d * xr[Wp + 1];                                                     \
                            a[5] += d * xr[Wp + 2];                                                     \
                            a[6] += d * xr[2 * Wp];                                                     \
                            a[7] += d * xr[2 * Wp + 1];                                                 \
                            a[8] += d * xr[2 * Wp + 2];                                                 \
                        }                                                                               \
                    for (int t = 0; t < 9; t++)                                                         \
                        for (int cc = 0; cc < nc; cc++)                                                 \
                            gw[((size_t)j * Cout + c0 + cc) * R + i * 9 + t] += a[t][cc];               \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    free(xp);                                                                                           \
    return 0;                                                                                           \
}                                                                                                       \

/* The ReLU + global average pool at the end of a CNN: rows of L = H*W values (one channel of
   one example), out[r] = sum_l relu(h[r, l]) / L (relu keeps NaN, as torch.relu), and the
   backward dh[r, l] = g[r] / L where h[r, l] passes the ReLU (all but h <= 0, as torch's
   threshold_backward), else 0. One pass each instead of relu, mean and their two backwards. */
#define DEFINE_RELU_MEAN(T, SUF)                                                                        \
CP_CLONES                                                                                               \
int relu_mean_fwd_##SUF(ptrdiff_t N, int L, const T *h, T *out) {                                       \
    for (ptrdiff_t r = 0; r < N; r++) {                                                                 \
        const T *hr = h + r * L;                                                                        \
        T s = 0;                                                                                        \
        for (int l = 0; l < L; l++) s += hr[l] < (T)0 ? (T)0 : hr[l];                                   \
        out[r] = s / (T)L;                                                                              \
    }                                                                                                   \
    return 0;                                                                                           \
}                                                                                                       \
                                                                                                        \
CP_CLONES                                                                                               \
int relu_mean_bwd_##SUF(ptrdiff_t N, int L, const T *h, const T *g, T *dh) {                            \
    for (ptrdiff_t r = 0; r < N; r++) {                                                                 \
        const T *hr = h + r * L;                                                                        \
        T *dr = dh + r * L;                                                                             \
        const T v = g[r] / (T)L;                                                                        \
        for (int l = 0; l < L; l++) dr[l] = hr[l] <= (T)0 ? (T)0 : v;                                   \
    }                                                                                                   \
    return 0;                                                                                           \
}

DEFINE_RELU_MEAN(float, f32)
DEFINE_RELU_MEAN(double, f64)

#if defined(__GNUC__)  /* GCC / Clang vector extensions */
DEFINE_CONVPOOL(float, int32_t, f32)
DEFINE_CONVPOOL(double, int64_t, f64)
#endif

/*
 * Stacked ReLU-MLP forward/backward in C (mean cross-entropy), one model at a time,
 * with the matrix products done by the BLAS gemm that scipy exports
 * (scipy.linalg.cython_blas; its address is passed in by sgdbayes._fused_mlp).
 *
 * The same computation as the numpy/torch path of sgdbayes._fused_mlp.FusedMLP
 * (which documents the math and the [W | b] block layout), fused per model so that
 * every intermediate stays in cache and one call covers a whole chunk of models
 * without the Python interpreter (ctypes releases the GIL during the call):
 *
 *   h_l = [a_{l-1}, 1] [W_l | b_l]^T,  a_l = relu(h_l),  z = h_L
 *   dz = (softmax(z) - onehot(y)) / B
 *   [dW_l | db_l] = dh_l^T [a_{l-1}, 1],  dh_{l-1} = (dh_l W_l) * 1[h_{l-1} > 0]
 *
 * NaN/inf propagate as in torch (relu keeps NaN; a non-finite logit gives a NaN loss).
 * Built as an optional extension module; without it the numpy/torch path is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define DEFINE_KERNEL(T, NAME, EXP, LOG)                                                        \
typedef void (*NAME##_gemm_t)(const char *, const char *, const int *, const int *, const int *, \
                              const T *, const T *, const int *, const T *, const int *,         \
                              const T *, T *, const int *);                                      \
                                                                                                 \
/* row-major C[M,N] = op(A)[M,K] op(B)[K,N]; lda, ldb, ldc: row strides as stored */             \
static void NAME##_rm_gemm(NAME##_gemm_t gemm, int ta, int tb, int M, int N, int K, const T *A,  \
                           int lda, const T *Bm, int ldb, T *C, int ldc) {                       \
    const T one = 1, zero = 0;                                                                   \
    const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';                                       \
    /* column-major view: C^T[N,M] = op(B)^T op(A)^T */                                          \
    gemm(&ctb, &cta, &N, &M, &K, &one, Bm, &ldb, A, &lda, &zero, C, &ldc);                       \
}                                                                                                \
                                                                                                 \
size_t NAME##_work_size(int B, int L, const int *widths) {                                       \
    int maxw = 0;                                                                                \
    for (int l = 0; l <= L; l++) if (widths[l] > maxw) maxw = widths[l];                         \
    size_t W1 = (size_t)maxw + 1;                                                                \
    return (size_t)(L > 1 ? L - 1 : 1) * B * W1 + 2 * (size_t)B * W1 + W1 * W1                  \
           + (size_t)widths[L] * B;                                                              \
}                                                                                                \
                                                                                                 \
/* one model: loss (pre-update), correct count, and [dW_l | db_l] into Gk[l] */            \
static void NAME##_model(NAME##_gemm_t gemm, int B, int L, const int *widths, T *const *Pk,       \
                         T *const *Gk, const T *x, const int64_t *yk, double *loss_out,           \
                         int64_t *corr_out, T *work) {                                            \
    int maxw = 0;                                                                                \
    for (int l = 0; l <= L; l++) if (widths[l] > maxw) maxw = widths[l];                         \
    const size_t W1 = (size_t)maxw + 1;                                                          \
    T *A = work;                                      /* (L-1) activations [B, w+1] */           \
    T *ga = A + (size_t)(L > 1 ? L - 1 : 1) * B * W1; /* two gradient buffers [B, w] */          \
    T *gb = ga + (size_t)B * W1;                                                                 \
    T *WT = gb + (size_t)B * W1;                      /* [in+1, out+1] */                        \
    T *Z = WT + W1 * W1;                              /* logits, then dz, transposed [C, B] */   \
    const int C = widths[L], din = widths[0] + 1;                                                \
    const T invB = (T)1 / (T)B;                                                                  \
    const T *a = x;                                                                              \
    int lda = din;                                                                               \
    for (int l = 0; l < L - 1; l++) { /* forward through the hidden layers */                    \
        const int in1 = widths[l] + 1, out = widths[l + 1];                                      \
        const T *W = Pk[l];                                                                      \
        for (int i = 0; i < in1; i++) { /* WT = [W | b]^T plus the column e_{in+1} */            \
            T *row = WT + (size_t)i * (out + 1);                                                 \
            for (int j = 0; j < out; j++) row[j] = W[(size_t)j * in1 + i];                       \
            row[out] = (i == in1 - 1) ? (T)1 : (T)0;                                             \
        }                                                                                        \
        T *Al = A + (size_t)l * B * W1;                                                          \
        NAME##_rm_gemm(gemm, 0, 0, B, out + 1, in1, a, lda, WT, out + 1, Al, out + 1);           \
        const size_t n = (size_t)B * (out + 1);                                                  \
        for (size_t t = 0; t < n; t++) Al[t] = (Al[t] < (T)0) ? (T)0 : Al[t];                    \
        a = Al;                                                                                  \
        lda = out + 1;                                                                           \
    }                                                                                            \
    const int inL1 = widths[L - 1] + 1;                                                          \
    const T *WL = Pk[L - 1];                                                                     \
    NAME##_rm_gemm(gemm, 0, 1, C, B, inL1, WL, inL1, a, lda, Z, B);  /* z^T [C, B] */            \
    double s = 0.0;                                                                              \
    int64_t corr = 0;                                                                            \
    for (int b = 0; b < B; b++) {                                                                \
        T mx = Z[b];                                                                             \
        int am = 0;                                                                              \
        for (int c = 1; c < C; c++)                                                              \
            if (Z[(size_t)c * B + b] > mx) { mx = Z[(size_t)c * B + b]; am = c; }                \
        T se = 0;                                                                                \
        for (int c = 0; c < C; c++) se += EXP(Z[(size_t)c * B + b] - mx);                        \
        const T lse = mx + LOG(se);                                                              \
        const int yb = (int)yk[b];                                                               \
        s += (double)(lse - Z[(size_t)yb * B + b]);                                              \
        corr += (am == yb);                                                                      \
        for (int c = 0; c < C; c++) Z[(size_t)c * B + b] = EXP(Z[(size_t)c * B + b] - lse) * invB; \
        Z[(size_t)yb * B + b] -= invB;                                                           \
    }                                                                                            \
    *loss_out = s / B;                                                                           \
    *corr_out = corr;                                                                            \
    NAME##_rm_gemm(gemm, 0, 0, C, inL1, B, Z, B, a, lda, Gk[L - 1], inL1);                       \
    if (L == 1) return;                                                                          \
    T *g = ga, *gn = gb;                                                                         \
    NAME##_rm_gemm(gemm, 1, 0, B, inL1 - 1, C, Z, B, WL, inL1, g, inL1 - 1); /* dz W_L */        \
    for (int l = L - 2; l >= 0; l--) {                                                           \
        const int out = widths[l + 1], in1 = widths[l] + 1;                                      \
        const T *Al = A + (size_t)l * B * W1;                                                    \
        for (int b = 0; b < B; b++) { /* relu'(h) = 1[a > 0] */                                  \
            T *gr = g + (size_t)b * out;                                                         \
            const T *ar = Al + (size_t)b * (out + 1);                                            \
            for (int j = 0; j < out; j++) gr[j] = (ar[j] > (T)0) ? gr[j] : (T)0;                 \
        }                                                                                        \
        const T *ain = (l == 0) ? x : A + (size_t)(l - 1) * B * W1;                              \
        NAME##_rm_gemm(gemm, 1, 0, out, in1, B, g, out, ain, in1, Gk[l], in1);                   \
        if (l > 0) {                                                                             \
            NAME##_rm_gemm(gemm, 0, 0, B, in1 - 1, out, g, out, Pk[l], in1, gn, in1 - 1);        \
            T *t = g; g = gn; gn = t;                                                            \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* loss and gradient of m models; blocks P[l], G[l] are [m, out, in+1] */                        \
int NAME(void *gemm_ptr, int m, int B, int L, const int *widths, T **P, T **G, const T *xa,      \
         ptrdiff_t x_stride, const int64_t *y, ptrdiff_t y_stride, T *loss, int64_t *correct,    \
         T *work) {                                                                              \
    T *Pk[64], *Gk[64];                                                                          \
    if (L > 64) return -1;                                                                       \
    for (int k = 0; k < m; k++) {                                                                \
        for (int l = 0; l < L; l++) {                                                            \
            const size_t n = (size_t)widths[l + 1] * (widths[l] + 1);                            \
            Pk[l] = P[l] + (size_t)k * n;                                                        \
            Gk[l] = G[l] + (size_t)k * n;                                                        \
        }                                                                                        \
        double lo; int64_t co;                                                                   \
        NAME##_model((NAME##_gemm_t)gemm_ptr, B, L, widths, Pk, Gk, xa + (ptrdiff_t)k * x_stride,\
                     y + (ptrdiff_t)k * y_stride, &lo, &co, work);                               \
        loss[k] = (T)lo;                                                                         \
        if (correct) correct[k] = co;                                                            \
    }                                                                                            \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* one SGLD step of m chains, in place, model by model (sgdbayes.sampling.sgld.build):          \
   w <- w + a_grad g [+ a_wd w] [+ a_loc (w - w*)] + noise_scale xi, g the minibatch gradient,  \
   terms added in this order. noise: row layout (nn.Linear order: W_l row-major, then b_l),     \
   rows noise_stride apart; centers in the blocked layout of P. loss: the pre-update loss.  */  \
int NAME##_sgld(void *gemm_ptr, int m, int B, int L, const int *widths, T **P, T **Cn,           \
                const T *xa, ptrdiff_t x_stride, const int64_t *y, ptrdiff_t y_stride, T *loss,   \
                const T *noise, ptrdiff_t noise_stride, double a_grad, double a_wd, double a_loc, \
                double noise_scale, T *work, T *gwork) {                                         \
    T *Pk[64], *Gk[64];                                                                          \
    if (L > 64) return -1;                                                                       \
    const T ag = (T)a_grad, aw = (T)a_wd, al = (T)a_loc, an = (T)noise_scale;                    \
    for (int k = 0; k < m; k++) {                                                                \
        size_t goff = 0;                                                                         \
        for (int l = 0; l < L; l++) {                                                            \
            const size_t n = (size_t)widths[l + 1] * (widths[l] + 1);                            \
            Pk[l] = P[l] + (size_t)k * n;                                                        \
            Gk[l] = gwork + goff;                                                                \
            goff += n;                                                                           \
        }                                                                                        \
        double lo; int64_t co;                                                                   \
        NAME##_model((NAME##_gemm_t)gemm_ptr, B, L, widths, Pk, Gk, xa + (ptrdiff_t)k * x_stride,\
                     y + (ptrdiff_t)k * y_stride, &lo, &co, work);                               \
        loss[k] = (T)lo;                                                                         \
        const T *xi = noise + (ptrdiff_t)k * noise_stride;                                       \
        size_t off = 0;                                                                          \
        for (int l = 0; l < L; l++) {                                                            \
            const int out = widths[l + 1], in1 = widths[l] + 1;                                  \
            T *w = Pk[l];                                                                        \
            const T *g = Gk[l];                                                                  \
            const T *c = Cn[l] + (size_t)k * out * in1;                                          \
            const T *xw = xi + off, *xb = xi + off + (size_t)out * (in1 - 1);                    \
            for (int o = 0; o < out; o++) {                                                      \
                for (int i = 0; i < in1; i++) {                                                  \
                    const size_t t = (size_t)o * in1 + i;                                        \
                    const T w0 = w[t];                                                           \
                    T v = w0 + ag * g[t];                                                        \
                    if (aw != (T)0) v += aw * w0;                                                \
                    if (al != (T)0) v += al * (w0 - c[t]);                                       \
                    v += an * ((i < in1 - 1) ? xw[(size_t)o * (in1 - 1) + i] : xb[o]);           \
                    w[t] = v;                                                                    \
                }                                                                                \
            }                                                                                    \
            off += (size_t)out * in1;                                                            \
        }                                                                                        \
    }                                                                                            \
    return 0;                                                                                    \
}

DEFINE_KERNEL(float, mlp_loss_grad_f32, expf, logf)
DEFINE_KERNEL(double, mlp_loss_grad_f64, exp, log)

/* an importable module, so that setuptools builds and installs this file; the kernels
   are called through ctypes on the module's shared object */
static struct PyModuleDef ckernels_module = {PyModuleDef_HEAD_INIT, "_ckernels",
                                             "C kernels of sgdbayes (see _fused_mlp)", -1, NULL};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&ckernels_module); }

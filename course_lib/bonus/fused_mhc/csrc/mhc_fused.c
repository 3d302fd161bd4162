/* mHC, fused: the per-token work of a manifold-constrained hyper-connection in a few loops over the tokens.
 *
 * Why C: written with PyTorch operations, one mHC connection is about 150 small operations (most of them the
 * 2 x 20 Sinkhorn normalisations of an n x n matrix per token) and as many again for the backward; at the toy's
 * sizes each costs a few microseconds of dispatch and almost no arithmetic. Here one call does all of it, as fused
 * kernels do at scale (the mHC paper, arXiv 2512.24880, reports about 6.7% extra training time with them).
 * course_lib/bonus/fused_mhc/__init__.py compiles this file with the system's C compiler and calls it through ctypes;
 * tests/bonus/test_fused_mhc.py checks it against the PyTorch version in course_lib/mhc.py.
 *
 * Layouts (row-major, contiguous): X (N, n, d) streams; W (m, n d) the projection, m = 2n + n*n rows [pre (n) |
 * post (n) | res (n*n): row j*n + i holds B~_ij, transformers' "comb" layout]; base (m); scale (3) = (alpha_pre,
 * alpha_post, alpha_res). fused_mhc/__init__.py compiles the file twice: with -DSINGLE (float, exp_f32 below, sqrtf) and
 * without (double, libm's exp and sqrt). Needs GCC's or clang's vector extension (see v8 below).
 *
 * Speed: the work on the small per-token quantities (the 2n sigmoids, the softmax, the 40 Sinkhorn steps, their
 * gradients) runs on CHUNK tokens at once with the token index innermost, so each step is a loop over 64
 * independent tokens that the compiler turns into SIMD instructions. Sinkhorn rescales a vector per step instead of
 * rewriting the matrix (see sinkhorn below: the same numbers up to rounding). Loops in that layout always run over
 * the whole CHUNK (the tail of the last chunk holds zeros, whose results are never read): a trip count known at
 * compile time needs no remainder loop. `restrict` promises the compiler that the arrays do not overlap, so it needs
 * no run-time overlap checks either. The work on the d-long vectors (the norm, the read-out, the write-back, the
 * projection) runs token by token, vectorised along d or along the projection's m outputs.
 */
#include <math.h>
#include <string.h>

#ifdef SINGLE
typedef float real;
#define EXP exp_f32
#define SQRT sqrtf
#else
typedef double real;
#define EXP exp
#define SQRT sqrt
#endif

#define MAXN 8          /* at most 8 streams (V4 uses 4) */
#if defined(__GNUC__)   /* gcc and clang: always inline, so that each copy sees its n as a constant (see WITH_N) */
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif
#define CHUNK 64        /* tokens per batch of the per-token work (32 and 128 were slower) */

/* Per-chunk arrays keep the token index innermost: v[e * CHUNK + t] is entry e (e.g. e = i*n + j) of token t. */
#define AT(v, e, t) (v)[(e) * CHUNK + (t)]

#ifdef SINGLE
/* exp in float32 that the compiler can vectorise (libm's expf is one function call per number: a quarter of the
 * pre step's time when it ran token by token). Cody & Waite's range reduction: x = k ln2 + r with k = round(x / ln2)
 * and |r| <= ln2 / 2, so exp(x) = 2^k exp(r). ln2 is split in two parts, the first with few significant bits, so
 * that k * ln2_hi is exact and r keeps its accuracy. exp(r) comes from a polynomial (the coefficients of Cephes'
 * expf, S. L. Moshier), 2^k is written straight into the exponent bits of a float. About 1 ulp: tests/bonus/test_fused_mhc.py
 * checks a relative error below 3e-7 against exp in float64. Results below FLT_MIN (x < -87.3) are 0, results above
 * 2.2e38 (x > 88.3) are inf: they only feed sigmoids and softmaxes, where both are exact enough. NaN stays NaN. */
static inline float exp_f32(float x) {
    float xc = x > -87.3f ? x : -87.3f;              /* clamp, so k fits the exponent (NaN goes to -87.3 here) */
    xc = xc < 88.3f ? xc : 88.3f;
    float k = floorf(xc * 1.44269504f + 0.5f);      /* round(x / ln2); (int) of a rounded sum stops gcc 12's
                                                        vectoriser, floorf is one instruction with SSE4.1 or NEON */
    float r = fmaf(k, -0.693359375f, xc);            /* ln2 = 0.693359375 - 2.12194440e-4; fmaf, because with */
    r = fmaf(k, 2.12194440e-4f, r);                  /* -fassociative-math x - k a + k b may become x - k (a - b) */
    float q = 1.9875691500e-4f;                      /* exp(r) = 1 + r + r^2 q(r), q of degree 5 */
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    float e = q * (r * r) + r + 1.0f;
    union { int i; float f; } two_k;                 /* 2^k: biased exponent k + 127, zero mantissa */
    two_k.i = ((int)k + 127) << 23;
    float y = e * two_k.f;
    y = x < -87.3f ? 0.0f : y;
    y = x > 88.3f ? INFINITY : y;
    return x == x ? y : x;                           /* x != x only for NaN */
}
#endif

/* Sinkhorn-Knopp (mHC paper; V4 section 2.2) on a chunk of tokens, from K = p + eps (p: the column softmax):
 *   T_r, then (T_c, T_r) iters-1 times; T divides each row / column by (its sum + eps).
 * Every step only rescales rows or columns, so the matrix stays diag(u) K diag(v) and a step updates one vector:
 *   T_r:  w = K v,    u_i <- u_i / (u_i w_i + eps)        (u_i w_i is row i's sum)
 *   T_c:  a = K^T u,  v_j <- v_j / (v_j a_j + eps)        (v_j a_j is column j's sum)
 * n^2 multiply-adds per step instead of rewriting all n^2 entries twice; at the end B = diag(u) K diag(v).
 * hist, unless NULL, receives per step the vector before the update and q = 1 / (u_i w_i + eps) (or its column
 * twin): 2n values per token, all the backward needs (it never divides: the division's derivative is -q^2).
 * uv receives the final u and v; B, unless NULL, the matrix. The forward passes hist = NULL and keeps only p: the
 * backward runs these steps again into a small buffer (a few microseconds) rather than have the forward write
 * (2 iters - 1) 2n numbers per token to memory and read them back (most of the memory mHC would otherwise add). */
INLINE void sinkhorn(int n, int iters, real eps, const real *restrict p, real *restrict hist, real *restrict uv,
                     real *restrict B) {
    real K[MAXN * MAXN * CHUNK], *u = uv, *v = uv + n * CHUNK;
    for (int e = 0; e < n * n; e++)
        for (int t = 0; t < CHUNK; t++) AT(K, e, t) = AT(p, e, t) + eps;
    for (int e = 0; e < 2 * n; e++)
        for (int t = 0; t < CHUNK; t++) AT(uv, e, t) = 1;
    for (int k = 0; k < 2 * iters - 1; k++) {
        int rows = (k % 2 == 0);                     /* step 0 is T_r, then T_c, T_r, ... */
        int sa = rows ? n : 1, sb = rows ? 1 : n;    /* entry (a, b) of K (T_r) or of K^T (T_c): K[a sa + b sb] */
        real *vec = rows ? u : v, *other = rows ? v : u;
        if (hist) {
            real *old = hist + (long)k * 2 * n * CHUNK, *inv = old + n * CHUNK;
            for (int t = 0; t < CHUNK; t++)          /* vectorised along t, the loops over a and b unrolled */
                for (int a = 0; a < n; a++) {
                    real w = 0;
                    for (int b = 0; b < n; b++) w += AT(K, a * sa + b * sb, t) * AT(other, b, t);
                    real q = 1 / (AT(vec, a, t) * w + eps);
                    AT(inv, a, t) = q;
                    AT(old, a, t) = AT(vec, a, t);
                    AT(vec, a, t) *= q;
                }
        } else {                                     /* the same step, nothing kept */
            for (int t = 0; t < CHUNK; t++)
                for (int a = 0; a < n; a++) {
                    real w = 0;
                    for (int b = 0; b < n; b++) w += AT(K, a * sa + b * sb, t) * AT(other, b, t);
                    AT(vec, a, t) *= 1 / (AT(vec, a, t) * w + eps);
                }
        }
    }
    if (!B)
        return;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            for (int t = 0; t < CHUNK; t++) AT(B, i * n + j, t) = AT(u, i, t) * AT(K, i * n + j, t) * AT(v, j, t);
}

/* The second half of a backward step: w = K v (rows = 1) or a = K^T u (rows = 0) sends g_w to the other vector
 * (K^T g_w or K g_w) and to K. Called with rows as a constant, so that the index below is known at compile time. */
INLINE void step_backward(int n, int rows, const real *restrict K, const real *restrict gmv,
                          const real *restrict other, real *restrict gother, real *restrict gK) {
    for (int t = 0; t < CHUNK; t++)                  /* vectorised along t, the loops over a and b unrolled */
        for (int b = 0; b < n; b++) {
            real g = AT(gother, b, t);
            for (int a = 0; a < n; a++) {
                int e = rows ? a * n + b : b * n + a;
                g += AT(K, e, t) * AT(gmv, a, t);
                AT(gK, e, t) += AT(gmv, a, t) * AT(other, b, t);
            }
            AT(gother, b, t) = g;
        }
}

/* Backward of sinkhorn: G (gradient wrt B) in, gK (gradient wrt K, i.e. wrt p) out. Steps are undone in reverse,
 * restoring u and v from hist. For a T_r step u' = u / c, c = u w + eps, w = K v, with q = 1 / c kept by the forward:
 *   du'/du = eps q^2,   du'/dw = -u^2 q^2,   and w = K v sends g_w to v (K^T g_w) and to K (g_w v^T).
 * T_c is the same with rows and columns swapped. */
INLINE void sinkhorn_backward(int n, int iters, real eps, const real *restrict p, const real *restrict hist,
                              const real *restrict uv, const real *restrict G, real *restrict gK) {
    real K[MAXN * MAXN * CHUNK], u[MAXN * CHUNK], v[MAXN * CHUNK], gu[MAXN * CHUNK], gv[MAXN * CHUNK];
    real gmv[MAXN * CHUNK];
    memcpy(u, uv, sizeof(real) * n * CHUNK);
    memcpy(v, uv + n * CHUNK, sizeof(real) * n * CHUNK);
    for (int e = 0; e < n * n; e++)
        for (int t = 0; t < CHUNK; t++) AT(K, e, t) = AT(p, e, t) + eps;
    for (int t = 0; t < CHUNK; t++)                  /* B_ij = u_i K_ij v_j */
        for (int i = 0; i < n; i++) {
            real g = 0;
            for (int j = 0; j < n; j++) {
                AT(gK, i * n + j, t) = AT(G, i * n + j, t) * AT(u, i, t) * AT(v, j, t);
                g += AT(G, i * n + j, t) * AT(K, i * n + j, t) * AT(v, j, t);
            }
            AT(gu, i, t) = g;
        }
    for (int t = 0; t < CHUNK; t++)
        for (int j = 0; j < n; j++) {
            real g = 0;
            for (int i = 0; i < n; i++) g += AT(G, i * n + j, t) * AT(K, i * n + j, t) * AT(u, i, t);
            AT(gv, j, t) = g;
        }
    for (int k = 2 * iters - 2; k >= 0; k--) {
        int rows = (k % 2 == 0);
        real *vec = rows ? u : v, *other = rows ? v : u, *gvec = rows ? gu : gv, *gother = rows ? gv : gu;
        const real *old = hist + (long)k * 2 * n * CHUNK, *inv = old + n * CHUNK;
        for (int t = 0; t < CHUNK; t++)              /* vectorised along t, the loops over a and b unrolled */
            for (int a = 0; a < n; a++) {
                real o = AT(old, a, t), ic2 = AT(inv, a, t) * AT(inv, a, t);
                AT(gmv, a, t) = -AT(gvec, a, t) * o * o * ic2;
                AT(gvec, a, t) *= eps * ic2;
                AT(vec, a, t) = o;                   /* back to the value before this step */
            }
        if (rows) step_backward(n, 1, K, gmv, other, gother, gK);
        else step_backward(n, 0, K, gmv, other, gother, gK);
    }
}

/* Column softmax of B~ on a chunk: raw holds the m logits of each token in chunk layout, entry (i, j) of B~ in
 * row 2n + j*n + i; p_ij = exp(B~_ij - max_i B~_ij) / sum_i exp(B~_ij - max_i B~_ij). */
INLINE void column_softmax(int n, const real *restrict raw, real *restrict p) {
    real mx[CHUNK], s[CHUNK];
    for (int j = 0; j < n; j++) {
        const real *l = raw + (2 * n + j * n) * CHUNK;      /* AT(l, i, t) = B~_ij of token t */
        for (int t = 0; t < CHUNK; t++) { mx[t] = AT(l, 0, t); s[t] = 0; }
        for (int i = 1; i < n; i++)
            for (int t = 0; t < CHUNK; t++) mx[t] = AT(l, i, t) > mx[t] ? AT(l, i, t) : mx[t];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < CHUNK; t++) {
                AT(p, i * n + j, t) = EXP(AT(l, i, t) - mx[t]);
                s[t] += AT(p, i * n + j, t);
            }
        for (int i = 0; i < n; i++)
            for (int t = 0; t < CHUNK; t++) AT(p, i * n + j, t) /= s[t];
    }
}

/* The forward keeps, per chunk of CHUNK tokens, what the backward needs: r (1 per token), the two sigmoids (2n),
 * the softmax p (n^2) and the projection P (m = 2n + n^2), in chunk layout; Sinkhorn's steps are run again in the
 * backward. Numbers per chunk (fused_mhc/__init__.py allocates chunks * this), and the size of the backward's buffer for
 * Sinkhorn's history: */
int mhc_chunk_size(void) { return CHUNK; }

long mhc_chunk_floats(int n) { return (1L + 2L * n + 2L * n * n + 2L * n) * CHUNK; }

long mhc_scratch_floats(int n, int iters) { return (2L * iters - 1) * 2 * n * CHUNK; }

/* Where each saved array starts in a chunk's part of work (r is at its start). */
static void chunk_parts(int n, real *r, real **sig, real **p, real **P) {
    *sig = r + CHUNK;
    *p = *sig + 2 * n * CHUNK;
    *P = *p + n * n * CHUNK;
}

/* The projection of the streams and its backward are three small matrix products per connection (P = W x, and
 * gW = GP x^T, gx += W^T GP backward). They are written here on explicit vectors of 8 numbers (GCC's and clang's
 * vector extension; 8 floats fill an AVX register) so that every multiply-add works on 8 numbers and no horizontal
 * sums are needed: one matrix product call in PyTorch costs about as much in dispatch as its arithmetic here. */
typedef real v8 __attribute__((vector_size(8 * sizeof(real))));
#define MAXV ((MAXN * (MAXN + 2) + 7) / 8)           /* vectors for m = 2n + n^2 numbers: 3 for n = 4 */
static inline v8 load8(const real *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(real *p, v8 v) { memcpy(p, &v, sizeof v); }
/* Loaded once, used several times: without this hint GCC reloads it from memory inside each multiply-add that uses
 * it, and the loads, not the arithmetic, set the pace (an empty asm statement that claims to change the register). */
#if defined(__GNUC__) && defined(__AVX__) && defined(SINGLE)      /* 8 floats: one AVX register */
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) (void)0
#endif

/* P_ct = sum_k W_ck x_tk for the nt tokens of a chunk, as nd rank-one updates: row k of W^T (m numbers, padded to
 * mv vectors: Wt is (nd, 8 mv) with zeros after m) times x_tk, four tokens at a time so each row serves four. */
INLINE void project(int m, int nd, int nt, const real *restrict X, const real *restrict Wt, real *restrict P) {
    int mv = (m + 7) / 8;
    for (int t = 0; t < nt; t += 4) {
        int tn = nt - t < 4 ? nt - t : 4;            /* tokens in this group (the last may have fewer) */
        const real *x[4];
        for (int u = 0; u < 4; u++) x[u] = X + (long)(t + (u < tn ? u : 0)) * nd;
        v8 acc[4][MAXV];
        for (int u = 0; u < 4; u++)
            for (int v = 0; v < mv; v++) acc[u][v] = (v8){0};
        for (int k = 0; k < nd; k++)
            for (int v = 0; v < mv; v++) {
                v8 w = load8(Wt + ((long)k * mv + v) * 8);
                IN_REGISTER(w);
                for (int u = 0; u < 4; u++) acc[u][v] += w * x[u][k];
            }
        for (int u = 0; u < 4; u++)                  /* all four (t + u < CHUNK): a short group's extra columns */
            for (int c = 0; c < m; c++) AT(P, c, t + u) = acc[u][c / 8][c % 8];   /* are never read */
    }
}

/* Its backward for one chunk. gx_t += sum_c GP_ct W_c: along the nd numbers in blocks of 64 (8 vectors of sums in
 * registers across the loop over c). gW_c += sum_t GP_ct x_t: two rows c at a time, the same blocks, sums in
 * registers across the loop over the tokens. A tail of nd that is not a multiple of 8 runs number by number. */
#define KV 8            /* vectors per block: 64 numbers */

/* One block of kv <= KV vectors for two tokens (t and t + 1, or t alone when two = 0): each vector of W loaded
 * serves both. kv is KV, a constant, in the common case: the compiler then keeps the sums in registers; a shorter
 * last block takes the same code with kv variable. */
INLINE void gx_block(int m, int nd, int kv, int k0, int t, int two, const real *restrict W, const real *restrict GP,
                     real *restrict gx) {
    v8 a0[KV], a1[KV];
    for (int i = 0; i < kv; i++) {
        a0[i] = load8(gx + k0 + 8 * i);
        a1[i] = two ? load8(gx + nd + k0 + 8 * i) : (v8){0};
    }
    for (int c = 0; c < m; c++) {
        real g0 = AT(GP, c, t), g1 = two ? AT(GP, c, t + 1) : 0;
        for (int i = 0; i < kv; i++) {
            v8 w = load8(W + (long)c * nd + k0 + 8 * i);
            IN_REGISTER(w);
            a0[i] += g0 * w;
            a1[i] += g1 * w;
        }
    }
    for (int i = 0; i < kv; i++) {
        store8(gx + k0 + 8 * i, a0[i]);
        if (two) store8(gx + nd + k0 + 8 * i, a1[i]);
    }
}

INLINE void gw_block(int nd, int nt, int kv, int k0, int c, int two, const real *restrict X, const real *restrict GP,
                     real *restrict gW) {
    v8 a0[KV], a1[KV];
    for (int i = 0; i < kv; i++) a0[i] = a1[i] = (v8){0};
    for (int t = 0; t < nt; t++) {
        real g0 = AT(GP, c, t), g1 = two ? AT(GP, c + 1, t) : 0;
        for (int i = 0; i < kv; i++) {
            v8 xv = load8(X + (long)t * nd + k0 + 8 * i);
            IN_REGISTER(xv);
            a0[i] += g0 * xv;
            a1[i] += g1 * xv;
        }
    }
    for (int i = 0; i < kv; i++) {
        real *w0 = gW + (long)c * nd + k0 + 8 * i;
        store8(w0, load8(w0) + a0[i]);
        if (two) store8(w0 + nd, load8(w0 + nd) + a1[i]);
    }
}

INLINE void project_backward(int m, int nd, int nt, const real *restrict X, const real *restrict W,
                             const real *restrict GP, real *restrict gX, real *restrict gW) {
    int nd8 = nd / 8 * 8;
    for (int t = 0; t < nt; t += 2) {
        real *gx = gX + (long)t * nd;
        int two = t + 1 < nt, k0 = 0;
        for (; k0 + KV * 8 <= nd8; k0 += KV * 8) gx_block(m, nd, KV, k0, t, two, W, GP, gx);
        if (k0 < nd8) gx_block(m, nd, (nd8 - k0) / 8, k0, t, two, W, GP, gx);
        for (int u = t; u < t + 1 + two; u++)
            for (int c = 0; c < m; c++)
                for (int k = nd8; k < nd; k++) gX[(long)u * nd + k] += AT(GP, c, u) * W[(long)c * nd + k];
    }
    for (int c = 0; c < m; c += 2) {
        int two = c + 1 < m;                         /* a pair of rows, or the last row alone */
        int k0 = 0;
        for (; k0 + KV * 8 <= nd8; k0 += KV * 8) gw_block(nd, nt, KV, k0, c, two, X, GP, gW);
        if (k0 < nd8) gw_block(nd, nt, (nd8 - k0) / 8, k0, c, two, X, GP, gW);
        for (int cc = c; cc < c + 1 + two; cc++)
            for (int t = 0; t < nt; t++)
                for (int k = nd8; k < nd; k++) gW[(long)cc * nd + k] += AT(GP, cc, t) * X[(long)t * nd + k];
    }
}

/* Forward of one connection, per token:
 *   r = rsqrt(mean(x^2) + rms_eps);  P = W x;  raw = alpha_g * r * P + base;
 *   A = sigmoid(raw_pre) + eps;  C = 2 sigmoid(raw_post);  B = Sinkhorn(raw_res);  layer_input = sum_j A_j x_j.
 * Writes layer_input (N, d), mix (N, n, n) = B, post (N, n) = C, and for the backward work (see mhc_chunk_floats).
 * W is (m, n d); Wt (n d 8 ceil(m / 8) numbers) receives its transpose, rows padded with zeros. */
INLINE void pre_forward(int n, int N, int d, int iters, real eps, real rms_eps, const real *restrict X,
                        const real *restrict W, const real *restrict base, const real *restrict scale,
                        real *restrict layer_input, real *restrict mix, real *restrict post, real *restrict work,
                        real *restrict Wt) {
    int m = 2 * n + n * n, nd = n * d;
    real raw[MAXN * (MAXN + 2) * CHUNK], B[MAXN * MAXN * CHUNK];
    int mp = (m + 7) / 8 * 8;                        /* W^T with each row padded to whole vectors */
    for (int k = 0; k < nd; k++)
        for (int c = 0; c < mp; c++) Wt[(long)k * mp + c] = c < m ? W[(long)c * nd + k] : 0;
    for (int t0 = 0; t0 < N; t0 += CHUNK) {
        int nt = N - t0 < CHUNK ? N - t0 : CHUNK;
        real *r = work + (t0 / CHUNK) * mhc_chunk_floats(n), *sig, *p, *P, uv[2 * MAXN * CHUNK];
        chunk_parts(n, r, &sig, &p, &P);
        if (nt < CHUNK) {                            /* a last, partial chunk: zeros in the tail */
            memset(raw, 0, sizeof raw);
            for (int t = nt; t < CHUNK; t++) r[t] = 0;
        }
        project(m, nd, nt, X + (long)t0 * nd, Wt, P);
        for (int t = 0; t < nt; t++) {
            const real *x = X + (long)(t0 + t) * n * d;
            real ss = 0;
            for (int c = 0; c < n * d; c++) ss += x[c] * x[c];
            r[t] = (real)1 / SQRT(ss / (n * d) + rms_eps);
        }
        for (int c = 0; c < m; c++) {
            real alpha = scale[c < n ? 0 : (c < 2 * n ? 1 : 2)];
            for (int t = 0; t < nt; t++) AT(raw, c, t) = alpha * (r[t] * AT(P, c, t)) + base[c];
        }
        for (int j = 0; j < 2 * n; j++)              /* A = sigmoid + eps and C = 2 sigmoid need these */
            for (int t = 0; t < CHUNK; t++) AT(sig, j, t) = (real)1 / ((real)1 + EXP(-AT(raw, j, t)));
        for (int t = 0; t < nt; t++) {
            const real *x = X + (long)(t0 + t) * n * d;
            real *out = layer_input + (long)(t0 + t) * d, a[MAXN];
            for (int j = 0; j < n; j++) {
                post[(long)(t0 + t) * n + j] = 2 * AT(sig, n + j, t);
                a[j] = AT(sig, j, t) + eps;
            }
            for (int c = 0; c < d; c++) {            /* vectorised along c, the loop over j unrolled */
                real acc = a[0] * x[c];
                for (int j = 1; j < n; j++) acc += a[j] * x[j * d + c];
                out[c] = acc;
            }
        }
        column_softmax(n, raw, p);
        sinkhorn(n, iters, eps, p, NULL, uv, B);
        for (int t = 0; t < nt; t++)
            for (int e = 0; e < n * n; e++) mix[(long)(t0 + t) * n * n + e] = AT(B, e, t);
    }
}

/* Backward of pre_forward. Gradients in: g_in (N, d), g_mix (N, n, n), g_post (N, n), and g_extra (N, n, d) or
 * NULL: the gradient X gets from elsewhere (MHCCombinePre: X also feeds the next write-back), added into gX in the
 * same pass instead of by one more PyTorch operation. Out: gX (N, n, d), gW (m, n d), and g_scale (3), g_base (m)
 * summed over the tokens. Per chunk, Sinkhorn's steps are run again from the saved p into hist
 * (mhc_scratch_floats numbers) and undone by sinkhorn_backward; the column softmax p: dL/dz = p (g - sum(g p)). */
INLINE void pre_backward(int n, int N, int d, int iters, real eps, const real *restrict X, const real *restrict W,
                         const real *restrict scale, real *restrict work, real *restrict hist,
                         const real *restrict g_in, const real *restrict g_mix, const real *restrict g_post,
                         const real *restrict g_extra, real *restrict gX, real *restrict gW,
                         real *restrict g_scale, real *restrict g_base) {
    int m = 2 * n + n * n, nd = n * d;
    real G[MAXN * MAXN * CHUNK], gK[MAXN * MAXN * CHUNK], graw[MAXN * (MAXN + 2) * CHUNK];
    real GP[MAXN * (MAXN + 2) * CHUNK], gr[CHUNK];
    double gs[3] = {0, 0, 0}, gb[MAXN * (MAXN + 2)];      /* sums over all tokens: double, chunk sums added in */
    for (int c = 0; c < m; c++) gb[c] = 0;
    memset(gW, 0, sizeof(real) * m * nd);
    for (int t0 = 0; t0 < N; t0 += CHUNK) {
        int nt = N - t0 < CHUNK ? N - t0 : CHUNK;
        real *r = work + (t0 / CHUNK) * mhc_chunk_floats(n), *sig, *p, *P, uv[2 * MAXN * CHUNK];
        chunk_parts(n, r, &sig, &p, &P);
        if (nt < CHUNK) {                            /* a last, partial chunk: zero gradients in the tail */
            memset(G, 0, sizeof G);
            memset(graw, 0, sizeof graw);
        }
        for (int t = 0; t < nt; t++) {               /* into chunk layout */
            long tt = t0 + t;
            for (int e = 0; e < n * n; e++) AT(G, e, t) = g_mix[tt * n * n + e];
            for (int j = 0; j < n; j++) AT(graw, n + j, t) = g_post[tt * n + j];
        }
        sinkhorn(n, iters, eps, p, hist, uv, NULL);   /* the forward's steps again, this time kept in hist */
        sinkhorn_backward(n, iters, eps, p, hist, uv, G, gK);
        for (int t = 0; t < nt; t++) {               /* layer_input = sum_j A_j x_j,  A_j = sigmoid + eps */
            const real *x = X + (long)(t0 + t) * n * d, *gi = g_in + (long)(t0 + t) * d;
            real gA[MAXN];
            for (int j = 0; j < n; j++) gA[j] = 0;
            for (int c = 0; c < d; c++)              /* vectorised along c: n dot products at once */
                for (int j = 0; j < n; j++) gA[j] += gi[c] * x[j * d + c];
            for (int j = 0; j < n; j++) AT(graw, j, t) = gA[j];   /* dL/dA_j; times the sigmoid's slope below */
        }
        for (int j = 0; j < n; j++)                  /* sigmoid' = s (1 - s); C = 2 sigmoid */
            for (int t = 0; t < CHUNK; t++) {
                real sa = AT(sig, j, t), sc = AT(sig, n + j, t);
                AT(graw, j, t) *= sa * (1 - sa);
                AT(graw, n + j, t) *= 2 * sc * (1 - sc);
            }
        for (int t = 0; t < CHUNK; t++)              /* softmax over each column j of B~ */
            for (int j = 0; j < n; j++) {
                real sj = 0;
                for (int i = 0; i < n; i++) sj += AT(gK, i * n + j, t) * AT(p, i * n + j, t);
                for (int i = 0; i < n; i++)
                    AT(graw, 2 * n + j * n + i, t) = AT(p, i * n + j, t) * (AT(gK, i * n + j, t) - sj);
            }
        for (int t = 0; t < CHUNK; t++) gr[t] = 0;   /* raw = alpha_g * r * P + base */
        for (int c = 0; c < m; c++) {
            int g = c < n ? 0 : (c < 2 * n ? 1 : 2);
            real sb = 0, ss = 0;                     /* this chunk's sums */
            for (int t = 0; t < nt; t++) {
                sb += AT(graw, c, t);
                ss += AT(graw, c, t) * r[t] * AT(P, c, t);
                gr[t] += AT(graw, c, t) * scale[g] * AT(P, c, t);
                AT(GP, c, t) = AT(graw, c, t) * scale[g] * r[t];
            }
            gb[c] += sb;
            gs[g] += ss;
        }
        for (int t = 0; t < nt; t++) {               /* gX = A_j g_in + (dr/dx) g_r (+ g_extra) */
            const real *x = X + (long)(t0 + t) * n * d, *gi = g_in + (long)(t0 + t) * d;
            real *gx = gX + (long)(t0 + t) * n * d, rt = r[t];
            real k3 = -gr[t] * rt * rt * rt / (n * d);   /* r = (mean(x^2) + rms_eps)^(-1/2): dr/dx = -r^3 x / (n d) */
            for (int j = 0; j < n; j++) {
                real aj = AT(sig, j, t) + eps;
                for (int c = 0; c < d; c++) gx[j * d + c] = aj * gi[c] + k3 * x[j * d + c];
            }
            if (g_extra) {                           /* X also fed something else: add its gradient here */
                const real *ge = g_extra + (long)(t0 + t) * n * d;
                for (int c = 0; c < n * d; c++) gx[c] += ge[c];
            }
        }
        project_backward(m, nd, nt, X + (long)t0 * nd, W, GP, gX + (long)t0 * nd, gW);   /* P = W x */
    }
    for (int c = 0; c < m; c++) g_base[c] = (real)gb[c];
    for (int g = 0; g < 3; g++) g_scale[g] = (real)gs[g];
}

/* X_{l+1} = B X + C F per token:  out_i = sum_j B_ij x_j + C_i f   (X (N, n, d), f (N, d)). */
INLINE void combine_forward(int n, int N, int d, const real *restrict X, const real *restrict f,
                            const real *restrict mix, const real *restrict post, real *restrict out) {
    for (long t = 0; t < N; t++) {
        const real *x = X + t * n * d, *B = mix + t * n * n, *ft = f + t * d;
        for (int i = 0; i < n; i++) {
            real *o = out + t * n * d + i * d, Ci = post[t * n + i];
            for (int c = 0; c < d; c++) {            /* vectorised along c, the loop over j unrolled */
                real acc = B[i * n] * x[c];
                for (int j = 1; j < n; j++) acc += B[i * n + j] * x[j * d + c];
                o[c] = acc + Ci * ft[c];
            }
        }
    }
}

/* Its backward:  gx_j = sum_i B_ij g_i,  gf = sum_i C_i g_i,  gB_ij = <g_i, x_j>,  gC_i = <g_i, f>. */
INLINE void combine_backward(int n, int N, int d, const real *restrict X, const real *restrict f,
                             const real *restrict mix, const real *restrict post, const real *restrict G,
                             real *restrict gX, real *restrict gf, real *restrict gmix, real *restrict gpost) {
    for (long t = 0; t < N; t++) {
        const real *x = X + t * n * d, *B = mix + t * n * n, *ft = f + t * d, *g = G + t * n * d;
        const real *C = post + t * n;
        real *gx = gX + t * n * d, *gft = gf + t * d, gB[MAXN * MAXN], gC[MAXN];
        for (int c = 0; c < d; c++) {                /* vectorised along c, the loops over i and j unrolled */
            real acc = C[0] * g[c];
            for (int i = 1; i < n; i++) acc += C[i] * g[i * d + c];
            gft[c] = acc;
            for (int j = 0; j < n; j++) {
                acc = B[j] * g[c];
                for (int i = 1; i < n; i++) acc += B[i * n + j] * g[i * d + c];
                gx[j * d + c] = acc;
            }
        }
        for (int i = 0; i < n; i++) {
            gC[i] = 0;
            for (int j = 0; j < n; j++) gB[i * n + j] = 0;
        }
        for (int c = 0; c < d; c++)                  /* n^2 + n dot products at once */
            for (int i = 0; i < n; i++) {
                gC[i] += g[i * d + c] * ft[c];
                for (int j = 0; j < n; j++) gB[i * n + j] += g[i * d + c] * x[j * d + c];
            }
        for (int i = 0; i < n; i++) {
            gpost[t * n + i] = gC[i];
            for (int j = 0; j < n; j++) gmix[t * n * n + i * n + j] = gB[i * n + j];
        }
    }
}

/* The exported kernels run the code above with n = 4 (V4's hc_mult) as a compile-time constant: the compiler then
 * unrolls the short loops over the streams and vectorises along the tokens or along d, keeping a token's values in
 * registers (with n as a variable it cannot: with n = 4 about 5x slower per call). Any other n runs the same code
 * with n as a variable: correct, tested, slower. One copy per n would make every n fast but compile for much
 * longer (about 6 s per dtype instead of under 2 s), for sizes the course does not use. */
#define WITH_N(kernel, ...) { if (n == 4) kernel(4, __VA_ARGS__); else kernel(n, __VA_ARGS__); }

void mhc_pre_forward(int N, int n, int d, int iters, real eps, real rms_eps, const real *X, const real *W,
                     const real *base, const real *scale, real *layer_input, real *mix, real *post, real *work,
                     real *Wt) {
    WITH_N(pre_forward, N, d, iters, eps, rms_eps, X, W, base, scale, layer_input, mix, post, work, Wt)
}

void mhc_pre_backward(int N, int n, int d, int iters, real eps, const real *X, const real *W, const real *scale,
                      real *work, real *hist, const real *g_in, const real *g_mix, const real *g_post,
                      const real *g_extra, real *gX, real *gW, real *g_scale, real *g_base) {
    WITH_N(pre_backward, N, d, iters, eps, X, W, scale, work, hist, g_in, g_mix, g_post, g_extra, gX, gW,
                    g_scale, g_base)
}

void mhc_combine_forward(int N, int n, int d, const real *X, const real *f, const real *mix, const real *post,
                         real *out) {
    WITH_N(combine_forward, N, d, X, f, mix, post, out)
}

void mhc_combine_backward(int N, int n, int d, const real *X, const real *f, const real *mix, const real *post,
                          const real *G, real *gX, real *gf, real *gmix, real *gpost) {
    WITH_N(combine_backward, N, d, X, f, mix, post, G, gX, gf, gmix, gpost)
}

/* Apply EXP to n numbers: lets tests/bonus/test_fused_mhc.py check the float32 exp against torch. */
void mhc_exp(long n, const real *restrict x, real *restrict y) {
    for (long i = 0; i < n; i++) y[i] = EXP(x[i]);
}

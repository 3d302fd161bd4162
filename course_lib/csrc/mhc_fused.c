/* mHC, fused: the per-token work of a manifold-constrained hyper-connection in a few loops over the tokens.
 *
 * Why C: written with PyTorch operations, one mHC connection is about 150 small operations (most of them the
 * 2 x 20 Sinkhorn normalisations of an n x n matrix per token) and as many again for the backward; at the toy's
 * sizes each costs a few microseconds of dispatch and almost no arithmetic. Here one call does all of it, as fused
 * kernels do at scale (the mHC paper, arXiv 2512.24880, reports about 6.7% extra training time with them).
 * course_lib/fused_mhc.py compiles this file with the system's C compiler and calls it through ctypes;
 * tests/test_fused_mhc.py checks it against the PyTorch version in course_lib/mhc.py.
 *
 * Layouts (row-major, contiguous): X (N, n, d) streams; proj (N, m) = X_flat W^T with m = 2n + n*n columns
 * [pre (n) | post (n) | res (n*n): flat index j*n + i holds B~_ij, transformers' "comb" layout]; base (m);
 * scale (3) = (alpha_pre, alpha_post, alpha_res). fused_mhc.py compiles the file twice: -DREAL=float (expf, sqrtf)
 * and -DREAL=double (exp, sqrt).
 *
 * Speed: the Sinkhorn iterations run on CHUNK tokens at once with the token index innermost, so each of the 40
 * normalisations is a handful of loops the compiler turns into SIMD instructions, and each one rescales a vector
 * instead of rewriting the matrix (see sinkhorn below: the same numbers up to rounding).
 */
#include <math.h>
#include <string.h>

#ifndef REAL
#define REAL double
#define EXP exp
#define SQRT sqrt
#endif
typedef REAL real;

#define MAXN 8          /* at most 8 streams (V4 uses 4) */
#define CHUNK 128       /* tokens per Sinkhorn batch */

/* Per-chunk arrays keep the token index innermost: v[e * CHUNK + t] is entry e (e.g. e = i*n + j) of token t. */
#define AT(v, e, t) (v)[(e) * CHUNK + (t)]

/* Sinkhorn-Knopp (mHC paper; V4 section 2.2) on nt <= CHUNK tokens, from K = p + eps (p: the column softmax):
 *   T_r, then (T_c, T_r) iters-1 times; T divides each row / column by (its sum + eps).
 * Every step only rescales rows or columns, so the matrix stays diag(u) K diag(v) and a step updates one vector:
 *   T_r:  w = K v,    u_i <- u_i / (u_i w_i + eps)        (u_i w_i is row i's sum)
 *   T_c:  a = K^T u,  v_j <- v_j / (v_j a_j + eps)        (v_j a_j is column j's sum)
 * n^2 multiply-adds per step instead of rewriting all n^2 entries twice; at the end B = diag(u) K diag(v).
 * hist keeps, per step, the vector before the update and w or a (2n values per token): what the backward needs.
 * uv receives the final u and v. */
static void sinkhorn(int n, int nt, int iters, real eps, const real *p, real *hist, real *uv, real *B) {
    real K[MAXN * MAXN * CHUNK], *u = uv, *v = uv + n * CHUNK;
    for (int e = 0; e < n * n; e++)
        for (int t = 0; t < nt; t++) AT(K, e, t) = AT(p, e, t) + eps;
    for (int e = 0; e < 2 * n; e++)
        for (int t = 0; t < nt; t++) AT(uv, e, t) = 1;
    for (int k = 0; k < 2 * iters - 1; k++) {
        int rows = (k % 2 == 0);                     /* step 0 is T_r, then T_c, T_r, ... */
        real *vec = rows ? u : v, *other = rows ? v : u;
        real *old = hist + (long)k * 2 * n * CHUNK, *mv = old + n * CHUNK;
        for (int a = 0; a < n; a++) {
            for (int t = 0; t < nt; t++) AT(mv, a, t) = 0;
            for (int b = 0; b < n; b++) {
                int e = rows ? a * n + b : b * n + a;
                for (int t = 0; t < nt; t++) AT(mv, a, t) += AT(K, e, t) * AT(other, b, t);
            }
            for (int t = 0; t < nt; t++) {
                AT(old, a, t) = AT(vec, a, t);
                AT(vec, a, t) = AT(vec, a, t) / (AT(vec, a, t) * AT(mv, a, t) + eps);
            }
        }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            for (int t = 0; t < nt; t++) AT(B, i * n + j, t) = AT(u, i, t) * AT(K, i * n + j, t) * AT(v, j, t);
}

/* Backward of sinkhorn: G (gradient wrt B) in, gK (gradient wrt K, i.e. wrt p) out. Steps are undone in reverse,
 * restoring u and v from hist. For a T_r step u' = u / c, c = u w + eps, w = K v:
 *   du'/du = eps / c^2,   du'/dw = -u^2 / c^2,   and w = K v sends g_w to v (K^T g_w) and to K (g_w v^T).
 * T_c is the same with rows and columns swapped. */
static void sinkhorn_backward(int n, int nt, int iters, real eps, const real *p, const real *hist, const real *uv,
                              const real *G, real *gK) {
    real K[MAXN * MAXN * CHUNK], u[MAXN * CHUNK], v[MAXN * CHUNK], gu[MAXN * CHUNK], gv[MAXN * CHUNK];
    real gmv[MAXN * CHUNK];
    memcpy(u, uv, sizeof(real) * n * CHUNK);
    memcpy(v, uv + n * CHUNK, sizeof(real) * n * CHUNK);
    for (int e = 0; e < n * n; e++)
        for (int t = 0; t < nt; t++) AT(K, e, t) = AT(p, e, t) + eps;
    for (int e = 0; e < n; e++)
        for (int t = 0; t < nt; t++) { AT(gu, e, t) = 0; AT(gv, e, t) = 0; }
    for (int i = 0; i < n; i++)                      /* B_ij = u_i K_ij v_j */
        for (int j = 0; j < n; j++)
            for (int t = 0; t < nt; t++) {
                int e = i * n + j;
                AT(gK, e, t) = AT(G, e, t) * AT(u, i, t) * AT(v, j, t);
                AT(gu, i, t) += AT(G, e, t) * AT(K, e, t) * AT(v, j, t);
                AT(gv, j, t) += AT(G, e, t) * AT(K, e, t) * AT(u, i, t);
            }
    for (int k = 2 * iters - 2; k >= 0; k--) {
        int rows = (k % 2 == 0);
        real *vec = rows ? u : v, *other = rows ? v : u, *gvec = rows ? gu : gv, *gother = rows ? gv : gu;
        const real *old = hist + (long)k * 2 * n * CHUNK, *mv = old + n * CHUNK;
        for (int a = 0; a < n; a++)
            for (int t = 0; t < nt; t++) {
                real o = AT(old, a, t), c = o * AT(mv, a, t) + eps, ic2 = 1 / (c * c);
                AT(gmv, a, t) = -AT(gvec, a, t) * o * o * ic2;
                AT(gvec, a, t) *= eps * ic2;
                AT(vec, a, t) = o;                   /* back to the value before this step */
            }
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++) {
                int e = rows ? a * n + b : b * n + a;
                for (int t = 0; t < nt; t++) {
                    AT(gother, b, t) += AT(K, e, t) * AT(gmv, a, t);
                    AT(gK, e, t) += AT(gmv, a, t) * AT(other, b, t);
                }
            }
    }
}

/* Column softmax of B~ for nt tokens: logits come from raw (N, m) rows t0.., entry (i, j) at column 2n + j*n + i. */
static void column_softmax(int n, int m, int nt, const real *raw, real *p) {
    for (int j = 0; j < n; j++)
        for (int t = 0; t < nt; t++) {
            const real *l = raw + (long)t * m + 2 * n + j * n;
            real mx = l[0], s = 0;
            for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
            for (int i = 0; i < n; i++) { AT(p, i * n + j, t) = EXP(l[i] - mx); s += AT(p, i * n + j, t); }
            for (int i = 0; i < n; i++) AT(p, i * n + j, t) /= s;
        }
}

static real sigm(real x) { return (real)1 / ((real)1 + EXP(-x)); }

/* The forward keeps, per chunk of CHUNK tokens, what the backward needs of Sinkhorn: the softmax p (n^2), each
 * step's hist (2n) and the final u, v (2n) per token. Numbers per chunk (fused_mhc.py allocates chunks * this): */
int mhc_chunk_size(void) { return CHUNK; }

long mhc_chunk_floats(int n, int iters) {
    return ((long)n * n + (2L * iters - 1) * 2 * n + 2L * n) * CHUNK;
}

/* Forward of one connection, per token:
 *   r = rsqrt(mean(x^2) + rms_eps);  raw = alpha_g * r * proj + base;
 *   A = sigmoid(raw_pre) + eps;  C = 2 sigmoid(raw_post);  B = Sinkhorn(raw_res);  layer_input = sum_j A_j x_j.
 * Writes layer_input (N, d), mix (N, n, n) = B, post (N, n) = C, and for the backward r (N), sig (N, 2n) (the two
 * sigmoids) and work (Sinkhorn's steps, see mhc_chunk_floats). */
void mhc_pre_forward(int N, int n, int d, int iters, real eps, real rms_eps, const real *X, const real *proj,
                     const real *base, const real *scale, real *layer_input, real *mix, real *post, real *r_out,
                     real *sig, real *work) {
    int m = 2 * n + n * n;
    real raw[CHUNK * MAXN * (MAXN + 2)], B[MAXN * MAXN * CHUNK];
    for (int t0 = 0; t0 < N; t0 += CHUNK) {
        int nt = N - t0 < CHUNK ? N - t0 : CHUNK;
        real *p = work + (t0 / CHUNK) * mhc_chunk_floats(n, iters), *hist = p + n * n * CHUNK;
        real *uv = hist + (2L * iters - 1) * 2 * n * CHUNK;
        for (int t = 0; t < nt; t++) {
            const real *x = X + (long)(t0 + t) * n * d, *pr = proj + (long)(t0 + t) * m;
            real ss = 0;
            for (int c = 0; c < n * d; c++) ss += x[c] * x[c];
            real r = (real)1 / SQRT(ss / (n * d) + rms_eps);
            r_out[t0 + t] = r;
            real *rw = raw + t * m, *sg = sig + (long)(t0 + t) * 2 * n;
            for (int c = 0; c < m; c++) rw[c] = scale[c < n ? 0 : (c < 2 * n ? 1 : 2)] * (r * pr[c]) + base[c];
            for (int j = 0; j < 2 * n; j++) sg[j] = sigm(rw[j]);
            for (int j = 0; j < n; j++) post[(long)(t0 + t) * n + j] = 2 * sg[n + j];
            real *out = layer_input + (long)(t0 + t) * d;
            for (int c = 0; c < d; c++) out[c] = (sg[0] + eps) * x[c];
            for (int j = 1; j < n; j++)
                for (int c = 0; c < d; c++) out[c] += (sg[j] + eps) * x[j * d + c];
        }
        column_softmax(n, m, nt, raw, p);
        sinkhorn(n, nt, iters, eps, p, hist, uv, B);
        for (int t = 0; t < nt; t++)
            for (int e = 0; e < n * n; e++) mix[(long)(t0 + t) * n * n + e] = AT(B, e, t);
    }
}

/* Backward of mhc_pre_forward. Gradients in: g_in (N, d), g_mix (N, n, n), g_post (N, n). Out: gX (N, n, d)
 * WITHOUT the path through proj (the caller adds g_proj W with one matrix multiply), g_proj (N, m), and g_scale (3),
 * g_base (m) summed over the tokens. Sinkhorn's steps, kept by the forward in work, are undone by sinkhorn_backward;
 * the column softmax p:  dL/dz = p (g - sum(g p)). */
void mhc_pre_backward(int N, int n, int d, int iters, real eps, const real *X, const real *proj, const real *scale,
                      const real *r_in, const real *sig, const real *work, const real *g_in, const real *g_mix,
                      const real *g_post, real *gX, real *g_proj, real *g_scale, real *g_base) {
    int m = 2 * n + n * n;
    real G[MAXN * MAXN * CHUNK], gK[MAXN * MAXN * CHUNK];
    double gs[3] = {0, 0, 0};
    for (int c = 0; c < m; c++) g_base[c] = 0;
    for (int t0 = 0; t0 < N; t0 += CHUNK) {
        int nt = N - t0 < CHUNK ? N - t0 : CHUNK;
        const real *p = work + (t0 / CHUNK) * mhc_chunk_floats(n, iters), *hist = p + n * n * CHUNK;
        const real *uv = hist + (2L * iters - 1) * 2 * n * CHUNK;
        for (int t = 0; t < nt; t++)
            for (int e = 0; e < n * n; e++) AT(G, e, t) = g_mix[(long)(t0 + t) * n * n + e];
        sinkhorn_backward(n, nt, iters, eps, p, hist, uv, G, gK);
        for (int t = 0; t < nt; t++) {
            long tt = t0 + t;
            const real *x = X + tt * n * d, *gi = g_in + tt * d, *pr = proj + tt * m, *sg = sig + tt * 2 * n;
            real r = r_in[tt], graw[MAXN * (MAXN + 2)];
            real *gx = gX + tt * n * d;
            for (int j = 0; j < n; j++) {            /* layer_input = sum_j A_j x_j,  A_j = sigmoid + eps */
                real gA = 0;
                for (int c = 0; c < d; c++) { gA += gi[c] * x[j * d + c]; gx[j * d + c] = (sg[j] + eps) * gi[c]; }
                graw[j] = gA * sg[j] * (1 - sg[j]);
                graw[n + j] = g_post[tt * n + j] * 2 * sg[n + j] * (1 - sg[n + j]);
            }
            for (int j = 0; j < n; j++) {            /* softmax over each column i of B~ */
                real sj = 0;
                for (int i = 0; i < n; i++) sj += AT(gK, i * n + j, t) * AT(p, i * n + j, t);
                for (int i = 0; i < n; i++) graw[2 * n + j * n + i] = AT(p, i * n + j, t) * (AT(gK, i * n + j, t) - sj);
            }
            real gr = 0;                             /* raw = alpha_g * r * proj + base */
            for (int c = 0; c < m; c++) {
                int g = c < n ? 0 : (c < 2 * n ? 1 : 2);
                g_base[c] += graw[c];
                gs[g] += (double)graw[c] * r * pr[c];
                g_proj[tt * m + c] = graw[c] * scale[g] * r;
                gr += graw[c] * scale[g] * pr[c];
            }
            real k3 = -gr * r * r * r / (n * d);     /* r = (mean(x^2) + rms_eps)^(-1/2): dr/dx = -r^3 x / (n d) */
            for (int c = 0; c < n * d; c++) gx[c] += k3 * x[c];
        }
    }
    for (int g = 0; g < 3; g++) g_scale[g] = (real)gs[g];
}

/* X_{l+1} = B X + C F per token:  out_i = sum_j B_ij x_j + C_i f   (X (N, n, d), f (N, d)). */
void mhc_combine_forward(int N, int n, int d, const real *X, const real *f, const real *mix, const real *post,
                         real *out) {
    for (long t = 0; t < N; t++) {
        const real *x = X + t * n * d, *B = mix + t * n * n, *ft = f + t * d;
        for (int i = 0; i < n; i++) {
            real *o = out + t * n * d + i * d, Ci = post[t * n + i];
            for (int c = 0; c < d; c++) o[c] = B[i * n] * x[c];
            for (int j = 1; j < n; j++)
                for (int c = 0; c < d; c++) o[c] += B[i * n + j] * x[j * d + c];
            for (int c = 0; c < d; c++) o[c] += Ci * ft[c];
        }
    }
}

/* Its backward:  gx_j = sum_i B_ij g_i,  gf = sum_i C_i g_i,  gB_ij = <g_i, x_j>,  gC_i = <g_i, f>. */
void mhc_combine_backward(int N, int n, int d, const real *X, const real *f, const real *mix, const real *post,
                          const real *G, real *gX, real *gf, real *gmix, real *gpost) {
    for (long t = 0; t < N; t++) {
        const real *x = X + t * n * d, *B = mix + t * n * n, *ft = f + t * d, *g = G + t * n * d;
        const real *C = post + t * n;
        real *gx = gX + t * n * d, *gft = gf + t * d;
        for (int c = 0; c < d; c++) gft[c] = C[0] * g[c];
        for (int i = 1; i < n; i++)
            for (int c = 0; c < d; c++) gft[c] += C[i] * g[i * d + c];
        for (int j = 0; j < n; j++) {
            for (int c = 0; c < d; c++) gx[j * d + c] = B[j] * g[c];
            for (int i = 1; i < n; i++)
                for (int c = 0; c < d; c++) gx[j * d + c] += B[i * n + j] * g[i * d + c];
        }
        for (int i = 0; i < n; i++) {
            real sc = 0;
            for (int c = 0; c < d; c++) sc += g[i * d + c] * ft[c];
            gpost[t * n + i] = sc;
            for (int j = 0; j < n; j++) {
                real s = 0;
                for (int c = 0; c < d; c++) s += g[i * d + c] * x[j * d + c];
                gmix[t * n * n + i * n + j] = s;
            }
        }
    }
}

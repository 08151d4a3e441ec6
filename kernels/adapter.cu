// The FedCLIP attention adapter, trained for many clients at once: forward, both losses,
// backward, FedProx and Adam / AdamW, all f32 (no tensor cores, no fast math).
//
// CPU twin: src/adapter/kernel.rs (forward_into, loss_and_grad_into) and src/adapter/optim.rs
// (step), through src/adapter/cpu.rs `CpuAdapters`. Host side: src/cuda/adapter.rs.
//
// Layout (see src/adapter/params.rs): client k's parameters are row k of params [K, P],
// P = 2d² + 2d, as [W1 (d×d, [out, in]) | b1 (d) | W2 (d×d) | b2 (d)]; m and v alike.
//
// One step of A active clients ("slots" s = 0..A−1, client slot_client[s]) works on the
// concatenation of their batches: slot s owns rows slot_row0[s] .. + slot_rows[s] of every
// row buffer ([rows, d] or [rows, C]). Row-tiled GEMMs take a tile list, three ints per
// tile: (slot, first row, rows in the tile); tiles never straddle two clients.
//
//   fc_adapter_prox        (FedProx only) partial sums of ‖θ − anchor‖² per client
//   fc_adapter_forward_*   layer 0: H = tanh(X W1ᵀ + b1); layer 1: Z = H W2ᵀ + b2
//   fc_adapter_rows_fwd    A = softmax_row(Z) (in place), N = A⊙X / ‖A⊙X‖, G = s·N Tᵀ
//   fc_adapter_loss        one block per client: loss, and ∂loss/∂(s·G) over G in place
//   fc_adapter_rows_bwd    ∂N = ∂G·T, then through the normalisation and softmax: ∂Z
//   fc_adapter_dhidden_*   ∂U = (∂Z W2) ⊙ (1 − H²)
//   fc_adapter_wgrad       ∂W1 = ∂Uᵀ X, ∂b1 = Σ ∂U, ∂W2 = ∂Zᵀ H, ∂b2 = Σ ∂Z, per client
//   fc_adapter_adam        the optimiser update, skipped for a client whose loss or
//                          gradient is not finite
//
// Every reduction has a fixed order, so results are deterministic and do not depend on
// which other clients step alongside.
#include "common.cuh"

// A float is finite (false for NaN and ±inf) without relying on a math header.
FC_DEVICE bool ad_finite(float x) { return fabsf(x) <= 3.402823466e38f; }

#ifdef FEDCLIP_EMU
#define AD_NEG_INF (-HUGE_VALF)
#else
#define AD_NEG_INF (__int_as_float(0xff800000u))
#endif

// 16 / 8 bytes of floats for shared-memory vector reads.
struct __align__(16) ad_f4 {
    float x, y, z, w;
};
struct __align__(8) ad_f2 {
    float x, y;
};

// ---------------------------------------------------------------------------------------------
// The GEMM core: one BM × 64 tile of C[m, n] = Σ_k A(m, k)·B(n, k), 256 threads, each a
// (BM/16) × 4 micro-tile, K in steps of 16 through shared memory ([16][BM + 4] and [16][68]
// floats, k-major so the inner loop reads rows of the tile with vector loads).
//
// An operand is "K-contiguous" (KC: element (i, k) at p[i·ld + k], a row-major [rows, K]
// matrix) or not (element (i, k) at p[k·ld + i], a row-major [K, rows] matrix). Elements with
// i ≥ valid or k ≥ K read as 0, except that B's element i == b_ones reads as 1 (a virtual
// column of ones: the bias gradient comes out of the same product).
#define AD_BN 64
#define AD_BK 16
#define AD_THREADS 256

template <int BM> struct AdTileSmem {
    static constexpr int LDA = BM + 4;
    static constexpr int LDB = AD_BN + 4;
    static constexpr int BYTES = AD_BK * (LDA + LDB) * 4;
};

template <bool KC>
FC_DEVICE float ad_operand(const float* p, int ld, int i, int k, int valid, int K, int ones) {
    if (k >= K) return 0.0f;
    if (i < valid) return KC ? p[(size_t)i * ld + k] : p[(size_t)k * ld + i];
    return i == ones ? 1.0f : 0.0f;
}

// One operand's [ROWS × 16] slice at (i0, k0): this thread's share, fetched from global memory
// into registers, then stashed into shared memory as s[k][i] (stride ld_s).
template <int ROWS> struct AdShare {
    static constexpr int N = ROWS * AD_BK / AD_THREADS;
};

template <bool KC, int ROWS>
FC_DEVICE void ad_fetch(float (&r)[AdShare<ROWS>::N], const float* p, int ld, int i0, int k0,
                        int valid, int K, int ones) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int q = 0; q < AdShare<ROWS>::N; ++q) {
        const int e = tid + AD_THREADS * q;
        // Consecutive threads walk the contiguous direction of the global matrix.
        const int i = KC ? e / AD_BK : e % ROWS;
        const int k = KC ? e % AD_BK : e / ROWS;
        r[q] = ad_operand<KC>(p, ld, i0 + i, k0 + k, valid, K, ones);
    }
}

template <bool KC, int ROWS>
FC_DEVICE void ad_stash(float* s, int ld_s, const float (&r)[AdShare<ROWS>::N]) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int q = 0; q < AdShare<ROWS>::N; ++q) {
        const int e = tid + AD_THREADS * q;
        const int i = KC ? e / AD_BK : e % ROWS;
        const int k = KC ? e % AD_BK : e / ROWS;
        s[k * ld_s + i] = r[q];
    }
}

// acc[r][c] = C[m0 + ty·TM + r, n0 + tx·4 + c] with ty = tid / 16, tx = tid % 16, TM = BM/16.
// The next K slice is fetched into registers while the current one is multiplied.
template <int BM, bool A_KC, bool B_KC>
FC_DEVICE void ad_gemm_tile(float (&acc)[BM / 16][4], unsigned char* smem, const float* a,
                            int lda, int a_valid, const float* b, int ldb, int b_valid,
                            int b_ones, int K, int m0, int n0) {
    constexpr int TM = BM / 16;
    constexpr int LDA = AdTileSmem<BM>::LDA, LDB = AdTileSmem<BM>::LDB;
    float* sa = (float*)smem;     // [16][LDA]
    float* sb = sa + AD_BK * LDA; // [16][LDB]
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    float ra[AdShare<BM>::N], rb[AdShare<AD_BN>::N];
    ad_fetch<A_KC, BM>(ra, a, lda, m0, 0, a_valid, K, -1);
    ad_fetch<B_KC, AD_BN>(rb, b, ldb, n0, 0, b_valid, K, b_ones);
    for (int k0 = 0; k0 < K; k0 += AD_BK) {
        ad_stash<A_KC, BM>(sa, LDA, ra);
        ad_stash<B_KC, AD_BN>(sb, LDB, rb);
        __syncthreads(); // the slice is complete
        if (k0 + AD_BK < K) {
            ad_fetch<A_KC, BM>(ra, a, lda, m0, k0 + AD_BK, a_valid, K, -1);
            ad_fetch<B_KC, AD_BN>(rb, b, ldb, n0, k0 + AD_BK, b_valid, K, b_ones);
        }
#pragma unroll
        for (int kk = 0; kk < AD_BK; ++kk) {
            float av[TM];
            if constexpr (TM == 4) {
                const ad_f4 v = *(const ad_f4*)(sa + kk * LDA + ty * 4);
                av[0] = v.x, av[1] = v.y, av[2] = v.z, av[3] = v.w;
            } else {
                const ad_f2 v = *(const ad_f2*)(sa + kk * LDA + ty * 2);
                av[0] = v.x, av[1] = v.y;
            }
            const ad_f4 bv = *(const ad_f4*)(sb + kk * LDB + tx * 4);
            const float bw[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] += av[r] * bw[c];
        }
        __syncthreads(); // everyone is done reading before the next stash overwrites it
    }
}

// ---------------------------------------------------------------------------------------------
// Forward layers over row tiles. grid (tiles, ceil(d / 64)), 256 threads,
// AdTileSmem<BM>::BYTES of dynamic shared memory.
//   layer 0: out = H = tanh(X W1ᵀ + b1), in = X
//   layer 1: out = Z = H W2ᵀ + b2,       in = H
template <int BM>
FC_DEVICE void ad_forward_layer(unsigned char* smem, const float* in, float* out,
                                const float* params, const int* slot_client, const int* tiles,
                                int d, int P, int layer) {
    const int slot = tiles[3 * blockIdx.x], row0 = tiles[3 * blockIdx.x + 1];
    const int rows = tiles[3 * blockIdx.x + 2];
    const int n0 = blockIdx.y * AD_BN;
    const float* p = params + (size_t)slot_client[slot] * P;
    const float* w = p + (layer ? (size_t)d * d + d : 0);
    const float* bias = w + (size_t)d * d;
    const float* a = in + (size_t)row0 * d;
    float acc[BM / 16][4];
    ad_gemm_tile<BM, true, true>(acc, smem, a, d, rows, w, d, d, -1, d, 0, n0);
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int r = 0; r < BM / 16; ++r) {
        const int i = ty * (BM / 16) + r;
        if (i >= rows) continue;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = n0 + tx * 4 + c;
            if (j >= d) continue;
            const float u = acc[r][c] + bias[j];
            out[(size_t)(row0 + i) * d + j] = layer ? u : tanhf(u);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_forward_m32(const float* in, float* out, const float* params,
                           const int* slot_client, const int* tiles, int d, int P, int layer) {
    FC_DYNAMIC_SMEM(smem);
    ad_forward_layer<32>(smem, in, out, params, slot_client, tiles, d, P, layer);
}

extern "C" __global__ void __launch_bounds__(256, 2)
    fc_adapter_forward_m64(const float* in, float* out, const float* params,
                           const int* slot_client, const int* tiles, int d, int P, int layer) {
    FC_DYNAMIC_SMEM(smem);
    ad_forward_layer<64>(smem, in, out, params, slot_client, tiles, d, P, layer);
}

// ---------------------------------------------------------------------------------------------
// Row-wise forward: one warp per row, 8 rows per 256-thread block, grid ceil(rows / 8).
// za holds Z on entry and A = softmax(Z) on exit; writes N = A⊙X / r, r = ‖A⊙X‖ and
// g[row, c] = scale · N·T[c] (scale = s for training, 1 for prediction).
extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_rows_fwd(float* za, const float* x, float* n, float* rnorm, const float* texts,
                        float* g, int rows, int d, int classes, float scale) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + warp;
    if (row >= rows) return; // whole warp; only warp collectives below
    float* zr = za + (size_t)row * d;
    const float* xr = x + (size_t)row * d;
    float* nr = n + (size_t)row * d;
    float m = AD_NEG_INF;
    for (int j = lane; j < d; j += 32) m = fmaxf(m, zr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float e = expf(zr[j] - m);
        zr[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    float sq = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float a = zr[j] / sum;
        zr[j] = a;
        const float y = a * xr[j];
        sq += y * y;
    }
    const float r = sqrtf(warp_sum(sq));
    for (int j = lane; j < d; j += 32) nr[j] = zr[j] * xr[j] / r;
    if (lane == 0) rnorm[row] = r;
    for (int c = 0; c < classes; ++c) {
        const float* t = texts + (size_t)c * d;
        float dot = 0.0f;
        for (int j = lane; j < d; j += 32) dot += nr[j] * t[j];
        dot = warp_sum(dot);
        if (lane == 0) g[(size_t)row * classes + c] = dot * scale;
    }
}

// ---------------------------------------------------------------------------------------------
// Loss of one client per 256-thread block (grid = active clients). g holds s·G [rows, C] on
// entry and ∂loss/∂G on exit (the derivative with respect to the unscaled cosine matrix, as
// the CPU twin's `contrastive` / `class_ce` leave it). kind 0: FedCLIP's contrastive loss, 1:
// class cross-entropy. Dynamic shared memory (3·C + 8)·4 bytes.
//
// Column statistics (contrastive only) take one warp per class; then each row's softmax over
// the classes is one thread's work when C ≤ 32, else one warp's (lanes over the classes).
//
// out[2·slot] = loss (+ μ/2 ‖θ − anchor‖² from the fc_adapter_prox partial sums when given).
struct AdLossCtx {
    const float* cnt;  // [C] samples per class (contrastive)
    const float* cmax; // [C] column maxima
    const float* csum; // [C] Σ_i exp(g[i, c] − cmax[c])
    int C, kind;
    float coef; // s / (2B) (contrastive) or s / B (class)
};

FC_DEVICE bool ad_in_row(const AdLossCtx& L, int c) { return L.kind != 0 || L.cnt[c] > 0.0f; }

// This share's (classes c0, c0 + step, ...) maximum and weighted sum of exp(row − m).
FC_DEVICE float ad_row_max(const AdLossCtx& L, const float* row, int c0, int step) {
    float m = AD_NEG_INF;
    for (int c = c0; c < L.C; c += step)
        if (ad_in_row(L, c)) m = fmaxf(m, row[c]);
    return m;
}

FC_DEVICE float ad_row_sum(const AdLossCtx& L, const float* row, int c0, int step, float m) {
    float s = 0.0f;
    for (int c = c0; c < L.C; c += step) {
        if (L.kind != 0) s += expf(row[c] - m);
        else if (L.cnt[c] > 0.0f) s += L.cnt[c] * expf(row[c] - m);
    }
    return s;
}

// The row's loss term (image side, plus the text side of its label's column when
// contrastive), from its max m, sum s and label y.
FC_DEVICE float ad_row_term(const AdLossCtx& L, float gy, int y, float m, float s) {
    const float lse = m + logf(s);
    if (L.kind != 0) return lse - gy;
    return (lse - gy) + (L.cmax[y] + logf(L.csum[y]) - gy);
}

// Overwrites this share of the row with ∂loss/∂G.
FC_DEVICE void ad_row_grad(const AdLossCtx& L, float* row, int c0, int step, int y, float m,
                           float s) {
    for (int c = c0; c < L.C; c += step) {
        float dg;
        if (L.kind != 0) {
            dg = expf(row[c] - m) / s;
            if (c == y) dg -= 1.0f;
        } else {
            dg = L.cnt[c] > 0.0f ? L.cnt[c] * expf(row[c] - m) / s +
                                       L.cnt[c] * expf(row[c] - L.cmax[c]) / L.csum[c]
                                 : 0.0f;
            if (c == y) dg -= 2.0f;
        }
        row[c] = L.coef * dg;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_loss(float* g, const int* labels, const int* slot_row0, const int* slot_rows,
                    int classes, float scale, int kind, const float* prox, int prox_chunks,
                    float mu, float* out) {
    FC_DYNAMIC_SMEM(smem);
    float* cnt = (float*)smem;       // [C] (exact: B < 2²⁴)
    float* cmax = cnt + classes;     // [C]
    float* csum = cmax + classes;    // [C]
    float* partial = csum + classes; // [8] per-warp loss sums
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slot = blockIdx.x, row0 = slot_row0[slot], b = slot_rows[slot];
    const int C = classes;
    float* gs = g + (size_t)row0 * C;
    const int* ys = labels + row0;
    if (kind == 0) {
        for (int c = warp; c < C; c += 8) {
            float n = 0.0f, m = AD_NEG_INF;
            for (int i = lane; i < b; i += 32) {
                n += ys[i] == c ? 1.0f : 0.0f;
                m = fmaxf(m, gs[(size_t)i * C + c]);
            }
            n = warp_sum(n);
            m = warp_max(m);
            float s = 0.0f;
            for (int i = lane; i < b; i += 32) s += expf(gs[(size_t)i * C + c] - m);
            s = warp_sum(s);
            if (lane == 0) {
                cnt[c] = n;
                cmax[c] = m;
                csum[c] = s;
            }
        }
    }
    __syncthreads(); // column statistics complete
    AdLossCtx L;
    L.cnt = cnt, L.cmax = cmax, L.csum = csum, L.C = C, L.kind = kind;
    L.coef = kind == 0 ? scale / (2.0f * (float)b) : scale / (float)b;
    float total = 0.0f;
    if (C <= 32) {
        // One thread per row.
        for (int i = threadIdx.x; i < b; i += AD_THREADS) {
            float* row = gs + (size_t)i * C;
            const int y = ys[i];
            const float m = ad_row_max(L, row, 0, 1);
            const float s = ad_row_sum(L, row, 0, 1, m);
            total += ad_row_term(L, row[y], y, m, s);
            ad_row_grad(L, row, 0, 1, y, m, s);
        }
        total = warp_sum(total);
    } else {
        // One warp per row (every lane ends with the same total).
        for (int i = warp; i < b; i += 8) {
            float* row = gs + (size_t)i * C;
            const int y = ys[i];
            const float m = warp_max(ad_row_max(L, row, lane, 32));
            const float s = warp_sum(ad_row_sum(L, row, lane, 32, m));
            total += ad_row_term(L, row[y], y, m, s);
            syncwarp(); // every lane has read row[y] before any lane rewrites the row
            ad_row_grad(L, row, lane, 32, y, m, s);
        }
    }
    if (lane == 0) partial[warp] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int w = 0; w < 8; ++w) sum += partial[w];
        float loss = sum / (kind == 0 ? 2.0f * (float)b : (float)b);
        if (prox) {
            float sq = 0.0f;
            for (int c = 0; c < prox_chunks; ++c) sq += prox[(size_t)slot * prox_chunks + c];
            loss += 0.5f * mu * sq;
        }
        out[2 * slot] = loss;
    }
}

// ---------------------------------------------------------------------------------------------
// Row-wise backward, one warp per row (grid ceil(rows / 8), 256 threads): ∂N = ∂G·T, then
// ∂Y = (∂N − N (N·∂N)) / r, ∂A = ∂Y ⊙ X, ∂Z = A ⊙ (∂A − A·∂A), written to dz.
extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_rows_bwd(const float* dg, const float* texts, const float* a, const float* x,
                        const float* n, const float* rnorm, float* dz, int rows, int d,
                        int classes) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + warp;
    if (row >= rows) return; // whole warp
    const size_t o = (size_t)row * d;
    const float* dgr = dg + (size_t)row * classes;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) {
        float dn = 0.0f;
        for (int c = 0; c < classes; ++c) dn += dgr[c] * texts[(size_t)c * d + j];
        dz[o + j] = dn;
        dot += n[o + j] * dn;
    }
    dot = warp_sum(dot);
    const float r = rnorm[row];
    float ad = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float da = (dz[o + j] - n[o + j] * dot) / r * x[o + j];
        dz[o + j] = da;
        ad += a[o + j] * da;
    }
    ad = warp_sum(ad);
    for (int j = lane; j < d; j += 32) dz[o + j] = a[o + j] * (dz[o + j] - ad);
}

// ---------------------------------------------------------------------------------------------
// ∂U = (∂Z W2) ⊙ (1 − H²) over row tiles; grid (tiles, ceil(d / 64)), 256 threads.
template <int BM>
FC_DEVICE void ad_dhidden(unsigned char* smem, const float* dz, const float* h, float* du,
                          const float* params, const int* slot_client, const int* tiles, int d,
                          int P) {
    const int slot = tiles[3 * blockIdx.x], row0 = tiles[3 * blockIdx.x + 1];
    const int rows = tiles[3 * blockIdx.x + 2];
    const int n0 = blockIdx.y * AD_BN;
    const float* w2 = params + (size_t)slot_client[slot] * P + (size_t)d * d + d;
    float acc[BM / 16][4];
    // B(n = j, k) = W2[k, j]: W2 read down its columns.
    ad_gemm_tile<BM, true, false>(acc, smem, dz + (size_t)row0 * d, d, rows, w2, d, d, -1, d, 0,
                               n0);
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int r = 0; r < BM / 16; ++r) {
        const int i = ty * (BM / 16) + r;
        if (i >= rows) continue;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = n0 + tx * 4 + c;
            if (j >= d) continue;
            const size_t o = (size_t)(row0 + i) * d + j;
            const float hv = h[o];
            du[o] = acc[r][c] * (1.0f - hv * hv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_dhidden_m32(const float* dz, const float* h, float* du, const float* params,
                           const int* slot_client, const int* tiles, int d, int P) {
    FC_DYNAMIC_SMEM(smem);
    ad_dhidden<32>(smem, dz, h, du, params, slot_client, tiles, d, P);
}

extern "C" __global__ void __launch_bounds__(256, 2)
    fc_adapter_dhidden_m64(const float* dz, const float* h, float* du, const float* params,
                           const int* slot_client, const int* tiles, int d, int P) {
    FC_DYNAMIC_SMEM(smem);
    ad_dhidden<64>(smem, dz, h, du, params, slot_client, tiles, d, P);
}

// ---------------------------------------------------------------------------------------------
// Weight gradients: per client and matrix, a 64 × 64 tile of ∂W = ∂Oᵀ I over the client's
// rows, with the virtual ones column of I giving the bias gradient:
//   mat 0: ∂[W1 | b1] = ∂Uᵀ [X | 1]     mat 1: ∂[W2 | b2] = ∂Zᵀ [H | 1]
// written to grad[slot, :] in the parameter layout. grid (A · 2 · mt · nt) with mt = ⌈d/64⌉,
// nt = ⌈(d+1)/64⌉, 256 threads, AdTileSmem<64>::BYTES + 16 bytes of dynamic shared memory.
// flags[slot · 2·mt·nt + tile] = 1 when the tile holds a non-finite value, else 0.
extern "C" __global__ void __launch_bounds__(256, 2)
    fc_adapter_wgrad(const float* du, const float* x, const float* dz, const float* h,
                     float* grad, int* flags, const int* slot_row0, const int* slot_rows, int d,
                     int P) {
    FC_DYNAMIC_SMEM(smem);
    int* bad = (int*)(smem + AdTileSmem<64>::BYTES);
    const int mt = (d + 63) / 64, nt = (d + 1 + 63) / 64, per_mat = mt * nt;
    const int tile = blockIdx.x % (2 * per_mat), slot = blockIdx.x / (2 * per_mat);
    const int mat = tile / per_mat, m0 = (tile % per_mat) / nt * 64, n0 = tile % nt * 64;
    const size_t row0 = (size_t)slot_row0[slot];
    const int b = slot_rows[slot];
    const float* o = (mat ? dz : du) + row0 * d; // ∂ of the layer output, [b, d]
    const float* in = (mat ? h : x) + row0 * d;  // the layer input, [b, d]
    if (threadIdx.x == 0) *bad = 0;
    __syncthreads();
    float acc[4][4];
    ad_gemm_tile<64, false, false>(acc, smem, o, d, d, in, d, d, d, b, m0, n0);
    float* gp = grad + (size_t)slot * P + (mat ? (size_t)d * d + d : 0);
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    bool ok = true;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int i = m0 + ty * 4 + r;
        if (i >= d) continue;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = n0 + tx * 4 + c;
            if (j > d) continue;
            const float v = acc[r][c];
            ok = ok && ad_finite(v);
            gp[j < d ? (size_t)i * d + j : (size_t)d * d + i] = v;
        }
    }
    if (!ok) *bad = 1;
    __syncthreads();
    if (threadIdx.x == 0) flags[(size_t)slot * 2 * per_mat + tile] = *bad;
}

// ---------------------------------------------------------------------------------------------
// FedProx: partial sums of (θ − anchor)² over chunks of 4096 parameters.
// grid (A · chunks), 256 threads, 64 bytes of dynamic shared memory.
#define AD_CHUNK 4096

extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_prox(const float* params, const float* anchor, const int* slot_client, int P,
                    int chunks, float* partials) {
    FC_DYNAMIC_SMEM(smem);
    float* warp_sums = (float*)smem;
    const int slot = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const float* p = params + (size_t)slot_client[slot] * P;
    const int end = imin(P, (chunk + 1) * AD_CHUNK);
    float s = 0.0f;
    for (int e = chunk * AD_CHUNK + threadIdx.x; e < end; e += AD_THREADS) {
        const float diff = p[e] - anchor[e];
        s += diff * diff;
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int w = 0; w < 8; ++w) t += warp_sums[w];
        partials[blockIdx.x] = t;
    }
}

// ---------------------------------------------------------------------------------------------
// Adam (kind 0: L2 penalty g + wd·θ) or AdamW (kind 1: θ·decay first), torch's operation
// order as src/adapter/optim.rs, on chunks of 4096 parameters: grid (A · chunks), 256
// threads, 16 bytes of dynamic shared memory. With an anchor, FedProx's μ(θ − anchor) is added
// to the gradient first. steps[2·slot] = −lr / (1 − β1ᵗ), steps[2·slot + 1] = √(1 − β2ᵗ)
// (computed in f64 on the host). A client whose loss (out[2·slot]) or any gradient tile
// flag is not finite is left unchanged; chunk 0 records out[2·slot + 1] = 0 (stepped), 1
// (loss not finite) or 2 (gradient not finite).
extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_adam(float* params, float* m, float* v, const float* grad, const float* anchor,
                    float mu, const int* slot_client, float* out, const int* flags,
                    int flag_count, const float* steps, int P, int chunks, int kind,
                    float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
                    float weight_decay, float decay) {
    FC_DYNAMIC_SMEM(smem);
    int* status = (int*)smem;
    const int slot = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    if (threadIdx.x == 0) *status = ad_finite(out[2 * slot]) ? 0 : 1;
    __syncthreads();
    int mine = 0;
    for (int f = threadIdx.x; f < flag_count; f += AD_THREADS)
        mine |= flags[(size_t)slot * flag_count + f];
    if (mine && *status == 0) *status = 2; // any writer stores the same value
    __syncthreads();
    const int st = *status;
    if (chunk == 0 && threadIdx.x == 0) out[2 * slot + 1] = (float)st;
    if (st != 0) return; // block-uniform
    const size_t base = (size_t)slot_client[slot] * P;
    const float* gs = grad + (size_t)slot * P;
    const float neg_step = steps[2 * slot], bc2_sqrt = steps[2 * slot + 1];
    const int end = imin(P, (chunk + 1) * AD_CHUNK);
    for (int e = chunk * AD_CHUNK + threadIdx.x; e < end; e += AD_THREADS) {
        float p = params[base + e];
        float g = gs[e];
        if (anchor) g += mu * (p - anchor[e]);
        if (kind == 0) g = g + weight_decay * p;
        else p *= decay;
        float mm = m[base + e], vv = v[base + e];
        mm += one_minus_beta1 * (g - mm);
        vv = vv * beta2 + one_minus_beta2 * g * g;
        const float denom = sqrtf(vv) / bc2_sqrt + eps;
        p += neg_step * mm / denom;
        params[base + e] = p;
        m[base + e] = mm;
        v[base + e] = vv;
    }
}

// ---------------------------------------------------------------------------------------------
// dst[r, e] = src ? src[e] : 0 for r < rows, e < n: the initial parameters of every client, and
// zeroed optimiser moments. grid (rows · ⌈n / 4096⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    fc_adapter_fill(float* dst, const float* src, int n, int rows) {
    const int chunks = (n + AD_CHUNK - 1) / AD_CHUNK;
    const int r = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    if (r >= rows) return;
    const int end = imin(n, (chunk + 1) * AD_CHUNK);
    for (int e = chunk * AD_CHUNK + threadIdx.x; e < end; e += AD_THREADS)
        dst[(size_t)r * n + e] = src ? src[e] : 0.0f;
}

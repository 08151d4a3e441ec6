// Tensor-core GEMM, version 2, with the same contract as version 1 (kernels/gemm.cu):
// out[m, n] = epi(Σ_k A[m, k] · W[n, k]), epi(x) = act(x + bias[n]) + resid[m, n], written as f32
// (out32) and/or fp16 (out16); A [M, K] row stride lda, W [N, K] row stride ldw, any M, N, K;
// bias, resid, out32, out16 may each be null and resid may alias out32.
//
// CPU twin: src/cuda/twins.rs `gemm_epilogue` (the same as version 1's).
//
// Versions (both stay; src/cuda/kernels.rs `GemmTile` picks one, `FEDCLIP_GEMM=v1|v2` for Auto):
//   v1  kernels/gemm.cu  fc_gemm_128x128, fc_gemm_128x128w4, fc_gemm_64x64: K step 32, two
//       cp.async stages, fragments read with 32-bit loads (24 loads per 16 mma at 64×32 a warp).
//   v2  this file        fc_gemm2_128x128 (8 warps of 64×32), fc_gemm2_128x256 (8 warps of
//       64×64): K step 64, three cp.async stages (96 / 144 KiB of dynamic shared memory, over
//       the 48 KiB default: the launch opts in), fragments read with ldmatrix.x4 (6 per 16 mma
//       at 64×32), an XOR-swizzled shared layout (no padding, no bank conflicts), and blocks
//       numbered in groups of GEMM2_GROUP block rows so that consecutive blocks share A and W
//       tiles in L2.
//   Test: FEDCLIP_EMULATE=1 cargo test --release --test gpu_kernels gemm  (every tile of both)
//   Bench: cargo bench --bench gpu_encode -- --no-encode --gemm v1,v2     (TFLOP/s per shape)
//
// As in v1, rows/columns past the edges are zero-filled on load and never stored, and when K,
// lda/ldw or a base address is not a multiple of 8 halves / 16 bytes the tiles are loaded
// element by element instead (same results, slower).
#include "common.cuh"

#define GEMM2_BK 64
#define GEMM2_STAGES 3
// Block rows per group of the block order (see gemm2_block).
#define GEMM2_GROUP 8

// Shared tiles are [rows][64] halves with no padding: a row is 8 chunks of 16 bytes, and chunk
// c of row r is stored at chunk c ^ (r & 7). The 8 rows an ldmatrix matrix reads (same logical
// chunk, 8 consecutive rows) then sit in 8 different 16-byte bank groups, as do the 8 chunks of
// a row that cp.async writes: neither conflicts.
FC_DEVICE int gemm2_swizzle(int row, int chunk) {
    return row * GEMM2_BK + ((chunk ^ (row & 7)) << 3);
}

// Two adjacent f32 outputs, stored as one 8-byte access.
struct __align__(8) gemm2_f32x2 {
    float x, y;
};

// Loads rows [row0, row0 + ROWS) × columns [k0, k0 + 64) of a row-major fp16 matrix into a
// swizzled tile, zero outside [rows_total) × [K).
template <int ROWS, int THREADS>
FC_DEVICE void gemm2_load_tile(half_t* tile, const half_t* g, int ld, int rows_total, int row0,
                               int K, int k0, bool vec) {
    for (int c = threadIdx.x; c < ROWS * 8; c += THREADS) {
        const int r = c >> 3, ch = c & 7;
        const int gr = row0 + r, gk = k0 + ch * 8;
        half_t* dst = tile + gemm2_swizzle(r, ch);
        if (vec) {
            // K % 8 == 0, so a chunk is either wholly inside or wholly outside [0, K).
            const bool ok = gr < rows_total && gk < K;
            cp_async16(dst, ok ? g + (size_t)gr * ld + gk : g, ok);
        } else {
            const bool row_ok = gr < rows_total;
            for (int j = 0; j < 8; ++j) {
                dst[j] = (row_ok && gk + j < K) ? g[(size_t)gr * ld + gk + j] : (half_t)0;
            }
        }
    }
}

// The block's tile (row, column) from a one-dimensional grid: blocks go down a group of
// GEMM2_GROUP block rows column by column, so the blocks running at once share a few W column
// tiles and a few A row tiles instead of sweeping all of W for every row of blocks.
FC_DEVICE void gemm2_block(int M, int N, int BM, int BN, int* bm, int* bn) {
    const int rows = (M + BM - 1) / BM, cols = (N + BN - 1) / BN;
    const int id = blockIdx.x, per_group = GEMM2_GROUP * cols;
    const int first = (id / per_group) * GEMM2_GROUP;
    const int height = imin(rows - first, GEMM2_GROUP);
    const int in_group = id % per_group;
    *bm = (first + in_group % height) * BM;
    *bn = (in_group / height) * BN;
}

// One K step of 64 from a stage: MI×NI mma per 16 of K, fragments through ldmatrix.x4. A: lane l
// gives row l & 15 at chunk l >> 4 (a[0..3]); W: lane l gives row (l & 7) + 8·(l >> 4) at chunk
// (l >> 3) & 1 (b[0..1] of n tiles j and j + 1). Those rows are ≡ l & 7 mod 8 (tiles start at
// multiples of 8), which is the swizzle's key.
template <int MI, int NI, int WM, int WN>
FC_DEVICE void gemm2_step(float acc[MI][NI][4], const half_t* a, const half_t* w, int wm, int wn) {
    const int lane = threadIdx.x & 31, key = lane & 7;
    const half_t* a_row = a + (wm * WM + (lane & 15)) * GEMM2_BK;
    const half_t* w_row = w + (wn * WN + (lane & 7) + ((lane >> 4) << 3)) * GEMM2_BK;
#pragma unroll
    for (int kc = 0; kc < GEMM2_BK / 8; kc += 2) {
        u32 af[MI][4], bf[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i)
            ldmatrix_x4(af[i], a_row + i * 16 * GEMM2_BK + (((kc + (lane >> 4)) ^ key) << 3));
#pragma unroll
        for (int j = 0; j < NI; j += 2)
            ldmatrix_x4(&bf[j][0],
                        w_row + j * 8 * GEMM2_BK + (((kc + ((lane >> 3) & 1)) ^ key) << 3));
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j) mma_16816(acc[i][j], af[i], bf[j]);
    }
}

// acc[i][j][e] is row g (+8 for e ≥ 2), column 2t + (e & 1) of tile (i, j): each thread owns
// column pairs (c, c + 1), stored together as 8 / 4 bytes when N is even and the outputs are
// 8 / 4-byte aligned (then every pair is).
template <int MI, int NI, int WM, int WN>
FC_DEVICE void gemm2_epilogue(const float acc[MI][NI][4], int r0, int c0, const float* bias,
                              const float* resid, float* out32, half_t* out16, int M, int N,
                              int act) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bool pairs = (N & 1) == 0 && ((size_t)out32 & 7) == 0 && ((size_t)out16 & 3) == 0;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = r0 + i * 16 + g + 8 * h;
                const int c = c0 + j * 8 + 2 * t;
                if (r >= M || c >= N) continue;
                float v[2] = {acc[i][j][2 * h], acc[i][j][2 * h + 1]};
                const int n_here = c + 1 < N ? 2 : 1;
                const size_t o = (size_t)r * N + c;
                for (int e = 0; e < n_here; ++e) {
                    if (bias) v[e] += bias[c + e];
                    if (act != FC_ACT_NONE) v[e] = activate(v[e], act);
                    if (resid) v[e] += resid[o + e];
                }
                if (pairs) {
                    if (out32) *(gemm2_f32x2*)(out32 + o) = gemm2_f32x2{v[0], v[1]};
                    if (out16) st32(out16 + o, pack_half2(v[0], v[1]));
                } else {
                    for (int e = 0; e < n_here; ++e) {
                        if (out32) out32[o + e] = v[e];
                        if (out16) out16[o + e] = f2h(v[e]);
                    }
                }
            }
        }
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N>
FC_DEVICE void gemm2_body(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                          const float* resid, float* out32, half_t* out16, int M, int N, int K,
                          int act) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N; // a warp's rows and columns
    constexpr int MI = WM / 16, NI = WN / 8;            // its m16 and n8 tiles
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile");
    constexpr int STAGE_A = BM * GEMM2_BK, STAGE = (BM + BN) * GEMM2_BK; // halves

    FC_DYNAMIC_SMEM(smem);
    half_t* stages = (half_t*)smem; // [GEMM2_STAGES][A tile BM×64, then W tile BN×64]
    const int warp = threadIdx.x >> 5, wm = warp / WARPS_N, wn = warp % WARPS_N;
    int bm, bn;
    gemm2_block(M, N, BM, BN, &bm, &bn);
    const bool vecA = (K & 7) == 0 && (lda & 7) == 0 && ((size_t)A & 15) == 0;
    const bool vecW = (K & 7) == 0 && (ldw & 7) == 0 && ((size_t)W & 15) == 0;

    float acc[MI][NI][4];
    for (int i = 0; i < MI; ++i)
        for (int j = 0; j < NI; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int KT = (K + GEMM2_BK - 1) / GEMM2_BK;
    auto load = [&](int kt) {
        half_t* s = stages + (kt % GEMM2_STAGES) * STAGE;
        gemm2_load_tile<BM, THREADS>(s, A, lda, M, bm, K, kt * GEMM2_BK, vecA);
        gemm2_load_tile<BN, THREADS>(s + STAGE_A, W, ldw, N, bn, K, kt * GEMM2_BK, vecW);
    };
    // Prologue: the first STAGES − 1 tiles in flight, one commit group each (empty past KT, so
    // that the wait below always counts the same number of groups).
    for (int kt = 0; kt < GEMM2_STAGES - 1; ++kt) {
        if (kt < KT) load(kt);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<GEMM2_STAGES - 2>(); // this thread's copies of tile kt have landed
        // ... and everyone's; and every warp is done with tile kt − 1, whose stage the load
        // below refills.
        __syncthreads();
        if (kt + GEMM2_STAGES - 1 < KT) load(kt + GEMM2_STAGES - 1);
        cp_async_commit();
        const half_t* s = stages + (kt % GEMM2_STAGES) * STAGE;
        gemm2_step<MI, NI, WM, WN>(acc, s, s + STAGE_A, wm, wn);
    }
    cp_async_wait<0>(); // nothing may still be writing shared memory when the block exits

    gemm2_epilogue<MI, NI, WM, WN>(acc, bm + wm * WM, bn + wn * WN, bias, resid, out32, out16, M,
                                   N, act);
}

// 128×128 tiles, 8 warps of 64×32. Dynamic shared memory: 3 × 256 × 64 × 2 = 98304 bytes.
extern "C" __global__ void __launch_bounds__(256)
    fc_gemm2_128x128(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                     const float* resid, float* out32, half_t* out16, int M, int N, int K,
                     int act) {
    gemm2_body<128, 128, 2, 4>(A, lda, W, ldw, bias, resid, out32, out16, M, N, K, act);
}

// 128×256 tiles, 8 warps of 64×64: half the shared-memory reads per mma of 128×128, for the
// largest M·N. Dynamic shared memory: 3 × 384 × 64 × 2 = 147456 bytes.
extern "C" __global__ void __launch_bounds__(256)
    fc_gemm2_128x256(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                     const float* resid, float* out32, half_t* out16, int M, int N, int K,
                     int act) {
    gemm2_body<128, 256, 2, 4>(A, lda, W, ldw, bias, resid, out32, out16, M, N, K, act);
}

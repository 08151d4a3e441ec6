// Tensor-core GEMM with a fused epilogue: out[m, n] = epi(Σ_k A[m, k] · W[n, k]).
//
//   A   [M, K] fp16, row stride lda      (activations)
//   W   [N, K] fp16, row stride ldw      (an nn.Linear weight as stored: [out, in])
//   epi(x) = act(x + bias[n]) + resid[m, n], then written as f32 (out32) and/or fp16 (out16),
//   both [M, N] with row stride N. bias, resid, out32, out16 may each be null; resid may alias
//   out32 (in-place residual update: each element is read and written by the same thread).
//
// CPU twin: src/cuda/twins.rs `gemm_epilogue` (ops::linear + ops::activate + ops::add_in_place).
//
// Products use mma.sync m16n8k16 (fp16 in, f32 accumulate). Each block computes a BM×BN tile,
// stepping K by 32 through a two-stage shared-memory pipeline filled by cp.async. Any M, N, K
// are handled: rows/columns past the edge are zero-filled on load and never stored. When K,
// lda/ldw or a base address is not a multiple of 8 halves / 16 bytes, tiles are loaded
// element by element instead (same results, slower).
#include "common.cuh"

#define GEMM_BK 32
// Shared-memory row stride in halves: 80 bytes, so the 8 rows × 4 words a fragment load touches
// fall in 32 distinct banks.
#define GEMM_LDS (GEMM_BK + 8)

// Loads rows [row0, row0 + ROWS) × columns [k0, k0 + 32) of a row-major fp16 matrix into a
// shared-memory tile [ROWS][GEMM_LDS], zero outside [rows_total) × [K).
template <int ROWS, int THREADS>
FC_DEVICE void gemm_load_tile(half_t* tile, const half_t* g, int ld, int rows_total, int row0,
                              int K, int k0, bool vec) {
    // 4 chunks of 8 halves per row.
    for (int c = threadIdx.x; c < ROWS * 4; c += THREADS) {
        const int r = c >> 2, kc = (c & 3) * 8;
        const int gr = row0 + r, gk = k0 + kc;
        half_t* dst = tile + r * GEMM_LDS + kc;
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

template <int BM, int BN, int WARPS_M, int WARPS_N>
FC_DEVICE void gemm_body(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                         const float* resid, float* out32, half_t* out16, int M, int N, int K,
                         int act) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M; // rows per warp
    constexpr int WN = BN / WARPS_N; // columns per warp
    constexpr int MI = WM / 16;      // m16 tiles per warp
    constexpr int NI = WN / 8;       // n8 tiles per warp
    static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile");

    FC_DYNAMIC_SMEM(smem);
    half_t* sA = (half_t*)smem;           // [2][BM][GEMM_LDS]
    half_t* sW = sA + 2 * BM * GEMM_LDS;  // [2][BN][GEMM_LDS]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    const bool vecA = (K & 7) == 0 && (lda & 7) == 0 && ((size_t)A & 15) == 0;
    const bool vecW = (K & 7) == 0 && (ldw & 7) == 0 && ((size_t)W & 15) == 0;

    float acc[MI][NI][4];
    for (int i = 0; i < MI; ++i)
        for (int j = 0; j < NI; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int KT = (K + GEMM_BK - 1) / GEMM_BK;
    gemm_load_tile<BM, THREADS>(sA, A, lda, M, bm, K, 0, vecA);
    gemm_load_tile<BN, THREADS>(sW, W, ldw, N, bn, K, 0, vecW);
    cp_async_commit();

    for (int kt = 0; kt < KT; ++kt) {
        if (kt + 1 < KT) {
            // Stage (kt + 1) & 1 was last read in iteration kt − 1, which ended in a barrier.
            const int s = (kt + 1) & 1;
            gemm_load_tile<BM, THREADS>(sA + s * BM * GEMM_LDS, A, lda, M, bm, K,
                                        (kt + 1) * GEMM_BK, vecA);
            gemm_load_tile<BN, THREADS>(sW + s * BN * GEMM_LDS, W, ldw, N, bn, K,
                                        (kt + 1) * GEMM_BK, vecW);
            cp_async_commit();
            cp_async_wait<1>(); // this thread's copies for stage kt & 1 have landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); // ... and everyone else's

        const half_t* a = sA + (kt & 1) * BM * GEMM_LDS;
        const half_t* w = sW + (kt & 1) * BN * GEMM_LDS;
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            u32 af[MI][4], bf[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const half_t* r0 = a + (wm * WM + i * 16 + g) * GEMM_LDS + kk + 2 * t;
                const half_t* r8 = r0 + 8 * GEMM_LDS;
                af[i][0] = ld32(r0);
                af[i][1] = ld32(r8);
                af[i][2] = ld32(r0 + 8);
                af[i][3] = ld32(r8 + 8);
            }
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const half_t* n0 = w + (wn * WN + j * 8 + g) * GEMM_LDS + kk + 2 * t;
                bf[j][0] = ld32(n0);
                bf[j][1] = ld32(n0 + 8);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma_16816(acc[i][j], af[i], bf[j]);
        }
        __syncthreads(); // the stage just read may be refilled next iteration
    }

    // Epilogue: acc[i][j][e] is row g (+8 for e ≥ 2), column 2t + (e & 1) of tile (i, j).
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = bm + wm * WM + i * 16 + g + (e >= 2 ? 8 : 0);
                const int c = bn + wn * WN + j * 8 + 2 * t + (e & 1);
                if (r < M && c < N) {
                    float v = acc[i][j][e];
                    if (bias) v += bias[c];
                    if (act != FC_ACT_NONE) v = activate(v, act);
                    const size_t o = (size_t)r * N + c;
                    if (resid) v += resid[o];
                    if (out32) out32[o] = v;
                    if (out16) out16[o] = f2h(v);
                }
            }
        }
    }
}

// 128×128 tiles, 8 warps of 64×32: for large M·N. Dynamic shared memory: 40960 bytes.
extern "C" __global__ void __launch_bounds__(256)
    fc_gemm_128x128(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                    const float* resid, float* out32, half_t* out16, int M, int N, int K, int act) {
    gemm_body<128, 128, 2, 4>(A, lda, W, ldw, bias, resid, out32, out16, M, N, K, act);
}

// 128×128 tiles, 4 warps of 64×64: half the shared-memory traffic per mma of the 8-warp
// variant, at ~2× the registers. Which is faster is for benches/gpu_encode.rs to say.
extern "C" __global__ void __launch_bounds__(128)
    fc_gemm_128x128w4(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                      const float* resid, float* out32, half_t* out16, int M, int N, int K,
                      int act) {
    gemm_body<128, 128, 2, 2>(A, lda, W, ldw, bias, resid, out32, out16, M, N, K, act);
}

// 64×64 tiles, 4 warps of 32×32: when 128×128 tiles would leave SMs idle. 20480 bytes.
extern "C" __global__ void __launch_bounds__(128)
    fc_gemm_64x64(const half_t* A, int lda, const half_t* W, int ldw, const float* bias,
                  const float* resid, float* out32, half_t* out16, int M, int N, int K, int act) {
    gemm_body<64, 64, 2, 2>(A, lda, W, ldw, bias, resid, out32, out16, M, N, K, act);
}

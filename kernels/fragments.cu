// A self-check of the tensor-core fragment loads (tests only): one warp computes the same
// 16×16×16 product D = A·Wᵀ four ways, so that tests/gpu_kernels.rs can require them to agree
// bit for bit (the same fragments give the same mma) and to match the CPU:
//
//   out[0]: 32-bit loads, as gemm.cu (v1) reads its fragments
//   out[1]: ldmatrix.x4 for A and for W (B = Wᵀ needs no transpose: W's rows are B's columns)
//   out[2]: ldmatrix.x4 for A, ldmatrix.x4.trans for B from Wᵀ stored K-major (`bt`)
//   out[3]: two ldmatrix.x2 for A, ldmatrix.x2.trans per n8 tile of B from `bt`
//
//   a [16, 16], w [16 (n), 16 (k)], bt [16 (k), 16 (n)] = wᵀ, fp16 row-major;
//   out [4][16, 16] f32 row-major. One block of 32 threads, FRAG_SMEM bytes of shared memory.
//
// CPU twin: ops::linear (through src/cuda/twins.rs `gemm_epilogue` without bias or activation).
#include "common.cuh"

// Row stride in shared memory: 24 halves = 48 bytes, so every row starts 16-byte aligned.
#define FRAG_LDS 24
#define FRAG_SMEM (3 * 16 * FRAG_LDS * 2)

FC_DEVICE void frag_store(float* out, int n0, const float d[4]) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) out[(g + (e >= 2 ? 8 : 0)) * 16 + n0 + 2 * t + (e & 1)] = d[e];
}

FC_DEVICE void frag_zero(float d[2][4]) {
    for (int j = 0; j < 2; ++j)
        for (int e = 0; e < 4; ++e) d[j][e] = 0.0f;
}

extern "C" __global__ void __launch_bounds__(32)
    fc_check_fragments(const half_t* a, const half_t* w, const half_t* bt, float* out) {
    FC_DYNAMIC_SMEM(smem);
    half_t* sa = (half_t*)smem;
    half_t* sw = sa + 16 * FRAG_LDS;
    half_t* sbt = sw + 16 * FRAG_LDS;
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int i = lane; i < 256; i += 32) {
        sa[(i >> 4) * FRAG_LDS + (i & 15)] = a[i];
        sw[(i >> 4) * FRAG_LDS + (i & 15)] = w[i];
        sbt[(i >> 4) * FRAG_LDS + (i & 15)] = bt[i];
    }
    __syncthreads();
    float d[2][4];

    // 0: 32-bit loads (the v1 path).
    u32 af[4], bf[2][2];
    const half_t* r0 = sa + g * FRAG_LDS + 2 * t;
    af[0] = ld32(r0);
    af[1] = ld32(r0 + 8 * FRAG_LDS);
    af[2] = ld32(r0 + 8);
    af[3] = ld32(r0 + 8 * FRAG_LDS + 8);
    for (int j = 0; j < 2; ++j) {
        const half_t* n0 = sw + (j * 8 + g) * FRAG_LDS + 2 * t;
        bf[j][0] = ld32(n0);
        bf[j][1] = ld32(n0 + 8);
    }
    frag_zero(d);
    for (int j = 0; j < 2; ++j) mma_16816(d[j], af, bf[j]);
    for (int j = 0; j < 2; ++j) frag_store(out, 8 * j, d[j]);

    // 1: ldmatrix.x4. A: lane l gives row l & 15 at k 8·(l >> 4), so matrices 0..3 are
    // (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = a[0..3]. W: lane l gives
    // n row (l & 7) + 8·(l >> 4) at k 8·((l >> 3) & 1): b[0], b[1] of n tile 0, then of tile 1.
    u32 wf[4];
    ldmatrix_x4(af, sa + (lane & 15) * FRAG_LDS + 8 * (lane >> 4));
    ldmatrix_x4(wf, sw + ((lane & 7) + 8 * (lane >> 4)) * FRAG_LDS + 8 * ((lane >> 3) & 1));
    frag_zero(d);
    mma_16816(d[0], af, wf);
    mma_16816(d[1], af, wf + 2);
    for (int j = 0; j < 2; ++j) frag_store(out + 256, 8 * j, d[j]);

    // 2: B from Bᵀ's K-major copy with .trans: lane l gives k row (l & 7) + 8·((l >> 3) & 1)
    // at n 8·(l >> 4): the same four matrices, transposed on the way.
    ldmatrix_x4_trans(wf, sbt + ((lane & 7) + 8 * ((lane >> 3) & 1)) * FRAG_LDS + 8 * (lane >> 4));
    frag_zero(d);
    mma_16816(d[0], af, wf);
    mma_16816(d[1], af, wf + 2);
    for (int j = 0; j < 2; ++j) frag_store(out + 512, 8 * j, d[j]);

    // 3: .x2 (lanes 0-15 give addresses): A's k 0-7 then k 8-15; B per n8 tile.
    ldmatrix_x2(af, sa + (lane & 15) * FRAG_LDS);
    ldmatrix_x2(af + 2, sa + (lane & 15) * FRAG_LDS + 8);
    frag_zero(d);
    for (int j = 0; j < 2; ++j) {
        ldmatrix_x2_trans(bf[j], sbt + (lane & 15) * FRAG_LDS + 8 * j);
        mma_16816(d[j], af, bf[j]);
    }
    for (int j = 0; j < 2; ++j) frag_store(out + 768, 8 * j, d[j]);
}

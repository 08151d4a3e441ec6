// Multi-head attention, version 2 of the head-dim-64 tensor-core kernel, with the same contract
// as version 1 (`fc_attention_hd64` in kernels/attention.cu): q, k, v rows (b·seq + i) with
// row stride ld_in, head h in columns [64h, 64h + 64); out [rows, ld_out]; optional causal mask;
// fp16 in/out, scores and softmax in f32; ld_in, ld_out multiples of 8 and q, k, v, out 16-byte
// aligned (checked on the host).
//
// CPU twin: src/model/ops.rs `attention` (the same as version 1's).
//
// Versions (both stay; src/cuda/kernels.rs `AttentionKernel` picks one, v1 under Auto):
//   v1  fc_attention_hd64   K and V loaded with plain 16-byte loads into one buffer, V stored
//       transposed by scalar stores (8-way bank conflicts), fragments read with 32-bit loads.
//   v2  fc_attention2_hd64  K/V tiles double buffered with cp.async (tile i + 1 lands while
//       tile i is computed), V kept row-major and read with ldmatrix.x4.trans (no transposing
//       stores), Q and K fragments with ldmatrix.x4; 144-byte rows, so every ldmatrix is free
//       of bank conflicts. 46080 bytes of dynamic shared memory (no opt-in needed).
//   Test: FEDCLIP_EMULATE=1 cargo test --release --test gpu_kernels attention
//
// A block takes 64 queries of one (sequence, head), 4 warps × 16 query rows, and walks the keys
// 64 at a time: S = Q·Kᵀ by mma.sync, an online softmax in f32 registers, P rounded to fp16,
// O += P·V. Keys past `seq` (and, causal, past the query) are masked; their K and V rows are
// zero-filled by cp.async so no garbage can reach a product.
// grid (ceil(seq / 64), batch·heads), 128 threads.
#include "common.cuh"

#define FA2_TILE 64 // queries per block, keys per step
#define FA2_LD 72   // shared row stride in halves: 144 bytes, 8 rows hit 8 bank groups
#define FA2_TILE_HALVES (FA2_TILE * FA2_LD)

// Rows [r0, r0 + 64) × this head's 64 columns of a row-major fp16 matrix into a [64][FA2_LD]
// tile by cp.async, rows at or past `seq` zero-filled.
FC_DEVICE void attn2_load_tile(half_t* tile, const half_t* x, int ld, size_t row0, int r0,
                               int seq, int col) {
    for (int c = threadIdx.x; c < FA2_TILE * 8; c += 128) {
        const int r = c >> 3, dc = (c & 7) * 8;
        const bool ok = r0 + r < seq;
        cp_async16(tile + r * FA2_LD + dc, ok ? x + (row0 + r0 + r) * ld + col + dc : x, ok);
    }
}

// S = Q·Kᵀ for this warp's 16 rows × 64 keys (s[j]: keys 8j .. 8j + 7 of the tile). K's rows
// are Bᵀ's columns, so plain ldmatrix: lane l gives key (l & 7) + 8·(l >> 4) at dims
// 16kk + 8·((l >> 3) & 1), which is b[0..1] of key tiles j and j + 1.
FC_DEVICE void attn2_scores(float s[8][4], const u32 qa[4][4], const half_t* sK) {
    const int lane = threadIdx.x & 31;
    const half_t* row = sK + ((lane & 7) + ((lane >> 4) << 3)) * FA2_LD + (((lane >> 3) & 1) << 3);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            u32 bk[4];
            ldmatrix_x4(bk, row + j * 8 * FA2_LD + kk * 16);
            mma_16816(s[j], qa[kk], bk);
            mma_16816(s[j + 1], qa[kk], bk + 2);
        }
    }
}

// The online softmax of one key tile: masks and scales s, turns it into probabilities against
// the new running maxima m[0..1] (rows g, g + 8), rescales the sums l and the output o.
FC_DEVICE void attn2_softmax(float s[8][4], float m[2], float l[2], float o[8][4], int kb,
                             int seq, bool causal, int qi0, float scale) {
    const int t = threadIdx.x & 3;
    float mx[2] = {FC_NEG_BIG, FC_NEG_BIG};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = kb + j * 8 + 2 * t + (e & 1);
            const int qi = qi0 + (e < 2 ? 0 : 8);
            const bool ok = key < seq && (!causal || key <= qi);
            s[j][e] = ok ? s[j][e] * scale : FC_NEG_BIG;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
        }
    }
    float c[2], rs[2] = {0.0f, 0.0f};
    for (int h = 0; h < 2; ++h) {
        // Across the 4 lanes sharing a row (lanes 4g .. 4g + 3).
        mx[h] = fmaxf(mx[h], shfl_xor(mx[h], 1));
        mx[h] = fmaxf(mx[h], shfl_xor(mx[h], 2));
        const float mn = fmaxf(m[h], mx[h]);
        c[h] = expf(m[h] - mn); // rescales the earlier tiles
        m[h] = mn;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = s[j][e] == FC_NEG_BIG ? 0.0f : expf(s[j][e] - m[e >> 1]);
            s[j][e] = p;
            rs[e >> 1] += p;
        }
    }
    for (int h = 0; h < 2; ++h) {
        rs[h] += shfl_xor(rs[h], 1);
        rs[h] += shfl_xor(rs[h], 2);
        l[h] = l[h] * c[h] + rs[h];
    }
#pragma unroll
    for (int dn = 0; dn < 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dn][e] *= c[e >> 1];
}

// O += P·V for 64 keys. P's accumulator layout (key tiles 2kc, 2kc + 1) is the A-fragment
// layout of P[16 rows][16 keys]. V is row-major [key][dim], i.e. B = V stored K-major, so
// ldmatrix.x4.trans: lane l gives key 16kc + (l & 7) + 8·((l >> 3) & 1) at dims
// 8dn + 8·(l >> 4), which is b[0..1] of dim tiles dn and dn + 1.
FC_DEVICE void attn2_pv(float o[8][4], const float s[8][4], const half_t* sV) {
    const int lane = threadIdx.x & 31;
    const half_t* row = sV + ((lane & 7) + (((lane >> 3) & 1) << 3)) * FA2_LD + ((lane >> 4) << 3);
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
        const u32 pa[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]),
                           pack_half2(s[2 * kc][2], s[2 * kc][3]),
                           pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                           pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
        for (int dn = 0; dn < 8; dn += 2) {
            u32 bv[4];
            ldmatrix_x4_trans(bv, row + kc * 16 * FA2_LD + dn * 8);
            mma_16816(o[dn], pa, bv);
            mma_16816(o[dn + 1], pa, bv + 2);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    fc_attention2_hd64(const half_t* q, const half_t* k, const half_t* v, int ld_in, half_t* out,
                       int ld_out, int seq, int heads, int causal, float scale) {
    FC_DYNAMIC_SMEM(smem);
    half_t* sQ = (half_t*)smem;               // [64 queries][FA2_LD]
    half_t* sK = sQ + FA2_TILE_HALVES;        // [2][64 keys][FA2_LD]
    half_t* sV = sK + 2 * FA2_TILE_HALVES;    // [2][64 keys][FA2_LD], row-major like K
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads;
    const int q0 = blockIdx.x * FA2_TILE, col = h * 64;
    const size_t row0 = (size_t)b * seq;
    const int kend = causal ? imin(seq, q0 + FA2_TILE) : seq;

    attn2_load_tile(sQ, q, ld_in, row0, q0, seq, col);
    attn2_load_tile(sK, k, ld_in, row0, 0, seq, col);
    attn2_load_tile(sV, v, ld_in, row0, 0, seq, col);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // This warp's 16 query rows as A fragments (4 steps of 16 dims): lane l gives row l & 15
    // at dims 16kk + 8·(l >> 4).
    u32 qa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
        ldmatrix_x4(qa[kk], sQ + (warp * 16 + (lane & 15)) * FA2_LD + kk * 16 + ((lane >> 4) << 3));
    const int qi0 = q0 + warp * 16 + (lane >> 2); // query of fragment row g (and g + 8: +8)

    float m[2] = {FC_NEG_BIG, FC_NEG_BIG}, l[2] = {0.0f, 0.0f};
    float o[8][4]; // 16 rows × 64 dims: 8 n8 tiles
#pragma unroll
    for (int dn = 0; dn < 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dn][e] = 0.0f;

    for (int it = 0, kb = 0; kb < kend; ++it, kb += FA2_TILE) {
        const int cur = it & 1;
        // The other buffer was last read in iteration it − 1, which ended in a barrier.
        if (kb + FA2_TILE < kend) {
            attn2_load_tile(sK + (cur ^ 1) * FA2_TILE_HALVES, k, ld_in, row0, kb + FA2_TILE, seq,
                            col);
            attn2_load_tile(sV + (cur ^ 1) * FA2_TILE_HALVES, v, ld_in, row0, kb + FA2_TILE, seq,
                            col);
        }
        cp_async_commit();
        float s[8][4];
        attn2_scores(s, qa, sK + cur * FA2_TILE_HALVES);
        attn2_softmax(s, m, l, o, kb, seq, causal != 0, qi0, scale);
        attn2_pv(o, s, sV + cur * FA2_TILE_HALVES);
        cp_async_wait<0>(); // this thread's copies of the next tile have landed
        __syncthreads();    // ... everyone's, and no warp still reads the current buffer
    }

    const int t = lane & 3;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int qi = qi0 + 8 * hf;
        if (qi >= seq) continue;
        const float inv = 1.0f / l[hf];
#pragma unroll
        for (int dn = 0; dn < 8; ++dn)
            st32(out + (row0 + qi) * ld_out + col + dn * 8 + 2 * t,
                 pack_half2(o[dn][2 * hf] * inv, o[dn][2 * hf + 1] * inv));
    }
}

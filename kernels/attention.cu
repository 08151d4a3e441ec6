// Multi-head scaled dot-product attention for short sequences (CLIP: 50, 197, 257, 577 image
// tokens; ≤ 77 text tokens, causal), fp16 in/out, scores and softmax in f32.
//
//   q, k, v  rows (b·seq + i) with row stride ld_in; head h owns columns [h·hd, (h+1)·hd).
//            With the fused QKV projection q, k, v point into one [rows, 3·width] buffer at
//            column offsets 0, width, 2·width.
//   out      [rows, ld_out], same column layout.
//   causal   query i sees keys j ≤ i (the text tower).
//
// CPU twin: src/model/ops.rs `attention` (f32 throughout).
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Any head dim: one warp per query row, the row's scores kept in shared memory.
// grid (ceil(seq / 8), batch·heads), 256 threads, dynamic shared memory 4·8·(hd + seq) bytes.
// Simple and obviously correct; the tiny test models (head dims 8, 10, 16) and any shape the
// tensor-core kernel below does not take run here.
extern "C" __global__ void __launch_bounds__(256)
    fc_attention_rows(const half_t* q, const half_t* k, const half_t* v, int ld_in, half_t* out,
                      int ld_out, int seq, int heads, int head_dim, int causal, float scale) {
    FC_DYNAMIC_SMEM(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* qs = (float*)smem + warp * head_dim;          // [8][head_dim]
    float* sc = (float*)smem + 8 * head_dim + warp * seq; // [8][seq]
    const int b = blockIdx.y / heads, h = blockIdx.y % heads;
    const int i = blockIdx.x * 8 + warp;
    if (i >= seq) return; // whole warp; only warp-level synchronisation below
    const size_t row0 = (size_t)b * seq;
    const int col = h * head_dim;

    for (int d = lane; d < head_dim; d += 32) qs[d] = h2f(q[(row0 + i) * ld_in + col + d]);
    syncwarp();
    const int nk = causal ? i + 1 : seq;
    float mx = FC_NEG_BIG;
    for (int j = lane; j < nk; j += 32) {
        const half_t* kr = k + (row0 + j) * ld_in + col;
        float s = 0.0f;
        for (int d = 0; d < head_dim; ++d) s += qs[d] * h2f(kr[d]);
        s *= scale;
        sc[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < nk; j += 32) {
        const float p = expf(sc[j] - mx);
        sc[j] = p;
        sum += p;
    }
    sum = warp_sum(sum);
    syncwarp(); // every lane's probabilities are written before any lane reads them all
    const float inv = 1.0f / sum;
    for (int d = lane; d < head_dim; d += 32) {
        const half_t* vc = v + row0 * ld_in + col + d;
        float acc = 0.0f;
        for (int j = 0; j < nk; ++j) acc += sc[j] * h2f(vc[(size_t)j * ld_in]);
        out[(row0 + i) * ld_out + col + d] = f2h(acc * inv);
    }
}

// ---------------------------------------------------------------------------------------------
// Head dim 64 on tensor cores, flash-attention style: a block takes 64 queries of one
// (sequence, head), 4 warps × 16 query rows; it walks the keys 64 at a time, S = Q·Kᵀ by
// mma.sync, an online softmax in f32 registers (running max and sum per row), P rounded to fp16
// and O += P·V by mma.sync. Keys past `seq` (and, causal, past the query) are masked; their K
// and V rows are zero-filled so no garbage can reach a product.
// grid (ceil(seq / 64), batch·heads), 128 threads, 27648 bytes of dynamic shared memory.
// Requires: ld_in, ld_out multiples of 8 and q, k, v, out 16-byte aligned (checked on the host).
#define FA_Q 64   // queries per block
#define FA_K 64   // keys per step
#define FA_LD 72  // shared row stride in halves (144 bytes: conflict-free fragment reads)

extern "C" __global__ void __launch_bounds__(128)
    fc_attention_hd64(const half_t* q, const half_t* k, const half_t* v, int ld_in, half_t* out,
                      int ld_out, int seq, int heads, int causal, float scale) {
    FC_DYNAMIC_SMEM(smem);
    half_t* sQ = (half_t*)smem;   // [64 queries][FA_LD]
    half_t* sK = sQ + FA_Q * FA_LD;  // [64 keys][FA_LD]
    half_t* sVt = sK + FA_K * FA_LD; // [64 dims][FA_LD]: V transposed, keys along the row

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads;
    const int q0 = blockIdx.x * FA_Q;
    const size_t row0 = (size_t)b * seq;
    const int col = h * 64;

    // Q tile: 64 rows × 8 chunks of 8 halves.
    for (int c = tid; c < FA_Q * 8; c += 128) {
        const int r = c >> 3, dc = (c & 7) * 8;
        u32x4 val = {0u, 0u, 0u, 0u};
        if (q0 + r < seq) val = *(const u32x4*)(q + (row0 + q0 + r) * ld_in + col + dc);
        *(u32x4*)(sQ + r * FA_LD + dc) = val;
    }
    __syncthreads();

    // This warp's 16 query rows as A fragments, 4 steps of 16 over the head dim.
    const int lr = warp * 16 + g; // local row of fragment rows g (and g + 8)
    u32 qa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const half_t* r0 = sQ + lr * FA_LD + kk * 16 + 2 * t;
        qa[kk][0] = ld32(r0);
        qa[kk][1] = ld32(r0 + 8 * FA_LD);
        qa[kk][2] = ld32(r0 + 8);
        qa[kk][3] = ld32(r0 + 8 * FA_LD + 8);
    }
    const int qi0 = q0 + lr, qi1 = q0 + lr + 8; // global query indices of rows g, g + 8

    float m0 = FC_NEG_BIG, m1 = FC_NEG_BIG; // running maxima
    float l0 = 0.0f, l1 = 0.0f;             // running sums of exp
    float o[8][4];                          // 16 rows × 64 dims: 8 n8 tiles
#pragma unroll
    for (int dn = 0; dn < 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dn][e] = 0.0f;

    const int kend = causal ? imin(seq, q0 + FA_Q) : seq;
    for (int kb = 0; kb < kend; kb += FA_K) {
        __syncthreads(); // all warps are done with the previous K and V tiles
        for (int c = tid; c < FA_K * 8; c += 128) {
            const int r = c >> 3, dc = (c & 7) * 8;
            u32x4 kv = {0u, 0u, 0u, 0u}, vv = {0u, 0u, 0u, 0u};
            if (kb + r < seq) {
                kv = *(const u32x4*)(k + (row0 + kb + r) * ld_in + col + dc);
                vv = *(const u32x4*)(v + (row0 + kb + r) * ld_in + col + dc);
            }
            *(u32x4*)(sK + r * FA_LD + dc) = kv;
            const u32 w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                sVt[(dc + 2 * e) * FA_LD + r] = (half_t)(w[e] & 0xffffu);
                sVt[(dc + 2 * e + 1) * FA_LD + r] = (half_t)(w[e] >> 16);
            }
        }
        __syncthreads();

        // S = Q·Kᵀ for 16 rows × 64 keys: s[j] is keys kb + 8j .. 8j + 7.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const half_t* kr = sK + (j * 8 + g) * FA_LD + kk * 16 + 2 * t;
                const u32 bk[2] = {ld32(kr), ld32(kr + 8)};
                mma_16816(s[j], qa[kk], bk);
            }
        }

        // Scale and mask; row maxima over this lane's 16 keys, then across the 4 lanes that
        // share a row (lanes 4g .. 4g + 3).
        float mx0 = FC_NEG_BIG, mx1 = FC_NEG_BIG;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kb + j * 8 + 2 * t + (e & 1);
                const int qi = e < 2 ? qi0 : qi1;
                const bool ok = key < seq && (!causal || key <= qi);
                s[j][e] = ok ? s[j][e] * scale : FC_NEG_BIG;
                if (e < 2) mx0 = fmaxf(mx0, s[j][e]);
                else mx1 = fmaxf(mx1, s[j][e]);
            }
        }
        mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
        mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float c0 = expf(m0 - mn0), c1 = expf(m1 - mn1); // rescale earlier blocks
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float mn = e < 2 ? mn0 : mn1;
                const float p = s[j][e] == FC_NEG_BIG ? 0.0f : expf(s[j][e] - mn);
                s[j][e] = p;
                if (e < 2) rs0 += p;
                else rs1 += p;
            }
        }
        rs0 += shfl_xor(rs0, 1);
        rs0 += shfl_xor(rs0, 2);
        rs1 += shfl_xor(rs1, 1);
        rs1 += shfl_xor(rs1, 2);
        l0 = l0 * c0 + rs0;
        l1 = l1 * c1 + rs1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dn = 0; dn < 8; ++dn) {
            o[dn][0] *= c0;
            o[dn][1] *= c0;
            o[dn][2] *= c1;
            o[dn][3] *= c1;
        }

        // O += P·V, 16 keys per step: the S accumulator layout of key tiles 2kc and 2kc + 1 is
        // exactly the A-fragment layout of P[16 rows][16 keys].
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            const u32 pa[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]),
                               pack_half2(s[2 * kc][2], s[2 * kc][3]),
                               pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int dn = 0; dn < 8; ++dn) {
                const half_t* vr = sVt + (dn * 8 + g) * FA_LD + kc * 16 + 2 * t;
                const u32 bv[2] = {ld32(vr), ld32(vr + 8)};
                mma_16816(o[dn], pa, bv);
            }
        }
    }

    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int dn = 0; dn < 8; ++dn) {
        const int c = col + dn * 8 + 2 * t;
        if (qi0 < seq) st32(out + (row0 + qi0) * ld_out + c, pack_half2(o[dn][0] * inv0, o[dn][1] * inv0));
        if (qi1 < seq) st32(out + (row0 + qi1) * ld_out + c, pack_half2(o[dn][2] * inv1, o[dn][3] * inv1));
    }
}

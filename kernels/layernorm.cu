// LayerNorm over rows of an f32 matrix (the residual stream), statistics in f32.
//
//   out[r, :] = (x[src, :] − mean) / sqrt(var + eps) · gamma + beta,  src = row_index[r] or r
//
// written as f32 (out32) and/or fp16 (out16), both [rows, dim]. `row_index` (may be null)
// gathers rows: the class token of each image, or each prompt's end token, before pooling.
// out32 may alias x when row_index is null (each lane reads its elements before writing them).
//
// CPU twin: src/model/ops.rs `layer_norm` (f64 statistics).
//
// One warp per row, 8 rows per 256-thread block; two passes over the row for mean and
// variance (the row is L1-resident after the first), a third to write. When the width is a
// multiple of 4 and every pointer is 16-byte aligned (8 for out16) — every CLIP width — each
// lane moves 128 bits per access (float4, and 4 halves as 64 bits); otherwise 32. The test is
// the same for every thread of a launch, so no warp diverges on it.
#include "common.cuh"

struct __align__(16) f32x4 {
    float x, y, z, w;
};

struct __align__(8) u32x2 {
    u32 x, y;
};

FC_DEVICE bool aligned_to(const void* p, size_t bytes) { return ((size_t)p & (bytes - 1)) == 0; }

FC_DEVICE float sum4(f32x4 v) { return (v.x + v.y) + (v.z + v.w); }

FC_DEVICE f32x4 normalise4(f32x4 v, f32x4 g, f32x4 b, float mean, float inv) {
    f32x4 y;
    y.x = (v.x - mean) * inv * g.x + b.x;
    y.y = (v.y - mean) * inv * g.y + b.y;
    y.z = (v.z - mean) * inv * g.z + b.z;
    y.w = (v.w - mean) * inv * g.w + b.w;
    return y;
}

// One row, 4 floats per access: `dim4` = dim / 4 float4s.
FC_DEVICE void layernorm_row_vec4(const f32x4* in, int dim4, const f32x4* gamma,
                                  const f32x4* beta, float eps, f32x4* out32, u32x2* out16,
                                  int lane) {
    float s = 0.0f;
    for (int c = lane; c < dim4; c += 32) s += sum4(in[c]);
    const float mean = warp_sum(s) / (float)(4 * dim4);
    float v = 0.0f;
    for (int c = lane; c < dim4; c += 32) {
        const f32x4 a = in[c];
        const float dx = a.x - mean, dy = a.y - mean, dz = a.z - mean, dw = a.w - mean;
        v += (dx * dx + dy * dy) + (dz * dz + dw * dw);
    }
    const float inv = 1.0f / sqrtf(warp_sum(v) / (float)(4 * dim4) + eps);
    for (int c = lane; c < dim4; c += 32) {
        const f32x4 y = normalise4(in[c], gamma[c], beta[c], mean, inv);
        if (out32) out32[c] = y;
        if (out16) {
            u32x2 h;
            h.x = pack_half2(y.x, y.y);
            h.y = pack_half2(y.z, y.w);
            out16[c] = h;
        }
    }
}

// One row, one float per access: any width, any alignment.
FC_DEVICE void layernorm_row_scalar(const float* in, int dim, const float* gamma,
                                    const float* beta, float eps, float* out32, half_t* out16,
                                    int lane) {
    float s = 0.0f;
    for (int c = lane; c < dim; c += 32) s += in[c];
    const float mean = warp_sum(s) / (float)dim;
    float v = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        const float d = in[c] - mean;
        v += d * d;
    }
    const float inv = 1.0f / sqrtf(warp_sum(v) / (float)dim + eps);
    for (int c = lane; c < dim; c += 32) {
        const float y = (in[c] - mean) * inv * gamma[c] + beta[c];
        if (out32) out32[c] = y;
        if (out16) out16[c] = f2h(y);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    fc_layernorm(const float* x, const int* row_index, int rows, int dim, const float* gamma,
                 const float* beta, float eps, float* out32, half_t* out16) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * 8 + warp;
    if (r >= rows) return; // whole warp: no barrier below is shared with other warps
    const float* in = x + (size_t)(row_index ? row_index[r] : r) * dim;
    const size_t o = (size_t)r * dim;
    float* o32 = out32 ? out32 + o : nullptr;
    half_t* o16 = out16 ? out16 + o : nullptr;
    const bool wide = (dim & 3) == 0 && aligned_to(x, 16) && aligned_to(gamma, 16) &&
                      aligned_to(beta, 16) && aligned_to(out32, 16) && aligned_to(out16, 8);
    if (wide) {
        layernorm_row_vec4((const f32x4*)in, dim >> 2, (const f32x4*)gamma,
                           (const f32x4*)beta, eps, (f32x4*)o32, (u32x2*)o16, lane);
    } else {
        layernorm_row_scalar(in, dim, gamma, beta, eps, o32, o16, lane);
    }
}

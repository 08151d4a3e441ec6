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
// variance (the row is L1-resident after the first).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    fc_layernorm(const float* x, const int* row_index, int rows, int dim, const float* gamma,
                 const float* beta, float eps, float* out32, half_t* out16) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * 8 + warp;
    if (r >= rows) return; // whole warp: no barrier below is shared with other warps
    const float* in = x + (size_t)(row_index ? row_index[r] : r) * dim;
    float s = 0.0f;
    for (int c = lane; c < dim; c += 32) s += in[c];
    const float mean = warp_sum(s) / (float)dim;
    float v = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        const float d = in[c] - mean;
        v += d * d;
    }
    const float inv = 1.0f / sqrtf(warp_sum(v) / (float)dim + eps);
    const size_t o = (size_t)r * dim;
    for (int c = lane; c < dim; c += 32) {
        const float y = (in[c] - mean) * inv * gamma[c] + beta[c];
        if (out32) out32[o + c] = y;
        if (out16) out16[o + c] = f2h(y);
    }
}

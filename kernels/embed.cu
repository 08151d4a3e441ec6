// Embedding-side kernels: patch extraction, token assembly, L2 normalisation. All elementwise
// or row-wise, grid-stride loops with 64-bit indices (B·tokens·width exceeds 2³¹ at L/14-336
// batch 1024).
#include "common.cuh"

// One pixel as the fp16 the patch GEMM reads: f32 rounded here (cvt.rn, nearest even), fp16
// (rounded on the host by `half::f16::from_f32`, also nearest even) passed through as is.
FC_DEVICE half_t pixel_to_half(float v) { return f2h(v); }
FC_DEVICE half_t pixel_to_half(half_t v) { return v; }

// pixels [B, C, S, S] (f32 or fp16) → patch rows [B·G·G, kp] fp16 with G = S / P, each row the
// (channel, row, column)-ordered P×P window of the convolution weight, zero-padded from C·P·P
// up to kp (the GEMM's K, a multiple of 8 for vector loads). Pixels past the last whole patch
// are dropped, as the stride-P convolution does.
template <typename T>
FC_DEVICE void im2col_rows(const T* pixels, half_t* out, int batch, int channels, int size,
                           int patch, int kp) {
    const int grid = size / patch, pp = patch * patch, k = channels * pp;
    const size_t total = (size_t)batch * grid * grid * kp;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int col = (int)(idx % kp);
        const size_t row = idx / kp;
        half_t v = 0; // +0.0 in fp16, as f2h(0.0f)
        if (col < k) {
            const int ch = col / pp, py = (col % pp) / patch, px = col % patch;
            const int b = (int)(row / (grid * grid)), cell = (int)(row % (grid * grid));
            const int gy = cell / grid, gx = cell % grid;
            v = pixel_to_half(pixels[(((size_t)b * channels + ch) * size + gy * patch + py) *
                                         size +
                                     gx * patch + px]);
        }
        out[idx] = v;
    }
}

// f32 pixels, rounded to fp16 here (forward_device's f32 path).
// CPU twin: src/model/vision.rs `im2col` (+ zero padding: src/cuda/twins.rs `im2col_padded`).
extern "C" __global__ void __launch_bounds__(256)
    fc_im2col(const float* pixels, half_t* out, int batch, int channels, int size, int patch,
              int kp) {
    im2col_rows(pixels, out, batch, channels, size, patch, kp);
}

// fp16 pixels, already rounded on the host (half the upload of f32): the same output bits.
// CPU twin: as fc_im2col, rounded to fp16.
extern "C" __global__ void __launch_bounds__(256)
    fc_im2col_f16(const half_t* pixels, half_t* out, int batch, int channels, int size,
                  int patch, int kp) {
    im2col_rows(pixels, out, batch, channels, size, patch, kp);
}

// h[b, t, :] = (t == 0 ? class_embedding : patches[b, t − 1, :]) + positions[t, :], f32.
// patches is the patch GEMM's f32 output [B·(T−1), dim].
// CPU twin: src/cuda/twins.rs `vision_embed` (the assembly in src/model/vision.rs).
extern "C" __global__ void __launch_bounds__(256)
    fc_vision_embed(const float* patches, const float* cls, const float* pos, float* h,
                    int batch, int tokens, int dim) {
    const size_t total = (size_t)batch * tokens * dim;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(idx % dim);
        const size_t row = idx / dim;
        const int t = (int)(row % tokens);
        const size_t b = row / tokens;
        const float v = t == 0 ? cls[c] : patches[(b * (tokens - 1) + t - 1) * dim + c];
        h[idx] = v + pos[(size_t)t * dim + c];
    }
}

// h[r, :] = table[ids[r], :] + positions[r % seq, :], f32 (token table kept in f32).
// CPU twin: src/cuda/twins.rs `text_embed` (the loop in src/model/text.rs).
extern "C" __global__ void __launch_bounds__(256)
    fc_text_embed(const int* ids, const float* table, const float* pos, float* h, int rows,
                  int seq, int dim) {
    const size_t total = (size_t)rows * dim;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(idx % dim);
        const int r = (int)(idx / dim);
        h[idx] = table[(size_t)ids[r] * dim + c] + pos[(size_t)(r % seq) * dim + c];
    }
}

// x[r, :] /= max(‖x[r, :]‖₂, eps), in place, f32; one warp per row (torch F.normalize).
// CPU twin: src/cuda/twins.rs `l2_normalize`.
extern "C" __global__ void __launch_bounds__(256)
    fc_l2_normalize(float* x, int rows, int dim, float eps) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * 8 + warp;
    if (r >= rows) return;
    float* row = x + (size_t)r * dim;
    float s = 0.0f;
    for (int c = lane; c < dim; c += 32) s += row[c] * row[c];
    const float inv = 1.0f / fmaxf(sqrtf(warp_sum(s)), eps);
    for (int c = lane; c < dim; c += 32) row[c] *= inv;
}

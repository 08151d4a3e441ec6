// Shared helpers for every kernel in kernels/*.cu.
//
// No CUDA headers are included: NVRTC compiles these files with nothing but its builtins, so a
// machine needs only the driver and libnvrtc. fp16 values travel as raw `unsigned short` bits and
// are converted with `cvt` instructions; tensor-core products use `mma.sync.m16n8k16` directly.
//
// With FEDCLIP_EMU defined (kernels/emu/, the host emulator used to test kernels without a
// GPU), every device-only helper below is replaced by a host implementation of the same
// semantics.
#pragma once

#ifdef FEDCLIP_EMU
#include "emu/emu.h"
#endif

typedef unsigned short half_t; // IEEE fp16 bits
typedef unsigned int u32;

// 16 bytes: one vectorised global/shared access (8 halves or 4 floats).
struct __align__(16) u32x4 {
    u32 x, y, z, w;
};

#define FC_ACT_NONE 0
#define FC_ACT_QUICK_GELU 1
#define FC_ACT_GELU 2

#ifndef FEDCLIP_EMU

#define FC_DEVICE __device__ __forceinline__
// Dynamic shared memory as a byte array, 16-byte aligned; kernels carve it up themselves.
#define FC_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

FC_DEVICE float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

FC_DEVICE half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// D = A·B + D for one 16×8×16 tile: A 16×16 row-major, B 16×8 column-major, f32 accumulators.
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// with g = lane / 4 and t = lane % 4, each register holding two halves, lower index in the low
// 16 bits:
//   a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]  a[2] = A[g][2t+8..]  a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1] d[2..3] = D[g+8][2t..2t+1]
FC_DEVICE void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16: a warp loads 8×8 matrices of halves
// from shared memory, each row 16 contiguous, 16-byte aligned bytes. Lanes 8i..8i+7 give the
// row addresses (rows 0..7) of matrix i (for .x2 only lanes 0..15 are read); register d[i]
// receives matrix i's fragment, with g = lane / 4 and t = lane % 4 (PTX ISA, "Warp-level matrix
// load instruction: ldmatrix"):
//   plain:  d[i] = M_i[g][2t], M_i[g][2t+1]     (lower column in the low 16 bits)
//   .trans: d[i] = M_i[2t][g], M_i[2t+1][g]     (the fragment of the transposed matrix)
// So a plain load of rows of A gives mma_16816's a[] (matrices: rows 0-7/8-15 × k 0-7/8-15),
// and a plain load of rows of W [N, K] gives b[] for B = Wᵀ; .trans serves a K-major B.
FC_DEVICE u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

FC_DEVICE void ldmatrix_x4(u32 d[4], const half_t* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(row))
                 : "memory");
}

FC_DEVICE void ldmatrix_x4_trans(u32 d[4], const half_t* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(row))
                 : "memory");
}

FC_DEVICE void ldmatrix_x2(u32 d[2], const half_t* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(d[0]), "=r"(d[1])
                 : "r"(smem_addr(row))
                 : "memory");
}

FC_DEVICE void ldmatrix_x2_trans(u32 d[2], const half_t* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(d[0]), "=r"(d[1])
                 : "r"(smem_addr(row))
                 : "memory");
}

// Asynchronous 16-byte global → shared copy; when `valid` is false nothing is read and the 16
// destination bytes are zero-filled (src-size 0). `gmem` must still be a mapped address.
FC_DEVICE void cp_async16(void* smem, const void* gmem, bool valid) {
    u32 dst = (u32)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(n)
                 : "memory");
}

FC_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N committed groups are still in flight.
template <int N> FC_DEVICE void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

FC_DEVICE float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

FC_DEVICE void syncwarp() { __syncwarp(); }

#endif // FEDCLIP_EMU

// ---- helpers built on the primitives above (shared by the device and the emulator) ----

FC_DEVICE u32 pack_half2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

FC_DEVICE float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += shfl_xor(v, o);
    return v;
}

FC_DEVICE float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, shfl_xor(v, o));
    return v;
}

// The MLP nonlinearities, as src/model/ops.rs computes them (f32). Not inlined: the GEMM
// epilogue is unrolled over every accumulator, and inlining erff/expf into each copy made the
// GEMM file take 25 s instead of 4 s to compile, for no measurable gain in an epilogue.
#ifdef FEDCLIP_EMU
FC_DEVICE float activate(float v, int act) {
#else
__device__ __noinline__ float activate(float v, int act) {
#endif
    if (act == FC_ACT_QUICK_GELU) return v / (1.0f + expf(-1.702f * v));
    if (act == FC_ACT_GELU) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    return v;
}

// A finite "minus infinity" for masked attention scores: exp(FC_NEG_BIG − m) is 0 for any
// real m, and no inf − inf NaN can arise.
#define FC_NEG_BIG (-1.0e30f)

// Two adjacent halves as one 32-bit word (the address must be 4-byte aligned).
FC_DEVICE u32 ld32(const half_t* p) { return *(const u32*)p; }
FC_DEVICE void st32(half_t* p, u32 v) { *(u32*)p = v; }

FC_DEVICE int imin(int a, int b) { return a < b ? a : b; }

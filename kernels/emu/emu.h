// Host emulation of the CUDA features kernels/*.cu use, so the kernels themselves (not a
// translation of them) can run and be checked on a machine without a GPU. Included by
// common.cuh when FEDCLIP_EMU is defined; the runtime is kernels/emu/emu.cpp.
//
// Each CUDA thread is a cooperative fiber; blocks run one at a time per host thread. A warp
// runs (its lanes meeting at shuffles and mma) until all its lanes wait at __syncthreads, then
// the next warp: every warp gets as far ahead of the others as the barriers allow, so a
// missing __syncthreads shows up as a wrong result. Four schedules, cycled over successive
// launches: warps in forward or reverse order, cp.async copies landing at issue or only when
// waited for. Dynamic shared memory starts as NaN bytes (0xFF), and mma.sync and ldmatrix are
// computed from the PTX ISA's fragment layouts (see mma_16816 and ldmatrix in emu.cpp). Not
// modelled: memory ordering between lanes of a warp without __syncwarp, timing, and bank
// conflicts.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__
#define __restrict__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define FC_DEVICE static inline
#define FC_DYNAMIC_SMEM(name) unsigned char* name = emu::dynamic_smem()
#define __syncthreads() emu::syncthreads()
#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

namespace emu {
struct Dim3 {
    unsigned x, y, z;
};
const Dim3& thread_idx();
const Dim3& block_idx();
const Dim3& block_dim();
const Dim3& grid_dim();
unsigned char* dynamic_smem();
void syncthreads();
void syncwarp();
float shfl_xor(float v, int mask);
void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
void ldmatrix(uint32_t* d, int count, bool trans, const void* row);
void cp_async16(void* dst, const void* src, bool valid);
void cp_async_commit();
void cp_async_wait(int pending);
float h2f(uint16_t h);
uint16_t f2h(float f);
} // namespace emu

FC_DEVICE float h2f(unsigned short h) { return emu::h2f(h); }
FC_DEVICE unsigned short f2h(float f) { return emu::f2h(f); }
FC_DEVICE void mma_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu::mma_16816(d, a, b);
}
FC_DEVICE void ldmatrix_x4(unsigned d[4], const unsigned short* row) {
    emu::ldmatrix(d, 4, false, row);
}
FC_DEVICE void ldmatrix_x4_trans(unsigned d[4], const unsigned short* row) {
    emu::ldmatrix(d, 4, true, row);
}
FC_DEVICE void ldmatrix_x2(unsigned d[2], const unsigned short* row) {
    emu::ldmatrix(d, 2, false, row);
}
FC_DEVICE void ldmatrix_x2_trans(unsigned d[2], const unsigned short* row) {
    emu::ldmatrix(d, 2, true, row);
}
FC_DEVICE void cp_async16(void* smem, const void* gmem, bool valid) {
    emu::cp_async16(smem, gmem, valid);
}
FC_DEVICE void cp_async_commit() { emu::cp_async_commit(); }
template <int N> FC_DEVICE void cp_async_wait() { emu::cp_async_wait(N); }
FC_DEVICE float shfl_xor(float v, int mask) { return emu::shfl_xor(v, mask); }
FC_DEVICE void syncwarp() { emu::syncwarp(); }

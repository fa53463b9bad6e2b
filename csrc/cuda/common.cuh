// Device helpers shared by the CUDA kernels (torch-free). DRAFT: see
// hyperspherical_energy_cuda.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "comhe/pair_energy.h"

namespace comhe {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// One point set on the device, with the per-row arrays the kernels share.
// Packed rows are zero beyond N (up to Npad), so tiles need no bounds checks
// on loads.
template <class T>
struct SetArgs {
  const T* x = nullptr;                     // the input, any strides (elements)
  int64_t N = 0, k = 0, sb = 0, sn = 0, sk = 0;
  int64_t Npad = 0;                         // rows of the packed arrays
  int64_t width = 0;                        // T per packed row: KR (k <= 8) or KP (gram)
  double* r = nullptr;                      // (B, N): sqrt(|x|^2 + eps), 0 for a zero row with eps = 0
  double* a = nullptr;                      // (B, N): eps / (|x|^2 + eps)
  T* packed = nullptr;                      // (B, Npad, width): u (and a for k <= 8), zero padded
  T* h = nullptr;                           // (B, Npad): |u|^2 + a from the rounded u (gram path)
  T* v = nullptr;                           // (B, N, KP): gradient accumulators (gram path)
  double* aref = nullptr;                   // (B, N): the refined pairs' alpha + beta (gram path)
  T* grad = nullptr;                        // output (B, N, k), contiguous, or nullptr
};

template <class T>
__device__ __forceinline__ const T* row_ptr(const SetArgs<T>& S, int64_t b, int64_t i) {
  return S.x + b * S.sb + i * S.sn;
}

__device__ __forceinline__ int64_t imin(int64_t p, int64_t q) { return p < q ? p : q; }

// Sums that the compiler must not contract with a product inside the
// summand (as fsum += 2 rsqrt(d2) into one FMA): the energy would then
// round differently with and without the gradient (the CPU kernel's note).
__device__ __forceinline__ float add_rn(float p, float q) { return __fadd_rn(p, q); }
__device__ __forceinline__ double add_rn(double p, double q) { return __dadd_rn(p, q); }

// u = x / r in float64, by division as the CPU kernel: identical rows give identical u.
__device__ __forceinline__ double unit(double xc, double r) { return r > 0 ? xc / r : 0.0; }

// Warp sum in float64 whose result every lane holds bitwise identically (a
// butterfly leaves lanes with differently associated sums; lane 0's is broadcast).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return __shfl_sync(kFullMask, v, 0);
}

// Block sum of one double per thread in a fixed order (deterministic); the
// result is valid in thread 0. scratch: blockDim.x / 32 doubles of shared memory.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFullMask, v, o);
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double s = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < nw; ++w) s += scratch[w];
  return s;
}

// One pair recomputed in float64 from x in the difference form (the CPU
// kernel's refine_pair): d2 = |u_i - u_j|^2 + a_i + a_j, d2p likewise, then
// the pair energy at eval()'s scales. Used where the float32 (or TF32, BF16)
// distance of a close pair would carry too little precision.
template <class E, class T>
__device__ __forceinline__ void refine_distances(const SetArgs<T>& Si, int64_t b, int64_t i, const SetArgs<T>& Sj, int64_t j,
                                 double& d2, double& d2p) {
  const double ri = Si.r[b * Si.N + i], rj = Sj.r[b * Sj.N + j];
  const double aij = Si.a[b * Si.N + i] + Sj.a[b * Sj.N + j];
  const T* xi = row_ptr(Si, b, i);
  const T* xj = row_ptr(Sj, b, j);
  double s1 = 0, s2 = 0;
  for (int64_t c = 0; c < Si.k; ++c) {
    const double ui = unit(double(xi[c * Si.sk]), ri), uj = unit(double(xj[c * Sj.sk]), rj);
    s1 += (ui - uj) * (ui - uj);
    s2 += (ui + uj) * (ui + uj);
  }
  d2 = aij + s1;
  d2p = aij + s2;
}

// 16-byte copy global -> shared: cp.async from sm_80 (the copy bypasses the
// registers and overlaps the compute of the previous tile), else a plain copy.
__device__ __forceinline__ void copy16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#else
  *static_cast<int4*>(smem) = *static_cast<const int4*>(gmem);
#endif
}
__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int Pending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// Records of W values of T (W a multiple of 16 bytes' worth) in 16-byte loads.
template <class T, int W>
__device__ __forceinline__ void load_rec(const T* p, T (&out)[W]) {
  static_assert(W * sizeof(T) % 16 == 0, "records are whole 16-byte vectors");
  constexpr int PER = 16 / sizeof(T);
#pragma unroll
  for (int q = 0; q < W / PER; ++q) {
    if constexpr (sizeof(T) == 4) {
      const float4 v = reinterpret_cast<const float4*>(p)[q];
      out[4 * q] = v.x;
      out[4 * q + 1] = v.y;
      out[4 * q + 2] = v.z;
      out[4 * q + 3] = v.w;
    } else {
      const double2 v = reinterpret_cast<const double2*>(p)[q];
      out[2 * q] = v.x;
      out[2 * q + 1] = v.y;
    }
  }
}
template <class T, int W>
__device__ __forceinline__ void store_rec(T* p, const T (&in)[W]) {
  constexpr int PER = 16 / sizeof(T);
#pragma unroll
  for (int q = 0; q < W / PER; ++q) {
    if constexpr (sizeof(T) == 4)
      reinterpret_cast<float4*>(p)[q] = make_float4(in[4 * q], in[4 * q + 1], in[4 * q + 2], in[4 * q + 3]);
    else
      reinterpret_cast<double2*>(p)[q] = make_double2(in[2 * q], in[2 * q + 1]);
  }
}

}  // namespace cuda
}  // namespace comhe

// The per-row kernels (torch-free): the prologue (normalization and packing),
// the epilogues (the chain rule through the normalization) and the final
// energy sums. O(N k) each; the pair kernels are small_k.cuh and gram.cuh.
// DRAFT: see hyperspherical_energy_cuda.h.
#pragma once

#include "common.cuh"

namespace comhe {
namespace cuda {

constexpr int kRowThreads = 256;  // 8 rows (warps) per block in the warp-per-row kernels

// Per row, one warp (lanes over coordinates, coalesced for row-major x):
// r = sqrt(|x|^2 + eps), a = eps / (|x|^2 + eps), the packed u (T), and
// either a beside u (small_k slots, the difference form) or h = |u|^2 + a
// from the rounded u (the gram form: identical rows then give d2 = a_i + a_j
// exactly). A row with NaN/Inf writes its flat index to *bad (the smallest wins).
template <class T>
__global__ void __launch_bounds__(kRowThreads) prologue_kernel(SetArgs<T> S, int64_t B, double eps, int small_k,
                                                             unsigned long long* bad) {
  const int lane = threadIdx.x & 31;
  const int64_t flat = int64_t(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (flat >= B * S.N) return;
  const int64_t b = flat / S.N, i = flat % S.N;
  const T* xr = row_ptr(S, b, i);
  double n = 0, m = 0;
  bool nonfinite = false;
  for (int64_t c = lane; c < S.k; c += 32) {
    const double v = double(xr[c * S.sk]);
    nonfinite |= !isfinite(v);
    n += v * v;
    m = fmax(m, fabs(v));
  }
  if (__any_sync(kFullMask, nonfinite)) {
    if (lane == 0) atomicMin(bad, static_cast<unsigned long long>(flat));
    return;
  }
  n = warp_sum(n);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_xor_sync(kFullMask, m, o));
  double rr, ai;
  if (!isfinite(n)) {  // finite, but |x|^2 overflows (float64 entries beyond ~1e154): scale by the largest entry
    double sig = 0;
    for (int64_t c = lane; c < S.k; c += 32) {
      const double v = double(xr[c * S.sk]) / m;
      sig += v * v;
    }
    sig = warp_sum(sig);
    rr = m * sqrt(sig + eps / m / m);
    ai = eps / rr / rr;
  } else if (n + eps > 0) {
    rr = sqrt(n + eps);
    ai = eps / (n + eps);
  } else {  // eps = 0 and a zero row: the centre of the sphere, cosine 0 with everything
    rr = 0;
    ai = 1;
  }
  T* pk = S.packed + (b * S.Npad + i) * S.width;
  double hh = 0;
  for (int64_t c = lane; c < S.k; c += 32) {
    const T u = T(unit(double(xr[c * S.sk]), rr));
    pk[c] = u;
    hh += double(u) * double(u);
  }
  hh = warp_sum(hh);
  if (lane == 0) {
    S.r[flat] = rr;
    S.a[flat] = ai;
    if (small_k)
      pk[small_k] = T(ai);
    else
      S.h[b * S.Npad + i] = T(hh + ai);
  }
}

// The half-space self pairs (u_i, -u_i) of the one-set op: d2 = 4 - 2 a_i,
// d2p = 2 a_i, a function of a_i alone. self_e: their energy; dself: their
// derivative in a_i at the pair kernel's scale, ratio = 2 E::kappa / Self::kappa.
template <class Self>
__global__ void __launch_bounds__(kRowThreads)
    self_pair_kernel(const double* a, int64_t rows, double s, double delta, double ratio, double* self_e,
                     double* dself) {
  const int64_t flat = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (flat >= rows) return;
  const double ai = a[flat];
  double F, al, be;
  Self::eval(4.0 - 2.0 * ai, 2.0 * ai, s, delta, F, al, be);
  self_e[flat] = F / Self::lambda;
  dself[flat] = ratio * (be - al);
}

// The chain rule of one row (the CPU kernel's epilogue):
//   dE/dx_i = (grad_scale / r_i) [V_i - (u_i . V_i) u_i - a_i (Aref_i + D_i) u_i],
// V_i, Aref_i at eval()'s kappa scale, D_i the self pair's term (dself).

// k <= 8: one thread per row sums the row's partial records (small_k.cuh) in
// a fixed order, in float64, then applies the chain rule.
template <class T, int K, int KR>
__global__ void __launch_bounds__(kRowThreads)
    epilogue_small_kernel(SetArgs<T> S, int64_t B, const T* part, int64_t TS, int64_t nT, int64_t nslots,
                          double grad_scale, const double* dself) {
  const int64_t flat = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (flat >= B * S.N) return;
  const int64_t b = flat / S.N, i = flat % S.N, I = i / TS, ii = i % TS;
  const T* rec = part + ((b * nT + I) * nslots * TS + ii) * KR;
  double v[K] = {}, z = 0;
  for (int64_t sl = 0; sl < nslots; ++sl, rec += TS * KR) {
    T q[KR];
    load_rec(rec, q);
#pragma unroll
    for (int c = 0; c < K; ++c) v[c] += double(q[c]);
    z += double(q[K]);
  }
  const double ri = S.r[flat], ai = S.a[flat];
  T* g = S.grad + flat * S.k;
  const T* xr = row_ptr(S, b, i);
  if (ri == 0) {  // a zero row with eps = 0: the centre of the sphere, no derivative
    for (int64_t c = 0; c < S.k; ++c) g[c] = T(0);
    return;
  }
  const double inv_r = 1.0 / ri;
  double dot = 0;
#pragma unroll
  for (int c = 0; c < K; ++c)
    if (c < S.k) dot += v[c] * (double(xr[c * S.sk]) * inv_r);
  const double radial = dot + ai * (z + (dself ? dself[flat] : 0.0));
  const double scale = grad_scale * inv_r;
#pragma unroll
  for (int c = 0; c < K; ++c)
    if (c < S.k) g[c] = T(scale * (v[c] - radial * (double(xr[c * S.sk]) * inv_r)));
}

// k > 8: one warp per row; V_i from the gram kernel's accumulators (its
// rows' own, no partials), Aref_i from its refined pairs.
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    epilogue_gram_kernel(SetArgs<T> S, int64_t B, int64_t KP, double grad_scale, const double* dself) {
  const int lane = threadIdx.x & 31;
  const int64_t flat = int64_t(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5);
  if (flat >= B * S.N) return;
  const int64_t b = flat / S.N, i = flat % S.N;
  const double ri = S.r[flat], ai = S.a[flat];
  T* g = S.grad + flat * S.k;
  const T* xr = row_ptr(S, b, i);
  const T* v = S.v + flat * KP;
  if (ri == 0) {
    for (int64_t c = lane; c < S.k; c += 32) g[c] = T(0);
    return;
  }
  const double inv_r = 1.0 / ri;
  double dot = 0;
  for (int64_t c = lane; c < S.k; c += 32) dot += double(v[c]) * (double(xr[c * S.sk]) * inv_r);
  dot = warp_sum(dot);
  const double radial = dot + ai * (S.aref[flat] + (dself ? dself[flat] : 0.0));
  const double scale = grad_scale * inv_r;
  for (int64_t c = lane; c < S.k; c += 32) g[c] = T(scale * (double(v[c]) - radial * (double(xr[c * S.sk]) * inv_r)));
}

// One block per set: energy[b] = scale * (sum of the pair kernel's block
// partials, in block order) + the self pairs' energies (self_e, or nullptr).
// Fixed-order sums: bit-identical run to run.
static __global__ void __launch_bounds__(kRowThreads)
    finalize_kernel(const double* epart, int64_t nblk, double scale, const double* self_e, int64_t N,
                    double* energy) {
  __shared__ double scratch[kRowThreads / 32];
  const int64_t b = blockIdx.x;
  double e = 0;
  for (int64_t q = threadIdx.x; q < nblk; q += kRowThreads) e += epart[b * nblk + q];
  e = block_sum(e, scratch) * scale;
  double self = 0;
  if (self_e) {
    for (int64_t i = threadIdx.x; i < N; i += kRowThreads) self += self_e[b * N + i];
    self = block_sum(self, scratch);
  }
  if (threadIdx.x == 0) energy[b] = e + self;
}

}  // namespace cuda
}  // namespace comhe

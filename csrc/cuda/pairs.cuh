// The launchers of the pair kernels for one pair energy (torch-free), and the
// macro that instantiates them in the pairs_<kind>_<power>.cu files.
// DRAFT: see hyperspherical_energy_cuda.h.
#pragma once

#include "gram.cuh"
#include "plan.cuh"
#include "small_k.cuh"

namespace comhe {
namespace cuda {

template <class T, class E, int K>
cudaError_t launch_small(const Plan<T>& pl, cudaStream_t stream) {
  SmallArgs<T> A;
  A.rows = pl.X;
  A.cols = pl.Y;
  A.cross = pl.cross;
  A.TS = pl.TS;
  A.nTr = pl.nTx;
  A.nTc = pl.nTy;
  A.pairs_per_set = pl.pairs;
  A.row_part = pl.part_x;
  A.col_part = pl.part_y;
  A.row_slots = pl.cross ? pl.nTy : pl.nTx + 1;
  A.col_slots = pl.cross ? pl.nTx : pl.nTx + 1;
  // The difference form rounds relative to each pair's distance: only float32
  // pairs with |u_j -+ u_i|^2 < tau^2 need float64 (the CPU kernel's tau_diff).
  const double tau = refine_threshold(false, pl.P, Precision::IEEE);
  A.tau_diff = sizeof(T) == 8 ? T(0) : T(tau * tau);
  A.s = T(pl.P.s);
  A.delta = T(pl.P.delta);
  A.s64 = pl.P.s;
  A.delta64 = pl.P.delta;
  A.epart = pl.epart;
  constexpr int KR = kSmallRecord<T, K>;
  constexpr size_t smem = sizeof(T) * size_t(kSmallChunk) * KR * (1 + kSmallWarps);  // 20 KB to 100 KB
  auto kernel = small_k_kernel<T, E, K>;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  kernel<<<dim3(unsigned(pl.B * pl.pairs)), kSmallThreads, smem, stream>>>(A);
  return cudaGetLastError();
}

template <class T, class E, int Mode, int KV>
cudaError_t launch_gram_kv(const GramArgs<T>& A, int64_t blocks, cudaStream_t stream) {
  constexpr size_t smem = gram_smem_bytes<T, Mode, KV>();
  auto kernel = gram_kernel<T, E, Mode, KV>;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  kernel<<<dim3(unsigned(blocks)), kGramThreads, smem, stream>>>(A);
  return cudaGetLastError();
}

// KV: 32 coordinates per pass for k <= 32, else 128 (float64: 16, for the
// registers: G and V in float64 take twice as many). Two
// widths, not one per power of two: each is ~13 more kernels per pair
// energy to compile; k = 33..64 pays up to 2x in products for it.
template <class T, class E, int Mode>
cudaError_t launch_gram_mode(const GramArgs<T>& A, int KV, int64_t blocks, cudaStream_t stream) {
  if constexpr (sizeof(T) == 8)
    return launch_gram_kv<T, E, Mode, 16>(A, blocks, stream);
  else
    return KV == 32 ? launch_gram_kv<T, E, Mode, 32>(A, blocks, stream)
                    : launch_gram_kv<T, E, Mode, 128>(A, blocks, stream);
}

// rows x cols of the gram path, one launch
template <class T, class E>
cudaError_t launch_gram(const Plan<T>& pl, const SetArgs<T>& rows, const SetArgs<T>& cols, bool same, bool energy,
                        double* epart, cudaStream_t stream) {
  GramArgs<T> A;
  A.rows = rows;
  A.cols = cols;
  A.same = same;
  A.energy = energy;
  A.KP = pl.KP;
  A.npass = pl.npass;
  A.nrt = rows.Npad / kBM;
  A.tau = T(refine_threshold(sizeof(T) == 8, pl.P, pl.prec));
  A.s = T(pl.P.s);
  A.delta = T(pl.P.delta);
  A.s64 = pl.P.s;
  A.delta64 = pl.P.delta;
  A.epart = epart;
  if (!pl.grad) A.rows.v = nullptr;
  const int64_t blocks = pl.B * A.nrt * A.npass;
  if constexpr (sizeof(T) == 8) {
    return launch_gram_mode<T, E, kSimt>(A, pl.KV, blocks, stream);
  } else {
    switch (pl.prec) {
      case Precision::TF32X3: return launch_gram_mode<T, E, kTf32x3>(A, pl.KV, blocks, stream);
      case Precision::TF32: return launch_gram_mode<T, E, kTf32>(A, pl.KV, blocks, stream);
      case Precision::BF16: return launch_gram_mode<T, E, kBf16>(A, pl.KV, blocks, stream);
      default: return launch_gram_mode<T, E, kSimt>(A, pl.KV, blocks, stream);
    }
  }
}

template <class T, class E>
cudaError_t launch_pairs(const Plan<T>& pl, cudaStream_t stream) {
  if (pl.small_k == 3) return launch_small<T, E, 3>(pl, stream);
  if (pl.small_k == 8) return launch_small<T, E, 8>(pl, stream);
  const cudaError_t err = launch_gram<T, E>(pl, pl.X, pl.Y, !pl.cross, true, pl.epart, stream);
  if (err != cudaSuccess || !pl.cross) return err;
  return launch_gram<T, E>(pl, pl.Y, pl.X, false, false, pl.epart_y, stream);
}

}  // namespace cuda
}  // namespace comhe

// Both types of one pair energy (kind, power, half space).
#define COMHE_CUDA_INSTANTIATE_PAIRS(KIND, POWER, HALF)                                                           \
  namespace comhe {                                                                                               \
  namespace cuda {                                                                                                \
  template cudaError_t launch_pairs<float, PairEnergy<KIND, POWER, HALF>>(const Plan<float>&, cudaStream_t);      \
  template cudaError_t launch_pairs<double, PairEnergy<KIND, POWER, HALF>>(const Plan<double>&, cudaStream_t);    \
  }                                                                                                               \
  }

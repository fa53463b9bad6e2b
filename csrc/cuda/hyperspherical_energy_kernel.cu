// The CUDA kernels' host side (torch-free): workspace layout, choice of path
// and launches. DRAFT: compiled in CI for sm_80 and sm_90a, not yet run on a
// GPU (hyperspherical_energy_cuda.h).
//
// Per call: the prologue normalizes and packs each set (one warp per row),
// one pair kernel (small_k.cuh for k <= 8, gram.cuh above; two for the
// cross op's gram path, rows of x and rows of y), the epilogue applies the
// chain rule per row, the finalize kernel sums the energy per set. Every sum
// has a fixed order, so results are bit-identical run to run.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "hyperspherical_energy_cuda.h"
#include "gram.cuh"     // its constants; the kernels are instantiated in pairs_*.cu
#include "plan.cuh"
#include "rows.cuh"
#include "small_k.cuh"  // likewise

namespace comhe {
namespace cuda {
namespace {

constexpr unsigned char kNoBadRow = 0x7f;  // status bytes: 0x7f7f... is larger than any flat row index

// Bump allocation of the workspace: the same code sizes it (base == nullptr) and carves it.
struct Bump {
  char* base;
  size_t off = 0;
  template <class U>
  U* take(int64_t n) {
    off = (off + 255) / 256 * 256;
    U* p = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += size_t(n) * sizeof(U);
    return p;
  }
};

// The few-coordinates path's constants (small_k.cuh), for K = 3 or 8.
template <class T>
int small_rows_of(int K) {
  return K == 3 ? kSmallRows<T, 3> : kSmallRows<T, 8>;
}
template <class T>
int small_record_of(int K) {
  return K == 3 ? kSmallRecord<T, 3> : kSmallRecord<T, 8>;
}

template <class T>
SetArgs<T> set_args(const T* x, const PointsLayout& L) {
  SetArgs<T> S;
  S.x = x;
  S.N = L.N;
  S.k = L.k;
  S.sb = L.stride_b;
  S.sn = L.stride_n;
  S.sk = L.stride_k;
  return S;
}

template <class T>
Plan<T> make_plan(const T* x, const PointsLayout& lx, const T* y, const PointsLayout* ly, const EnergyParams& P,
                  Precision prec, bool grad, void* workspace) {
  Plan<T> pl;
  pl.cross = ly != nullptr;
  pl.grad = grad;
  pl.B = lx.B;
  pl.P = P;
  pl.prec = sizeof(T) == 8 ? Precision::IEEE : prec;
  pl.X = set_args(x, lx);
  pl.Y = pl.cross ? set_args(y, *ly) : pl.X;
  const int64_t k = lx.k, B = lx.B;
  Bump ws{static_cast<char*>(workspace)};
  pl.status = ws.take<unsigned long long>(2);
  const int64_t nmax = std::max(pl.X.N, pl.cross ? pl.Y.N : 0);
  if (k <= kSmallKMax) {
    pl.small_k = k <= 3 ? 3 : 8;  // k = 4..8 in the 8-coordinate kernel: one kernel fewer to compile per pair energy
    pl.KR = small_record_of<T>(pl.small_k);
    const int64_t unit = std::max<int64_t>(int64_t(32) * small_rows_of<T>(pl.small_k) * kSmallWarps, kSmallChunk);
    pl.TS = round_up(std::max<int64_t>(1, ceil_div(nmax, kMaxTiles)), unit);
    pl.nTx = ceil_div(pl.X.N, pl.TS);
    pl.nTy = pl.cross ? ceil_div(pl.Y.N, pl.TS) : pl.nTx;
    pl.pairs = pl.cross ? pl.nTx * pl.nTy : pl.nTx * (pl.nTx + 1) / 2;
  } else {
    const bool is_double = sizeof(T) == 8;
    const int64_t kq = round_up(k, pl.prec == Precision::BF16 ? 16 : 8);
    // the widths pairs.cuh instantiates; each pass recomputes G over all of
    // KP, so the cost in products is passes x KP (gemm1) + KP (gemm2): k = 40
    // costs 2 x 64 + 64 with KV = 32, 128 + 128 with KV = 128
    auto cost = [&](int64_t kv) { const int64_t kp = round_up(kq, kv); return (kp / kv + 1) * kp; };
    pl.KV = is_double ? 16 : cost(32) <= cost(128) ? 32 : 128;
    pl.KP = round_up(k, pl.KV);
    pl.npass = pl.KP / pl.KV;
  }
  for (int side = 0; side < (pl.cross ? 2 : 1); ++side) {
    SetArgs<T>& S = side == 0 ? pl.X : pl.Y;
    S.Npad = pl.small_k ? (side == 0 ? pl.nTx : pl.nTy) * pl.TS : round_up(std::max<int64_t>(S.N, 1), kBM);
    S.width = pl.small_k ? pl.KR : pl.KP;
    S.r = ws.take<double>(B * S.N);
    S.a = ws.take<double>(B * S.N);
    S.packed = ws.take<T>(B * S.Npad * S.width);
    if (!pl.small_k) {
      S.h = ws.take<T>(B * S.Npad);
      if (grad) {
        S.v = ws.take<T>(B * S.N * pl.KP);
        S.aref = ws.take<double>(B * S.N);
      }
    }
  }
  if (!pl.cross) {
    const SetArgs<T> keep = pl.X;
    pl.Y = keep;
  }
  if (pl.small_k) {
    const int64_t rec = pl.TS * pl.KR;
    if (grad) {
      if (pl.cross) {
        pl.part_x = ws.take<T>(B * pl.nTx * pl.nTy * rec);
        pl.part_y = ws.take<T>(B * pl.nTy * pl.nTx * rec);
      } else {
        pl.part_x = pl.part_y = ws.take<T>(B * pl.nTx * (pl.nTx + 1) * rec);
      }
    }
    pl.epart = ws.take<double>(B * pl.pairs);
    if (!pl.cross && P.half_space) {
      pl.self_e = ws.take<double>(B * pl.X.N);
      pl.dself = ws.take<double>(B * pl.X.N);
    }
  } else {
    pl.epart = ws.take<double>(B * (pl.X.Npad / kBM) * pl.npass);
    if (pl.cross) pl.epart_y = ws.take<double>(B * (pl.Y.Npad / kBM) * pl.npass);
    if (!pl.cross && P.half_space) {
      pl.self_e = ws.take<double>(B * pl.X.N);
      pl.dself = ws.take<double>(B * pl.X.N);
    }
  }
  pl.bytes = ws.off;
  return pl;
}

// ---- dispatch over the pair energy (kind, power, half space) ------------------------

template <class F>
void with_energy(const EnergyParams& P, F&& f) {
  auto half = [&](auto kind, auto power) {
    if (P.half_space)
      f(PairEnergy<decltype(kind)::value, decltype(power)::value, true>{},
        PairEnergy<decltype(kind)::value, decltype(power)::value, false>{});
    else
      f(PairEnergy<decltype(kind)::value, decltype(power)::value, false>{},
        PairEnergy<decltype(kind)::value, decltype(power)::value, false>{});
  };
  using KC = std::integral_constant<Kind, Kind::Chordal>;
  using KA = std::integral_constant<Kind, Kind::Angular>;
  using KG = std::integral_constant<Kind, Kind::Gaussian>;
  auto power = [&](auto kind) {
    switch (power_case(P.s)) {
      case Power::Log: return half(kind, std::integral_constant<Power, Power::Log>{});
      case Power::One: return half(kind, std::integral_constant<Power, Power::One>{});
      case Power::Two: return half(kind, std::integral_constant<Power, Power::Two>{});
      default: return half(kind, std::integral_constant<Power, Power::General>{});
    }
  };
  if (P.kind == Kind::Chordal)
    power(KC{});
  else if (P.kind == Kind::Angular)
    power(KA{});
  else  // the exponent cases mean nothing to the Gaussian: one instantiation
    half(KG{}, std::integral_constant<Power, Power::General>{});
}

#define COMHE_CUDA_TRY(expr)                   \
  do {                                         \
    const cudaError_t err_ = (expr);           \
    if (err_ != cudaSuccess) return err_;      \
  } while (0)

template <class T>
cudaError_t prologue(const Plan<T>& pl, const SetArgs<T>& S, unsigned long long* bad, cudaStream_t stream) {
  if (S.N == 0) return cudaSuccess;
  COMHE_CUDA_TRY(cudaMemsetAsync(S.packed, 0, sizeof(T) * size_t(pl.B * S.Npad * S.width), stream));
  if (S.h) COMHE_CUDA_TRY(cudaMemsetAsync(S.h, 0, sizeof(T) * size_t(pl.B * S.Npad), stream));
  const int64_t rows = pl.B * S.N, per_block = kRowThreads / 32;
  prologue_kernel<T><<<dim3(unsigned(ceil_div(rows, per_block))), kRowThreads, 0, stream>>>(S, pl.B, pl.P.eps,
                                                                                           pl.small_k, bad);
  return cudaGetLastError();
}

template <class T>
cudaError_t epilogue(const Plan<T>& pl, const SetArgs<T>& S, const T* part, int64_t nT, int64_t nslots,
                     double grad_scale, const double* dself, cudaStream_t stream) {
  if (S.N == 0) return cudaSuccess;
  const int64_t rows = pl.B * S.N;
  if (pl.small_k == 0) {
    epilogue_gram_kernel<T><<<dim3(unsigned(ceil_div(rows, kRowThreads / 32))), kRowThreads, 0, stream>>>(
        S, pl.B, pl.KP, grad_scale, dself);
  } else {
    const dim3 grid(unsigned(ceil_div(rows, kRowThreads)));
    if (pl.small_k == 3)
      epilogue_small_kernel<T, 3, kSmallRecord<T, 3>>
          <<<grid, kRowThreads, 0, stream>>>(S, pl.B, part, pl.TS, nT, nslots, grad_scale, dself);
    else
      epilogue_small_kernel<T, 8, kSmallRecord<T, 8>>
          <<<grid, kRowThreads, 0, stream>>>(S, pl.B, part, pl.TS, nT, nslots, grad_scale, dself);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t run(const Plan<T>& pl, double* energy, cudaStream_t stream) {
  COMHE_CUDA_TRY(cudaMemsetAsync(pl.status, kNoBadRow, 2 * sizeof(unsigned long long), stream));
  const int64_t B = pl.B;
  const bool empty = pl.X.N == 0 || (pl.cross && pl.Y.N == 0);
  if (empty) {  // no pairs: zero energy and gradients (the one-set op with N = 0 only; N = 1 has pairs in half space)
    COMHE_CUDA_TRY(cudaMemsetAsync(energy, 0, sizeof(double) * size_t(B), stream));
    if (pl.grad) {
      if (pl.X.N) COMHE_CUDA_TRY(cudaMemsetAsync(pl.X.grad, 0, sizeof(T) * size_t(B * pl.X.N * pl.X.k), stream));
      if (pl.cross && pl.Y.N)
        COMHE_CUDA_TRY(cudaMemsetAsync(pl.Y.grad, 0, sizeof(T) * size_t(B * pl.Y.N * pl.Y.k), stream));
    }
    // the NaN/Inf check still applies to the non-empty side
    COMHE_CUDA_TRY(prologue(pl, pl.X, pl.status, stream));
    if (pl.cross) COMHE_CUDA_TRY(prologue(pl, pl.Y, pl.status + 1, stream));
    return cudaSuccess;
  }
  COMHE_CUDA_TRY(prologue(pl, pl.X, pl.status, stream));
  if (pl.cross) COMHE_CUDA_TRY(prologue(pl, pl.Y, pl.status + 1, stream));
  cudaError_t result = cudaSuccess;
  with_energy(pl.P, [&](auto e, auto self) {
    using E = decltype(e);
    using Self = decltype(self);
    result = [&]() -> cudaError_t {
      if (pl.self_e) {
        const int64_t rows = B * pl.X.N;
        self_pair_kernel<Self><<<dim3(unsigned(ceil_div(rows, kRowThreads))), kRowThreads, 0, stream>>>(
            pl.X.a, rows, pl.P.s, pl.P.delta, 2.0 * E::kappa / Self::kappa, pl.self_e, pl.dself);
        COMHE_CUDA_TRY(cudaGetLastError());
      }
      COMHE_CUDA_TRY((launch_pairs<T, E>(pl, stream)));
      // The cross op's half space is f(d2) + f(d2p), half of E's 2 f(d2) + 2 f(d2p).
      const double cross_half = pl.cross && pl.P.half_space ? 0.5 : 1.0;
      const double grad_scale = (2.0 / E::kappa) * cross_half;
      double escale = cross_half / E::lambda;
      int64_t nblk = pl.pairs;
      if (!pl.small_k) {
        nblk = (pl.X.Npad / kBM) * pl.npass;
        if (!pl.cross) escale *= 0.5;  // ordered pairs: each unordered pair summed twice
      }
      if (pl.grad) {
        const int64_t slots_x = pl.cross ? pl.nTy : pl.nTx + 1;
        COMHE_CUDA_TRY(epilogue(pl, pl.X, pl.part_x, pl.nTx, slots_x, grad_scale, pl.dself, stream));
        if (pl.cross) COMHE_CUDA_TRY(epilogue(pl, pl.Y, pl.part_y, pl.nTy, pl.nTx, grad_scale, nullptr, stream));
      }
      finalize_kernel<<<dim3(unsigned(B)), kRowThreads, 0, stream>>>(pl.epart, nblk, escale, pl.self_e, pl.X.N,
                                                                     energy);
      return cudaGetLastError();
    }();
  });
  return result;
}

}  // namespace

bool parse_precision(const char* text, bool is_double, int cc_major, Precision* out, const char** why) {
  const bool tc = cc_major >= 8;  // mma.sync with TF32 and BF16 operands
  *why = nullptr;
  if (std::strcmp(text, "auto") == 0) {
    *out = is_double || !tc ? Precision::IEEE : Precision::TF32X3;
    return true;
  }
  if (std::strcmp(text, "ieee") == 0) {
    *out = Precision::IEEE;
    return true;
  }
  const Precision p = std::strcmp(text, "tf32x3") == 0 ? Precision::TF32X3
                      : std::strcmp(text, "tf32") == 0 ? Precision::TF32
                      : std::strcmp(text, "bf16") == 0 ? Precision::BF16
                                                       : Precision::IEEE;
  if (p == Precision::IEEE) {
    *why = "precision must be 'auto', 'ieee', 'tf32x3', 'tf32' or 'bf16'";
    return false;
  }
  if (is_double) {
    *why = "the tensor-core precisions are for float32 input; float64 is computed in float64 ('auto' or 'ieee')";
    return false;
  }
  if (!tc) {
    *why = "the tensor-core precisions need a GPU of compute capability 8.0 or newer";
    return false;
  }
  *out = p;
  return true;
}

template <class T>
size_t energy_workspace_bytes(const PointsLayout& x, const EnergyParams& p, Precision prec, bool grad) {
  return make_plan<T>(nullptr, x, nullptr, nullptr, p, prec, grad, nullptr).bytes;
}

template <class T>
size_t cross_workspace_bytes(const PointsLayout& x, const PointsLayout& y, const EnergyParams& p, Precision prec,
                             bool grad) {
  return make_plan<T>(nullptr, x, nullptr, &y, p, prec, grad, nullptr).bytes;
}

template <class T>
cudaError_t hyperspherical_energy_cuda(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                       Precision prec, double* energy, T* grad, void* workspace,
                                       cudaStream_t stream) {
  if (layout.B == 0) return cudaSuccess;
  Plan<T> pl = make_plan<T>(x, layout, nullptr, nullptr, params, prec, grad != nullptr, workspace);
  pl.X.grad = grad;
  pl.Y.grad = grad;
  return run(pl, energy, stream);
}

template <class T>
cudaError_t cross_energy_cuda(const T* x, const PointsLayout& lx, const T* y, const PointsLayout& ly,
                              const EnergyParams& params, Precision prec, double* energy, T* grad_x, T* grad_y,
                              void* workspace, cudaStream_t stream) {
  if (lx.B == 0) return cudaSuccess;
  Plan<T> pl = make_plan<T>(x, lx, y, &ly, params, prec, grad_x != nullptr, workspace);
  pl.X.grad = grad_x;
  pl.Y.grad = grad_y;
  return run(pl, energy, stream);
}

cudaError_t read_status(const void* workspace, cudaStream_t stream, Status* status) {
  unsigned long long raw[2];
  COMHE_CUDA_TRY(cudaMemcpyAsync(raw, workspace, sizeof(raw), cudaMemcpyDeviceToHost, stream));
  COMHE_CUDA_TRY(cudaStreamSynchronize(stream));
  unsigned long long none;
  std::memset(&none, kNoBadRow, sizeof(none));
  status->bad_x = raw[0] == none ? -1 : int64_t(raw[0]);
  status->bad_y = raw[1] == none ? -1 : int64_t(raw[1]);
  return cudaSuccess;
}

#define COMHE_INSTANTIATE(T)                                                                                        \
  template size_t energy_workspace_bytes<T>(const PointsLayout&, const EnergyParams&, Precision, bool);            \
  template size_t cross_workspace_bytes<T>(const PointsLayout&, const PointsLayout&, const EnergyParams&,          \
                                           Precision, bool);                                                       \
  template cudaError_t hyperspherical_energy_cuda<T>(const T*, const PointsLayout&, const EnergyParams&, Precision, \
                                                     double*, T*, void*, cudaStream_t);                            \
  template cudaError_t cross_energy_cuda<T>(const T*, const PointsLayout&, const T*, const PointsLayout&,          \
                                            const EnergyParams&, Precision, double*, T*, T*, void*, cudaStream_t);
COMHE_INSTANTIATE(float)
COMHE_INSTANTIATE(double)

}  // namespace cuda
}  // namespace comhe

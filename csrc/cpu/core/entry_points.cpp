// The torch-free entry points of the CPU kernel (comhe/hyperspherical_energy.h):
// the prologue, the report of non-finite rows, the dispatch on the kind.
#include "prologue_epilogue.h"
#include "solve.h"

namespace comhe {
namespace cpu {

template <class T>
KernelStatus hyperspherical_energy(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                   double* energy, T* grad, int num_threads) {
  using detail::Points;
  KernelStatus status;
  const int64_t B = layout.B, N = layout.N;
  if (B == 0) return status;
  if (N == 0) {
    std::fill(energy, energy + B, 0.0);
    return status;
  }
  Points<T> pr(x, layout, params);
  // Threads beyond the number of independent tasks only add wake-up latency.
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, B * pr.nS)));
  const int64_t first_bad = detail::prologue(pr, nt);
  if (first_bad < B * N) {
    status.ok = false;
    status.bad_set = first_bad / N;
    status.bad_row = first_bad % N;
    return status;
  }
  switch (params.kind) {
    case Kind::Chordal: detail::solve<T, Kind::Chordal>(pr, energy, grad, nt); break;
    case Kind::Angular: detail::solve<T, Kind::Angular>(pr, energy, grad, nt); break;
    case Kind::Gaussian: detail::solve<T, Kind::Gaussian>(pr, energy, grad, nt); break;
  }
  return status;
}

template KernelStatus hyperspherical_energy<float>(const float*, const PointsLayout&, const EnergyParams&, double*,
                                                   float*, int);
template KernelStatus hyperspherical_energy<double>(const double*, const PointsLayout&, const EnergyParams&,
                                                    double*, double*, int);

}  // namespace cpu
}  // namespace comhe

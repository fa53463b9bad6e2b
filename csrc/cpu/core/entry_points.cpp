// The torch-free entry points of the CPU kernel (comhe/hyperspherical_energy.h,
// comhe/cross_energy.h): the prologue, the report of non-finite rows, the
// dispatch on the kind.
#include "comhe/cross_energy.h"
#include "prologue_epilogue.h"
#include "solve.h"

namespace comhe {
namespace cpu {

namespace {

using detail::Points;

// The prologue of p; false (and status naming the row) if a row is not finite.
template <class T>
bool prologue(Points<T>& p, int nthreads, int input, KernelStatus& status) {
  const int64_t N = p.L.N, first_bad = detail::prologue(p, nthreads);
  if (first_bad == p.L.B * N) return true;
  status.ok = false;
  status.bad_set = first_bad / N;
  status.bad_row = first_bad % N;
  status.bad_input = input;
  return false;
}

}  // namespace

template <class T>
KernelStatus hyperspherical_energy(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                   double* energy, T* grad, int num_threads, const Interrupt& interrupt) {
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
  if (!prologue(pr, nt, 0, status)) return status;
  detail::Stop stop(interrupt);
  switch (params.kind) {
    case Kind::Chordal: detail::solve<T, Kind::Chordal>(pr, energy, grad, nt, stop); break;
    case Kind::Angular: detail::solve<T, Kind::Angular>(pr, energy, grad, nt, stop); break;
    case Kind::Gaussian: detail::solve<T, Kind::Gaussian>(pr, energy, grad, nt, stop); break;
  }
  status.interrupted = stop.stopped();
  return status;
}

template <class T>
KernelStatus cross_energy(const T* x, const PointsLayout& layout_x, const T* y, const PointsLayout& layout_y,
                          const EnergyParams& params, double* energy, T* grad_x, T* grad_y, int num_threads,
                          const Interrupt& interrupt) {
  KernelStatus status;
  const int64_t B = layout_x.B;
  if (B == 0) return status;
  Points<T> X(x, layout_x, params), Y(y, layout_y, params);
  const int64_t tasks_per_round = B * std::max<int64_t>(1, std::min(X.nS, Y.nS));
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks_per_round)));
  if (!prologue(X, nt, 0, status) || !prologue(Y, nt, 1, status)) return status;
  if (layout_x.N == 0 || layout_y.N == 0) {  // (an empty side's gradient may have no address)
    std::fill(energy, energy + B, 0.0);
    if (grad_x != nullptr) std::fill(grad_x, grad_x + B * layout_x.N * layout_x.k, T(0));
    if (grad_y != nullptr) std::fill(grad_y, grad_y + B * layout_y.N * layout_y.k, T(0));
    return status;
  }
  detail::Stop stop(interrupt);
  switch (params.kind) {
    case Kind::Chordal: detail::solve_cross<T, Kind::Chordal>(X, Y, energy, grad_x, grad_y, nt, stop); break;
    case Kind::Angular: detail::solve_cross<T, Kind::Angular>(X, Y, energy, grad_x, grad_y, nt, stop); break;
    case Kind::Gaussian: detail::solve_cross<T, Kind::Gaussian>(X, Y, energy, grad_x, grad_y, nt, stop); break;
  }
  status.interrupted = stop.stopped();
  return status;
}

template KernelStatus hyperspherical_energy<float>(const float*, const PointsLayout&, const EnergyParams&, double*,
                                                   float*, int, const Interrupt&);
template KernelStatus hyperspherical_energy<double>(const double*, const PointsLayout&, const EnergyParams&,
                                                    double*, double*, int, const Interrupt&);
template KernelStatus cross_energy<float>(const float*, const PointsLayout&, const float*, const PointsLayout&,
                                          const EnergyParams&, double*, float*, float*, int, const Interrupt&);
template KernelStatus cross_energy<double>(const double*, const PointsLayout&, const double*, const PointsLayout&,
                                           const EnergyParams&, double*, double*, double*, int, const Interrupt&);

}  // namespace cpu
}  // namespace comhe

// The pair loops and epilogues of both ops of the CPU kernel, one
// instantiation per kind and dtype, each kind in its own translation unit
// (instantiate_<kind>.cpp, compiled in parallel): the entry points
// (entry_points.cpp) see only these declarations.
#pragma once

#include <atomic>
#include <chrono>

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {

// Whether a call is to stop early: thread 0, the calling thread (OpenMP
// makes the encountering thread the team's thread 0), asks the caller's
// Interrupt at most every interrupt.period seconds; every thread sees the
// answer. Calls shorter than a period never ask.
class Stop {
 public:
  explicit Stop(const Interrupt& interrupt)
      : interrupt_(interrupt), next_(std::chrono::steady_clock::now() + period()) {}
  // From the task loops, any thread.
  bool now() {
    if (interrupt_.requested != nullptr && omp_get_thread_num() == 0 && !stopped()) {
      const auto t = std::chrono::steady_clock::now();
      if (t >= next_) {
        next_ = t + period();
        if (interrupt_.requested(interrupt_.context)) stopped_.store(true, std::memory_order_release);
      }
    }
    return stopped();
  }
  bool stopped() const { return stopped_.load(std::memory_order_acquire); }

 private:
  std::chrono::steady_clock::duration period() const {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(interrupt_.period));
  }
  Interrupt interrupt_;
  std::chrono::steady_clock::time_point next_;  // thread 0's only
  std::atomic<bool> stopped_{false};
};

// The one-set op on the prologue's packed points: energy (B) and, if grad is
// not null, the gradient (B, N, k) contiguous; where stop stops the call, the
// outputs are unspecified.
template <class T, Kind K>
void solve(Points<T>& pr, double* energy, T* grad, int nthreads, Stop& stop);

// The cross-set op on the packed points of both sets (the same B and k):
// energy (B) and, if grad_x is not null, the gradients (B, N, k) and (B, M, k).
template <class T, Kind K>
void solve_cross(Points<T>& X, Points<T>& Y, double* energy, T* grad_x, T* grad_y, int nthreads,
                 Stop& stop);

extern template void solve<float, Kind::Chordal>(Points<float>&, double*, float*, int, Stop&);
extern template void solve<double, Kind::Chordal>(Points<double>&, double*, double*, int, Stop&);
extern template void solve<float, Kind::Angular>(Points<float>&, double*, float*, int, Stop&);
extern template void solve<double, Kind::Angular>(Points<double>&, double*, double*, int, Stop&);
extern template void solve<float, Kind::Gaussian>(Points<float>&, double*, float*, int, Stop&);
extern template void solve<double, Kind::Gaussian>(Points<double>&, double*, double*, int, Stop&);
extern template void solve_cross<float, Kind::Chordal>(Points<float>&, Points<float>&, double*, float*, float*, int,
                                                       Stop&);
extern template void solve_cross<double, Kind::Chordal>(Points<double>&, Points<double>&, double*, double*, double*,
                                                        int, Stop&);
extern template void solve_cross<float, Kind::Angular>(Points<float>&, Points<float>&, double*, float*, float*, int,
                                                       Stop&);
extern template void solve_cross<double, Kind::Angular>(Points<double>&, Points<double>&, double*, double*, double*,
                                                        int, Stop&);
extern template void solve_cross<float, Kind::Gaussian>(Points<float>&, Points<float>&, double*, float*, float*, int,
                                                        Stop&);
extern template void solve_cross<double, Kind::Gaussian>(Points<double>&, Points<double>&, double*, double*, double*,
                                                         int, Stop&);

}  // namespace detail
}  // namespace cpu
}  // namespace comhe

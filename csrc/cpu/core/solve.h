// The pair loops and epilogues of both ops of the CPU kernel, one
// instantiation per kind and dtype, each kind in its own translation unit
// (instantiate_<kind>.cpp, compiled in parallel): the entry points
// (entry_points.cpp) see only these declarations.
#pragma once

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {

// The one-set op on the prologue's packed points: energy (B) and, if grad is
// not null, the gradient (B, N, k) contiguous.
template <class T, Kind K>
void solve(Points<T>& pr, double* energy, T* grad, int nthreads);

// The cross-set op on the packed points of both sets (the same B and k):
// energy (B) and, if grad_x is not null, the gradients (B, N, k) and (B, M, k).
template <class T, Kind K>
void solve_cross(Points<T>& X, Points<T>& Y, double* energy, T* grad_x, T* grad_y, int nthreads);

extern template void solve<float, Kind::Chordal>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Chordal>(Points<double>&, double*, double*, int);
extern template void solve<float, Kind::Angular>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Angular>(Points<double>&, double*, double*, int);
extern template void solve<float, Kind::Gaussian>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Gaussian>(Points<double>&, double*, double*, int);
extern template void solve_cross<float, Kind::Chordal>(Points<float>&, Points<float>&, double*, float*, float*, int);
extern template void solve_cross<double, Kind::Chordal>(Points<double>&, Points<double>&, double*, double*, double*,
                                                        int);
extern template void solve_cross<float, Kind::Angular>(Points<float>&, Points<float>&, double*, float*, float*, int);
extern template void solve_cross<double, Kind::Angular>(Points<double>&, Points<double>&, double*, double*, double*,
                                                        int);
extern template void solve_cross<float, Kind::Gaussian>(Points<float>&, Points<float>&, double*, float*, float*, int);
extern template void solve_cross<double, Kind::Gaussian>(Points<double>&, Points<double>&, double*, double*, double*,
                                                         int);

}  // namespace detail
}  // namespace cpu
}  // namespace comhe

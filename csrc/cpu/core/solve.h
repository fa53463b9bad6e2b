// The pair loops and epilogues of the CPU kernel, one instantiation per kind
// and dtype, each in its own translation unit (instantiate_<kind>.cpp,
// compiled in parallel): the entry points (entry_points.cpp) see only these
// declarations.
#pragma once

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {

// The one-set op on the prologue's packed points: energy (B) and, if grad is
// not null, the gradient (B, N, k) contiguous.
template <class T, Kind K>
void solve(Points<T>& pr, double* energy, T* grad, int nthreads);

extern template void solve<float, Kind::Chordal>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Chordal>(Points<double>&, double*, double*, int);
extern template void solve<float, Kind::Angular>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Angular>(Points<double>&, double*, double*, int);
extern template void solve<float, Kind::Gaussian>(Points<float>&, double*, float*, int);
extern template void solve<double, Kind::Gaussian>(Points<double>&, double*, double*, int);

}  // namespace detail
}  // namespace cpu
}  // namespace comhe

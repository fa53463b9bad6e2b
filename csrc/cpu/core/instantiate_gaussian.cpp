// The Gaussian energies of both ops of the CPU kernel, float32 and float64 (see solve.h).
#include "schedule.h"

using comhe::Kind;
using comhe::cpu::detail::Points;
using comhe::cpu::detail::Stop;
template void comhe::cpu::detail::solve<float, Kind::Gaussian>(Points<float>&, double*, float*, int, Stop&);
template void comhe::cpu::detail::solve<double, Kind::Gaussian>(Points<double>&, double*, double*, int, Stop&);
template void comhe::cpu::detail::solve_cross<float, Kind::Gaussian>(Points<float>&, Points<float>&, double*, float*,
                                                                  float*, int, Stop&);
template void comhe::cpu::detail::solve_cross<double, Kind::Gaussian>(Points<double>&, Points<double>&, double*,
                                                                   double*, double*, int, Stop&);

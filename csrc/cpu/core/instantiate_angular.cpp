// The angular energies of both ops of the CPU kernel, float32 and float64 (see solve.h).
#include "schedule.h"

using comhe::Kind;
using comhe::cpu::detail::Points;
using comhe::cpu::detail::Stop;
template void comhe::cpu::detail::solve<float, Kind::Angular>(Points<float>&, double*, float*, int, Stop&);
template void comhe::cpu::detail::solve<double, Kind::Angular>(Points<double>&, double*, double*, int, Stop&);
template void comhe::cpu::detail::solve_cross<float, Kind::Angular>(Points<float>&, Points<float>&, double*, float*,
                                                                  float*, int, Stop&);
template void comhe::cpu::detail::solve_cross<double, Kind::Angular>(Points<double>&, Points<double>&, double*,
                                                                   double*, double*, int, Stop&);

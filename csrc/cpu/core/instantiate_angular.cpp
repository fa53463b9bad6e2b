// The angular energies of the CPU kernel, float32 and float64 (see solve.h).
#include "schedule.h"

using comhe::Kind;
using comhe::cpu::detail::Points;
template void comhe::cpu::detail::solve<float, Kind::Angular>(Points<float>&, double*, float*, int);
template void comhe::cpu::detail::solve<double, Kind::Angular>(Points<double>&, double*, double*, int);

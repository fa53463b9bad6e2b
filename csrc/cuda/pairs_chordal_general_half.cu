// The pair kernels of one pair energy (chordal, power case General, half space; plan.cuh).
#include "pairs.cuh"

COMHE_CUDA_INSTANTIATE_PAIRS(comhe::Kind::Chordal, comhe::Power::General, true)

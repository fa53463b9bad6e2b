// The pair kernels of one pair energy (chordal, power case General, full space; plan.cuh).
#include "pairs.cuh"

COMHE_CUDA_INSTANTIATE_PAIRS(comhe::Kind::Chordal, comhe::Power::General, false)

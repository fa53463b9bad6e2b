// The pair kernels of one pair energy (chordal, power case One, full space; plan.cuh).
#include "pairs.cuh"

COMHE_CUDA_INSTANTIATE_PAIRS(comhe::Kind::Chordal, comhe::Power::One, false)

// The pair kernels of one pair energy (angular, power case One, half space; plan.cuh).
#include "pairs.cuh"

COMHE_CUDA_INSTANTIATE_PAIRS(comhe::Kind::Angular, comhe::Power::One, true)

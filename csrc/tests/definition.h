// What the C++ unit tests of the kernel core share: a CHECK that counts
// failures, the definition of the energies literally in long double, random
// points with planted close pairs, and the gradient by central differences.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "comhe/hyperspherical_energy.h"

namespace testing {

inline int failures = 0;

// --small: fewer points per sweep, differenced coordinates and thread-count
// points, the same cases otherwise, for the aarch64 build run under
// qemu-user in CI (see CMakeLists.txt), where the full sizes ran past ten
// minutes: long double is a software 128-bit type on aarch64, emulated
// instruction by instruction.
inline bool small = false;
inline void parse_args(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--small") {
      small = true;
    } else {
      std::fprintf(stderr, "unknown argument %s (usage: %s [--small])\n", argv[i], argv[0]);
      std::exit(2);
    }
  }
}
// full, or reduced under --small
inline int sized(int full, int reduced) { return small ? reduced : full; }

#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      ++testing::failures;                                          \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
      std::printf(__VA_ARGS__);                                     \
      std::printf("\n");                                            \
    }                                                               \
  } while (0)

inline int report() {
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}

using comhe::EnergyParams;
using comhe::Kind;
using LD = long double;

// f of the pair (p, q) of normalized points with their a's.
inline LD pair_f(const LD* p, const LD* q, LD ap, LD aq, int k, const EnergyParams& P) {
  LD d2 = ap + aq, d2p = ap + aq;
  for (int c = 0; c < k; ++c) {
    d2 += (p[c] - q[c]) * (p[c] - q[c]);
    d2p += (p[c] + q[c]) * (p[c] + q[c]);
  }
  if (P.kind == Kind::Chordal) return P.s == 0 ? -0.5L * std::log(d2) : std::pow(d2, -LD(P.s) / 2);
  if (P.kind == Kind::Gaussian) return std::exp(-LD(P.s) * d2);
  LD theta = 2 / M_PIl * std::atan2(std::sqrt(d2), std::sqrt(d2p)) + LD(P.delta);
  return P.s == 0 ? -std::log(theta) : std::pow(theta, -LD(P.s));
}

// u = x / sqrt(|x|^2 + eps) and a = eps / (|x|^2 + eps) of n rows; with
// mirror, the n rows -u after them (the half-space set [u; -u]).
inline void normalize(const std::vector<LD>& x, int n, int k, LD eps, bool mirror, std::vector<LD>& u,
                      std::vector<LD>& a) {
  const int m = mirror ? 2 * n : n;
  u.assign(size_t(m) * k, 0);
  a.assign(m, 0);
  for (int i = 0; i < n; ++i) {
    LD nn = 0;
    for (int c = 0; c < k; ++c) nn += x[i * k + c] * x[i * k + c];
    for (int c = 0; c < k; ++c) u[i * k + c] = x[i * k + c] / std::sqrt(nn + eps);
    a[i] = eps / (nn + eps);
    if (mirror) {
      for (int c = 0; c < k; ++c) u[(n + i) * k + c] = -u[i * k + c];
      a[n + i] = a[i];
    }
  }
}

// The one-set energy: every pair i < j (half space: of the 2n points [u; -u]).
// With row >= 0 only the pairs that involve x_row (the point row and, in half
// space, its mirror n + row): the energy's terms that depend on x_row, for
// its central differences in O(n) instead of O(n^2) pairs.
inline LD energy_ld(const std::vector<LD>& x, int n, int k, const EnergyParams& P, int row = -1) {
  std::vector<LD> u, a;
  normalize(x, n, k, LD(P.eps), P.half_space, u, a);
  const int m = int(a.size());
  auto involved = [&](int i) { return row < 0 || i == row || (P.half_space && i == n + row); };
  LD e = 0;
  for (int i = 0; i < m; ++i)
    for (int j = i + 1; j < m; ++j)
      if (involved(i) || involved(j)) e += pair_f(&u[i * k], &u[j * k], a[i], a[j], k, P);
  return e;
}

// The cross-set energy: every pair (x_i, y_j) (half space: y_j and -y_j).
// With x_row >= 0 (or y_row >= 0) only the pairs of that row of x (of y).
inline LD cross_energy_ld(const std::vector<LD>& x, int n, const std::vector<LD>& y, int m, int k,
                          const EnergyParams& P, int x_row = -1, int y_row = -1) {
  std::vector<LD> u, a, v, b;
  normalize(x, n, k, LD(P.eps), false, u, a);
  normalize(y, m, k, LD(P.eps), P.half_space, v, b);
  LD e = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < int(b.size()); ++j)
      if ((x_row < 0 || i == x_row) && (y_row < 0 || j % m == y_row))
        e += pair_f(&u[i * k], &v[j * k], a[i], b[j], k, P);
  return e;
}

// B sets of n normal points; with plant_close_pairs an exact duplicate and a
// near antipode of the first row in every set of more than 3 points.
template <class T>
std::vector<T> random_points(int B, int n, int k, bool plant_close_pairs, int seed = 0) {
  std::mt19937 rng(n * 131 + k + seed);
  std::normal_distribution<double> normal;
  std::vector<T> x(size_t(B) * n * k);
  for (auto& v : x) v = T(normal(rng));
  if (plant_close_pairs && n > 3)
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < k; ++c) {
        x[(b * n + 1) * k + c] = x[b * n * k + c];
        x[(b * n + 2) * k + c] = T(-x[b * n * k + c] * 1.0001);
      }
  return x;
}

// max |grad - dE/dx| over at most 12 coordinates of xs (3 with --small), and max(1, max |dE/dx|),
// dE/dx by fourth-order central differences of energy(i) in long double, the
// energy's terms that depend on coordinate i of xs, with steps h = 1e-5 |x|:
// truncation ~100 (h/d)^4 relative for a pair at distance d (6e-12 at
// d = 0.02, a close pair of random points; 6e-8 at h = 1e-4) and rounding
// 1e-19 |E| / h both far below the float64 tolerance. The scale floor 1: one
// pair's O(1) terms (see tests/conftest.py).
template <class T, class F>
void gradient_error(std::vector<LD>& xs, const T* grad, F energy, double& gerr, double& gmax) {
  gerr = 0;
  gmax = 1;
  const int n = int(xs.size());
  for (int i = 0; i < n; i += std::max(1, n / sized(12, 3))) {
    const LD keep = xs[i], h = 1e-5L * std::max<LD>(1, std::fabs(keep));
    LD f[4];
    const LD steps[4] = {-2, -1, 1, 2};
    for (int t = 0; t < 4; ++t) {
      xs[i] = keep + steps[t] * h;
      f[t] = energy(i);
    }
    xs[i] = keep;
    const double g_ref = double((f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h));
    gmax = std::max(gmax, std::fabs(g_ref));
    gerr = std::max(gerr, std::fabs(double(grad[i]) - g_ref));
  }
}

// Calls check(P, name) for every kind, power case and half_space: the
// instantiations of the pair loops.
template <class F>
void for_each_energy(F check) {
  for (Kind kind : {Kind::Chordal, Kind::Angular, Kind::Gaussian})
    for (double s : {0.0, 1.0, 2.0, 1.5})
      for (bool half : {false, true})
        if (kind != Kind::Gaussian || s > 0) {
          EnergyParams P;
          P.kind = kind;
          P.s = s;
          P.half_space = half;
          check(P);
        }
}

// The parameters of a test case.
inline EnergyParams params(Kind kind, double s, bool half_space, double eps = 1e-4) {
  EnergyParams P;
  P.kind = kind;
  P.s = s;
  P.half_space = half_space;
  P.eps = eps;
  return P;
}

}  // namespace testing

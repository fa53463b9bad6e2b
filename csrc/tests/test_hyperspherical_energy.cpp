// Unit tests of the torch-free kernel core (ctest): the vector elementary
// functions against libm, and the kernel against a literal long-double
// evaluation of the definition (half space as the explicit set of 2N points),
// its gradient against central differences of that evaluation.
#include "comhe/simd.h"
#include "definition.h"

namespace {

using namespace testing;

// ---- elementary functions ------------------------------------------------------

template <class T, class F, class G>
double max_rel_error(F vec_fn, G ref_fn, T lo, T hi, bool log_spaced) {
  using V = typename comhe::simd::Traits<T>::V;
  constexpr int W = comhe::simd::Traits<T>::W;
  double worst = 0;
  const int n = sized(200000, 20000);
  for (int i = 0; i < n; i += W) {
    V x;
    for (int l = 0; l < W; ++l) {
      double t = double(i + l) / n;
      x[l] = T(log_spaced ? lo * std::pow(double(hi) / lo, t) : lo + (hi - lo) * t);
    }
    V y = vec_fn(x);
    for (int l = 0; l < W; ++l) {
      LD ref = ref_fn(LD(x[l]));
      if (ref != 0) worst = std::max(worst, double(std::fabs((LD(y[l]) - ref) / ref)));
    }
  }
  return worst;
}

template <class T>
void test_elementary_functions() {
  using V = typename comhe::simd::Traits<T>::V;
  const double ulp = std::numeric_limits<T>::epsilon();
  const char* name = sizeof(T) == 4 ? "float" : "double";
  // log on positive normals, away from 1 (where log -> 0 and relative error is meaningless)
  double e_log = max_rel_error<T>([](V x) { return comhe::simd::log(x); }, [](LD x) { return std::log(x); },
                                  T(1e-30), T(0.9), true);
  double e_log2 = max_rel_error<T>([](V x) { return comhe::simd::log(x); }, [](LD x) { return std::log(x); },
                                   T(1.1), T(1e30), true);
  CHECK(e_log <= 4 * ulp && e_log2 <= 4 * ulp, "%s log: %.2f ulp, %.2f ulp", name, e_log / ulp, e_log2 / ulp);
  const T big = sizeof(T) == 4 ? T(80) : T(700);
  double e_exp = max_rel_error<T>([](V x) { return comhe::simd::exp(x); }, [](LD x) { return std::exp(x); }, -big,
                                  big, false);
  CHECK(e_exp <= 4 * ulp, "%s exp: %.2f ulp", name, e_exp / ulp);
  double e_rsqrt = max_rel_error<T>([](V x) { return comhe::simd::twice_rsqrt(x); },
                                    [](LD x) { return 2 / std::sqrt(x); }, T(1e-6), T(1e6), true);
  CHECK(e_rsqrt <= 4 * ulp, "%s twice_rsqrt: %.2f ulp", name, e_rsqrt / ulp);
  // atan2 over the quarter plane, by angle, and its complement atan2(q, p)
  // (near 0 where the angle is near pi/2: each to its own relative precision)
  V unused;
  double e_atan = max_rel_error<T>(
      [&](V t) { return comhe::simd::atan2_nonneg(comhe::simd::sqrt(t), comhe::simd::sqrt(T(4) - t), unused); },
      [](LD t) { return std::atan2(std::sqrt(t), std::sqrt(4 - t)); }, T(1e-12), T(4), true);
  double e_comp = max_rel_error<T>(
      [](V t) {
        V comp;
        comhe::simd::atan2_nonneg(comhe::simd::sqrt(T(4) - t), comhe::simd::sqrt(t), comp);
        return comp;
      },
      [](LD t) { return std::atan2(std::sqrt(t), std::sqrt(4 - t)); }, T(1e-12), T(4), true);
  CHECK(e_atan <= 4 * ulp && e_comp <= 4 * ulp, "%s atan2: %.2f ulp, complement %.2f ulp", name, e_atan / ulp,
        e_comp / ulp);
  // overflow and underflow where exp has them
  V x = V{} + T(sizeof(T) == 4 ? 89 : 710);
  CHECK(std::isinf(comhe::simd::exp(x)[0]), "%s exp overflow", name);
  x = V{} - T(sizeof(T) == 4 ? 104 : 746);
  CHECK(comhe::simd::exp(x)[0] == 0, "%s exp underflow", name);
  std::printf("%s: log %.2f/%.2f, exp %.2f, twice_rsqrt %.2f, atan2 %.2f, complement %.2f ulp\n", name, e_log / ulp,
              e_log2 / ulp, e_exp / ulp, e_rsqrt / ulp, e_atan / ulp, e_comp / ulp);
}

// Energy against the definition, with close pairs planted; gradient against
// central differences of the definition on separated points (at close pairs
// the differences' truncation error, h^4 f^(5), would swamp the comparison).
template <class T>
void test_kernel_against_definition(int n, int k, EnergyParams P, double tol_e, double tol_g) {
  const int B = 2;
  comhe::PointsLayout L{B, n, k, int64_t(n) * k, k, 1};
  std::vector<double> energy(B);
  for (bool planted : {true, false}) {
    std::vector<T> x = random_points<T>(B, n, k, planted);
    std::vector<T> grad(x.size());
    auto st = comhe::cpu::hyperspherical_energy<T>(x.data(), L, P, energy.data(), grad.data(), 2);
    CHECK(st.ok, "status");
    for (int b = 0; b < B; ++b) {
      std::vector<LD> xs(x.begin() + b * n * k, x.begin() + (b + 1) * n * k);
      LD e_ref = energy_ld(xs, n, k, P);
      CHECK(std::fabs(energy[b] - e_ref) <= tol_e * std::fabs(e_ref), "n=%d k=%d kind=%d s=%g half=%d: %.17g vs %.17Lg",
            n, k, int(P.kind), P.s, int(P.half_space), energy[b], e_ref);
      if (planted) continue;
      double gerr, gmax;
      gradient_error(xs, grad.data() + b * n * k, [&](int i) { return energy_ld(xs, n, k, P, i / k); }, gerr, gmax);
      CHECK(gerr <= tol_g * gmax, "gradient n=%d k=%d kind=%d s=%g half=%d: error %.3g of %.3g", n, k, int(P.kind),
            P.s, int(P.half_space), gerr, gmax);
    }
  }
}

void test_definitions() {
  const double sv[] = {0, 1, 2, 0.5, 3};
  for (Kind kind : {Kind::Chordal, Kind::Angular, Kind::Gaussian})
    for (double s : sv)
      if (kind != Kind::Gaussian || s > 0)  // the Gaussian's t
      for (bool half : {false, true})
        for (int n : {1, 2, 7, 45})
          for (int k : {3, 20}) {
            const EnergyParams P = params(kind, s, half);
            // float64: 1e-12 as in tests/conftest.py; gradient limited by the differences (1e-11)
            test_kernel_against_definition<double>(n, k, P, 1e-12, 1e-9);
            // float32: the accuracy contract, 1e-6 energy, 1e-3 gradient
            test_kernel_against_definition<float>(n, k, P, 1e-6, 1e-3);
          }
}

void test_non_finite_rows_are_reported() {
  std::vector<float> x(3 * 20 * 4, 1.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i)));
  x[(2 * 20 + 13) * 4 + 1] = NAN;
  x[(2 * 20 + 15) * 4 + 0] = INFINITY;
  std::vector<double> e(3);
  comhe::PointsLayout L{3, 20, 4, 80, 4, 1};
  auto st = comhe::cpu::hyperspherical_energy<float>(x.data(), L, EnergyParams{}, e.data(), nullptr, 2);
  CHECK(!st.ok && st.bad_set == 2 && st.bad_row == 13, "status %d set %lld row %lld", int(st.ok),
        (long long)st.bad_set, (long long)st.bad_row);
}

void test_thread_count_independence() {
  const int n = sized(3000, 900), k = 3;  // 47 (15) tiles: an odd number of super-tiles, a bye per round
  std::vector<float> x(n * k);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  comhe::PointsLayout L{1, n, k, n * k, k, 1};
  double e1, e4;
  std::vector<float> g1(x.size()), g4(x.size());
  comhe::cpu::hyperspherical_energy<float>(x.data(), L, EnergyParams{}, &e1, g1.data(), 1);
  comhe::cpu::hyperspherical_energy<float>(x.data(), L, EnergyParams{}, &e4, g4.data(), 4);
  CHECK(e1 == e4 && g1 == g4, "1 thread %.17g vs 4 threads %.17g", e1, e4);
}

// The energy of a call without the gradient is the energy of the call with
// it, to the bit, on both paths (simd::compute_always).
template <class T>
void test_forward_only_energy_is_the_same() {
  for (int k : {3, 5, 20}) {
    const int B = 2, n = 150;
    std::vector<T> x = random_points<T>(B, n, k, true), grad(size_t(B) * n * k);
    const comhe::PointsLayout L{B, n, k, int64_t(n) * k, k, 1};
    for_each_energy([&](const EnergyParams& P) {
      std::vector<double> e0(B), e1(B);
      comhe::cpu::hyperspherical_energy<T>(x.data(), L, P, e0.data(), nullptr, 2);
      comhe::cpu::hyperspherical_energy<T>(x.data(), L, P, e1.data(), grad.data(), 2);
      CHECK(e0 == e1, "T=%d k=%d kind=%d s=%g half=%d: %.17g without the gradient, %.17g with it", int(sizeof(T)), k,
            int(P.kind), P.s, int(P.half_space), e0[0], e1[0]);
    });
  }
}

}  // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);
  test_elementary_functions<float>();
  test_elementary_functions<double>();
  test_definitions();
  test_non_finite_rows_are_reported();
  test_thread_count_independence();
  test_forward_only_energy_is_the_same<float>();
  test_forward_only_energy_is_the_same<double>();
  return report();
}

// The CUDA kernels against the CPU core (ctest; torch-free): random and
// adversarial inputs (odd sizes, N = 1 and 2, several tiles, duplicates,
// near duplicates, antipodal and zero rows, strided and batched input),
// every kind, half space, both ops, float64 and float32 in every precision
// mode; bit-identical results run to run; the NaN/Inf status; a non-default
// stream. The reference is the CPU core in float64 on the same input values
// (itself tested against a long-double evaluation of the definition), and a
// plain float64 double loop over all pairs for the cross-set op.
// Where no GPU is visible it exits with ctest's skip code, 77.
// `test_cuda_kernels quick`: a few small cases of each path (for
// compute-sanitizer, which runs kernels 10-100x slower).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../cuda/hyperspherical_energy_cuda.h"
#include "comhe/hyperspherical_energy.h"

namespace {

using comhe::EnergyParams;
using comhe::Kind;
using comhe::PointsLayout;
using comhe::cuda::Precision;

int failures = 0, checks = 0;

#define CUDA_OK(expr)                                                                           \
  do {                                                                                          \
    const cudaError_t e_ = (expr);                                                              \
    if (e_ != cudaSuccess) {                                                                    \
      std::printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

const char* name_of(Precision p) {
  return p == Precision::IEEE ? "ieee" : p == Precision::TF32X3 ? "tf32x3" : p == Precision::TF32 ? "tf32" : "bf16";
}

// Error bounds: float64 and the float32 contract (tests/conftest.py); the
// TF32 and BF16 modes' provisional bounds (the operand rounding, 2^-11 and
// 2^-8 relative, mostly cancels in the energy): the first GPU run reports
// the measured errors, which docs/cuda.md then states.
struct Bounds {
  double energy, grad;
};
Bounds bounds(bool is_double, Precision p) {
  if (is_double) return {1e-12, 1e-12};
  if (p == Precision::TF32) return {2e-4, 1e-2};
  if (p == Precision::BF16) return {2e-3, 5e-2};
  return {1e-6, 1e-3};
}

struct Input {
  PointsLayout L;
  std::vector<double> x;  // storage of size covering the strides
};

enum class Pattern { Random, Duplicates, Near, Antipodal, ZeroRows, Clusters };

Input make_input(int64_t B, int64_t N, int64_t k, Pattern pat, bool strided, std::mt19937_64& rng) {
  Input in;
  const int64_t sk = strided ? 2 : 1, sn = k * sk + (strided ? 3 : 0), sb = N * sn + (strided ? 5 : 0);
  in.L = PointsLayout{B, N, k, sb, sn, sk};
  in.x.assign(size_t(std::max<int64_t>(B * sb, 1)), 0.0);
  std::normal_distribution<double> gauss(0.0, 1.0);
  auto at = [&](int64_t b, int64_t i, int64_t c) -> double& { return in.x[size_t(b * sb + i * sn + c * sk)]; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < k; ++c) at(b, i, c) = gauss(rng);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 1; i < N; i += 7) {  // every seventh row relates to row 0 (or to its cluster centre)
      for (int64_t c = 0; c < k; ++c) {
        const double x0 = at(b, pat == Pattern::Clusters ? i / 14 * 14 : 0, c);
        switch (pat) {
          case Pattern::Duplicates: at(b, i, c) = x0; break;
          case Pattern::Near: at(b, i, c) = x0 + 1e-4 * gauss(rng); break;
          case Pattern::Antipodal: at(b, i, c) = -x0; break;
          case Pattern::ZeroRows: at(b, i, c) = 0.0; break;
          case Pattern::Clusters: at(b, i, c) = x0 + 2e-2 * gauss(rng); break;
          default: break;
        }
      }
    }
  return in;
}

template <class T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

struct Result {
  std::vector<double> energy;
  std::vector<double> gx, gy;  // contiguous (B, N, k), (B, M, k)
  comhe::cuda::Status status;
};

// One call of a CUDA op (cross if y) on the given stream.
template <class T>
Result run_gpu(const Input& X, const Input* Y, const EnergyParams& P, Precision prec, bool grad, cudaStream_t stream) {
  const std::vector<T> hx = as<T>(X.x);
  const std::vector<T> hy = Y ? as<T>(Y->x) : std::vector<T>();
  const int64_t B = X.L.B, nx = B * X.L.N * X.L.k, ny = Y ? B * Y->L.N * Y->L.k : 0;
  T *dx = nullptr, *dy = nullptr, *gx = nullptr, *gy = nullptr;
  double* de = nullptr;
  void* ws = nullptr;
  CUDA_OK(cudaMalloc(&dx, hx.size() * sizeof(T)));
  CUDA_OK(cudaMemcpy(dx, hx.data(), hx.size() * sizeof(T), cudaMemcpyHostToDevice));
  if (Y) {
    CUDA_OK(cudaMalloc(&dy, hy.size() * sizeof(T)));
    CUDA_OK(cudaMemcpy(dy, hy.data(), hy.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  CUDA_OK(cudaMalloc(&de, std::max<int64_t>(B, 1) * sizeof(double)));
  // poisoned outputs: every element must be written
  CUDA_OK(cudaMemset(de, 0xff, std::max<int64_t>(B, 1) * sizeof(double)));
  if (grad) {
    CUDA_OK(cudaMalloc(&gx, std::max<int64_t>(nx, 1) * sizeof(T)));
    CUDA_OK(cudaMemset(gx, 0xff, std::max<int64_t>(nx, 1) * sizeof(T)));
    if (Y) {
      CUDA_OK(cudaMalloc(&gy, std::max<int64_t>(ny, 1) * sizeof(T)));
      CUDA_OK(cudaMemset(gy, 0xff, std::max<int64_t>(ny, 1) * sizeof(T)));
    }
  }
  const size_t bytes = Y ? comhe::cuda::cross_workspace_bytes<T>(X.L, Y->L, P, prec, grad)
                         : comhe::cuda::energy_workspace_bytes<T>(X.L, P, prec, grad);
  CUDA_OK(cudaMalloc(&ws, std::max<size_t>(bytes, 256)));
  CUDA_OK(cudaMemset(ws, 0xff, std::max<size_t>(bytes, 256)));  // garbage, as a reused allocation would hold
  if (Y)
    CUDA_OK(comhe::cuda::cross_energy_cuda<T>(dx, X.L, dy, Y->L, P, prec, de, gx, gy, ws, stream));
  else
    CUDA_OK(comhe::cuda::hyperspherical_energy_cuda<T>(dx, X.L, P, prec, de, gx, ws, stream));
  Result r;
  CUDA_OK(comhe::cuda::read_status(ws, stream, &r.status));
  CUDA_OK(cudaDeviceSynchronize());
  r.energy.resize(size_t(B));
  CUDA_OK(cudaMemcpy(r.energy.data(), de, B * sizeof(double), cudaMemcpyDeviceToHost));
  auto fetch = [](const T* d, int64_t n) {
    std::vector<T> h(static_cast<size_t>(n));
    if (n) CUDA_OK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return std::vector<double>(h.begin(), h.end());
  };
  if (grad) {
    r.gx = fetch(gx, nx);
    if (Y) r.gy = fetch(gy, ny);
  }
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(dy), static_cast<void*>(gx), static_cast<void*>(gy),
                  static_cast<void*>(de), ws})
    if (p) CUDA_OK(cudaFree(p));
  return r;
}

// The one-set reference: the CPU core in float64 on the same values.
Result run_cpu(const Input& X, const EnergyParams& P) {
  Result r;
  r.energy.assign(size_t(X.L.B), 0.0);
  r.gx.assign(size_t(X.L.B * X.L.N * X.L.k), 0.0);
  const comhe::KernelStatus st =
      comhe::cpu::hyperspherical_energy<double>(X.x.data(), X.L, P, r.energy.data(), r.gx.data(), 2);
  r.status.bad_x = st.ok ? -1 : st.bad_set * X.L.N + st.bad_row;
  return r;
}

// The cross-set reference: every pair (i, j) in float64, the definition's
// chain rule, for one pair energy E (full space; the mirrored pair of half
// space is E at (d2p, d2)).
template <class E>
Result cross_reference(const Input& X, const Input& Y, const EnergyParams& P) {
  const int64_t B = X.L.B, N = X.L.N, M = Y.L.N, k = X.L.k;
  Result r;
  r.energy.assign(size_t(B), 0.0);
  r.gx.assign(size_t(B * N * k), 0.0);
  r.gy.assign(size_t(B * M * k), 0.0);
  auto normalize = [&](const Input& S, int64_t b, int64_t i, std::vector<double>& u, double& a, double& rr) {
    double n = 0;
    for (int64_t c = 0; c < k; ++c) {
      const double v = S.x[size_t(b * S.L.stride_b + i * S.L.stride_n + c * S.L.stride_k)];
      u[size_t(c)] = v;
      n += v * v;
    }
    rr = std::sqrt(n + P.eps);
    a = n + P.eps > 0 ? P.eps / (n + P.eps) : 1.0;
    if (n + P.eps == 0) rr = 0;
    for (auto& v : u) v = rr > 0 ? v / rr : 0.0;
  };
  std::vector<double> ui(static_cast<size_t>(k)), vj(static_cast<size_t>(k)), gu(static_cast<size_t>(k));
  std::vector<std::vector<double>> gvs(static_cast<size_t>(M), std::vector<double>(static_cast<size_t>(k)));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> aref_y(size_t(M), 0.0);
    for (auto& g : gvs) std::fill(g.begin(), g.end(), 0.0);
    for (int64_t i = 0; i < N; ++i) {
      double ai, ri;
      normalize(X, b, i, ui, ai, ri);
      std::fill(gu.begin(), gu.end(), 0.0);
      double aref = 0;
      for (int64_t j = 0; j < M; ++j) {
        double aj, rj;
        normalize(Y, b, j, vj, aj, rj);
        double d2 = ai + aj, d2p = ai + aj;
        for (int64_t c = 0; c < k; ++c) {
          d2 += (ui[c] - vj[c]) * (ui[c] - vj[c]);
          d2p += (ui[c] + vj[c]) * (ui[c] + vj[c]);
        }
        double F, al, be;
        E::eval(d2, d2p, P.s, P.delta, F, al, be);
        double e = F / E::lambda, A = al / E::kappa, Bt = be / E::kappa;
        if (P.half_space) {
          double F2, al2, be2;
          E::eval(d2p, d2, P.s, P.delta, F2, al2, be2);
          e += F2 / E::lambda;
          A += be2 / E::kappa;
          Bt += al2 / E::kappa;
        }
        r.energy[size_t(b)] += e;
        for (int64_t c = 0; c < k; ++c) {
          gu[c] += 2 * A * (ui[c] - vj[c]) + 2 * Bt * (ui[c] + vj[c]);
          gvs[size_t(j)][c] += 2 * A * (vj[c] - ui[c]) + 2 * Bt * (ui[c] + vj[c]);
        }
        aref += A + Bt;
        aref_y[size_t(j)] += A + Bt;
      }
      // dE/dx = [(I - u u^T) dE/du - 2 a (sum of dE/dd2 + dE/dd2p) u] / r  (d2 = |u - v|^2 + a_i + a_j)
      double dot = 0;
      for (int64_t c = 0; c < k; ++c) dot += gu[c] * ui[c];
      for (int64_t c = 0; c < k; ++c)
        r.gx[size_t((b * N + i) * k + c)] = ri > 0 ? (gu[c] - dot * ui[c] - 2 * ai * aref * ui[c]) / ri : 0.0;
    }
    for (int64_t j = 0; j < M; ++j) {
      double aj, rj;
      normalize(Y, b, j, vj, aj, rj);
      double dot = 0;
      for (int64_t c = 0; c < k; ++c) dot += gvs[size_t(j)][c] * vj[c];
      for (int64_t c = 0; c < k; ++c)
        r.gy[size_t((b * M + j) * k + c)] =
            rj > 0 ? (gvs[size_t(j)][c] - dot * vj[c] - 2 * aj * aref_y[size_t(j)] * vj[c]) / rj : 0.0;
    }
  }
  return r;
}

template <class F>
void with_full_energy(const EnergyParams& P, F&& f) {
  using comhe::PairEnergy;
  using comhe::Power;
  if (P.kind == Kind::Gaussian) return f(PairEnergy<Kind::Gaussian, Power::General, false>{});
  if (P.kind == Kind::Angular) return f(PairEnergy<Kind::Angular, Power::General, false>{});
  switch (comhe::power_case(P.s)) {
    case Power::Log: return f(PairEnergy<Kind::Chordal, Power::Log, false>{});
    case Power::One: return f(PairEnergy<Kind::Chordal, Power::One, false>{});
    case Power::Two: return f(PairEnergy<Kind::Chordal, Power::Two, false>{});
    default: return f(PairEnergy<Kind::Chordal, Power::General, false>{});
  }
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::fabs(e));
  return m;
}

// |e - e_ref| <= tol (|e_ref| + pairs) per set (inf matching inf), max |g - g_ref| <= tol max(max |g_ref|, 1).
void compare(const Result& got, const Result& ref, double pairs, Bounds tol, bool grad, const std::string& what,
             double* worst_e = nullptr, double* worst_g = nullptr) {
  double we = 0;
  bool ok = got.energy.size() == ref.energy.size();
  for (size_t b = 0; ok && b < ref.energy.size(); ++b) {
    if (std::isinf(ref.energy[b]) && got.energy[b] == ref.energy[b]) continue;
    const double err = std::fabs(got.energy[b] - ref.energy[b]) / (std::fabs(ref.energy[b]) + std::max(pairs, 1.0));
    we = std::max(we, std::isfinite(err) ? err : INFINITY);
  }
  check(ok && we <= tol.energy, what + ": energy error " + std::to_string(we));
  double wg = 0;
  auto grads = [&](const std::vector<double>& g, const std::vector<double>& gr) {
    const double scale = std::max(max_abs(gr), 1.0);
    for (size_t q = 0; q < gr.size(); ++q) {
      const double err = std::fabs(g[q] - gr[q]) / scale;
      wg = std::max(wg, std::isfinite(err) ? err : INFINITY);
    }
  };
  if (grad) {
    grads(got.gx, ref.gx);
    if (!ref.gy.empty()) grads(got.gy, ref.gy);
    check(wg <= tol.grad, what + ": gradient error " + std::to_string(wg));
  }
  if (worst_e) *worst_e = std::max(*worst_e, we);
  if (worst_g) *worst_g = std::max(*worst_g, wg);
}

struct Spec {
  Kind kind;
  double s;
  bool half;
  double eps;
  const char* name;
};

std::string describe(const Spec& sp, const PointsLayout& L, Pattern pat, const char* type, Precision p) {
  static const char* pats[] = {"random", "duplicates", "near", "antipodal", "zero-rows", "clusters"};
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s%s eps=%g B=%lld N=%lld k=%lld %s %s %s", sp.name, sp.half ? " half" : "", sp.eps,
                (long long)L.B, (long long)L.N, (long long)L.k, pats[int(pat)], type, name_of(p));
  return buf;
}

EnergyParams params_of(const Spec& sp) {
  EnergyParams P;
  P.kind = sp.kind;
  P.s = sp.s;
  P.half_space = sp.half;
  P.eps = sp.eps;
  P.delta = 1e-4;
  return P;
}

double one_set_pairs(const PointsLayout& L, bool half) {
  return half ? double(L.N) * (2 * L.N - 1) : double(L.N) * (L.N - 1) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "quick") == 0;
  int devices = 0;
  const cudaError_t probe = cudaGetDeviceCount(&devices);
  if (probe != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device (%s)\n", probe != cudaSuccess ? cudaGetErrorString(probe) : "none visible");
    return 77;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, compute capability %d.%d, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  const bool tc = prop.major >= 8;
  std::mt19937_64 rng(20261201);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  const Spec specs[] = {
      {Kind::Chordal, 1, false, 1e-4, "s=1"},   {Kind::Chordal, 1, true, 1e-4, "s=1"},
      {Kind::Chordal, 2, true, 1e-4, "s=2"},    {Kind::Chordal, 0, false, 1e-4, "log"},
      {Kind::Chordal, 1.5, false, 0.0, "s=1.5"}, {Kind::Angular, 1, false, 1e-4, "a1"},
      {Kind::Angular, 0, true, 1e-4, "a0"},     {Kind::Angular, 2, false, 1e-4, "a2"},
      {Kind::Gaussian, 2, false, 1e-4, "g2"},   {Kind::Gaussian, 2, true, 0.0, "g2"},
  };
  struct Shape {
    int64_t B, N, k;
  };
  // small-k tiles of 512 points (float32) and the gram path's 128-row and 64-column tiles, crossed
  const Shape shapes[] = {{1, 1, 3}, {2, 2, 3}, {1, 19, 1}, {3, 97, 3}, {1, 600, 3}, {2, 1100, 3}, {1, 130, 4},
                          {2, 97, 7}, {1, 600, 8}, {1, 19, 9}, {2, 130, 33}, {1, 300, 40}, {1, 97, 129},
                          {1, 200, 300}};
  const Pattern patterns[] = {Pattern::Random, Pattern::Duplicates, Pattern::Near, Pattern::Antipodal,
                              Pattern::ZeroRows, Pattern::Clusters};

  // one-set op: every shape with a rotating spec and pattern, float64 and float32 in each precision
  std::printf("%-60s %12s %12s\n", "worst errors (one-set op)", "energy", "gradient");
  int q = 0;
  double worst[2][4][2] = {};  // [small k?][precision][energy, grad] in float32
  for (const Shape& sh : shapes) {
    if (quick && (sh.N > 130 || sh.k > 40)) continue;
    for (int rep = 0; rep < (quick ? 1 : 3); ++rep, ++q) {
      const Spec& sp = specs[q % (sizeof specs / sizeof specs[0])];
      const Pattern pat = patterns[q % (sizeof patterns / sizeof patterns[0])];
      if (pat == Pattern::Duplicates && sp.eps == 0) continue;  // coincident with eps = 0: inf, tested below
      const Input in = make_input(sh.B, sh.N, sh.k, pat, q % 2 == 1, rng);
      const EnergyParams P = params_of(sp);
      const Result ref = run_cpu(in, P);
      const double pairs = one_set_pairs(in.L, sp.half);
      compare(run_gpu<double>(in, nullptr, P, Precision::IEEE, true, stream), ref, pairs, bounds(true, Precision::IEEE),
              true, describe(sp, in.L, pat, "float64", Precision::IEEE));
      for (Precision p : {Precision::IEEE, Precision::TF32X3, Precision::TF32, Precision::BF16}) {
        if (p != Precision::IEEE && !tc) continue;
        if (p != Precision::IEEE && sh.k <= comhe::cuda::kSmallKMax && p != Precision::TF32X3) continue;
        compare(run_gpu<float>(in, nullptr, P, p, true, stream), ref, pairs, bounds(false, p), true,
                describe(sp, in.L, pat, "float32", p), &worst[sh.k <= 8][int(p)][0], &worst[sh.k <= 8][int(p)][1]);
      }
      // energy alone: the same sums as with the gradient
      const Result e1 = run_gpu<float>(in, nullptr, P, Precision::IEEE, false, stream);
      const Result e2 = run_gpu<float>(in, nullptr, P, Precision::IEEE, true, stream);
      check(e1.energy == e2.energy, describe(sp, in.L, pat, "float32", Precision::IEEE) + ": energy without gradient");
    }
  }
  for (int sk = 1; sk >= 0; --sk)
    for (int p = 0; p < 4; ++p)
      if (worst[sk][p][0] > 0 || worst[sk][p][1] > 0)
        std::printf("  float32 %-8s %-40s %12.3e %12.3e\n", name_of(Precision(p)), sk ? "k <= 8" : "k > 8",
                    worst[sk][p][0], worst[sk][p][1]);

  // cross-set op against the double loop
  const Shape cross_shapes[][2] = {{{1, 1, 3}, {1, 5, 3}}, {{2, 97, 3}, {2, 130, 3}}, {{1, 700, 3}, {1, 600, 3}},
                                   {{1, 19, 8}, {1, 2, 8}}, {{2, 130, 33}, {2, 97, 33}}, {{1, 150, 129}, {1, 70, 129}}};
  q = 0;
  for (const auto& cs : cross_shapes) {
    if (quick && cs[0].N > 130) continue;
    for (int rep = 0; rep < (quick ? 1 : 2); ++rep, ++q) {
      const Spec& sp = specs[(q * 3) % (sizeof specs / sizeof specs[0])];
      const Pattern pat = patterns[q % 3];
      const Input X = make_input(cs[0].B, cs[0].N, cs[0].k, pat, q % 2 == 0, rng);
      Input Y = make_input(cs[1].B, cs[1].N, cs[1].k, Pattern::Random, q % 2 == 1, rng);
      if (pat != Pattern::Random)  // close pairs between the sets: Y's first row near X's first
        for (int64_t c = 0; c < X.L.k; ++c) Y.x[size_t(c * Y.L.stride_k)] = X.x[size_t(c * X.L.stride_k)] * (1 + 1e-5);
      const EnergyParams P = params_of(sp);
      Result ref;
      with_full_energy(P, [&](auto e) { ref = cross_reference<decltype(e)>(X, Y, P); });
      const double pairs = (sp.half ? 2.0 : 1.0) * X.L.N * Y.L.N;
      compare(run_gpu<double>(X, &Y, P, Precision::IEEE, true, stream), ref, pairs, bounds(true, Precision::IEEE),
              true, "cross " + describe(sp, X.L, pat, "float64", Precision::IEEE));
      for (Precision p : {Precision::IEEE, Precision::TF32X3}) {
        if (p != Precision::IEEE && !tc) continue;
        compare(run_gpu<float>(X, &Y, P, p, true, stream), ref, pairs, bounds(false, p), true,
                "cross " + describe(sp, X.L, pat, "float32", p));
      }
    }
  }

  // bit-identical run to run, on both paths and a multi-tile size
  for (const Shape& sh : {Shape{2, quick ? 600 : 1100, 3}, Shape{1, quick ? 200 : 700, 40}}) {
    const Input in = make_input(sh.B, sh.N, sh.k, Pattern::Near, false, rng);
    const EnergyParams P = params_of(specs[1]);
    const Precision p = tc ? Precision::TF32X3 : Precision::IEEE;
    const Result a = run_gpu<float>(in, nullptr, P, p, true, stream), b = run_gpu<float>(in, nullptr, P, p, true, stream);
    check(a.energy == b.energy && a.gx == b.gx, "bit-identical results run to run, k = " + std::to_string(sh.k));
  }

  // coincident rows with eps = 0: infinite chordal energy (the gradient is NaN there, not compared)
  {
    Input in = make_input(1, 50, 3, Pattern::Duplicates, false, rng);
    const EnergyParams P = params_of(Spec{Kind::Chordal, 1, false, 0.0, "s=1"});
    const Result r = run_gpu<float>(in, nullptr, P, Precision::IEEE, false, stream);
    check(std::isinf(r.energy[0]) && r.energy[0] > 0, "coincident rows, eps = 0: energy " + std::to_string(r.energy[0]));
  }

  // the NaN/Inf status names the first bad row, per set
  for (int64_t k : {3, 40}) {
    Input in = make_input(2, 97, k, Pattern::Random, false, rng);
    in.x[size_t(in.L.stride_b + 5 * in.L.stride_n + 1 % k)] = NAN;
    in.x[size_t(in.L.stride_b + 9 * in.L.stride_n)] = INFINITY;
    const EnergyParams P = params_of(specs[0]);
    const Result r = run_gpu<float>(in, nullptr, P, Precision::IEEE, true, stream);
    check(r.status.bad_x == 97 + 5, "NaN status, k = " + std::to_string(k) + ": " + std::to_string(r.status.bad_x));
    Input y = make_input(2, 10, k, Pattern::Random, false, rng);
    y.x[size_t(3 * y.L.stride_n)] = NAN;
    const Result c = run_gpu<float>(make_input(2, 7, k, Pattern::Random, false, rng), &y, P, Precision::IEEE, true, stream);
    check(c.status.bad_x == -1 && c.status.bad_y == 3, "cross NaN status in y, k = " + std::to_string(k));
    const Result ok = run_gpu<float>(make_input(2, 7, k, Pattern::Random, false, rng), nullptr, P, Precision::IEEE, true,
                                     stream);
    check(ok.status.bad_x == -1, "no NaN: status clear");
  }

  CUDA_OK(cudaStreamDestroy(stream));
  std::printf("%d checks, %d failed\n", checks, failures);
  if (failures == 0) std::printf("%d passed, 0 failed\n", checks);
  return failures == 0 ? 0 : 1;
}

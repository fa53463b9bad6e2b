// The schedule of the pair loop (torch-free): which tile pairs a task
// computes, in which order the tasks run, and the epilogue after them.
//
// Scheduling without races: the tiles are grouped into super-tiles
// (tiles.h) and the super-tile pairs are played as a round-robin tournament
// (the circle method). Within a round no super-tile appears twice, so a task
// may update the accumulators of both its super-tiles, and a task starts as
// soon as its two super-tiles are done with their previous rounds (no
// barrier per round). The grouping depends on N and the machine's core count
// only, so the order of every floating-point sum, and the result, does not
// depend on the number of threads. The cross-set op plays the super-tiles of
// its two sets in the rounds of a Latin rectangle instead (solve_cross_sets).
#pragma once

#include <atomic>
#include <thread>
#include <type_traits>

#include "gram_path.h"
#include "prologue_epilogue.h"
#include "small_k_path.h"
#include "solve.h"

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {

// All tile pairs between super-tile S of A and super-tile Sb of Bp, set b;
// diag: the same super-tile of the same set (its pairs i < j).
template <class T, class E>
double super_pair(const Points<T>& A, int64_t S, const Points<T>& Bp, int64_t Sb, int64_t b, bool diag, bool grad,
                  T* Wb, T* WTb) {
  switch (A.small_k) {
    case 3:
      return grad ? super_pair_small<T, E, 3, true>(A, S, Bp, Sb, b, diag)
                  : super_pair_small<T, E, 3, false>(A, S, Bp, Sb, b, diag);
    case 4:
      return grad ? super_pair_small<T, E, 4, true>(A, S, Bp, Sb, b, diag)
                  : super_pair_small<T, E, 4, false>(A, S, Bp, Sb, b, diag);
    case 8:
      return grad ? super_pair_small<T, E, 8, true>(A, S, Bp, Sb, b, diag)
                  : super_pair_small<T, E, 8, false>(A, S, Bp, Sb, b, diag);
    default: break;
  }
  const int64_t t0 = S * A.q, t1 = std::min(A.nT, t0 + A.q);
  const int64_t u0 = Sb * Bp.q, u1 = std::min(Bp.nT, u0 + Bp.q);
  double e = 0;
  CompactScratch<T> cs;
  for (int64_t ta = t0; ta < t1; ++ta)
    for (int64_t tb = (diag ? ta : u0); tb < u1; ++tb)
      e += tile_pair<T, E>(A, ta, Bp, tb, b, diag && ta == tb, grad, Wb, WTb, cs);
  return e;
}

// Waits until done reaches round; false if the call stops meanwhile.
inline bool wait_for(const std::atomic<int64_t>& done, int64_t round, Stop& stop) {
  while (done.load(std::memory_order_acquire) < round) {
    if (stop.now()) return false;
    std::this_thread::yield();
  }
  return true;
}

// Per thread: W and W^T of a tile pair (the gram path's weights).
template <class T>
std::vector<Buffer<T>> weight_buffers(int nthreads) {
  std::vector<Buffer<T>> scratch;
  for (int t = 0; t < nthreads; ++t) scratch.push_back(allocate<T>(2 * TS * TS));
  return scratch;
}

// The one-set op: every unordered pair of every set once, then the epilogue.
template <class T, Kind K, Power P, bool Half>
void solve_set(Points<T>& pr, double* energy, T* grad, int nthreads, Stop& stop) {
  using E = PairEnergy<K, P, Half>;
  using Self = PairEnergy<K, P, false>;  // the half-space pair (u_i, -u_i) is one plain pair
  const int64_t B = pr.L.B, N = pr.L.N, nS = pr.nS;
  const int64_t M = nS + (nS & 1);  // tournament size (one bye when nS is odd)
  const bool want_grad = grad != nullptr;
  std::vector<double> super_energy(size_t(B * nS), 0.0);
  if (want_grad) {
    pr.allocate_gradient();
    if (pr.xu) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
      for (int64_t t = 0; t < B * pr.nT; ++t) pr.tile_sums(t);
    }
  }
  tile_bounds(pr, nthreads);
  if (Half) pr.self_energy = allocate<double>(B * N);
  std::vector<Buffer<T>> scratch = weight_buffers<T>(nthreads);

  // Tasks in a fixed order: round 0 the super-tiles with themselves, round
  // r >= 1 the pairs of round r - 1 of the tournament. A task may start once
  // both its super-tiles have finished their previous rounds (done[] counts
  // them): each super-tile's accumulators still receive their terms in round
  // order, but a thread that runs out of work in a round goes on into the
  // next instead of waiting at a barrier for the slowest task (N = 16384,
  // k = 256 and N = 65536, k = 3: 1.5-3% faster). No deadlock: a task waits
  // only for tasks earlier in the order, all of them already taken by
  // running threads.
  const int64_t per_round = std::max(nS, M / 2), n_tasks = B * per_round * M;
  std::vector<std::atomic<int64_t>> done(size_t(B * nS));
  for (auto& d : done) d.store(0, std::memory_order_relaxed);
  std::atomic<int64_t> next_task{0};

#pragma omp parallel num_threads(nthreads)
  {
    T* Wb = scratch[omp_get_thread_num()].get();
    T* WTb = Wb + TS * TS;
    for (int64_t t; !stop.now() && (t = next_task.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int64_t round = t / (B * per_round), b = t / per_round % B, m = t % per_round;
      int64_t S, Sb;
      if (round == 0) {
        if (m >= nS) continue;
        S = Sb = m;
      } else {
        if (m >= M / 2) continue;
        S = m == 0 ? round - 1 : (round - 1 + m) % (M - 1);
        Sb = m == 0 ? M - 1 : (round - 1 - m + (M - 1)) % (M - 1);
        if (S >= nS) std::swap(S, Sb);  // the bye: S alone, nothing to compute
      }
      const int64_t s0 = b * nS + S, s1 = b * nS + Sb;
      const bool bye = Sb >= nS;
      if (!wait_for(done[s0], round, stop) || (!bye && !wait_for(done[s1], round, stop))) break;
      if (!bye) super_energy[s0] += super_pair<T, E>(pr, S, pr, Sb, b, S == Sb, want_grad, Wb, WTb);
      done[s0].store(round + 1, std::memory_order_release);
      if (!bye && Sb != S) done[s1].store(round + 1, std::memory_order_release);
    }
#pragma omp barrier
    // epilogue: the half-space self pairs and the chain rule through the normalization
    if (!stop.stopped()) {  // the same answer in every thread after the barrier
#pragma omp for schedule(static)
      for (int64_t flat = 0; flat < B * N; ++flat) {
        double dself = 0;
        if (Half) {  // (u_i, -u_i): d2 = 4 ||u||^2 + 2a = 4 - 2a, d2p = 2a, a function of a alone
          const double ai = pr.a[flat];
          double F, al, be;
          Self::eval(4.0 - 2.0 * ai, 2.0 * ai, pr.P.s, pr.P.delta, F, al, be);
          simd::compute_always(al);  // the same F with and without the gradient (simd.h)
          simd::compute_always(be);
          pr.self_energy[flat] = F / Self::lambda;
          dself = 2.0 * (E::kappa / Self::kappa) * (be - al);  // at E's derivative scale
        }
        if (want_grad) epilogue_row<T, E>(pr, flat, dself, 1.0, grad);
      }
    }
  }
  if (stop.stopped()) return;
  for (int64_t b = 0; b < B; ++b) {  // fixed order: the same sum for any thread count
    double e = 0;
    for (int64_t S = 0; S < nS; ++S) e += super_energy[b * nS + S];
    e /= E::lambda;  // the pair sums are at eval()'s scale
    if (Half)
      for (int64_t i = 0; i < N; ++i) e += pr.self_energy[b * N + i];
    energy[b] = e;
  }
}

// The cross-set op: every pair (x_i, y_j) of every pair of sets once, then
// the epilogue of both sets. The super-tile pairs form an n1 x n2 grid, n1 <=
// n2 the smaller set's count: round r pairs super-tile m < n1 of the smaller
// set with super-tile (m + r) mod n2 of the larger, so that no super-tile
// appears twice in a round (n2 rounds of n1 tasks, a Latin rectangle), and a
// task waits, as in solve_set, for its super-tiles' previous tasks only.
// With half_space the pair is f(d2) + f(d2p): half of E's 2 f(d2) + 2 f(d2p).
template <class T, Kind K, Power P, bool Half>
void solve_cross_sets(Points<T>& X, Points<T>& Y, double* energy, T* grad_x, T* grad_y, int nthreads,
                      Stop& stop) {
  using E = PairEnergy<K, P, Half>;
  const double share = Half ? 0.5 : 1.0;
  const int64_t B = X.L.B, n1 = std::min(X.nS, Y.nS), n2 = std::max(X.nS, Y.nS);
  const bool x_smaller = X.nS <= Y.nS, want_grad = grad_x != nullptr;
  std::vector<double> super_energy(size_t(B * X.nS), 0.0);
  if (want_grad) {
    X.allocate_gradient();
    Y.allocate_gradient();
    if (X.xu) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
      for (int64_t t = 0; t < B * (X.nT + Y.nT); ++t) t < B * X.nT ? X.tile_sums(t) : Y.tile_sums(t - B * X.nT);
    }
  }
  tile_bounds(X, nthreads);
  tile_bounds(Y, nthreads);
  std::vector<Buffer<T>> scratch = weight_buffers<T>(nthreads);
  const int64_t n_tasks = B * n1 * n2;
  std::vector<std::atomic<int64_t>> done_small(size_t(B * n1)), done_large(size_t(B * n2));
  for (auto& d : done_small) d.store(0, std::memory_order_relaxed);
  for (auto& d : done_large) d.store(0, std::memory_order_relaxed);
  std::atomic<int64_t> next_task{0};

#pragma omp parallel num_threads(nthreads)
  {
    T* Wb = scratch[omp_get_thread_num()].get();
    T* WTb = Wb + TS * TS;
    for (int64_t t; !stop.now() && (t = next_task.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int64_t round = t / (B * n1), b = t / n1 % B, m = t % n1, l = (m + round) % n2;
      // l's previous round: round - 1, when super-tile m + 1 had it; for the
      // last m, the round in which it last came round to m = 0
      const int64_t prev = m + 1 < n1 ? round - 1 : round - (n2 - n1 + 1);
      std::atomic<int64_t>& ds = done_small[b * n1 + m];
      std::atomic<int64_t>& dl = done_large[b * n2 + l];
      if (!wait_for(ds, round, stop) || (prev >= 0 && !wait_for(dl, prev + 1, stop))) break;
      const int64_t Sx = x_smaller ? m : l, Sy = x_smaller ? l : m;
      super_energy[b * X.nS + Sx] += super_pair<T, E>(X, Sx, Y, Sy, b, false, want_grad, Wb, WTb);
      ds.store(round + 1, std::memory_order_release);
      dl.store(round + 1, std::memory_order_release);
    }
#pragma omp barrier
    if (want_grad && !stop.stopped()) {  // the same answer in every thread after the barrier
#pragma omp for schedule(static)
      for (int64_t flat = 0; flat < B * (X.L.N + Y.L.N); ++flat) {
        if (flat < B * X.L.N)
          epilogue_row<T, E>(X, flat, 0.0, share, grad_x);
        else
          epilogue_row<T, E>(Y, flat - B * X.L.N, 0.0, share, grad_y);
      }
    }
  }
  if (stop.stopped()) return;
  for (int64_t b = 0; b < B; ++b) {  // fixed order: the same sum for any thread count
    double e = 0;
    for (int64_t S = 0; S < X.nS; ++S) e += super_energy[b * X.nS + S];
    energy[b] = e / E::lambda * share;
  }
}

// f(power, half) with the power case and half_space of P as compile-time
// constants (std::integral_constant), so that each is one instantiation.
template <Kind K, class F>
void with_energy(const EnergyParams& P, F&& f) {
  auto half = [&](auto power) {
    if (P.half_space)
      f(power, std::true_type{});
    else
      f(power, std::false_type{});
  };
  if constexpr (K == Kind::Gaussian) {  // the exponent cases mean nothing to the Gaussian: one instantiation
    half(std::integral_constant<Power, Power::General>{});
  } else {
    switch (power_case(P.s)) {
      case Power::Log: return half(std::integral_constant<Power, Power::Log>{});
      case Power::One: return half(std::integral_constant<Power, Power::One>{});
      case Power::Two: return half(std::integral_constant<Power, Power::Two>{});
      default: return half(std::integral_constant<Power, Power::General>{});
    }
  }
}

template <class T, Kind K>
void solve(Points<T>& pr, double* energy, T* grad, int nthreads, Stop& stop) {
  with_energy<K>(pr.P, [&](auto power, auto half) {
    solve_set<T, K, decltype(power)::value, decltype(half)::value>(pr, energy, grad, nthreads, stop);
  });
}

template <class T, Kind K>
void solve_cross(Points<T>& X, Points<T>& Y, double* energy, T* grad_x, T* grad_y, int nthreads, Stop& stop) {
  with_energy<K>(X.P, [&](auto power, auto half) {
    solve_cross_sets<T, K, decltype(power)::value, decltype(half)::value>(X, Y, energy, grad_x, grad_y, nthreads,
                                                                          stop);
  });
}

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe

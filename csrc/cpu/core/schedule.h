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
// depend on the number of threads.
#pragma once

#include <atomic>
#include <thread>

#include "gram_path.h"
#include "prologue_epilogue.h"
#include "small_k_path.h"
#include "solve.h"

namespace comhe {
namespace cpu {
namespace detail {

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
  for (int64_t ta = t0; ta < t1; ++ta)
    for (int64_t tb = (diag ? ta : u0); tb < u1; ++tb)
      e += tile_pair<T, E>(A, ta, Bp, tb, b, diag && ta == tb, grad, Wb, WTb);
  return e;
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
void solve_set(Points<T>& pr, double* energy, T* grad, int nthreads) {
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
  auto wait_for = [&](int64_t st, int64_t round) {
    while (done[st].load(std::memory_order_acquire) < round) std::this_thread::yield();
  };

#pragma omp parallel num_threads(nthreads)
  {
    T* Wb = scratch[omp_get_thread_num()].get();
    T* WTb = Wb + TS * TS;
    for (int64_t t; (t = next_task.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
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
      wait_for(s0, round);
      if (!bye) {
        wait_for(s1, round);
        super_energy[s0] += super_pair<T, E>(pr, S, pr, Sb, b, S == Sb, want_grad, Wb, WTb);
      }
      done[s0].store(round + 1, std::memory_order_release);
      if (!bye && Sb != S) done[s1].store(round + 1, std::memory_order_release);
    }
#pragma omp barrier
    // epilogue: the half-space self pairs and the chain rule through the normalization
#pragma omp for schedule(static)
    for (int64_t flat = 0; flat < B * N; ++flat) {
      double dself = 0;
      if (Half) {  // (u_i, -u_i): d2 = 4 ||u||^2 + 2a = 4 - 2a, d2p = 2a, a function of a alone
        const double ai = pr.a[flat];
        double F, al, be;
        Self::eval(4.0 - 2.0 * ai, 2.0 * ai, pr.P.s, pr.P.delta, F, al, be);
        pr.self_energy[flat] = F / Self::lambda;
        dself = 2.0 * (E::kappa / Self::kappa) * (be - al);  // at E's derivative scale
      }
      if (want_grad) epilogue_row<T, E>(pr, flat, dself, grad);
    }
  }
  for (int64_t b = 0; b < B; ++b) {  // fixed order: the same sum for any thread count
    double e = 0;
    for (int64_t S = 0; S < nS; ++S) e += super_energy[b * nS + S];
    e /= E::lambda;  // the pair sums are at eval()'s scale
    if (Half)
      for (int64_t i = 0; i < N; ++i) e += pr.self_energy[b * N + i];
    energy[b] = e;
  }
}

template <class T, Kind K, Power P>
void solve_set_half(Points<T>& pr, double* energy, T* grad, int nt) {
  if (pr.P.half_space)
    solve_set<T, K, P, true>(pr, energy, grad, nt);
  else
    solve_set<T, K, P, false>(pr, energy, grad, nt);
}

template <class T, Kind K>
void solve(Points<T>& pr, double* energy, T* grad, int nt) {
  if constexpr (K == Kind::Gaussian) {  // the exponent cases mean nothing to the Gaussian: one instantiation
    solve_set_half<T, K, Power::General>(pr, energy, grad, nt);
  } else {
    switch (power_case(pr.P.s)) {
      case Power::Log: return solve_set_half<T, K, Power::Log>(pr, energy, grad, nt);
      case Power::One: return solve_set_half<T, K, Power::One>(pr, energy, grad, nt);
      case Power::Two: return solve_set_half<T, K, Power::Two>(pr, energy, grad, nt);
      default: return solve_set_half<T, K, Power::General>(pr, energy, grad, nt);
    }
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace comhe

// Few coordinates (k <= 8, the Thomson and projected-CoMHE sizes): each
// unordered pair once, in the difference form, on the CUDA cores (torch-free).
// DRAFT: see hyperspherical_energy_cuda.h.
//
// The N points are cut into nT <= 64 tiles of TS points; one block per tile
// pair (I, J), I <= J (all I x J for the cross-set op). The block's rows live
// in registers (R per thread, 128 R per row chunk); the columns of tile J
// pass through shared memory in chunks of 256. Within a warp, lane l takes
// column (l + t) mod 32 of a group of 32 at step t, so the 32 lanes always
// touch 32 different columns: each warp accumulates the columns' gradient
// terms in its own shared-memory copy without atomics, and the copies are
// summed in warp order after each chunk.
//
// Determinism without atomics: the block writes its rows' sums to the
// partial slot (I, J) of tile I and its columns' sums to the slot (J, I) of
// tile J; no slot has two writers, and the epilogue adds each point's nT + 1
// slots in slot order, in float64. nT <= 64 bounds the slots at
// 64 (k + 1) values per point (N = 65536, k = 3: 68 MB).
//
// Per pair (the CPU kernel's small_vector): d2 = |u_j - u_i|^2 + a_i + a_j and
// d2p = |u_j + u_i|^2 + a_i + a_j from coordinate differences and sums, with
// no cancellation; the gradient adds alpha (u_i - u_j) + beta (u_i + u_j) to
// row i, alpha (u_j - u_i) + beta (u_i + u_j) to row j and alpha + beta to
// both rows' Aref. In float32, pairs with |u_j -+ u_i|^2 < tau^2 (2^-16 for
// s <= 1) are recomputed in float64 from x (refine_distances), as on the CPU.
// At k = 3, s = 1, full space one pair is ~23 instructions (3 differences, 3
// for |d|^2, 2 adds of a, one min for the near test, rsqrt and 3 multiplies,
// 8 for both rows' gradient, the energy add) plus ~6 per R = 4 pairs for the
// shared-memory column record, its accumulator and the warp sync.
#pragma once

#include "common.cuh"

namespace comhe {
namespace cuda {

constexpr int kSmallWarps = 4;      // warps per block
constexpr int kSmallThreads = 32 * kSmallWarps;
constexpr int kSmallChunk = 256;    // columns per shared-memory chunk
constexpr int kMaxTiles = 64;       // tiles per set: bounds the partial slots

// Rows per thread: R (u, a, the gradient partial sums: (2K + 2) R registers)
// as large as the registers allow: 4 in float32 for k <= 4 (~80 registers).
template <class T, int K>
constexpr int kSmallRows = sizeof(T) == 4 ? (K <= 4 ? 4 : 2) : (K <= 4 ? 2 : 1);
// The slots of a record: u[0..K) and a (points), v[0..K) and z (partials), in 16-byte vectors.
template <class T, int K>
constexpr int kSmallRecord = (K + 1 + 16 / int(sizeof(T)) - 1) / (16 / int(sizeof(T))) * (16 / int(sizeof(T)));

template <class T>
struct SmallArgs {
  SetArgs<T> rows, cols;   // cols == rows (the same set) for the one-set op
  bool cross = false;
  int64_t TS = 0, nTr = 0, nTc = 0, pairs_per_set = 0;
  T* row_part = nullptr;   // slots of the row tiles; nullptr: no gradient
  T* col_part = nullptr;   // slots of the column tiles (== row_part for the one-set op)
  int64_t row_slots = 0, col_slots = 0;  // slots per tile
  T tau_diff = 0;          // refine pairs with |u_j -+ u_i|^2 below this (0: never, float64)
  T s = 1, delta = 0;
  double s64 = 1, delta64 = 0;  // the same in float64, for the refined pairs
  double* epart = nullptr;  // one energy partial per block
};

// The tile pair of block p (I <= J for the one-set op, in row-major order of the upper triangle).
__device__ __forceinline__ void tile_pair(int p, int nT, bool cross, int nTc, int& I, int& J) {
  if (cross) {
    I = p / nTc;
    J = p % nTc;
    return;
  }
  I = 0;
  while (p >= nT - I) {
    p -= nT - I;
    ++I;
  }
  J = I + p;
}

template <class T, class E, int K, bool Masked>
__device__ __forceinline__ void small_pairs(bool grad, const SmallArgs<T>& A, int64_t b,
                                            const T (&ui)[kSmallRows<T, K>][K],
                                            const T (&ai)[kSmallRows<T, K>], const int64_t (&ig)[kSmallRows<T, K>],
                                            int64_t jg, const T (&uj)[kSmallRecord<T, K>],
                                            T (&d)[kSmallRows<T, K>][K], T (&sm)[kSmallRows<T, K>][K],
                                            const T (&dd)[kSmallRows<T, K>], const T (&ddp)[kSmallRows<T, K>],
                                            T (&racc)[kSmallRows<T, K>][K], T (&zacc)[kSmallRows<T, K>],
                                            T* colacc, T& fsum, double& esum, bool diag) {
  constexpr int R = kSmallRows<T, K>, KR = kSmallRecord<T, K>;
  const T aj = uj[K];
  T col[KR];
  if (grad) load_rec(colacc, col);
  const bool jvalid = jg < A.cols.N;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const T aij = ai[r] + aj;
    T F, al, be;
    E::eval(dd[r] + aij, ddp[r] + aij, A.s, A.delta, F, al, be);
    bool near = false;
    if constexpr (Masked) {
      const bool valid = jvalid && ig[r] < A.rows.N && (!diag || jg > ig[r]);
      near = dd[r] < A.tau_diff || (E::uses_d2p && ddp[r] < A.tau_diff);
      const bool ok = valid && !near;
      near = valid && near;
      F = ok ? F : T(0);
      al = ok ? al : T(0);
      be = ok ? be : T(0);
    }
    fsum = add_rn(fsum, F);
    if (grad) {
#pragma unroll
      for (int c = 0; c < K; ++c) {
        racc[r][c] -= al * d[r][c];
        col[c] += al * d[r][c];
        if constexpr (E::uses_d2p) {
          racc[r][c] += be * sm[r][c];
          col[c] += be * sm[r][c];
        }
      }
      const T z = E::uses_d2p ? al + be : al;
      zacc[r] += z;
      col[K] += z;
    }
    if constexpr (Masked) {
      if (near) {  // rare: the pair in float64 from x
        double d2, d2p, Fd, ald, bed;
        refine_distances<E>(A.rows, b, ig[r], A.cols, jg, d2, d2p);
        E::eval(d2, d2p, A.s64, A.delta64, Fd, ald, bed);
        esum += Fd;
        if (grad) {
          const double ri = A.rows.r[b * A.rows.N + ig[r]], rj = A.cols.r[b * A.cols.N + jg];
          const T* xi = row_ptr(A.rows, b, ig[r]);
          const T* xj = row_ptr(A.cols, b, jg);
#pragma unroll
          for (int c = 0; c < K; ++c) {
            if (c >= A.rows.k) break;
            const double u1 = unit(double(xi[c * A.rows.sk]), ri), u2 = unit(double(xj[c * A.cols.sk]), rj);
            racc[r][c] += T(ald * (u1 - u2) + bed * (u1 + u2));
            col[c] += T(ald * (u2 - u1) + bed * (u1 + u2));
          }
          zacc[r] += T(ald + bed);
          col[K] += T(ald + bed);
        }
      }
    }
  }
  if (grad) store_rec(colacc, col);
}

template <class T, class E, int K>
__global__ void __launch_bounds__(kSmallThreads, 1) small_k_kernel(SmallArgs<T> A) {
  const bool grad = A.row_part != nullptr;
  constexpr int R = kSmallRows<T, K>, KR = kSmallRecord<T, K>;
  constexpr int RPC = 32 * R * kSmallWarps;  // rows per chunk
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* colrec = reinterpret_cast<T*>(smem_raw);               // [kSmallChunk][KR]
  T* colacc_all = colrec + kSmallChunk * KR;                // [kSmallWarps][kSmallChunk][KR]
  __shared__ double scratch[kSmallWarps];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // 32-bit block arithmetic: a 64-bit division is a called routine whose
  // register saves were the kernel's only local-memory traffic
  const int flat = int(blockIdx.x), pairs = int(A.pairs_per_set), b = flat / pairs;
  int I, J;
  tile_pair(flat % pairs, int(A.nTr), A.cross, int(A.nTc), I, J);
  const bool diag = !A.cross && I == J;
  T* colacc = colacc_all + warp * kSmallChunk * KR;
  T* rpart = A.row_part + ((int64_t(b) * A.nTr + I) * A.row_slots + (A.cross ? J : J - I)) * A.TS * KR;
  T* cpart = A.col_part + ((int64_t(b) * A.nTc + J) * A.col_slots + (A.cross ? I : A.nTr - J + I)) * A.TS * KR;
  const int64_t col0 = int64_t(J) * A.TS, ncols = imin(A.TS, A.cols.N - col0);
  double esum = 0;

  for (int64_t rc = 0; rc * RPC < A.TS; ++rc) {
    const int64_t row0 = int64_t(I) * A.TS + rc * RPC;
    if (row0 >= A.rows.N) break;
    T ui[R][K], ai[R], racc[R][K], zacc[R];
    int64_t ig[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      ig[r] = row0 + warp * 32 * R + r * 32 + lane;
      T q[KR];
      load_rec(A.rows.packed + (b * A.rows.Npad + ig[r]) * KR, q);  // zero beyond N (padding)
#pragma unroll
      for (int c = 0; c < K; ++c) {
        ui[r][c] = q[c];
        racc[r][c] = T(0);
      }
      ai[r] = q[K];
      zacc[r] = T(0);
    }
    const bool rows_full = row0 + RPC <= A.rows.N;
    for (int64_t cc = 0; cc < ncols; cc += kSmallChunk) {
      if (diag && col0 + cc + kSmallChunk <= row0) continue;  // every column precedes every row
      const bool masked = !rows_full || cc + kSmallChunk > ncols || (diag && col0 + cc < row0 + RPC);
      __syncthreads();  // the previous chunk's records and accumulators are no longer read
      const T* src = A.cols.packed + (b * A.cols.Npad + col0 + cc) * KR;
      for (int q = threadIdx.x; q < kSmallChunk * KR * int(sizeof(T)) / 16; q += kSmallThreads)
        reinterpret_cast<int4*>(colrec)[q] = reinterpret_cast<const int4*>(src)[q];
      if (grad)
        for (int q = lane; q < kSmallChunk * KR * int(sizeof(T)) / 16; q += 32)
          reinterpret_cast<int4*>(colacc)[q] = make_int4(0, 0, 0, 0);
      __syncthreads();
      const int groups = int(imin(kSmallChunk, ncols - cc) + 31) / 32;
      for (int g = 0; g < groups; ++g) {
        T fsum = 0;  // float32 over 32 R pairs, then float64
#pragma unroll 2
        for (int t = 0; t < 32; ++t) {
          const int c = g * 32 + ((lane + t) & 31);
          const int64_t jg = col0 + cc + c;
          T uj[KR];
          load_rec(colrec + c * KR, uj);
          T d[R][K], sm[R][K], dd[R], ddp[R];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            dd[r] = T(0);
            ddp[r] = T(0);
#pragma unroll
            for (int q = 0; q < K; ++q) {
              d[r][q] = uj[q] - ui[r][q];
              dd[r] += d[r][q] * d[r][q];
              if constexpr (E::uses_d2p) {
                sm[r][q] = uj[q] + ui[r][q];
                ddp[r] += sm[r][q] * sm[r][q];
              }
            }
          }
          bool slow = masked;
          if (!masked) {  // one compare of the smallest distance of the R pairs
            T m = E::uses_d2p ? fmin(dd[0], ddp[0]) : dd[0];
#pragma unroll
            for (int r = 1; r < R; ++r) m = E::uses_d2p ? fmin(m, fmin(dd[r], ddp[r])) : fmin(m, dd[r]);
            slow = m < A.tau_diff;
          }
          T* acc = colacc + c * KR;
          if (!slow)
            small_pairs<T, E, K, false>(grad, A, b, ui, ai, ig, jg, uj, d, sm, dd, ddp, racc, zacc, acc, fsum, esum,
                                        diag);
          else
            small_pairs<T, E, K, true>(grad, A, b, ui, ai, ig, jg, uj, d, sm, dd, ddp, racc, zacc, acc, fsum, esum,
                                       diag);
          __syncwarp();  // the next step's lane reads the column accumulator this one wrote
        }
        esum += double(fsum);
      }
      if (grad) {
        __syncthreads();
        for (int c = threadIdx.x; c < kSmallChunk; c += kSmallThreads) {
          if (cc + c >= ncols) continue;
          T sum[KR];
          load_rec(colacc_all + c * KR, sum);
          for (int w = 1; w < kSmallWarps; ++w) {
            T q[KR];
            load_rec(colacc_all + (w * kSmallChunk + c) * KR, q);
#pragma unroll
            for (int e = 0; e < KR; ++e) sum[e] += q[e];
          }
          T* dst = cpart + (cc + c) * KR;
          if (rc > 0) {  // row chunk 0 visits every column chunk and stores; later chunks add
            T old[KR];
            load_rec(dst, old);
#pragma unroll
            for (int e = 0; e < KR; ++e) sum[e] += old[e];
          }
          store_rec(dst, sum);
        }
      }
    }
    if (grad) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (ig[r] >= A.rows.N) continue;
        T q[KR] = {};
#pragma unroll
        for (int c = 0; c < K; ++c) q[c] = racc[r][c];
        q[K] = zacc[r];
        store_rec(rpart + (ig[r] - int64_t(I) * A.TS) * KR, q);
      }
    }
  }
  const double e = block_sum(esum, scratch);
  if (threadIdx.x == 0) A.epart[flat] = e;
}

}  // namespace cuda
}  // namespace comhe

// Many coordinates (k > 8): the gram form over ordered pairs (torch-free).
// DRAFT: see hyperspherical_energy_cuda.h.
//
// FlashAttention's structure: one block of 8 warps per (128-row tile,
// coordinate pass, point set) loops over every 64-column tile, so that it
// owns its rows' gradient (no atomics, no partial buffers) at the price of
// computing each pair twice, once per row. Per column tile:
//   G = U_I U_J^T                 (gemm1; each warp a 16 x 64 slab, in registers)
//   d2 = h_i + h_j - 2 g, d2p = h_i + h_j + 2 g,  F, w = dF/dd2p - dF/dd2
//   V_I += W U_J                  (gemm2, W from G's registers on the tensor cores)
// Tiles of U pass through shared memory by cp.async, the next column tile's
// copy in flight while the current one is computed (when the coordinates fit
// in one chunk of KV). V_I (16 rows x KV coordinates per warp) stays in
// registers; k > 128 takes ceil(k / 128) coordinate passes, each recomputing
// G (k = 512: four gemm1 per gemm2, 2.5x the products of one pass).
//
// Products: Mode kSimt (float32 or float64 FMAs on the CUDA cores) or the
// tensor cores through mma.sync (sm_80 and later): TF32 operands, TF32 x 3
// (each operand split in a TF32 high part and a TF32 remainder; the three
// products hi*hi + hi*lo + lo*hi keep ~21 bits, about float32's), BF16.
// Pairs with d2 < tau (or d2p < tau where F depends on it) leave W and the
// energy and are recomputed in float64 from x, the warp together (lanes over
// coordinates), adding alpha (u_i - u_j) + beta (u_i + u_j) to V_i and
// alpha + beta to Aref_i (the gram form's rounding is ~2.4e-7 absolute in
// float32, ~1e-3 in TF32, ~8e-3 in BF16: tau as refine_threshold in the
// kernel file).
#pragma once

#include "common.cuh"

namespace comhe {
namespace cuda {

enum GramMode : int { kSimt = 0, kTf32x3 = 1, kTf32 = 2, kBf16 = 3 };

constexpr int kGramWarps = 8, kGramThreads = 32 * kGramWarps;
constexpr int kBM = 16 * kGramWarps;  // rows per block: 16 per warp (one m16 slab)
constexpr int kBN = 64;               // columns per tile: 8 n8 tiles per warp
constexpr int kNQ = kBN / 8;

template <class T>
struct GramArgs {
  SetArgs<T> rows, cols;  // cols == rows for the one-set op
  bool same = true;       // the same set: skip i == j (every unordered pair is met twice)
  bool energy = true;     // this launch sums the energy (the cross op's second launch does not)
  int64_t KP = 0, npass = 1, nrt = 0;  // packed width (KV npass), coordinate passes, row tiles per set
  T tau = 0, s = 1, delta = 0;
  double s64 = 1, delta64 = 0;  // the same in float64, for the refined pairs
  double* epart = nullptr;  // one energy partial per block
};

template <class T, int Mode, int KV>
constexpr size_t gram_smem_bytes() {
  constexpr int KPS = KV + 4, WPS = kBN + 4;
  return sizeof(T) * (size_t(kBM) * KPS + 2 * kBN * KPS + kBM + 2 * kBN + (Mode == kSimt ? kBM * WPS : 0)) +
         sizeof(double) * kBM;
}

// ---- tensor-core primitives (PTX ISA, "Matrix fragments for mma.m16n8k8 / k16") ----
// Fragments, with g = lane / 4, t = lane % 4: A (16 x K, row-major) a0 (g, t),
// a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4) for TF32 (pairs of columns
// 2t, 2t + 1 and 2t + 8, 2t + 9 for BF16); B (K x 8) b0 (t, g), b1 (t + 4, g);
// C (16 x 8) c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1).

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#endif
  return r;
}
// The low part of the 3xTF32 split: x - hi is exact in float32, then rounded to TF32.
__device__ __forceinline__ uint32_t tf32_rest(float x, uint32_t hi) { return to_tf32(x - __uint_as_float(hi)); }

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// Two float32 values as bf16x2, lo in the low half (the element of the smaller index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// d += a b in the mode's arithmetic, from float32 operands (TF32 modes).
template <int Mode>
__device__ __forceinline__ void mma_f32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  uint32_t ah[4], bh[2];
#pragma unroll
  for (int e = 0; e < 4; ++e) ah[e] = to_tf32(a[e]);
#pragma unroll
  for (int e = 0; e < 2; ++e) bh[e] = to_tf32(b[e]);
  if constexpr (Mode == kTf32x3) {
    uint32_t al[4], bl[2];
#pragma unroll
    for (int e = 0; e < 4; ++e) al[e] = tf32_rest(a[e], ah[e]);
#pragma unroll
    for (int e = 0; e < 2; ++e) bl[e] = tf32_rest(b[e], bh[e]);
    mma_tf32(d, al, bh);  // the small products first: they would round away against hi*hi
    mma_tf32(d, ah, bl);
  }
  mma_tf32(d, ah, bh);
}

// ---- gemm1: G (this warp's 16 x 64) = U_I U_J^T over one chunk of KV coordinates ----
template <class T, int Mode, int KV>
__device__ __forceinline__ void gemm1(const T* sUI, const T* sUJ, T (&G)[kNQ][4], int warp, int g, int t) {
  constexpr int KPS = KV + 4;
  const T* pa = sUI + (16 * warp + g) * KPS;
  if constexpr (Mode == kSimt) {
    constexpr int PER = 16 / int(sizeof(T));  // 4 floats or 2 doubles per step: fewer live registers in float64
#pragma unroll 2
    for (int c = 0; c < KV; c += PER) {
      T a0[PER], a1[PER];
#pragma unroll
      for (int e = 0; e < PER; ++e) {
        a0[e] = pa[c + e];
        a1[e] = pa[8 * KPS + c + e];
      }
#pragma unroll
      for (int q = 0; q < kNQ; ++q) {
        const T* pb = sUJ + (8 * q + 2 * t) * KPS + c;
#pragma unroll
        for (int e = 0; e < PER; ++e) {
          const T b0 = pb[e], b1 = pb[KPS + e];
          G[q][0] += a0[e] * b0;
          G[q][1] += a0[e] * b1;
          G[q][2] += a1[e] * b0;
          G[q][3] += a1[e] * b1;
        }
      }
    }
  } else if constexpr (Mode == kBf16) {
#pragma unroll
    for (int kk = 0; kk < KV; kk += 16) {
      const T* p = pa + kk + 2 * t;
      const uint32_t a[4] = {pack_bf16(p[0], p[1]), pack_bf16(p[8 * KPS], p[8 * KPS + 1]), pack_bf16(p[8], p[9]),
                             pack_bf16(p[8 * KPS + 8], p[8 * KPS + 9])};
#pragma unroll
      for (int q = 0; q < kNQ; ++q) {
        const T* pb = sUJ + (8 * q + g) * KPS + kk + 2 * t;
        const uint32_t b[2] = {pack_bf16(pb[0], pb[1]), pack_bf16(pb[8], pb[9])};
        mma_bf16(G[q], a, b);
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < KV; kk += 8) {
      const T* p = pa + kk + t;
      const float a[4] = {p[0], p[8 * KPS], p[4], p[8 * KPS + 4]};
#pragma unroll
      for (int q = 0; q < kNQ; ++q) {
        const T* pb = sUJ + (8 * q + g) * KPS + kk + t;
        const float b[2] = {pb[0], pb[4]};
        mma_f32<Mode>(G[q], a, b);
      }
    }
  }
}

// ---- gemm2: V (this warp's 16 x KV) += W U_J, W the weights in G's layout (or sW) ----
template <class T, int Mode, int KV>
__device__ __forceinline__ void gemm2(const T (&W)[kNQ][4], const T* sW, const T* sUJ, T (&V)[KV / 8][4], int warp,
                                      int g, int t) {
  constexpr int KPS = KV + 4, WPS = kBN + 4, NV = KV / 8;
  if constexpr (Mode == kSimt) {
    const T* w0p = sW + (16 * warp + g) * WPS;
    const T* w1p = w0p + 8 * WPS;
#pragma unroll 1
    for (int col = 0; col < kBN; col += 4) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const T w0 = w0p[col + cc], w1 = w1p[col + cc];
        const T* pu = sUJ + (col + cc) * KPS + 2 * t;
#pragma unroll
        for (int n = 0; n < NV; ++n) {
          const T u0 = pu[8 * n], u1 = pu[8 * n + 1];
          V[n][0] += w0 * u0;
          V[n][1] += w0 * u1;
          V[n][2] += w1 * u0;
          V[n][3] += w1 * u1;
        }
      }
    }
  } else if constexpr (Mode == kBf16) {
#pragma unroll
    for (int p = 0; p < kNQ / 2; ++p) {
      const uint32_t a[4] = {pack_bf16(W[2 * p][0], W[2 * p][1]), pack_bf16(W[2 * p][2], W[2 * p][3]),
                             pack_bf16(W[2 * p + 1][0], W[2 * p + 1][1]), pack_bf16(W[2 * p + 1][2], W[2 * p + 1][3])};
      const T* pu = sUJ + (16 * p + 2 * t) * KPS + g;
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const uint32_t b[2] = {pack_bf16(pu[8 * n], pu[KPS + 8 * n]),
                               pack_bf16(pu[8 * KPS + 8 * n], pu[9 * KPS + 8 * n])};
        mma_bf16(V[n], a, b);
      }
    }
  } else {
    // A's column t is G's column 2t and A's column t + 4 is G's 2t + 1, so the
    // accumulator registers serve as A without a shuffle; B's rows follow the
    // same order (U_J's points 2t and 2t + 1 of each 8).
#pragma unroll
    for (int q = 0; q < kNQ; ++q) {
      const float a[4] = {W[q][0], W[q][2], W[q][1], W[q][3]};
      const T* pu = sUJ + (8 * q + 2 * t) * KPS + g;
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const float b[2] = {pu[8 * n], pu[KPS + 8 * n]};
        mma_f32<Mode>(V[n], a, b);
      }
    }
  }
}

// rows [row0, row0 + nrows) x coordinates [ch KV, ch KV + KV) of a packed set into shared memory
template <class T, int KV>
__device__ __forceinline__ void load_tile(T* dst, const SetArgs<T>& S, int64_t b, int64_t row0, int nrows,
                                          int64_t KP, int64_t ch) {
  constexpr int KPS = KV + 4, PER = 16 / int(sizeof(T)), CPR = KV / PER;
  const T* src = S.packed + (b * S.Npad + row0) * KP + ch * KV;
  for (int q = threadIdx.x; q < nrows * CPR; q += kGramThreads) {
    const int rr = q / CPR, cq = q % CPR;
    copy16(dst + rr * KPS + cq * PER, src + rr * KP + cq * PER);
  }
}
template <class T>
__device__ __forceinline__ void load_h(T* dst, const SetArgs<T>& S, int64_t b, int64_t row0, int nrows) {
  constexpr int PER = 16 / int(sizeof(T));
  for (int q = threadIdx.x; q < nrows / PER; q += kGramThreads) copy16(dst + q * PER, S.h + b * S.Npad + row0 + q * PER);
}

template <class T, class E, int Mode, int KV>
__global__ void __launch_bounds__(kGramThreads, 1) gram_kernel(GramArgs<T> A) {
  const bool grad = A.rows.v != nullptr;
  constexpr int KPS = KV + 4, WPS = kBN + 4, NV = KV / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sUI = reinterpret_cast<T*>(smem_raw);
  T* sUJ = sUI + kBM * KPS;  // two buffers
  T* shI = sUJ + 2 * kBN * KPS;
  T* shJ = shI + kBM;        // two buffers
  T* sW = shJ + 2 * kBN;     // kSimt only
  double* sAref = reinterpret_cast<double*>(sW + (Mode == kSimt ? kBM * WPS : 0));
  __shared__ double scratch[kGramWarps];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  // 32-bit block arithmetic (a 64-bit division is a called routine with register saves)
  const int flat = int(blockIdx.x), npass = int(A.npass), nrt = int(A.nrt);
  const int pass = flat % npass, rt = flat / npass % nrt, b = flat / (npass * nrt);
  const int64_t row0 = int64_t(rt) * kBM, nchunks = A.KP / KV;
  const bool single = nchunks == 1;
  const int64_t ntiles = (A.cols.N + kBN - 1) / kBN;
  const bool sums_energy = A.energy && pass == 0;

  for (int i = threadIdx.x; i < kBM; i += kGramThreads) sAref[i] = 0;
  load_h(shI, A.rows, b, row0, kBM);
  if (single) {
    load_tile<T, KV>(sUI, A.rows, b, row0, kBM, A.KP, 0);
    load_tile<T, KV>(sUJ, A.cols, b, 0, kBN, A.KP, 0);
    load_h(shJ, A.cols, b, 0, kBN);
  }
  copy_commit();

  T V[NV][4];
#pragma unroll
  for (int n = 0; n < NV; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) V[n][e] = T(0);
  double esum = 0;

  for (int64_t jt = 0; jt < ntiles; ++jt) {
    const int64_t col0 = jt * kBN;
    const int buf = single ? int(jt & 1) : 0;
    T* uj = sUJ + buf * kBN * KPS;
    const T* hj = shJ + buf * kBN;
    if (single) {
      if (jt + 1 < ntiles) {  // the next tile's copy overlaps this tile's work
        load_tile<T, KV>(sUJ + (buf ^ 1) * kBN * KPS, A.cols, b, col0 + kBN, kBN, A.KP, 0);
        load_h(shJ + (buf ^ 1) * kBN, A.cols, b, col0 + kBN, kBN);
        copy_commit();
        copy_wait<1>();
      } else {
        copy_wait<0>();
      }
      __syncthreads();
    }
    T G[kNQ][4];
#pragma unroll
    for (int q = 0; q < kNQ; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) G[q][e] = T(0);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      if (!single) {
        __syncthreads();
        load_tile<T, KV>(sUI, A.rows, b, row0, kBM, A.KP, ch);
        load_tile<T, KV>(uj, A.cols, b, col0, kBN, A.KP, ch);
        if (ch == 0) load_h(shJ, A.cols, b, col0, kBN);
        copy_commit();
        copy_wait<0>();
        __syncthreads();
      }
      gemm1<T, Mode, KV>(sUI, uj, G, warp, g, t);
    }

    // energy and weights of this warp's 16 x 64 pairs
    const bool full = row0 + kBM <= A.rows.N && col0 + kBN <= A.cols.N &&
                      !(A.same && col0 < row0 + kBM && row0 < col0 + kBN);
    unsigned near_bits = 0;
    T fsum = 0;
#pragma unroll
    for (int q = 0; q < kNQ; ++q) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rl = 16 * warp + g + 8 * (e >> 1), cl = 8 * q + 2 * t + (e & 1);
        const int64_t gi = row0 + rl, gj = col0 + cl;
        const T hh = shI[rl] + hj[cl];
        const T d2 = hh - T(2) * G[q][e];
        const T d2p = hh + T(2) * G[q][e];
        const bool near = d2 < A.tau || (E::uses_d2p && d2p < A.tau);
        const bool valid = full || (gi < A.rows.N && gj < A.cols.N && !(A.same && gi == gj));
        T F, al, be;
        E::eval(d2, d2p, A.s, A.delta, F, al, be);
        const bool ok = valid && !near;
        fsum = add_rn(fsum, ok ? F : T(0));
        const T w = ok ? be - al : T(0);
        if constexpr (Mode == kSimt) {
          if (grad) sW[rl * WPS + cl] = w;
        } else {
          G[q][e] = w;
        }
        if (valid && near) near_bits |= 1u << (q * 4 + e);
      }
    }
    if (sums_energy) esum += double(fsum);

    if (grad) {
      if (!single && pass != nchunks - 1) {  // gemm2 needs this pass's coordinates of U_J
        __syncthreads();
        load_tile<T, KV>(uj, A.cols, b, col0, kBN, A.KP, pass);
        copy_commit();
        copy_wait<0>();
        __syncthreads();
      }
      if constexpr (Mode == kSimt) __syncwarp();  // sW's rows are this warp's
      gemm2<T, Mode, KV>(G, sW, uj, V, warp, g, t);
    }

    // Close pairs, rare: the warp recomputes each in float64 from x, lanes over
    // coordinates, in a fixed order (source lane, then element): deterministic.
    if (__any_sync(kFullMask, near_bits)) {
      for (int src = 0; src < 32; ++src) {
        unsigned bits = __shfl_sync(kFullMask, near_bits, src);
        while (bits) {
          const int e = __ffs(bits) - 1;
          bits &= bits - 1;
          const int r16 = (src >> 2) + 8 * ((e & 3) >> 1);
          const int64_t gi = row0 + 16 * warp + r16, gj = col0 + 8 * (e >> 2) + 2 * (src & 3) + (e & 1);
          const double ri = A.rows.r[b * A.rows.N + gi], rj = A.cols.r[b * A.cols.N + gj];
          const T* xi = row_ptr(A.rows, b, gi);
          const T* xj = row_ptr(A.cols, b, gj);
          double s1 = 0, s2 = 0;
          for (int64_t c = lane; c < A.rows.k; c += 32) {
            const double u1 = unit(double(xi[c * A.rows.sk]), ri), u2 = unit(double(xj[c * A.cols.sk]), rj);
            s1 += (u1 - u2) * (u1 - u2);
            s2 += (u1 + u2) * (u1 + u2);
          }
          const double aij = A.rows.a[b * A.rows.N + gi] + A.cols.a[b * A.cols.N + gj];
          const double d2 = aij + warp_sum(s1), d2p = aij + warp_sum(s2);
          double F, al, be;
          E::eval(d2, d2p, A.s64, A.delta64, F, al, be);
          if (lane == 0 && sums_energy) esum += F;
          if (grad) {
            if (lane == 0 && pass == 0) sAref[16 * warp + r16] += al + be;
            if (g == (r16 & 7)) {
#pragma unroll
              for (int n = 0; n < NV; ++n) {
#pragma unroll
                for (int e2 = 0; e2 < 2; ++e2) {
                  const int64_t c = pass * KV + 8 * n + 2 * t + e2;
                  if (c >= A.rows.k) continue;
                  const double u1 = unit(double(xi[c * A.rows.sk]), ri), u2 = unit(double(xj[c * A.cols.sk]), rj);
                  const T term = T(al * (u1 - u2) + be * (u1 + u2));
                  if (r16 >= 8)
                    V[n][2 + e2] += term;
                  else
                    V[n][e2] += term;
                }
              }
            }
          }
        }
      }
    }
    if (single) __syncthreads();  // every warp is done with buf before the copy into it
  }

  if (grad) {
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t gi = row0 + 16 * warp + g + 8 * (e >> 1);
        if (gi < A.rows.N) A.rows.v[(b * A.rows.N + gi) * A.KP + pass * KV + 8 * n + 2 * t + (e & 1)] = V[n][e];
      }
    __syncthreads();
    if (pass == 0)
      for (int i = threadIdx.x; i < kBM; i += kGramThreads)
        if (row0 + i < A.rows.N) A.rows.aref[b * A.rows.N + row0 + i] = sAref[i];
  }
  const double e = block_sum(esum, scratch);
  if (threadIdx.x == 0) A.epart[flat] = e;
}

}  // namespace cuda
}  // namespace comhe

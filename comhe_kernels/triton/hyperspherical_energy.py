"""The fused hyperspherical energy and its gradient in Triton (draft: no GPU has run it).

FlashAttention's shape for a pairwise sum: a program per (row tile, point
set), a loop over every column tile, nothing of size N x N. Each program
owns its rows' gradient, so pairs are ordered (each unordered pair is
computed twice, by the program of either row): no atomics, and the result
does not depend on scheduling. Kernels, one launch each:

1. ``_prologue``: per row, u = x / sqrt(|x|^2 + eps), a = eps / (|x|^2 + eps)
   in float64; u packed (rounded to the precision of the products), and
   r = sqrt(|x|^2 + eps), a in float64 for the masked tiles and the epilogue.
2. ``_gram_kernel`` (k > 8): the gram tile by ``tl.dot``, d2 = h_i + h_j - 2g
   (h = |u|^2 + a of the packed u), F and the weights w = dF/dd2p - dF/dd2
   elementwise, the gradient V_I += W U_J by a second ``tl.dot``.
   ``_small_kernel`` (k <= 8): the difference form on the CUDA cores,
   d2 = |u_i - u_j|^2 + a_i + a_j from coordinate differences, the
   gradient V_i += w_ij u_j elementwise.
   In both, a tile with padding, the diagonal or a close pair (d2 < tau, or
   d2p where F depends on it; |u_i -+ u_j|^2 < tau^2 in the difference
   form: the CPU kernel's refinement rule) is masked: all its pairs are
   computed in the difference form from u's packed value plus its rounding
   residual (from x in float64), with the gradient terms
   alpha (u_i - u_j) + beta (u_i + u_j). The float32 gram form loses ~2.4e-7
   absolute in d2 to cancellation, which is everything for coincident points.
3. The epilogue, the chain rule through the normalization,
   dE/dx_i = (2c / (kappa r_i)) [V_i - (u_i.V_i) u_i - a_i (Aref_i + D_i) u_i],
   at the end of each program, except for k > 256, where a program holds
   only a chunk of V's columns (see _plan) and ``_epilogue`` runs after.

Energies are summed per program in float64 (a float32 lane sum over at most
FLUSH column tiles first), one partial per program, then added in a fixed
order: the same bits every run. Offsets are 64-bit where they scale with N.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._spec import check_finite, finite_guard
from ._jit import helper, interpreting, tmax, tmin, tsum
from .pair_energy import ANGULAR, GENERAL, kappa, kind_code, pair, power_code

# Rows of every packed set are padded to a multiple of this (>= any tile),
# so that tile loads need no masks.
ROW_PAD = 256
# k <= SMALL_K: the difference form on the CUDA cores; tl.dot's smallest K is 16.
SMALL_K = 8
# Column tiles summed in a float32 lane before a float64 flush: the lane's
# rounding stays ~FLUSH ulp, whatever N.
FLUSH = 8
# Tiles with a pair closer than this are masked (the CPU kernel's kTau and
# refine_threshold): the float32 gram form's d2, off by ~2.4e-7 absolute, is
# 6e-5 relative at 2^-8.
TAU = 1.0 / 256
# The radius of the one-pass tf32 and bf16 products: their d2 is off by
# ~2^-10 and ~2^-7 absolute (inputs rounded to 10 and 7 mantissa bits).
TAU_TF32 = 1.0 / 64
TAU_BF16 = 1.0 / 8


def refine_threshold(kind: str, s: float, is64: bool, precision: str) -> float:
    """tau, as the CPU kernel's refine_threshold: 2^-8, and in float32 for s > 1 growing
    as 2^-8 32^(s-1) (capped at 4), because for s > 1.5 the closest pairs
    carry the energy; the one-pass tensor-core modes use wider radii."""
    if is64 or kind == "gaussian" or s <= 1:
        tau = TAU
    else:
        tau = min(4.0, TAU * 32.0 ** (s - 1))
    if not is64 and precision == "tf32":
        tau = max(tau, TAU_TF32)
    if not is64 and precision == "bf16":
        tau = max(tau, TAU_BF16)
    return tau


def _bits(v: float) -> int:
    """A float64 as the int64 of its bits: Triton passes Python floats as float32."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


@helper
def _f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


# ----------------------------------------------------------------------------- prologue


@helper
def _load_x(xrow, sxk, c0, cols0, k, rmask):
    cm = (c0 + cols0) < k
    x = tl.load(xrow + (c0 + cols0)[None, :] * sxk, mask=rmask[:, None] & cm[None, :], other=0.0)
    return x.to(tl.float64)


@helper
def _pack(U, ULO, uoff, su_c, c0, cols0, kpad, smask, u, ROUND: tl.constexpr, WANT_LO: tl.constexpr):
    """Store u rounded to U's precision (and its float32 residual); returns |packed u|^2 per row."""
    if U.dtype.element_ty == tl.bfloat16:
        # via float32: Triton's interpreter (3.9) turns float64 -> bfloat16 into 0
        us = u.to(tl.float32).to(tl.bfloat16)
    else:
        us = u.to(U.dtype.element_ty)
    if ROUND == 1:
        ub = us.to(tl.uint32, bitcast=True)
        ub = (ub + (0xFFF + ((ub >> 13) & 1))) & 0xFFFFE000
        us = ub.to(tl.float32, bitcast=True)
    umask = smask[:, None] & ((c0 + cols0) < kpad)[None, :]
    tl.store(U + uoff[:, None] + (c0 + cols0)[None, :] * su_c, us, mask=umask)
    us64 = us.to(tl.float64)
    if WANT_LO:
        tl.store(ULO + uoff[:, None] + (c0 + cols0)[None, :] * su_c, (u - us64).to(tl.float32), mask=umask)
    return tsum(us64 * us64, 1)


@triton.jit
def _prologue(
    X, sxb, sxn, sxk, n, npad, k, eps_bits,
    U, ULO, su_b, su_n, su_c, kpad, H, R64, A64, rows_total, roff,
    ROUND: tl.constexpr,  # 0: as U's dtype, 1: to tf32 (10 mantissa bits, nearest even)
    WANT_H: tl.constexpr,  # gram form: H = |u|^2 + a of the packed u; else H = a
    WANT_LO: tl.constexpr,  # ULO = u - packed u in float32 (float32 and 16-bit packing)
    BR: tl.constexpr, KB: tl.constexpr,
    ONE_CHUNK: tl.constexpr,  # kpad <= KB: x is read once
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < n
    smask = rows < npad  # the set's padded rows are written too (as zero rows)
    xrow = X + b * sxb + rows.to(tl.int64)[:, None] * sxn
    cols0 = tl.arange(0, KB)
    eps = _f64(eps_bits)
    # Rows with entries beyond 1 are divided by a power of two m <= their
    # largest entry (exact; u does not change): |x|^2 overflows float64 from |x| ~ 1e154.
    if ONE_CHUNK:
        x1 = _load_x(xrow, sxk, 0, cols0, k, rmask)
        amax = tl.reduce(tl.abs(x1), 1, tl.standard._elementwise_max)
    else:
        amax = tl.full((BR,), 0.0, tl.float64)
        for c0 in range(0, k, KB):
            x = _load_x(xrow, sxk, c0, cols0, k, rmask)
            amax = tl.maximum(amax, tl.reduce(tl.abs(x), 1, tl.standard._elementwise_max))
    expo = (amax.to(tl.int64, bitcast=True) >> 52) & 0x7FF
    m = tl.where(amax >= 1.0, (expo << 52).to(tl.float64, bitcast=True), 1.0)
    if ONE_CHUNK:
        xs1 = x1 / m[:, None]
        ssq = tsum(xs1 * xs1, 1)
    else:
        ssq = tl.full((BR,), 0.0, tl.float64)
        for c0 in range(0, k, KB):
            xs = _load_x(xrow, sxk, c0, cols0, k, rmask) / m[:, None]
            ssq += tsum(xs * xs, 1)
    em = eps / (m * m)
    q = ssq + em  # > 0, 0 for a zero row with eps = 0, NaN for a row with NaN or Inf
    pos = q != 0
    sq = tl.sqrt(tl.where(pos, q, 1.0))
    r = tl.where(pos, m * sq, 0.0)  # sqrt(|x|^2 + eps), 0 for the zero row; NaN marks the bad rows
    a = tl.where(pos, em / tl.where(pos, q, 1.0), 1.0)  # eps / (|x|^2 + eps); 1 for the zero row
    uoff = b * su_b + (roff + rows).to(tl.int64) * su_n
    # u = x / r, as (x / m) / (r / m): the same rounding, both steps exact or correctly rounded
    if ONE_CHUNK:
        hh = a + _pack(U, ULO, uoff, su_c, 0, cols0, kpad, smask, tl.where(pos[:, None], xs1 / sq[:, None], 0.0),
                       ROUND, WANT_LO)
    else:
        hh = a
        for c0 in range(0, kpad, KB):  # the packed width: columns k..kpad-1 are written as zeros
            xs = _load_x(xrow, sxk, c0, cols0, k, rmask) / m[:, None]
            hh += _pack(U, ULO, uoff, su_c, c0, cols0, kpad, smask, tl.where(pos[:, None], xs / sq[:, None], 0.0),
                        ROUND, WANT_LO)
    hrow = b * rows_total + roff + rows
    if WANT_H:
        tl.store(H + hrow, hh.to(H.dtype.element_ty), mask=smask)
    else:
        tl.store(H + hrow, a.to(H.dtype.element_ty), mask=smask)
    tl.store(R64 + hrow, r, mask=smask)
    tl.store(A64 + hrow, a, mask=smask)


# ----------------------------------------------------------------------------- pairs


@helper
def _coordinate(U, ULO, base, su_n, su_c, off, idx, c, IS64: tl.constexpr):
    """Coordinate c of the points idx: the packed value hi and the rest of u,
    lo = u - hi (the prologue's, from x in float64; none in float64): hi + lo
    is u to ~2^-48, so the differences of close points keep their digits."""
    o = base + (off + idx).to(tl.int64) * su_n + c * su_c
    hi = tl.load(U + o).to(tl.float64 if IS64 else tl.float32)
    if IS64:
        lo = tl.full(hi.shape, 0.0, hi.dtype)
    else:
        lo = tl.load(ULO + o)
    return hi, lo


@helper
def _differences(hi_i, lo_i, hi_j, lo_j):
    """u_i - u_j and u_i + u_j of every pair of the tile, from the accurate coordinates."""
    dif = (hi_i[:, None] - hi_j[None, :]) + (lo_i[:, None] - lo_j[None, :])
    sm = (hi_i[:, None] + hi_j[None, :]) + (lo_i[:, None] + lo_j[None, :])
    return dif, sm


@helper
def _near_pairs(dd, ddp, ai64, aj64, near, s, delta, s64, delta64,
                KIND: tl.constexpr, POW: tl.constexpr, HALF: tl.constexpr, IS64: tl.constexpr):
    """The close pairs' energy (float64, summed) and kappa dF/dd2, kappa dF/dd2p
    from their accurate |u_i -+ u_j|^2 (dd, ddp). The general exponents (and the
    Gaussian: one code path) are evaluated in float64: in float32,
    exp(-s/2 log d2) is off by |s/2 log d2| 6e-8 relative, 2.3e-6 in the
    energy of a pair at d = 1e-6 with s = 3.5 (the pair contract test); the
    fast paths s = 1, 2 and the log stay in float32 (relative error ~1e-7)."""
    a64 = ai64[:, None] + aj64[None, :]
    if POW == GENERAL:
        F, A, Bt = pair(dd.to(tl.float64) + a64, ddp.to(tl.float64) + a64, s64, delta64, KIND, POW, HALF, True)
    else:
        aij = a64.to(dd.dtype)
        F, A, Bt = pair(dd + aij, ddp + aij, s, delta, KIND, POW, HALF, IS64)
    e = tsum(tsum(tl.where(near, F.to(tl.float64), 0.0), 1), 0)
    return e, A.to(dd.dtype), Bt.to(dd.dtype)


@helper
def _valid(rows, cols, n_rows, n_cols, DIAG: tl.constexpr):
    """The tile's real pairs: no padding, and no i == j in a set against itself."""
    valid = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    if DIAG:
        valid = valid & (rows[:, None] != cols[None, :])
    return valid


@helper
def _needs_masks(row_edge, j0, pid, n_cols, d, dp, thr, BM: tl.constexpr, BN: tl.constexpr, DIAG: tl.constexpr,
                 USES_D2P: tl.constexpr):
    """Whether the tile (rows pid * BM.., columns j0..) takes the masked path:
    padding (row_edge: the rows'), the diagonal of a set against itself, or a
    pair with d (or dp, where the energy uses it) below thr."""
    edge = row_edge | (j0 + BN > n_cols)
    if DIAG:
        edge = edge | ((j0 < pid * BM + BM) & (j0 + BN > pid * BM))
    mn = tmin(d)
    if USES_D2P:
        mn = tl.minimum(mn, tmin(dp))
    return edge | (mn < thr)


@helper
def _masks(rows, cols, n_rows, n_cols, d, dp, thr, DIAG: tl.constexpr, USES_D2P: tl.constexpr):
    """The masked path's (near, ok): the real pairs closer than thr (to be
    recomputed in float64) and the real pairs that are not."""
    valid = _valid(rows, cols, n_rows, n_cols, DIAG)
    near = d < thr
    if USES_D2P:
        near = near | (dp < thr)
    near = near & valid
    return near, valid & (near == 0)


@triton.jit
def _gram_kernel(
    U, ULO, H, R64, A64,
    XR, sxr_b, sxr_n, sxr_k, XC, sxc_b, sxc_n, sxc_k,
    G, sg_b, sg_n, sg_k, VB, AREF, EPART, ep_b,
    n_rows, n_cols, roff, coff, rows_total, kpad, k, n_bucket,
    s_bits, delta_bits, tau_bits,
    KIND: tl.constexpr, POW: tl.constexpr, HALF: tl.constexpr, DIAG: tl.constexpr, ENERGY: tl.constexpr,
    SELF: tl.constexpr, ESCALE: tl.constexpr, GSCALE: tl.constexpr, GRAD: tl.constexpr,
    GRAM_PREC: tl.constexpr, GRAD_PREC: tl.constexpr,
    KC: tl.constexpr, KV: tl.constexpr, SINGLE_KC: tl.constexpr, FUSED: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, FLUSH_TILES: tl.constexpr,
):
    """k > 8. U (B, rows_total, kpad) row-major, H = |u|^2 + a of the packed u.

    Hot tiles: d2 = h_i + h_j - 2 u_i.u_j from tl.dot, the gradient
    V_I += W U_J with w = dF/dd2p - dF/dd2 (the (alpha + beta) u_i terms of
    the pairs cancel exactly in the epilogue). Masked tiles (padding, the
    diagonal, or a pair with d2 or d2p < tau): every pair in the difference
    form from the accurate coordinates (_coordinate), the gradient
    alpha (u_i - u_j) + beta (u_i + u_j) and Aref += alpha + beta, as the CPU
    kernel's refinement (there in float64; here float32 from exact
    differences, ~1e-7 relative per pair).
    """
    USES_D2P: tl.constexpr = HALF or KIND == ANGULAR
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    vc = tl.program_id(2)
    IS64: tl.constexpr = U.dtype.element_ty == tl.float64
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    s = _f64(s_bits).to(CDT)
    delta = _f64(delta_bits).to(CDT)
    tau = _f64(tau_bits).to(CDT)

    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    ubo = b * rows_total * kpad
    ubase = U + ubo
    urow = ubase + (roff + rows).to(tl.int64)[:, None] * kpad
    kcols = tl.arange(0, KC)
    vcols = vc * KV + tl.arange(0, KV)
    hi_row = tl.load(H + b * rows_total + roff + rows).to(CDT)
    ai = tl.load(A64 + b * rows_total + roff + rows).to(CDT)
    if SINGLE_KC:
        ui = tl.load(urow + kcols[None, :])
    V = tl.full((BM, KV), 0.0, CDT)
    aref = tl.full((BM,), 0.0, CDT)
    e64 = tl.full((), 0.0, tl.float64)  # the program's energy: one float64, added per chunk of column tiles
    row_edge = pid * BM + BM > n_rows
    v_hi = tl.minimum(vc * KV + KV, k)
    for c0 in range(0, n_cols, BN * FLUSH_TILES):
        facc = tl.full((BM, BN), 0.0, CDT)
        for j0 in range(c0, tl.minimum(c0 + BN * FLUSH_TILES, n_cols), BN):
            cols = j0 + tl.arange(0, BN)
            ucol = ubase + (coff + cols).to(tl.int64)[:, None] * kpad
            hj = tl.load(H + b * rows_total + coff + cols).to(CDT)
            if SINGLE_KC:
                uj = tl.load(ucol + kcols[None, :])
                g = tl.dot(ui, tl.trans(uj), input_precision=GRAM_PREC, out_dtype=CDT)
            else:
                g = tl.full((BM, BN), 0.0, CDT)
                for kc in range(0, k, KC):
                    ua = tl.load(urow + kc + kcols[None, :])
                    ub = tl.load(ucol + kc + kcols[None, :])
                    g = tl.dot(ua, tl.trans(ub), g, input_precision=GRAM_PREC, out_dtype=CDT)
            hs = hi_row[:, None] + hj[None, :]
            d2 = hs - 2.0 * g
            d2p = hs + 2.0 * g
            if _needs_masks(row_edge, j0, pid, n_cols, d2, d2p, tau, BM, BN, DIAG, USES_D2P):
                # masked: padding, the diagonal i == j, and the close pairs,
                # which are recomputed in the difference form below
                near, ok = _masks(rows, cols, n_rows, n_cols, d2, d2p, tau, DIAG, USES_D2P)
                F, A, Bt = pair(d2, d2p, s, delta, KIND, POW, HALF, IS64)
                facc += tl.where(ok, F, 0.0)
                if GRAD:
                    uv = tl.load(ucol + vcols[None, :])
                    w = tl.where(ok, Bt - A, 0.0)
                    V = tl.dot(w.to(uv.dtype), uv, V, input_precision=GRAD_PREC, out_dtype=CDT)
                if tmax(near.to(tl.int32)) > 0:
                    dd = tl.full((BM, BN), 0.0, CDT)
                    ddp = tl.full((BM, BN), 0.0, CDT)
                    for c in range(0, k):
                        hi_i, lo_i = _coordinate(U, ULO, ubo, kpad, 1, roff, rows, c, IS64)
                        hi_j, lo_j = _coordinate(U, ULO, ubo, kpad, 1, coff, cols, c, IS64)
                        dif, sm = _differences(hi_i, lo_i, hi_j, lo_j)
                        dd += dif * dif
                        if USES_D2P:
                            ddp += sm * sm
                    ai64 = tl.load(A64 + b * rows_total + roff + rows)
                    aj64 = tl.load(A64 + b * rows_total + coff + cols)
                    e_near, A, Bt = _near_pairs(dd, ddp, ai64, aj64, near, s, delta, _f64(s_bits), _f64(delta_bits),
                                                KIND, POW, HALF, IS64)
                    e64 += e_near
                    if GRAD:
                        wa = tl.where(near, A, 0.0)
                        wb = tl.where(near, Bt, 0.0)
                        aref += tsum(wa + wb, 1)
                        for c in range(vc * KV, v_hi):  # this program's columns of V
                            hi_i, lo_i = _coordinate(U, ULO, ubo, kpad, 1, roff, rows, c, IS64)
                            hi_j, lo_j = _coordinate(U, ULO, ubo, kpad, 1, coff, cols, c, IS64)
                            dif, sm = _differences(hi_i, lo_i, hi_j, lo_j)
                            t = wa * dif
                            if USES_D2P:
                                t += wb * sm
                            V += tl.where(vcols[None, :] == c, tsum(t, 1)[:, None], 0.0)
            else:
                F, A, Bt = pair(d2, d2p, s, delta, KIND, POW, HALF, IS64)
                facc += F
                if GRAD:
                    uv = tl.load(ucol + vcols[None, :])
                    w = Bt - A
                    V = tl.dot(w.to(uv.dtype), uv, V, input_precision=GRAD_PREC, out_dtype=CDT)
        e64 += tsum(tsum(facc, 1).to(tl.float64), 0)
    s64 = _f64(s_bits)
    delta64 = _f64(delta_bits)
    _finish(V, aref, e64, vcols, rows, rmask, b, vc, pid, XR, sxr_b, sxr_n, sxr_k, R64, A64, rows_total, roff, k,
            G, sg_b, sg_n, sg_k, VB, AREF, EPART, ep_b, kpad, s64, delta64,
            KIND, POW, SELF, ENERGY, ESCALE, GSCALE, GRAD, FUSED)


@helper
def _finish(V, aref, e64, vcols, rows, rmask, b, vc, pid, XR, sxr_b, sxr_n, sxr_k, R64, A64, rows_total, roff, k,
            G, sg_b, sg_n, sg_k, VB, AREF, EPART, ep_b, kpad, s64, delta64,
            KIND: tl.constexpr, POW: tl.constexpr, SELF: tl.constexpr, ENERGY: tl.constexpr,
            ESCALE: tl.constexpr, GSCALE: tl.constexpr, GRAD: tl.constexpr, FUSED: tl.constexpr):
    """A program's last step: its energy partial, and its rows' gradient
    (FUSED) or its chunk of V and Aref for _epilogue."""
    a = tl.load(A64 + b * rows_total + roff + rows)
    if ENERGY and vc == 0:
        e = ESCALE * e64
        if SELF:  # the half-space pairs (u_i, -u_i): d2 = 4 - 2a, d2p = 2a
            Fs, As, Bs = pair(4.0 - 2.0 * a, 2.0 * a, s64, delta64, KIND, POW, False, True)
            e += tsum(tl.where(rmask, Fs, 0.0), 0)
        tl.store(EPART + b * ep_b + pid, e)
    if GRAD:
        if FUSED:
            _epilogue_rows(V.to(tl.float64), aref.to(tl.float64), a, rows, rmask, vcols, b, XR, sxr_b, sxr_n, sxr_k, R64,
                           rows_total, roff, k, G, sg_b, sg_n, sg_k, s64, delta64, KIND, POW, SELF, GSCALE)
        else:
            tl.store(VB + (b * rows_total + roff + rows).to(tl.int64)[:, None] * kpad + vcols[None, :], V.to(VB.dtype.element_ty))
            if vc == 0:
                tl.store(AREF + b * rows_total + roff + rows, aref.to(tl.float64))


@helper
def _epilogue_rows(V, aref, a, rows, rmask, vcols, b, XR, sxr_b, sxr_n, sxr_k, R64, rows_total, roff, k,
                   G, sg_b, sg_n, sg_k, s64, delta64,
                   KIND: tl.constexpr, POW: tl.constexpr, SELF: tl.constexpr, GSCALE: tl.constexpr):
    """dE/dx_i = GSCALE / r_i [V_i - (u_i.V_i) u_i - a_i (Aref_i + D_i) u_i], all of k in one block."""
    r = tl.load(R64 + b * rows_total + roff + rows)
    vm = vcols < k
    x = tl.load(XR + b * sxr_b + rows.to(tl.int64)[:, None] * sxr_n + vcols[None, :] * sxr_k,
                mask=rmask[:, None] & vm[None, :], other=0.0).to(tl.float64)
    rs = tl.where(r > 0, r, 1.0)
    u = x / rs[:, None]
    radial = tsum(u * V, 1)
    if SELF:
        Fs, As, Bs = pair(4.0 - 2.0 * a, 2.0 * a, s64, delta64, KIND, POW, False, True)
        aref = aref + (Bs - As)
    radial = radial + a * aref
    g = (GSCALE / rs)[:, None] * (V - radial[:, None] * u)
    g = tl.where(r[:, None] > 0, g, 0.0)  # a zero row with eps = 0: the centre, no derivative
    tl.store(G + b * sg_b + rows.to(tl.int64)[:, None] * sg_n + vcols[None, :] * sg_k, g.to(G.dtype.element_ty),
             mask=rmask[:, None] & vm[None, :])


@triton.jit
def _epilogue(VB, AREF, R64, A64, XR, sxr_b, sxr_n, sxr_k, G, sg_b, sg_n, sg_k,
              n_rows, roff, rows_total, kpad, k, s_bits, delta_bits,
              KIND: tl.constexpr, POW: tl.constexpr, SELF: tl.constexpr, GSCALE: tl.constexpr,
              BR: tl.constexpr, KB: tl.constexpr):
    """The chain rule for the rows whose V was accumulated in column chunks (k > 256)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < n_rows
    s64 = _f64(s_bits)
    delta64 = _f64(delta_bits)
    r = tl.load(R64 + b * rows_total + roff + rows)
    a = tl.load(A64 + b * rows_total + roff + rows)
    aref = tl.load(AREF + b * rows_total + roff + rows)
    rs = tl.where(r > 0, r, 1.0)
    vrow = VB + (b * rows_total + roff + rows).to(tl.int64)[:, None] * kpad
    xrow = XR + b * sxr_b + rows.to(tl.int64)[:, None] * sxr_n
    cols0 = tl.arange(0, KB)
    radial = tl.full((BR,), 0.0, tl.float64)
    for c0 in range(0, k, KB):
        cm = (c0 + cols0) < k
        x = tl.load(xrow + (c0 + cols0)[None, :] * sxr_k, mask=rmask[:, None] & cm[None, :], other=0.0)
        v = tl.load(vrow + c0 + cols0[None, :]).to(tl.float64)
        radial += tsum(x.to(tl.float64) / rs[:, None] * v, 1)
    if SELF:
        Fs, As, Bs = pair(4.0 - 2.0 * a, 2.0 * a, s64, delta64, KIND, POW, False, True)
        aref = aref + (Bs - As)
    radial = radial + a * aref
    for c0 in range(0, k, KB):
        cm = (c0 + cols0) < k
        x = tl.load(xrow + (c0 + cols0)[None, :] * sxr_k, mask=rmask[:, None] & cm[None, :], other=0.0)
        v = tl.load(vrow + c0 + cols0[None, :]).to(tl.float64)
        u = x.to(tl.float64) / rs[:, None]
        g = (GSCALE / rs)[:, None] * (v - radial[:, None] * u)
        g = tl.where(r[:, None] > 0, g, 0.0)
        tl.store(G + b * sg_b + rows.to(tl.int64)[:, None] * sg_n + (c0 + cols0)[None, :] * sg_k,
                 g.to(G.dtype.element_ty), mask=rmask[:, None] & cm[None, :])


@triton.jit
def _small_kernel(
    U, ULO, H, R64, A64,
    XR, sxr_b, sxr_n, sxr_k, XC, sxc_b, sxc_n, sxc_k,
    G, sg_b, sg_n, sg_k, EPART, ep_b,
    n_rows, n_cols, roff, coff, rows_total, n_bucket,
    s_bits, delta_bits, tau_bits,
    KIND: tl.constexpr, POW: tl.constexpr, HALF: tl.constexpr, DIAG: tl.constexpr, ENERGY: tl.constexpr,
    SELF: tl.constexpr, ESCALE: tl.constexpr, GSCALE: tl.constexpr, GRAD: tl.constexpr,
    K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, FLUSH_TILES: tl.constexpr,
):
    """k = K <= 8. U (B, K, rows_total) coordinate-major, H = a.

    d2 = |u_i - u_j|^2 + a_i + a_j from coordinate differences: their error
    is ~2e-7 d relative (the rounding of u) instead of the gram form's 2.4e-7
    absolute. Hot tiles add w_ij u_j to the gradient (float32 rounding
    6e-8 |w_ij|: below 1.5e-5 of each pair's force |w_ij| |u_i - u_j| >= |w_ij| tau).
    Masked tiles (padding, the diagonal, or a pair with |u_i -+ u_j|^2 < tau^2,
    the CPU kernel's small-k rule): the difference form from the accurate
    coordinates (_coordinate) for every pair of the tile.
    """
    USES_D2P: tl.constexpr = HALF or KIND == ANGULAR
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    IS64: tl.constexpr = U.dtype.element_ty == tl.float64
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    s = _f64(s_bits).to(CDT)
    delta = _f64(delta_bits).to(CDT)
    tau = _f64(tau_bits)
    tau2 = (tau * tau).to(CDT)

    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    ubo = b * K * rows_total
    ubase = U + ubo
    ui = ()
    for c in tl.static_range(K):
        ui = ui + (tl.load(ubase + c * rows_total + roff + rows),)
    ai = tl.load(H + b * rows_total + roff + rows)
    vsum = ()
    for c in tl.static_range(K):
        vsum = vsum + (tl.full((BM,), 0.0, CDT),)
    aref = tl.full((BM,), 0.0, CDT)
    e64 = tl.full((), 0.0, tl.float64)  # the program's energy: one float64, added per chunk of column tiles
    row_edge = pid * BM + BM > n_rows
    for c0 in range(0, n_cols, BN * FLUSH_TILES):
        facc = tl.full((BM, BN), 0.0, CDT)
        vacc = ()
        for c in tl.static_range(K):
            vacc = vacc + (tl.full((BM, BN), 0.0, CDT),)
        for j0 in range(c0, tl.minimum(c0 + BN * FLUSH_TILES, n_cols), BN):
            cols = j0 + tl.arange(0, BN)
            uj = ()
            for c in tl.static_range(K):
                uj = uj + (tl.load(ubase + c * rows_total + coff + cols),)
            aj = tl.load(H + b * rows_total + coff + cols)
            aij = ai[:, None] + aj[None, :]
            dd = tl.full((BM, BN), 0.0, CDT)
            ddp = tl.full((BM, BN), 0.0, CDT)
            for c in tl.static_range(K):
                df = ui[c][:, None] - uj[c][None, :]
                dd += df * df
                if USES_D2P:
                    sm = ui[c][:, None] + uj[c][None, :]
                    ddp += sm * sm
            if _needs_masks(row_edge, j0, pid, n_cols, dd, ddp, tau2, BM, BN, DIAG, USES_D2P):
                # masked: padding, the diagonal, and the close pairs, recomputed below
                near, ok = _masks(rows, cols, n_rows, n_cols, dd, ddp, tau2, DIAG, USES_D2P)
                F, A, Bt = pair(dd + aij, ddp + aij, s, delta, KIND, POW, HALF, IS64)
                facc += tl.where(ok, F, 0.0)
                if GRAD:
                    w = tl.where(ok, Bt - A, 0.0)
                    nv = ()
                    for c in tl.static_range(K):
                        nv = nv + (vacc[c] + w * uj[c][None, :],)
                    vacc = nv
                if tmax(near.to(tl.int32)) > 0:
                    lo_i = ()
                    lo_j = ()
                    dd = tl.full((BM, BN), 0.0, CDT)
                    ddp = tl.full((BM, BN), 0.0, CDT)
                    for c in tl.static_range(K):
                        h_i, l_i = _coordinate(U, ULO, ubo, 1, rows_total, roff, rows, c, IS64)
                        h_j, l_j = _coordinate(U, ULO, ubo, 1, rows_total, coff, cols, c, IS64)
                        lo_i = lo_i + (l_i,)
                        lo_j = lo_j + (l_j,)
                        dif, sm = _differences(h_i, l_i, h_j, l_j)
                        dd += dif * dif
                        if USES_D2P:
                            ddp += sm * sm
                    ai64 = tl.load(A64 + b * rows_total + roff + rows)
                    aj64 = tl.load(A64 + b * rows_total + coff + cols)
                    e_near, A, Bt = _near_pairs(dd, ddp, ai64, aj64, near, s, delta, _f64(s_bits), _f64(delta_bits),
                                                KIND, POW, HALF, IS64)
                    e64 += e_near
                    if GRAD:
                        wa = tl.where(near, A, 0.0)
                        wb = tl.where(near, Bt, 0.0)
                        aref += tsum(wa + wb, 1)
                        nv = ()
                        for c in tl.static_range(K):
                            dif, sm = _differences(ui[c], lo_i[c], uj[c], lo_j[c])
                            t = vacc[c] + wa * dif
                            if USES_D2P:
                                t += wb * sm
                            nv = nv + (t,)
                        vacc = nv
            else:
                F, A, Bt = pair(dd + aij, ddp + aij, s, delta, KIND, POW, HALF, IS64)
                facc += F
                if GRAD:
                    w = Bt - A
                    nv = ()
                    for c in tl.static_range(K):
                        nv = nv + (vacc[c] + w * uj[c][None, :],)
                    vacc = nv
        e64 += tsum(tsum(facc, 1).to(tl.float64), 0)
        if GRAD:
            nv = ()
            for c in tl.static_range(K):
                nv = nv + (vsum[c] + tsum(vacc[c], 1),)
            vsum = nv
    s64 = _f64(s_bits)
    delta64 = _f64(delta_bits)
    a = tl.load(A64 + b * rows_total + roff + rows)
    if ENERGY:
        e = ESCALE * e64
        if SELF:
            Fs, As, Bs = pair(4.0 - 2.0 * a, 2.0 * a, s64, delta64, KIND, POW, False, True)
            e += tsum(tl.where(rmask, Fs, 0.0), 0)
        tl.store(EPART + b * ep_b + pid, e)
    if GRAD:
        r = tl.load(R64 + b * rows_total + roff + rows)
        rs = tl.where(r > 0, r, 1.0)
        radial = tl.full((BM,), 0.0, tl.float64)
        u64 = ()
        for c in tl.static_range(K):
            x = tl.load(XR + b * sxr_b + rows.to(tl.int64) * sxr_n + c * sxr_k, mask=rmask, other=0.0)
            u = x.to(tl.float64) / rs
            u64 = u64 + (u,)
            radial += u * vsum[c].to(tl.float64)
        aref64 = aref.to(tl.float64)
        if SELF:
            Fs, As, Bs = pair(4.0 - 2.0 * a, 2.0 * a, s64, delta64, KIND, POW, False, True)
            aref64 = aref64 + (Bs - As)
        radial = radial + a * aref64
        for c in tl.static_range(K):
            g = (GSCALE / rs) * (vsum[c].to(tl.float64) - radial * u64[c])
            g = tl.where(r > 0, g, 0.0)
            tl.store(G + b * sg_b + rows.to(tl.int64) * sg_n + c * sg_k, g.to(G.dtype.element_ty), mask=rmask)


# ----------------------------------------------------------------------------- launch

# Tile shapes tried by the autotuner on a GPU (a short list: each one is
# compiled and timed once per key, the first time the key is met); the
# first entry when autotuning is off (COMHE_TRITON_AUTOTUNE=0). Sized for
# 16 elements of each (BM, BN) tensor per thread: at 32 (64 x 64 on 4 warps)
# ptxas reported 255 registers and 1.5 KB (k = 32) to 4 KB (k = 3) of spills
# for sm_90a. Untimed on a GPU so far (docs/triton.md).
GRAM_CONFIGS = [
    triton.Config({"BM": 64, "BN": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 128, "BN": 64}, num_warps=16, num_stages=3),
    triton.Config({"BM": 64, "BN": 128}, num_warps=16, num_stages=2),
    triton.Config({"BM": 64, "BN": 32}, num_warps=4, num_stages=3),
]
# k <= 4 (4 lane accumulators of the gradient); k = 5..8 halve the tile.
SMALL_CONFIGS = [
    triton.Config({"BM": 64, "BN": 64}, num_warps=8, num_stages=2),
    triton.Config({"BM": 128, "BN": 64}, num_warps=16, num_stages=2),
    triton.Config({"BM": 32, "BN": 64}, num_warps=4, num_stages=2),
    triton.Config({"BM": 64, "BN": 32}, num_warps=4, num_stages=2),
]
SMALL_CONFIGS_WIDE = [
    triton.Config({"BM": 32, "BN": 64}, num_warps=8, num_stages=2),
    triton.Config({"BM": 64, "BN": 64}, num_warps=16, num_stages=2),
    triton.Config({"BM": 32, "BN": 32}, num_warps=4, num_stages=2),
    triton.Config({"BM": 64, "BN": 32}, num_warps=8, num_stages=2),
]
_GRAM_KEY = ["n_bucket", "kpad", "KIND", "POW", "HALF", "GRAD", "GRAM_PREC", "GRAD_PREC"]
_SMALL_KEY = ["n_bucket", "K", "KIND", "POW", "HALF", "GRAD"]
_gram_tuned = triton.autotune(configs=GRAM_CONFIGS, key=_GRAM_KEY)(_gram_kernel)
_small_tuned = triton.autotune(configs=SMALL_CONFIGS, key=_SMALL_KEY)(_small_kernel)
_small_wide_tuned = triton.autotune(configs=SMALL_CONFIGS_WIDE, key=_SMALL_KEY)(_small_kernel)

# The widest chunk of V's columns a program accumulates (BM x KV float32 in
# registers); for k beyond it, programs split V's columns and recompute the gram.
KV_MAX = 256
# Column chunk of the gram's loop over k.
KC_MAX = 64

# "auto": the products of the k > 8 path in 3xTF32 (three TF32 products per
# float32 product, ~float32 accuracy; see docs/triton.md for the error of
# each mode). The k <= 8 path has no products: float32 on the CUDA cores.
AUTO_PRECISION = ("tf32x3", "tf32x3")
_PRECISIONS = {"ieee": ("ieee", "ieee"), "tf32x3": ("tf32x3", "tf32x3"), "tf32": ("tf32", "tf32"),
               "bf16": ("ieee", "ieee"), "auto": AUTO_PRECISION}


def _autotuning() -> bool:
    return not interpreting() and os.environ.get("COMHE_TRITON_AUTOTUNE", "1") != "0"


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class _Plan:
    small: bool
    kpad: int  # the packed row width (k <= 8: exactly k, coordinate-major)
    kc: int
    kv: int
    n_vchunks: int
    udtype: torch.dtype
    cdtype: torch.dtype
    round_tf32: bool
    gram_prec: str
    grad_prec: str
    tau: float


def _plan(k: int, dtype: torch.dtype, kind: str, s: float, precision: str) -> _Plan:
    is64 = dtype == torch.float64
    cdtype = torch.float64 if is64 else torch.float32
    tau = refine_threshold(kind, s, is64, precision)
    if k <= SMALL_K:
        return _Plan(True, k, 0, 0, 1, cdtype, cdtype, False, "ieee", "ieee", tau)
    kp = max(16, _next_pow2(k))
    kv = min(kp, KV_MAX)
    kc = min(kp, KC_MAX)
    kpad = -(-k // kv) * kv
    gram_prec, grad_prec = ("ieee", "ieee") if is64 else _PRECISIONS[precision]
    udtype = torch.bfloat16 if (precision == "bf16" and not is64) else cdtype
    round_tf32 = precision == "tf32" and not is64
    return _Plan(False, kpad, kc, kv, kpad // kv, udtype, cdtype, round_tf32, gram_prec, grad_prec, tau)


# The interpreter's largest tile: one tile per set where it fits, because its
# cost is per operation (~50 us each), not per element (tests shrink it).
INTERPRETER_TILE = 256


def _interpreter_tile(n: int, lo: int) -> int:
    return min(INTERPRETER_TILE, max(lo, _next_pow2(n)))


def _prologue_launch(wrap, x, plan, bufs, rows_total, roff, eps):
    U, ULO, H, R64, A64 = bufs
    B, n, k = x.shape
    npad = -(-n // ROW_PAD) * ROW_PAD
    kb = min(_next_pow2(plan.kpad), 128)
    # a few rows per program on a GPU; the whole set in one program under the interpreter
    br = min(_next_pow2(npad), 65536 // kb) if interpreting() else max(1, min(64, 2048 // kb))
    if plan.small:
        su = (plan.kpad * rows_total, 1, rows_total)
    else:
        su = (rows_total * plan.kpad, plan.kpad, 1)
    grid = (triton.cdiv(npad, br), B)
    wrap(_prologue)[grid](
        x, x.stride(0), x.stride(1), x.stride(2), n, npad, k, _bits(eps),
        U, ULO, su[0], su[1], su[2], plan.kpad, H, R64, A64, rows_total, roff,
        ROUND=1 if plan.round_tf32 else 0, WANT_H=not plan.small, WANT_LO=plan.cdtype == torch.float32, BR=br, KB=kb,
        ONE_CHUNK=plan.kpad <= kb,
    )


def _main_launch(wrap, plan, bufs, xr, xc, g, epart, n_rows, n_cols, roff, coff, rows_total, k, consts, vb, aref):
    B = xr.shape[0]
    n_bucket = _next_pow2(max(n_rows, n_cols))
    common = (
        xr, xr.stride(0), xr.stride(1), xr.stride(2), xc, xc.stride(0), xc.stride(1), xc.stride(2),
        g, g.stride(0), g.stride(1), g.stride(2),
    )
    if plan.small:
        args = bufs + common + (epart, epart.stride(0), n_rows, n_cols, roff, coff, rows_total,
                                              n_bucket) + consts["bits"]
        kw = dict(consts["flags"], K=k, FLUSH_TILES=FLUSH)
        kernel, configs = (_small_tuned, SMALL_CONFIGS) if k <= 4 else (_small_wide_tuned, SMALL_CONFIGS_WIDE)
        lo = 16
    else:
        args = bufs + common + (vb, aref, epart, epart.stride(0), n_rows, n_cols, roff, coff,
                                              rows_total, plan.kpad, k, n_bucket) + consts["bits"]
        kw = dict(consts["flags"], GRAM_PREC=plan.gram_prec, GRAD_PREC=plan.grad_prec, KC=plan.kc, KV=plan.kv,
                  SINGLE_KC=k <= plan.kc, FUSED=plan.n_vchunks == 1, FLUSH_TILES=FLUSH)
        kernel, configs, lo = _gram_tuned, GRAM_CONFIGS, 16
    nv = 1 if plan.small else plan.n_vchunks

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BM"]), B, nv)

    if _autotuning():
        wrap(kernel)[grid](*args, **kw)
        return
    if interpreting():
        tile = dict(BM=_interpreter_tile(n_rows, lo), BN=_interpreter_tile(n_cols, lo))
        wrap(kernel.fn)[grid](*args, **kw, **tile)
    else:
        c = configs[0]
        wrap(kernel.fn)[grid](*args, **kw, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def min_tile(plan) -> int:
    """The smallest BM of any config: the energy partials are sized for it."""
    return min(c.kwargs["BM"] for c in (SMALL_CONFIGS + SMALL_CONFIGS_WIDE if plan.small else GRAM_CONFIGS)) if not interpreting() else 16


def run(x, y, kind, s, half_space, eps, delta, compute_grad, precision, wrap=lambda kernel: kernel):
    """Energy sums (B,) float64 and gradients of the one-set (y None) or cross-set op.

    x (B, N, k) [, y (B, M, k)] float32/float64 on the kernels' device (CUDA,
    or CPU under the interpreter), already checked (ops.check_args); ``wrap``
    is applied to every kernel before its launch (wrap_triton in the ops). Returns
    (energy, gx, gy): gy None for the one-set op, empty gradients when not
    compute_grad. NaN or Inf in x or y raise the ValueError of every backend.
    """
    cross = y is not None
    B, n, k = x.shape
    m = y.shape[1] if cross else 0
    dev = x.device
    gx = torch.empty(x.shape if compute_grad else (0,), dtype=x.dtype, device=dev)
    gy = None
    if cross:
        gy = torch.empty(y.shape if compute_grad else (0,), dtype=y.dtype, device=dev)
    if B == 0 or n == 0 or (cross and m == 0):  # no pairs (half-space N = 1 has one, N = 0 none)
        energy = torch.zeros((B,), dtype=torch.float64, device=dev) + check_finite(x, "x")
        if cross:
            energy = energy + check_finite(y, "y")
        return energy, gx.zero_(), (gy.zero_() if cross else None)
    plan = _plan(k, x.dtype, kind, s, precision)
    kc, pc = kind_code(kind), power_code(kind, s)
    npad = -(-n // ROW_PAD) * ROW_PAD
    mpad = -(-m // ROW_PAD) * ROW_PAD
    rows_total = npad + mpad
    ushape = (B, k, rows_total) if plan.small else (B, rows_total, plan.kpad)
    U = torch.empty(ushape, dtype=plan.udtype, device=dev)
    H = torch.empty((B, rows_total), dtype=plan.cdtype, device=dev)
    R64 = torch.empty((B, rows_total), dtype=torch.float64, device=dev)
    A64 = torch.empty((B, rows_total), dtype=torch.float64, device=dev)
    # the float32 residuals of the packed u, for the masked tiles (float64 packs u exactly)
    ULO = torch.empty(ushape if plan.cdtype == torch.float32 else (1,), dtype=torch.float32, device=dev)
    bufs = (U, ULO, H, R64, A64)
    _prologue_launch(wrap, x, plan, bufs, rows_total, 0, eps)
    if cross:
        _prologue_launch(wrap, y, plan, bufs, rows_total, npad, eps)
    one_set_half = half_space and not cross
    c = 2.0 if one_set_half else 1.0  # the one-set half-space pair is twice the cross-set form
    flags = dict(KIND=kc, POW=pc, HALF=half_space, GRAD=compute_grad, GSCALE=2.0 * c / kappa(kc, pc),
                 ESCALE=0.5 * c if not cross else 1.0)
    bits = (_bits(s), _bits(delta), _bits(plan.tau))
    epart = torch.zeros((B, triton.cdiv(n, min_tile(plan))), dtype=torch.float64, device=dev)
    need_v = compute_grad and not plan.small and plan.n_vchunks > 1
    vb = torch.empty((B, rows_total, plan.kpad) if need_v else (1,), dtype=plan.cdtype, device=dev)
    aref = torch.empty((B, rows_total) if need_v else (1,), dtype=torch.float64, device=dev)
    g_x = gx if compute_grad else x  # any pointer of x's dtype where nothing is written
    consts = dict(bits=bits, flags=dict(flags, DIAG=not cross, ENERGY=True, SELF=one_set_half))
    _main_launch(wrap, plan, bufs, x, y if cross else x, g_x, epart, n, m if cross else n, 0, npad if cross else 0,
                 rows_total, k, consts, vb, aref)
    if need_v:
        _epilogue_launch(wrap, plan, vb, aref, R64, A64, x, gx, n, 0, rows_total, k, flags, bits, one_set_half)
    if cross and compute_grad:  # y's rows against x's columns, for y's gradient (the energy is x's side)
        consts_y = dict(bits=bits, flags=dict(flags, DIAG=False, ENERGY=False, SELF=False))
        _main_launch(wrap, plan, bufs, y, x, gy, epart, m, n, npad, 0, rows_total, k, consts_y, vb, aref)
        if need_v:
            _epilogue_launch(wrap, plan, vb, aref, R64, A64, y, gy, m, npad, rows_total, k, flags, bits, False)
    energy = epart.sum(-1)
    # r = sqrt(|x|^2 + eps) is finite exactly for the rows without NaN or Inf.
    # The check reads a flag back (a sync, after the kernels were queued);
    # while a CUDA graph is being captured it is skipped, as in the CUDA backend.
    if not (dev.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        energy = energy + finite_guard(R64[:, :n, None], "x")
        if cross:
            energy = energy + finite_guard(R64[:, npad : npad + m, None], "y")
    return energy, gx, gy


def _epilogue_launch(wrap, plan, vb, aref, R64, A64, xr, g, n_rows, roff, rows_total, k, flags, bits, self_pairs):
    br = 16
    kb = min(plan.kv, 128)
    grid = (triton.cdiv(n_rows, br), xr.shape[0])
    wrap(_epilogue)[grid](
        vb, aref, R64, A64, xr, xr.stride(0), xr.stride(1), xr.stride(2), g, g.stride(0), g.stride(1), g.stride(2),
        n_rows, roff, rows_total, plan.kpad, k, bits[0], bits[1],
        KIND=flags["KIND"], POW=flags["POW"], SELF=self_pairs, GSCALE=flags["GSCALE"], BR=br, KB=kb,
    )

"""Solving the network morphism equation G~ = F_{l+1} ⊛ F_l (Wei et al. 2016, eq. 6).

Algorithm 1 (general): draw one factor at random and solve the other exactly by least squares; alternate
when one step is not enough. One step is exact for a generic random factor when that factor's partner has
at least as many unknowns as there are equations (condition (7), one side at a time).

Algorithm 2 (practical): shrink the kernel of the factor that does not expand G until one step is exact,
then pad that kernel back with zeros.

Speed: the one-step solve is done on a block-diagonal random F_{l+1} (blocks of output and middle channels),
which splits one huge system into many small ones. Any exact pair stays exact as (F_{l+1}·M, M⁻¹·F_l) for
an invertible M on the middle channels, so a random orthogonal M then makes both factors dense.
Everything is float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from math import ceil, gcd, prod

import numpy as np
import scipy.linalg

from .compose import composite_size, compose_grouped, embed, first_layer_operator, relative_residual

EXACT_RESIDUAL = 1e-9
_BLOCK_ROWS = 256  # target rows of one block system
_DENSE_LIMIT = 6_000_000  # entries of a dense system we accept for Algorithm 1 iterations


class SolveError(ValueError):
    """No exact factorization exists for these sizes; `minimum_width` names what would work."""

    def __init__(self, message: str, minimum_width: int | None = None):
        super().__init__(message)
        self.minimum_width = minimum_width


@dataclass
class Factorization:
    first: np.ndarray          # F_l  (C_mid, C_in/g, *k1)
    second: np.ndarray         # F_{l+1} (C_out, C_mid/g, *k2)
    offset: tuple[int, ...]    # zeros before G inside the composite kernel, per spatial dim
    residual: float            # ‖G~ − F_{l+1} ⊛ F_l‖ / ‖G‖
    amplification: float       # ‖|F_{l+1}| ⊛ |F_l|‖ / ‖G‖: how much float32 rounding the pair can amplify
    algorithm: str             # what actually ran
    solved_k2: tuple[int, ...] = ()  # kernel the solve used for the zero-padded factor (Algorithm 2)
    solved_k1: tuple[int, ...] = ()
    iterations: int = 1
    notes: list[str] = field(default_factory=list)


def _as_tuple(k, rank: int) -> tuple[int, ...]:
    if k is None:
        return None
    if isinstance(k, int):
        return (k,) * rank
    k = tuple(int(v) for v in k)
    if len(k) != rank:
        raise SolveError(f"kernel {k} has {len(k)} dims, the layer has {rank} spatial dims")
    return k


def _centered_offset(big: tuple[int, ...], small: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((b - s) // 2 for b, s in zip(big, small))


@lru_cache(maxsize=None)
def _single_output_need(k1: tuple[int, ...], k2: tuple[int, ...]) -> int:
    """Middle channels one output channel needs for an exact one-step solve.

    With one output, sum_m B_m * A_m has Koszul syzygies (B_j*B_i - B_i*B_j = 0), so the count of condition
    (7) is not enough when k2 > 1; the rank is measured on a random instance instead.
    """
    kt = composite_size(k1, k2)
    m = ceil(prod(kt) / prod(k1))
    if prod(k2) == 1:
        return m
    rng = np.random.default_rng(12345)
    while True:
        op = first_layer_operator(rng.standard_normal((1, m) + k2), k1)
        if np.linalg.matrix_rank(op) == op.shape[0]:
            return m
        m += 1


def one_step_need(c_out: int, k1: tuple[int, ...], k2: tuple[int, ...]) -> int:
    """Middle channels for which a random F_{l+1} (C_out, width, *k2) makes F_l exactly solvable."""
    if c_out == 1:
        return _single_output_need(tuple(k1), tuple(k2))
    return ceil(c_out * prod(composite_size(k1, k2)) / prod(k1))


def minimum_width(weight_shape, k1, k2, groups: int = 1, algorithm: str = "practical") -> int:
    """Smallest middle width for which one solve step is exact (per this solver)."""
    c_out, c_in_g = weight_shape[0], weight_shape[1]
    kernel = tuple(weight_shape[2:])
    out_g = c_out // groups
    if algorithm == "general":
        need_fix_second = one_step_need(out_g, k1, k2)
        need_fix_first = one_step_need(c_in_g, k2, k1)
    else:
        # Algorithm 2 can shrink the non-expanding kernel down to what still covers G.
        k2_min = tuple(max(1, k - a + 1) for a, k in zip(k1, kernel))
        k1_min = tuple(max(1, k - b + 1) for b, k in zip(k2, kernel))
        need_fix_second = one_step_need(out_g, k1, k2_min) if all(a >= k for a, k in zip(k1, kernel)) else None
        need_fix_first = one_step_need(c_in_g, k2, k1_min) if all(b >= k for b, k in zip(k2, kernel)) else None
        general = [one_step_need(out_g, k1, k2), one_step_need(c_in_g, k2, k1)]
        return groups * min([n for n in (need_fix_second, need_fix_first) if n is not None] + general)
    return groups * min(need_fix_second, need_fix_first)


def _random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _kron_split(n: int) -> tuple[int, int]:
    """n = k·b + rem with k, b near √n, preferring an exact factorization (rem = 0)."""
    root = int(np.sqrt(n))
    for b in range(root, max(1, root // 2) - 1, -1):
        if n % b == 0:
            return n // b, b
    return n // root, root


class StructuredOrthogonal:
    """A random n×n orthogonal Q built from Kronecker products of two random orthogonal matrices of size about
    √n (A ⊗ B, dense, applied as two GEMMs), so Q·X costs about 4·√n·n per column instead of 2·n².

    When n has no factorization k·b near √n, a layer is blockdiag(A ⊗ B, D) with a small dense D for the
    remainder, and two such layers with a random permutation between make Q dense. Small n gets a dense Haar
    matrix."""

    def __init__(self, n: int, rng: np.random.Generator, dense_limit: int = 256):
        self.n = n
        self.dense = _random_orthogonal(n, rng) if n <= dense_limit else None
        self.layers = []
        if self.dense is None:
            k, b = _kron_split(n)
            rem = n - k * b
            for i in range(1 if rem == 0 else 2):
                perm = rng.permutation(n) if i else None
                rest = _random_orthogonal(rem, rng) if rem else None
                self.layers.append((perm, _random_orthogonal(k, rng), _random_orthogonal(b, rng), rest))

    @staticmethod
    def _kron(x, a, b, rest):
        k, bs = a.shape[0], b.shape[0]
        cols = x.shape[1]
        top = (a @ x[:k * bs].reshape(k, bs * cols)).reshape(k, bs, cols)
        top = np.matmul(b, top).reshape(k * bs, cols)
        if rest is None:
            return top
        return np.concatenate([top, rest @ x[k * bs:]])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Q @ x for x of shape (n, m)."""
        if self.dense is not None:
            return self.dense @ x
        for perm, a, b, rest in self.layers:
            x = self._kron(x if perm is None else x[perm], a, b, rest)
        return x

    def apply_t(self, x: np.ndarray) -> np.ndarray:
        """Qᵀ @ x for x of shape (n, m)."""
        if self.dense is not None:
            return self.dense.T @ x
        for perm, a, b, rest in reversed(self.layers):
            x = self._kron(x, a.T, b.T, None if rest is None else rest.T)
            if perm is not None:
                undone = np.empty_like(x)
                undone[perm] = x
                x = undone
        return x

    def rows(self, count: int) -> np.ndarray:
        """The first `count` rows of Q, dense."""
        unit = np.zeros((self.n, count))
        unit[np.arange(count), np.arange(count)] = 1.0
        return self.apply_t(unit).T


def orthogonal_factor_pair(matrix: np.ndarray, width: int, rng: np.random.Generator, full_rank: bool = True):
    """Exact A (rows × width) @ B (width × cols) = matrix for width ≥ rows, with no least squares.

    A = the first `rows` rows of a random orthogonal Q (orthonormal rows, so A⁺ = Aᵀ) and
    B = Aᵀ·matrix + (I − AᵀA)·R = Qᵀ·[matrix; Z]: the minimum-norm solution plus a random null-space
    component (Z = Q_rest·R is again Gaussian), which makes B full rank instead of rank(matrix). Z's entries
    have the RMS of `matrix`'s, so every direction of B carries G-like scale. Cost: one structured product.
    """
    rows, cols = matrix.shape
    q = StructuredOrthogonal(width, rng)
    stacked = np.empty((width, cols))
    stacked[:rows] = matrix
    if full_rank and width > rows:
        rms = float(np.sqrt(np.mean(np.square(matrix)))) or 1.0
        stacked[rows:] = rng.standard_normal((width - rows, cols)) * rms
    else:
        stacked[rows:] = 0.0
    return q.rows(rows), q.apply_t(stacked)


def _matrix_pair(weight: np.ndarray, width: int, k1, k2, rng, full_rank: bool):
    """k2 = 1 (or a fully connected layer): G~ = F_{l+1}·F_l per tap, a matrix factorization.

    F_{l+1} (C_out × width) has orthonormal rows when width ≥ C_out; otherwise (width ≥ C_in·∏k1) F_l has
    orthonormal columns, the same construction on the transpose. None when width is below both.
    """
    c_out, c_in = weight.shape[:2]
    kernel = weight.shape[2:]
    if any(k != 1 for k in k2):
        return None
    kt = tuple(k1)
    offset = _centered_offset(kt, kernel)
    target = embed(weight, kt, offset).reshape(c_out, -1)      # (C_out, C_in·∏k1)
    if width >= c_out:
        second, first = orthogonal_factor_pair(target, width, rng, full_rank)
    elif width >= target.shape[1]:
        first_t, second_t = orthogonal_factor_pair(target.T, width, rng, full_rank)
        second, first = second_t.T, first_t.T
    else:
        return None
    return first.reshape((width, c_in) + kt), second.reshape((c_out, width) + tuple(k2)), offset


def _matrix_pair_any(weight, width, k1, k2, rng, full_rank):
    """The matrix factorization when either factor is 1×1 (k1 = 1: the transposed problem)."""
    if all(k == 1 for k in k2):
        return _matrix_pair(weight, width, k1, k2, rng, full_rank)
    if all(k == 1 for k in k1):
        solved = _matrix_pair(np.swapaxes(weight, 0, 1), width, k2, k1, rng, full_rank)
        if solved is not None:
            first_t, second_t, offset = solved
            return np.swapaxes(second_t, 0, 1), np.swapaxes(first_t, 0, 1), offset
    return None


def _min_norm_solve(op: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Minimum-norm solution of a wide, full-row-rank system: opᵀ(op·opᵀ)⁻¹·rhs by Cholesky (a few times
    faster than pivoted QR; the random blocks have slack, so op·opᵀ is well conditioned and the float64
    residual check still guards). Falls back to least squares if the Gram matrix is not positive definite."""
    try:
        factor = scipy.linalg.cho_factor(op @ op.T, check_finite=False)
        return op.T @ scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(op, rhs, lapack_driver="gelsy", check_finite=False)[0]


def _solve_first_given_block_second(target: np.ndarray, width: int, k1, k2, rng, full_rank: bool = True,
                                    progress=None) -> tuple[np.ndarray, np.ndarray]:
    """One exact Algorithm-1 step: block-diagonal random F_{l+1}, F_l by least squares.

    target is G~ (C_out, C_in, *kt); needs width·∏k1 ≥ C_out·∏kt. With full_rank, each block's solution is
    T⁺·g + (I − T⁺T)·r for a random r (computed as r + T⁺(g − T r)): the residual is unchanged and F_l gets
    full rank instead of the rank of G.
    """
    c_out, c_in = target.shape[:2]
    kt = target.shape[2:]
    pk1, pkt = prod(k1), prod(kt)
    # Output block sizes that make each block's middle count an integer: go·pkt divisible by pk1.
    unit = pk1 // gcd(pk1, pkt)
    block_out = max(unit, (max(1, _BLOCK_ROWS // pkt) // unit) * unit)
    out_sizes = [block_out] * (c_out // block_out)
    if c_out % block_out:
        out_sizes.append(c_out % block_out)
    if len(out_sizes) > 1 and out_sizes[-1] == 1:  # a one-output block is rank deficient (see above)
        last = out_sizes.pop()
        out_sizes[-1] += last
    mid_sizes = [one_step_need(go, tuple(k1), tuple(k2)) for go in out_sizes]
    spare = width - sum(mid_sizes)
    if 0 < spare < len(out_sizes):
        # A block without slack is square and often ill-conditioned: use fewer, larger blocks, each with slack.
        merged = [0] * spare
        for i, go in enumerate(out_sizes):
            merged[i * spare // len(out_sizes)] += go
        out_sizes = merged
        mid_sizes = [one_step_need(go, tuple(k1), tuple(k2)) for go in out_sizes]
        spare = width - sum(mid_sizes)
    if spare < 0:
        raise SolveError("width below one-step minimum", one_step_need(c_out, tuple(k1), tuple(k2)))
    for i in range(spare):  # slack improves conditioning; spread it evenly
        mid_sizes[i % len(mid_sizes)] += 1

    first = np.zeros((width, c_in) + tuple(k1))
    second = np.zeros((c_out, width) + tuple(k2))
    rhs_all = target.reshape(c_out, c_in, pkt).transpose(0, 2, 1)  # (C_out, pkt, C_in)
    o0 = m0 = 0
    for go, gm in zip(out_sizes, mid_sizes):
        if prod(k2) == 1:
            # T = B ⊗ I: a B with orthonormal rows makes the block perfectly conditioned.
            q = np.linalg.qr(rng.standard_normal((gm, go)))[0]
            block = q.T.reshape((go, gm) + tuple(k2))
        else:
            block = rng.standard_normal((go, gm) + tuple(k2)) / np.sqrt(gm * prod(k2))
        op = first_layer_operator(block, tuple(k1))
        rhs = rhs_all[o0:o0 + go].reshape(go * pkt, c_in)
        if op.shape[0] == op.shape[1]:
            sol = scipy.linalg.solve(op, rhs, check_finite=False)
        elif full_rank:
            rms = float(np.linalg.norm(rhs)) / np.sqrt(op.shape[1] * c_in) or 1.0
            free = rng.standard_normal((op.shape[1], c_in)) * rms
            sol = free + _min_norm_solve(op, rhs - op @ free)
        else:
            sol = _min_norm_solve(op, rhs)
        if progress is not None:
            progress(go)
        first[m0:m0 + gm] = sol.reshape((gm,) + tuple(k1) + (c_in,)).transpose((0, len(k1) + 1) + tuple(range(1, len(k1) + 1)))
        second[o0:o0 + go, m0:m0 + gm] = block
        o0 += go
        m0 += gm
    # Mix the middle channels with a random orthogonal M: F_{l+1}·M and Mᵀ·F_l stay exact and become dense.
    # F_{l+1} is block diagonal, so F_{l+1}·M is computed block by block.
    # A structured orthogonal M costs width·log(width) per column instead of width².
    mix = StructuredOrthogonal(width, rng)
    second = np.moveaxis(mix.apply_t(np.moveaxis(second, 1, 0).reshape(width, -1)).reshape(
        (width, c_out) + tuple(k2)), 0, 1)                    # F_{l+1}·M
    first = mix.apply_t(first.reshape(width, -1)).reshape(first.shape)   # Mᵀ·F_l
    return first, second


def _solve_second_given_block_first(target, width, k1, k2, rng, full_rank=True, progress=None):
    """Mirror of the above: random F_l, exact F_{l+1}, by transposing the problem (convolution commutes)."""
    target_t = np.swapaxes(target, 0, 1)
    first_t, second_t = _solve_first_given_block_second(target_t, width, k2, k1, rng, full_rank, progress)
    return np.swapaxes(second_t, 0, 1), np.swapaxes(first_t, 0, 1)


def _one_step(target, width, k1, k2, rng, full_rank=True, progress=None):
    """Exact one-step solve on whichever side condition (7) allows; None if neither."""
    c_out, c_in = target.shape[:2]
    fix_second_ok = width >= one_step_need(c_out, tuple(k1), tuple(k2))
    fix_first_ok = width >= one_step_need(c_in, tuple(k2), tuple(k1))
    if fix_second_ok and (not fix_first_ok or c_out <= c_in):
        if progress is not None:
            progress(0, c_out)
        return _solve_first_given_block_second(target, width, k1, k2, rng, full_rank, progress)
    if fix_first_ok:
        if progress is not None:
            progress(0, c_in)
        return _solve_second_given_block_first(target, width, k1, k2, rng, full_rank, progress)
    return None


def alternating_least_squares(target, width, k1, k2, rng, max_iter: int = 50, tol: float = EXACT_RESIDUAL):
    """Algorithm 1 with iterations, on the dense systems (small layers only)."""
    c_out, c_in = target.shape[:2]
    kt = target.shape[2:]
    rows = c_out * prod(kt) * width * prod(k1) + c_in * prod(kt) * width * prod(k2)
    if rows > _DENSE_LIMIT:
        return None
    second = rng.standard_normal((c_out, width) + tuple(k2)) / np.sqrt(width * prod(k2))
    rhs = target.reshape(c_out, c_in, -1).transpose(0, 2, 1).reshape(c_out * prod(kt), c_in)
    rhs_t = np.swapaxes(target, 0, 1).reshape(c_in, c_out, -1).transpose(0, 2, 1).reshape(c_in * prod(kt), c_out)
    best = None
    for it in range(1, max_iter + 1):
        op = first_layer_operator(second, tuple(k1))
        sol = scipy.linalg.lstsq(op, rhs, check_finite=False)[0]
        first = sol.reshape((width,) + tuple(k1) + (c_in,))
        first = np.moveaxis(first, -1, 1)
        op_t = first_layer_operator(np.swapaxes(first, 0, 1), tuple(k2))
        sol_t = scipy.linalg.lstsq(op_t, rhs_t, check_finite=False)[0]
        second = np.moveaxis(sol_t.reshape((width,) + tuple(k2) + (c_out,)), -1, 0)
        res = relative_residual(target, first, second)
        if best is None or res < best[0]:
            best = (res, first, second, it)
        if res <= tol:
            break
    return best


def _equalize_scale(first: np.ndarray, second: np.ndarray):
    """Scale F_l by s and F_{l+1} by 1/s so both have the same standard deviation (paper, Algorithm 2).
    In place: the factors are the solver's own arrays."""
    s1, s2 = float(np.std(first)), float(np.std(second))
    if s1 > 0 and s2 > 0:
        s = np.sqrt(s2 / s1)
        first *= s
        second /= s
    return first, second


def _factorize_group(weight, width, k1, k2, algorithm, rng, max_iter, full_rank=True, progress=None):
    kernel = weight.shape[2:]
    kt = composite_size(k1, k2)
    offset = _centered_offset(kt, kernel)
    solved = _matrix_pair_any(weight, width, k1, k2, rng, full_rank)
    if solved is not None:
        return solved[0], solved[1], solved[2], "general", k1, k2, 1
    target = embed(weight, kt, offset)
    solved = _one_step(target, width, k1, k2, rng, full_rank, progress)
    if solved is not None:
        return solved[0], solved[1], offset, "general", k1, k2, 1
    if algorithm == "general":
        best = alternating_least_squares(target, width, k1, k2, rng, max_iter=max_iter)
        if best is not None and best[0] <= EXACT_RESIDUAL:
            return best[1], best[2], offset, "general-als", k1, k2, best[3]
        return None
    # Algorithm 2: shrink the kernel of the factor that does not expand G, one step each size.
    candidates = []
    if all(a >= k for a, k in zip(k1, kernel)):
        for step in range(1, max(k2, default=1)):
            k2r = tuple(max(1, b - step) for b in k2)
            candidates.append((k1, k2r))
            if all(b == 1 for b in k2r):
                break
    if all(b >= k for b, k in zip(k2, kernel)):
        for step in range(1, max(k1, default=1)):
            k1r = tuple(max(1, a - step) for a in k1)
            candidates.append((k1r, k2))
            if all(a == 1 for a in k1r):
                break
    # Most non-zeros first: the larger shrunk kernel.
    candidates.sort(key=lambda c: -(prod(c[0]) * prod(c[1])))
    for k1r, k2r in candidates:
        ktr = composite_size(k1r, k2r)
        if any(t < k for t, k in zip(ktr, kernel)):
            continue
        off_r = _centered_offset(ktr, kernel)
        solved = _one_step(embed(weight, ktr, off_r), width, k1r, k2r, rng, full_rank, progress)
        if solved is None:
            continue
        first, second = solved
        pad1 = _centered_offset(k1, k1r)
        pad2 = _centered_offset(k2, k2r)
        first = embed(first, k1, pad1)
        second = embed(second, k2, pad2)
        # Composite shifts by the padding of both factors.
        total = tuple(o + a + b for o, a, b in zip(off_r, pad1, pad2))
        return first, second, total, "practical", k1r, k2r, 1
    return None


def factorize(weight: np.ndarray, width: int, k1, k2, groups: int = 1, algorithm: str = "practical",
              seed: int | None = 0, max_iter: int = 50, equalize: bool = True, full_rank: bool = True,
              progress=None) -> Factorization:
    """Solve G~ = F_{l+1} ⊛ F_l for a weight G (C_out, C_in/g, *K) with `width` middle channels.

    algorithm: "practical" (Algorithm 2, which tries Algorithm 1's one exact step first) or "general"
    (Algorithm 1 only, iterating when one step is not exact). Raises SolveError naming the minimum width
    when no exact solution is found.

    full_rank: add a random null-space component to the solved factor (exact, same residual), so it has the
    rank its shape allows rather than the rank of G (full_rank=False: the minimum-norm solution).
    progress: called as progress(advance, total=None) per solved block (total on the first call), for long solves.
    """
    if algorithm not in ("practical", "general"):
        raise SolveError(f"unknown algorithm {algorithm!r}")
    weight = np.asarray(weight, dtype=np.float64)
    rank = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    k1 = _as_tuple(k1, rank) if k1 is not None else kernel
    k2 = _as_tuple(k2, rank) if k2 is not None else (1,) * rank
    if any(a < 1 for a in k1 + k2):
        raise SolveError("kernel sizes must be at least 1")
    kt = composite_size(k1, k2)
    if any(t < k for t, k in zip(kt, kernel)):
        raise SolveError(f"k1 + k2 - 1 = {kt} is smaller than the layer's kernel {kernel}")
    c_out = weight.shape[0]
    if c_out % groups or width % groups:
        minimum = minimum_width(weight.shape, k1, k2, groups, algorithm)
        raise SolveError(f"width {width} is not a multiple of the group count {groups}", minimum)
    minimum = minimum_width(weight.shape, k1, k2, groups, algorithm)
    rng = np.random.default_rng(seed)
    out_g, width_g = c_out // groups, width // groups
    firsts, seconds, result = [], [], None
    for g in range(groups):
        result = _factorize_group(weight[g * out_g:(g + 1) * out_g], width_g, k1, k2, algorithm, rng, max_iter,
                                  full_rank, progress)
        if result is None:
            raise SolveError(
                f"no exact factorization with width {width} (k1={k1}, k2={k2}, {algorithm}); minimum width is {minimum}",
                minimum)
        firsts.append(result[0])
        seconds.append(result[1])
    first = firsts[0] if groups == 1 else np.concatenate(firsts, axis=0)
    second = seconds[0] if groups == 1 else np.concatenate(seconds, axis=0)
    del firsts, seconds
    _, _, offset, used, k1r, k2r, iters = result
    if equalize:
        first, second = _equalize_scale(first, second)
    target = embed(weight, kt, offset)
    residual = relative_residual(target, first, second, groups)
    if not residual <= EXACT_RESIDUAL:
        raise SolveError(f"solver residual {residual:.2e} is above {EXACT_RESIDUAL:.0e}; refusing", minimum)
    return Factorization(first, second, offset, residual, amplification(weight, first, second, groups), used,
                         solved_k2=k2r, solved_k1=k1r, iterations=iters)


def identity_factorization(weight: np.ndarray, k1=None, k2=None, groups: int = 1) -> Factorization:
    """Net2Net IdMorph: F_l = G (zero-padded to k1), F_{l+1} = identity (a centred Dirac of size k2)."""
    weight = np.asarray(weight, dtype=np.float64)
    rank = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    k1 = _as_tuple(k1, rank) if k1 is not None else kernel
    k2 = _as_tuple(k2, rank) if k2 is not None else (1,) * rank
    if any(a < k for a, k in zip(k1, kernel)):
        raise SolveError(f"idmorph keeps G in the first layer, so k1 {k1} must be at least the kernel {kernel}")
    c_out = weight.shape[0]
    out_g = c_out // groups
    off1 = _centered_offset(k1, kernel)
    first = embed(weight, k1, off1)
    second = np.zeros((c_out, out_g) + k2)
    centre = tuple((b - 1) // 2 for b in k2)
    for o in range(c_out):
        second[(o, o % out_g) + centre] = 1.0
    offset = tuple(a + c for a, c in zip(off1, centre))
    kt = composite_size(k1, k2)
    residual = relative_residual(embed(weight, kt, offset), first, second, groups)
    return Factorization(first, second, offset, residual, amplification(weight, first, second, groups), "idmorph",
                         solved_k2=k2, solved_k1=k1)


def amplification(weight, first, second, groups: int = 1, sample: int = 64) -> float:
    """‖|F_{l+1}| ⊛ |F_l|‖ / ‖G‖: 1 means no cancellation between the factors; large values mean the
    pair reaches G by cancellation and amplifies float32 rounding by about that factor.

    For big ungrouped layers it is measured on `sample` evenly spread output channels, and for layers with many
    inputs on 4·`sample` evenly spread input channels (a ratio of norms, so a sample estimates it well)."""
    if groups == 1 and second.shape[0] > sample:
        rows = np.linspace(0, second.shape[0] - 1, sample).astype(int)
        weight, second = weight[rows], second[rows]
    if weight.shape[1] > 4 * sample:
        cols = np.linspace(0, weight.shape[1] - 1, 4 * sample).astype(int)
        weight, first = weight[:, cols], first[:, cols]
    norm = float(np.linalg.norm(weight))
    return float(np.linalg.norm(compose_grouped(np.abs(first), np.abs(second), groups))) / (norm if norm > 0 else 1.0)


def layer_rank(array: np.ndarray, budget: float = 2e9) -> int | None:
    """Numerical rank of a layer weight as a matrix (out, in·∏k); None when the SVD would cost more than
    `budget` flops (min² · max of the matrix's sides)."""
    eps = np.finfo(array.dtype).eps if np.issubdtype(array.dtype, np.floating) else np.finfo(np.float64).eps
    mat = np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
    small, big = sorted(mat.shape)
    if not mat.any():  # all zeros (a zero-start layer, grow --dry-run's stand-ins): no SVD needed
        return 0
    if small * small * big > budget:
        return None
    values = np.linalg.svd(mat, compute_uv=False)
    # Tolerance at the array's own precision: float32 rounding of a low-rank matrix is not rank.
    return int(np.count_nonzero(values > values.max(initial=0.0) * big * eps)) if values.size else 0


def nonzero_share(array: np.ndarray) -> float:
    """Share of non-zero elements (the paper's Fig. 3 measure)."""
    return float(np.count_nonzero(array)) / max(1, array.size)

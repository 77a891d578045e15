"""The matrix-factorization fast path, the structured orthogonal mixing and the full-rank null-space part."""
import numpy as np
import pytest

from onnxmorph.solve import compose, factorize, layer_rank
from onnxmorph.solve.compose import relative_residual
from onnxmorph.solve.factorize import StructuredOrthogonal, orthogonal_factor_pair


@pytest.mark.parametrize("n", [7, 300, 512, 4099])
def test_structured_orthogonal_is_orthogonal_and_dense(n):
    rng = np.random.default_rng(n)
    q = StructuredOrthogonal(n, rng)
    x = rng.standard_normal((n, 5))
    y = q.apply(x)
    assert np.allclose(np.linalg.norm(y, axis=0), np.linalg.norm(x, axis=0))
    assert np.allclose(q.apply_t(y), x, atol=1e-12)
    rows = q.rows(min(n, 6))
    assert np.allclose(rows @ x, y[:rows.shape[0]], atol=1e-12)
    assert np.allclose(rows @ rows.T, np.eye(rows.shape[0]), atol=1e-12)
    assert np.count_nonzero(rows) == rows.size


@pytest.mark.parametrize("rows,cols,width", [(10, 64, 50), (64, 10, 50), (32, 288, 600)])
def test_orthogonal_pair_exact_and_full_rank(rows, cols, width):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((rows, cols))
    if width >= rows:
        a, b = orthogonal_factor_pair(g, width, rng, full_rank=True)
        assert np.allclose(a @ a.T, np.eye(rows), atol=1e-12)
        assert np.linalg.norm(a @ b - g) / np.linalg.norm(g) < 1e-13
        assert np.linalg.matrix_rank(b) == min(width, cols)
        _, b_min = orthogonal_factor_pair(g, width, rng, full_rank=False)
        assert np.linalg.matrix_rank(b_min) == min(rows, cols)


def test_issue8_softmax_layer_gets_full_rank_factor():
    """64→10 softmax layer to width 50: minimum norm gives F_l rank 10; full rank gives 50."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((10, 64))
    full = factorize(weight, 50, (), (), seed=0)
    least = factorize(weight, 50, (), (), seed=0, full_rank=False)
    assert full.residual < 1e-12 and least.residual < 1e-12
    assert layer_rank(full.first) == 50
    assert layer_rank(least.first) == 10
    assert np.isclose(np.std(full.first), np.std(full.second))


@pytest.mark.parametrize("k1,k2", [((3, 3), (1, 1)), ((1, 1), (3, 3)), ((3, 3), (3, 3))])
def test_conv_full_rank_is_exact_and_raises_rank(k1, k2):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((6, 4, 3, 3))
    width = 80 if k1 == k2 else 40
    full = factorize(weight, width, k1, k2, algorithm="general", seed=0)
    least = factorize(weight, width, k1, k2, algorithm="general", seed=0, full_rank=False)
    assert full.residual < 1e-9 and least.residual < 1e-9
    solved = full.first if k2 == (1, 1) or k1 == k2 else full.second
    solved_least = least.first if k2 == (1, 1) or k1 == k2 else least.second
    assert layer_rank(solved) > layer_rank(solved_least) or layer_rank(solved) == min(
        solved.shape[0], int(np.prod(solved.shape[1:])))


def test_probed_residual_sees_an_error():
    rng = np.random.default_rng(3)
    first, second = rng.standard_normal((20, 300)), rng.standard_normal((8, 20))
    target = compose(first[..., None][:, :, :], second[..., None])
    assert relative_residual(target, first[..., None], second[..., None]) < 1e-14
    broken = target.copy()
    broken[3, 117] += 1e-6 * np.linalg.norm(target)
    assert relative_residual(broken, first[..., None], second[..., None]) > 1e-8


def test_progress_callback_counts_blocks():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((40, 40, 5, 5))
    seen = []

    def progress(advance, total=None):
        seen.append((advance, total))

    fac = factorize(weight, 400, (3, 3), (3, 3), algorithm="general", seed=0, progress=progress)
    assert fac.residual < 1e-9
    total = seen[0][1]
    assert total in (40,) and sum(a for a, _ in seen) == total

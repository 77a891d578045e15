"""The morphism equation solver, on its own (no ONNX)."""
import numpy as np
import pytest

from onnxmorph.solve import (EXACT_RESIDUAL, SolveError, compose, embed, factorize, identity_factorization,
                             minimum_width, nonzero_share)
from onnxmorph.solve.factorize import alternating_least_squares, one_step_need


def _direct_compose(first, second):
    """Composite by running the two correlations on delta inputs: independent of compose()."""
    c_mid, c_in, k1h, k1w = first.shape
    c_out, _, k2h, k2w = second.shape
    out = np.zeros((c_out, c_in, k1h + k2h - 1, k1w + k2w - 1))
    for q0 in range(k2h):
        for q1 in range(k2w):
            for r0 in range(k1h):
                for r1 in range(k1w):
                    out[:, :, q0 + r0, q1 + r1] += second[:, :, q0, q1] @ first[:, :, r0, r1]
    return out


@pytest.mark.parametrize("k1,k2", [((3, 2), (2, 3)), ((3, 3), (3, 3)), ((5, 5), (3, 3)), ((1, 1), (3, 3))])
def test_compose_matches_direct_sum(k1, k2):
    # (3,3)⊛(3,3) and (5,5)⊛(3,3) go through the FFT path, the others through tap-pair GEMMs.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3) + k1), rng.standard_normal((4, 5) + k2)
    np.testing.assert_allclose(compose(a, b), _direct_compose(a, b), atol=1e-12)


@pytest.mark.parametrize("shape,k1,k2,groups", [
    ((8, 3, 3, 3), 3, 1, 1), ((16, 8, 5, 5), 3, 3, 1), ((16, 8, 3, 3), 3, 3, 1), ((10, 784), (), (), 1),
    ((64, 1, 3, 3), 3, 3, 64), ((6, 4, 3, 3), 5, 2, 2), ((8, 8, 3, 3, 3), 3, 3, 1), ((8, 8, 3), 3, 3, 1),
    ((12, 6, 1, 7), (1, 7), (3, 3), 1), ((1, 64, 3, 3), 3, 3, 1), ((37, 19, 5, 5), 3, 3, 1),
])
@pytest.mark.parametrize("algorithm", ["practical", "general"])
def test_factorize_is_exact_at_minimum_width(shape, k1, k2, groups, algorithm):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal(shape)
    rank = len(shape) - 2
    k1t = (k1,) * rank if isinstance(k1, int) else k1
    k2t = (k2,) * rank if isinstance(k2, int) else k2
    width = minimum_width(shape, k1t, k2t, groups, algorithm)
    fac = factorize(weight, width, k1, k2, groups=groups, algorithm=algorithm, seed=3)
    assert fac.residual < EXACT_RESIDUAL
    assert fac.first.shape[:2] == (width, shape[1]) and fac.second.shape[:2] == (shape[0], width // groups)
    assert fac.first.shape[2:] == k1t and fac.second.shape[2:] == k2t
    assert np.std(fac.first) == pytest.approx(np.std(fac.second), rel=1e-9)


def test_general_one_step_fills_every_element():
    weight = np.random.default_rng(2).standard_normal((16, 8, 5, 5))
    fac = factorize(weight, 64, 3, 3, algorithm="general")
    assert fac.algorithm == "general" and fac.iterations == 1
    assert nonzero_share(fac.first) == 1.0 and nonzero_share(fac.second) == 1.0


def test_practical_shrinks_and_pads_with_zeros():
    weight = np.random.default_rng(3).standard_normal((32, 32, 3, 3))
    fac = factorize(weight, 32, 3, 3, algorithm="practical")
    assert fac.algorithm == "practical" and fac.solved_k2 == (1, 1)
    assert nonzero_share(fac.second) == pytest.approx(1 / 9)
    assert fac.residual < EXACT_RESIDUAL


def test_single_output_needs_more_than_the_count():
    # One output channel: Koszul syzygies make 3 middle channels rank deficient for 3x3 ⊛ 3x3.
    assert one_step_need(1, (3, 3), (3, 3)) == 4
    assert one_step_need(2, (3, 3), (3, 3)) == 6


def test_too_small_width_names_the_minimum():
    weight = np.random.default_rng(4).standard_normal((16, 16, 5, 5))
    with pytest.raises(SolveError) as err:
        factorize(weight, 20, 3, 3, algorithm="practical", max_iter=3)
    assert err.value.minimum_width == 45
    assert "minimum width is 45" in str(err.value)


def test_kernel_too_small_is_refused():
    with pytest.raises(SolveError):
        factorize(np.ones((4, 4, 5, 5)), 16, 2, 2)


def test_idmorph_is_exact_and_sparse():
    weight = np.random.default_rng(5).standard_normal((8, 4, 3, 3))
    fac = identity_factorization(weight, 3, 3)
    assert fac.residual < 1e-15
    assert nonzero_share(fac.second) == pytest.approx(1 / (8 * 9))


def test_als_improves_below_the_one_step_condition():
    rng = np.random.default_rng(6)
    target = embed(rng.standard_normal((6, 6, 3, 3)), (5, 5), (1, 1))
    res, first, second, iters = alternating_least_squares(target, 12, (3, 3), (3, 3), rng, max_iter=5)
    assert res < 1.0 and iters <= 5
    assert abs(np.linalg.norm(compose(first, second) - target) / np.linalg.norm(target) - res) < 1e-9


def test_seed_makes_it_reproducible():
    weight = np.random.default_rng(7).standard_normal((8, 8, 3, 3))
    a = factorize(weight, 30, 3, 3, seed=11)
    b = factorize(weight, 30, 3, 3, seed=11)
    c = factorize(weight, 30, 3, 3, seed=12)
    assert np.array_equal(a.first, b.first) and not np.array_equal(a.first, c.first)

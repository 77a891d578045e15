"""solve/stats.py: the scale of existing weights from a sample that reads few pages of a memory-mapped weight."""
import numpy as np

from onnxmorph.solve.stats import normal_like, typical_std


def test_typical_std_samples_whole_rows_in_memory_order_even_through_a_moved_axis(tmp_path):
    rng = np.random.default_rng(0)
    rows, cols = 4096, 512
    path = tmp_path / "w.bin"
    (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32).tofile(path)
    weight = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, cols))
    moved = np.moveaxis(weight, 1, 0)
    # the widen pass grows along a moved axis, and adds an axis of size 1 (its channel blocks)
    for view in (weight, moved, moved.reshape((cols, 1, rows))):
        picked = []
        real_std = np.std
        np.std = lambda a, *k, **kw: picked.append(a) or real_std(a, *k, **kw)
        try:
            std = typical_std(view, samples=1 << 16)
        finally:
            np.std = real_std
        sample = np.asarray(picked[0])
        assert sample.size <= 1 << 17
        # every sampled value comes from a whole row of the file: the sample is a set of full rows, not columns
        assert cols in sample.shape
        assert abs(std - 0.02) < 0.002


def test_typical_std_of_zeros_and_empty_is_one():
    assert typical_std(np.zeros((3, 4))) == 1.0
    assert typical_std(np.zeros((0,))) == 1.0


def test_normal_like_draws_in_the_weights_dtype_at_their_scale():
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64, np.float16):
        x = normal_like(rng, (256, 256), 0.5, dtype)
        assert x.dtype == dtype and abs(float(np.std(x.astype(np.float64))) - 0.5) < 0.02

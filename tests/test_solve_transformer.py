"""The transformer growth rules of solve/transformer.py, checked on a numpy reference decoder (float64)."""
import numpy as np
import pytest

from onnxmorph.solve.transformer import (extend, grow_heads, head_order, layer_norm, lemon_norm, rms_norm,
                                         split_columns, stream_fill)

D, DH, F, V, S, C = 8, 4, 12, 11, 5, 3


def make_params(rng, norm, q_heads, kv_heads, gated):
    def w(*shape):
        return rng.standard_normal(shape)
    p = {"E": w(V, D), "P": w(S, D), "Wh": w(C, D), "final": (1 + 0.3 * w(D), 0.3 * w(D) if norm == "ln" else None),
         "layers": []}
    for _ in range(2):
        layer = {"n1": (1 + 0.3 * w(D), 0.3 * w(D) if norm == "ln" else None),
                 "n2": (1 + 0.3 * w(D), 0.3 * w(D) if norm == "ln" else None),
                 "Wq": w(q_heads * DH, D), "bq": w(q_heads * DH), "Wk": w(kv_heads * DH, D), "bk": w(kv_heads * DH),
                 "Wv": w(kv_heads * DH, D), "bv": w(kv_heads * DH), "Wo": w(D, q_heads * DH), "bo": w(D),
                 "W1": w(F, D), "b1": w(F), "W2": w(D, F), "b2": w(D)}
        if gated:
            layer["Wg"], layer["bg"] = w(F, D), w(F)
        p["layers"].append(layer)
    return p


def norm_fn(x, params, eps, norm):
    gamma, beta = params
    return layer_norm(x, gamma, beta, eps) if norm == "ln" else rms_norm(x, gamma, eps)


def attention(h, L, layout):
    q = (h @ L["Wq"].T + L["bq"]).reshape(S, -1, DH).transpose(1, 0, 2)
    k = (h @ L["Wk"].T + L["bk"]).reshape(S, -1, DH).transpose(1, 0, 2)
    v = (h @ L["Wv"].T + L["bv"]).reshape(S, -1, DH).transpose(1, 0, 2)
    r = q.shape[0] // k.shape[0]
    k, v = (np.repeat(k, r, 0), np.repeat(v, r, 0)) if layout == "interleave" else (np.tile(k, (r, 1, 1)),
                                                                                    np.tile(v, (r, 1, 1)))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(DH) + np.triu(np.full((S, S), -1e9), 1)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return (a @ v).transpose(1, 0, 2).reshape(S, -1) @ L["Wo"].T + L["bo"]


def ffn(h, L):
    up = h @ L["W1"].T + L["b1"]
    if "Wg" in L:
        g = h @ L["Wg"].T + L["bg"]
        return (g / (1 + np.exp(-g)) * up) @ L["W2"].T + L["b2"]
    return np.tanh(up) @ L["W2"].T + L["b2"]


def forward(p, tokens, eps, norm="ln", post=False, layout="interleave"):
    x = p["E"][tokens] + p["P"]
    for L in p["layers"]:
        if post:
            x = norm_fn(x + attention(x, L, layout), L["n1"], eps, norm)
            x = norm_fn(x + ffn(x, L), L["n2"], eps, norm)
        else:
            x = x + attention(norm_fn(x, L["n1"], eps, norm), L, layout)
            x = x + ffn(norm_fn(x, L["n2"], eps, norm), L)
    return norm_fn(x, p["final"], eps, norm) @ p["Wh"].T


def widen_stream(p, d_new, how, rng):
    """how: copy (duplication), mean (LEMON LayerNorm), zeros (LEMON RMSNorm)."""
    extra = d_new - D
    q = {"E": stream_fill(p["E"], 1, extra, how), "P": stream_fill(p["P"], 1, extra, how), "layers": []}

    def norm(params):
        gamma, beta = params
        if how == "copy":
            return stream_fill(gamma, 0, extra, "copy"), None if beta is None else stream_fill(beta, 0, extra, "copy")
        g, b, _ = lemon_norm(gamma, beta, 0.0, d_new)
        return g, b

    def reader(w):   # consumers of a norm's output: columns split (copy) or free (they read zeros)
        if how == "copy":
            return split_columns(w, 1, d_new // D, rng)
        return extend(w, 1, rng.standard_normal((w.shape[0], extra)))
    q["final"], q["Wh"] = norm(p["final"]), reader(p["Wh"])
    for L in p["layers"]:
        M = dict(L, n1=norm(L["n1"]), n2=norm(L["n2"]))
        for name in ("Wq", "Wk", "Wv", "W1", "Wg"):
            if name in L:
                M[name] = reader(L[name])
        for name in ("Wo", "bo", "W2", "b2"):   # producers into the stream: rows
            M[name] = stream_fill(L[name], 0, extra, how)
        q["layers"].append(M)
    return q


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


TOKENS = np.array([1, 4, 0, 7, 3])


@pytest.mark.parametrize("norm", ["ln", "rms"])
@pytest.mark.parametrize("post", [False, True])
def test_duplicating_the_stream_is_exact_for_any_norm_placement(norm, post):
    rng = np.random.default_rng(0)
    p = make_params(rng, norm, 4, 2, gated=False)
    for copies in (2, 3):
        q = widen_stream(p, copies * D, "copy", rng)
        assert rel(forward(p, TOKENS, 1e-5, norm, post), forward(q, TOKENS, 1e-5, norm, post)) < 1e-12
        assert not np.allclose(q["Wh"][:, :D], q["Wh"][:, D:2 * D])   # symmetry broken, exactly


@pytest.mark.parametrize("norm,how", [("ln", "mean"), ("rms", "zeros")])
def test_lemon_any_width_pre_norm(norm, how):
    rng = np.random.default_rng(1)
    p = make_params(rng, norm, 4, 2, gated=True)
    eps = 1e-2    # large, so a wrong ε' shows
    for d_new in (D + 1, D + 5, 2 * D + 3):
        q = widen_stream(p, d_new, how, rng)
        eps_new = eps * D / d_new
        assert rel(forward(p, TOKENS, eps, norm), forward(q, TOKENS, eps_new, norm)) < 1e-12
        assert rel(forward(p, TOKENS, eps, norm), forward(q, TOKENS, eps, norm)) > 1e-6   # ε must follow


def test_lemon_fails_post_norm():
    """Post-norm at a non-integer width is not exact: the reason it is refused."""
    rng = np.random.default_rng(2)
    p = make_params(rng, "ln", 4, 2, gated=False)
    q = widen_stream(p, D + 3, "mean", rng)
    assert rel(forward(p, TOKENS, 1e-5, post=True), forward(q, TOKENS, 1e-5 * D / (D + 3), post=True)) > 1e-2


def add_groups(p, q_heads, kv_heads, new_groups, layout, rng):
    r = q_heads // kv_heads
    order = head_order(q_heads, kv_heads, new_groups, layout)
    q_new, kv_new = q_heads + new_groups * r, kv_heads + new_groups
    kv_order = np.arange(kv_heads)
    out = dict(p, layers=[])
    for L in p["layers"]:
        M = dict(L)
        M["Wq"] = grow_heads(L["Wq"], 0, DH, order, q_new, "random", rng)
        M["bq"] = grow_heads(L["bq"], 0, DH, order, q_new, "random", rng)
        for name in ("Wk", "bk", "Wv", "bv"):
            M[name] = grow_heads(L[name], 0, DH, kv_order, kv_new, "random", rng)
        M["Wo"] = grow_heads(L["Wo"], 1, DH, order, q_new, "zeros", rng)
        out["layers"].append(M)
    return out


@pytest.mark.parametrize("layout", ["interleave", "tile"])
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (4, 2), (4, 1), (6, 2)])
def test_whole_groups_of_heads_are_exact(q_heads, kv_heads, layout):
    rng = np.random.default_rng(3)
    p = make_params(rng, "rms", q_heads, kv_heads, gated=True)
    for groups in (1, 2):
        q = add_groups(p, q_heads, kv_heads, groups, layout, rng)
        assert q["layers"][0]["Wq"].shape[0] == (q_heads + groups * q_heads // kv_heads) * DH
        assert rel(forward(p, TOKENS, 1e-5, "rms", layout=layout), forward(q, TOKENS, 1e-5, "rms", layout=layout)) < 1e-12


def test_tiling_only_query_heads_under_gqa_is_wrong():
    """The published mistake: new query heads without KV heads change which KV head the old ones read."""
    rng = np.random.default_rng(4)
    p = make_params(rng, "rms", 4, 2, gated=True)
    q = dict(p, layers=[])
    for L in p["layers"]:
        M = dict(L)
        M["Wq"] = grow_heads(L["Wq"], 0, DH, np.arange(4), 8, "random", rng)
        M["bq"] = grow_heads(L["bq"], 0, DH, np.arange(4), 8, "random", rng)
        M["Wo"] = grow_heads(L["Wo"], 1, DH, np.arange(4), 8, "zeros", rng)
        q["layers"].append(M)
    assert rel(forward(p, TOKENS, 1e-5, "rms"), forward(q, TOKENS, 1e-5, "rms")) > 1e-2


def test_gated_ffn_grows_gate_and_up_together():
    rng = np.random.default_rng(5)
    p = make_params(rng, "rms", 4, 2, gated=True)
    q = dict(p, layers=[])
    for L in p["layers"]:
        M = dict(L)
        for name in ("W1", "b1", "Wg", "bg"):
            M[name] = extend(L[name], 0, rng.standard_normal((5,) + L[name].shape[1:]))
        M["W2"] = extend(L["W2"], 1, np.zeros((D, 5)))
        q["layers"].append(M)
    assert rel(forward(p, TOKENS, 1e-5, "rms"), forward(q, TOKENS, 1e-5, "rms")) < 1e-12


def test_fill_rules():
    w = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(stream_fill(w, 1, 2, "mean"), [[0, 1, 2, 1, 1], [3, 4, 5, 4, 4]])
    assert np.array_equal(stream_fill(w, 0, 2, "copy"), np.vstack([w, w]))
    with pytest.raises(ValueError):
        stream_fill(w, 0, 1, "copy")
    cols = split_columns(w, 1, 2, np.random.default_rng(0))
    assert np.allclose(cols[:, :3] + cols[:, 3:], w)
    g, b, eps = lemon_norm(np.ones(4), np.ones(4), 1e-5, 16)
    assert np.allclose(g[:4], 0.5) and np.allclose(b[4:], 0) and np.isclose(eps, 1e-5 / 4)
    assert list(head_order(4, 2, 1, "tile")) == [0, 1, 3, 4]

"""Decoders as they are deployed (issue 19): Optimum's export folders (fixtures/optimum/README.md), with dynamic batch
and sequence axes, KV caches, Optimum's legacy merged decoder and ORT-optimised (O2) copies.

One sweep per fixture does the work once: verify of the parent against itself (it runs: no "cannot run the
parent"), a copy with a query weight times 3 (verify must fail), every Q/K/V projection widened by its smallest
growth (one head, one GQA group, a head in each fused part), every residual block repeated (exact where inspect
says it repeats, refused with inspect's reason where not). `python tests/test_optimum_decoders.py` prints the
coverage table of README's "Growing transformers" from the same sweep.

The KV-cache design (feeds.py, verify.py): a past > 0 is fed from a prefix run at past 0, the parent's present
outputs as its past; the child gets the parent's cache values on the parent's part (its old heads, its layers) and,
on a grown head or a new layer, what the child itself computed in the same prefix run. test_new_heads_* prove
that zeros there would be wrong (net2net's copied head reads its source's keys) and that the chained run is what
the grown model computes over the whole sequence.
"""
from __future__ import annotations

import functools
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FIXTURES  # noqa: E402

from onnxmorph import api, verify  # noqa: E402
from onnxmorph.errors import CannotMorph, OnnxmorphError  # noqa: E402
from onnxmorph.graph.blocks import find_blocks  # noqa: E402
from onnxmorph.graph.coupling import analyse, widen_index  # noqa: E402
from onnxmorph.graph.index import GraphIndex  # noqa: E402
from onnxmorph.graph.layers import find_layers  # noqa: E402
from onnxmorph.graph.shapes import infer_shapes  # noqa: E402

OPTIMUM = FIXTURES / "optimum"
FAMILIES = ["gpt2", "llama", "qwen2", "phi", "phi3", "mistral"]
SWEEP = [f"{f}_{task}" for f in FAMILIES for task in ("text-generation-with-past", "text-generation")] + \
    ["bert_feature-extraction"]
QKV = re.compile(r"(q_proj|k_proj|v_proj|c_attn|qkv_proj|query|key|value)/")
QUERY = {"gpt2": ("/transformer/h.0/attn/c_attn/Gemm", 32), "phi3": ("/model/layers.0/self_attn/qkv_proj/MatMul", 32),
         "bert": ("/encoder/layer.0/attention/self/query/MatMul", None)}   # (layer, its query columns)
PROMPT = np.array([[5, 17, 42, 99, 3, 64], [7, 7, 120, 1, 33, 90]], dtype=np.int64)
STEPS = 5


def run_cli(capsys, *args):
    """The CLI in this process (a subprocess would import everything again): (exit code, stdout, stderr)."""
    from onnxmorph.cli import main
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
        sys.exit(0)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


LEGACY = [f"{f}_legacy/{name}.onnx" for f in ("gpt2", "llama") for name in ("decoder_model", "decoder_with_past_model")]
REFUSED = ["gpt2_legacy/decoder_model_merged.onnx", "llama_legacy/decoder_model_merged.onnx",
           "gpt2_text-generation_ort-o2", "bert_feature-extraction_ort-o2"]


def _model(folder: str) -> str:
    return str(OPTIMUM / folder) if folder.endswith(".onnx") else str(OPTIMUM / folder / "model.onnx")


def _query_times_3(path: str, family: str) -> onnx.ModelProto:
    layer, columns = QUERY.get(family, ("/model/layers.0/self_attn/q_proj/MatMul", None))
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.name == layer)
    weight = next(t for t in model.graph.initializer if t.name == node.input[1])
    value = numpy_helper.to_array(weight).copy()
    value[..., :columns] *= 3
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    return model


# Under pytest the exports without a cache (the same layers as their with-past twins) and BERT are swept on their
# first layer only; `python tests/test_optimum_decoders.py` sweeps every layer of every fixture for the table.
FULL = {"on": False}
FIRST = re.compile(r"(layers|layer|h)\.0[/.]")


def _smallest_growth(path: str, layer, unit: int):
    """Widen `layer` by one unit of its space (a head, a GQA group, a head in each fused part): (exact, why, rel)."""
    try:
        _, result = api.widen(path, layer.id, width=str(layer.out_channels + unit), seed=3)
    except OnnxmorphError as exc:
        return False, str(exc), None
    return result.verification.passed, "", result.verification.max_rel


def _qkv_units(path: str) -> list:
    """[(Q/K/V projection, the size of one unit of its space or the refusal)], from one analysis of the model."""
    model = onnx.load(path)
    index, shapes = widen_index(model), infer_shapes(model)
    out = []
    for layer in find_layers(index):
        if QKV.search(layer.id):
            try:
                out.append((layer, layer.out_channels // analyse(index, layer, shapes).channels))
            except OnnxmorphError as exc:
                out.append((layer, str(exc)))
    return out


@functools.lru_cache(maxsize=None)
def sweep(folder: str) -> dict:
    """Everything the checks need about one fixture, computed once."""
    start = time.perf_counter()
    path, family = _model(folder), folder.split("_")[0]
    every = FULL["on"] or "with-past" in folder or "with_past" in folder
    row = {"self": verify(path, path), "x3": verify(path, _query_times_3(path, family)), "qkv": {}}
    for layer, unit in _qkv_units(path):
        if every or FIRST.search(layer.id):
            row["qkv"][layer.id] = _smallest_growth(path, layer, unit) if isinstance(unit, int) else (False, unit, None)
    row["blocks"] = {}
    shown = api.inspect(path).blocks
    # inspect runs deepen --block's finder on the same index: the same blocks, the same verdicts
    assert {b.id: b.repeat for b in shown} == {b.id: b.problem or "ok" for b in find_blocks(GraphIndex(onnx.load(path)))}
    for block in shown if every else shown[:1]:
        try:
            _, result = api.deepen(path, block=block.id, seed=3)
            row["blocks"][block.id] = (block.repeat, result.verification.passed, "")
        except OnnxmorphError as exc:
            row["blocks"][block.id] = (block.repeat, False, str(exc))
    row["seconds"] = time.perf_counter() - start
    return row


@pytest.mark.parametrize("folder", SWEEP)
def test_sweep(folder):
    row = sweep(folder)
    # verify feeds consistent inputs: the parent runs, at past length 0 and > 0 for a KV cache
    assert row["self"].passed and row["self"].inputs, row["self"].lines()
    if "with-past" in folder:
        assert "past_sequence_length 0" in row["self"].inputs[0] and "3-token prefix run" in row["self"].inputs[0]
    assert "sequence_length 5" in row["self"].inputs[0]
    # attention is exercised: three times the query weights is caught
    assert not row["x3"].passed and row["x3"].max_rel > 0.1, row["x3"].lines()
    # heads grow exactly on the Q/K/V projections (>= 90%; every one of them today)
    exact = [lay for lay, (ok, _, _) in row["qkv"].items() if ok]
    assert row["qkv"] and len(exact) >= 0.9 * len(row["qkv"]), row["qkv"]
    assert all(rel is None or rel <= 1e-6 for _, _, rel in row["qkv"].values())
    # blocks repeat exactly where inspect says they do, and inspect says so for every pre-norm block
    for block, (said, exact, why) in row["blocks"].items():
        assert (said == "ok") == exact, (block, said, why)
        if folder.startswith("bert"):
            assert "post-norm" in said
        else:
            assert said == "ok", (block, said)


def test_verify_feeds_what_the_graph_allows():
    """Same-named dims agree, a sum dim is the sum, ids stay inside their tables (BERT's 2 token types), the
    shapes are in the report; --input-shape binds the dims it names."""
    report = verify(_model("bert_feature-extraction"), _model("bert_feature-extraction"))
    assert "token_type_ids in [0, 2)" in report.inputs[1] and "input_ids in [0, 128)" in report.inputs[1]
    path = _model("llama_text-generation-with-past")
    given = verify(path, path, input_shape=["input_ids:1x7", "past_key_values.0.key:1x2x4x8"])
    assert given.passed and "batch_size 1, sequence_length 7, past_sequence_length 4" in given.inputs[0]
    assert given.outputs[1].parent_shape == [1, 2, 11, 8]   # present = past 4 + 7 new


def test_merged_decoder_runs_and_is_refused_in_one_line(capsys, tmp_path):
    """The legacy merged decoder (If on use_cache_branch, which declares its mask as the sequence alone) verifies
    with the mask over past + sequence; morphing it says to morph the two decoders before merging."""
    merged = str(OPTIMUM / "llama_legacy" / "decoder_model_merged.onnx")
    report = verify(merged, merged)
    assert report.passed and "the mask spans past + sequence" in report.inputs[-1]
    code, _, err = run_cli(capsys, "widen", merged, "--layer", "/model/layers.0/self_attn/q_proj/MatMul", "--width", "2x",
                           "-o", str(tmp_path / "x.onnx"))
    assert code == 3 and len(err.strip().splitlines()) == 1 and "merge" in err and "decoder_with_past_model" in err
    with pytest.raises(CannotMorph, match="merged decoder"):
        api.deepen(merged, block="/model/layers.0/Add")


@pytest.mark.parametrize("folder,op,layer", [
    ("gpt2_text-generation_ort-o2", "SkipLayerNormalization", "/transformer/h.0/attn/c_proj/Gemm"),
    ("bert_feature-extraction_ort-o2", "BiasGelu", "/encoder/layer.0/intermediate/dense/MatMul")])
def test_contrib_ops_are_refused_in_one_line(folder, op, layer, tmp_path, capsys):
    """ORT's fused contrib ops: the widen and the block refusals name the op and say to morph before optimising;
    a layer's own deepen still works (it is local)."""
    path = _model(folder)
    assert any(op in n for n in api.inspect(path).notes)
    for args in (["widen", path, "--layer", layer, "--width", "2x"], ["deepen", path, "--block", "/x/Add"]):
        code, _, err = run_cli(capsys, *args, "-o", tmp_path / "c.onnx")
        assert code == 3 and len(err.strip().splitlines()) == 1 and "before optimising" in err, err
    _, result = api.deepen(path, layer, seed=1)
    assert result.verification.passed


def test_parent_that_cannot_run_suggests_input_shape(tmp_path, capsys):
    """A parent whose fixed reshapes need other sizes than onnxmorph's defaults: exit 2 (the inputs are the user's
    to give) and one line naming --input-shape."""
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = numpy_helper.from_array(np.array([5, 6], np.int64), "shape")   # runs at batch 5 only
    model = helper.make_model(helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y],
                                                [shape]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "p.onnx"))
    code, _, err = run_cli(capsys, "verify", tmp_path / "p.onnx", tmp_path / "p.onnx")
    assert code == 2 and "--input-shape" in err and len(err.strip().splitlines()) == 1, err
    code, out, _ = run_cli(capsys, "verify", tmp_path / "p.onnx", tmp_path / "p.onnx", "--input-shape", "x:5x6")
    assert code == 0 and "inputs: batch 5" in out


# --- the KV cache of a grown child -----------------------------------------------------------------------------

LLAMA = _model("llama_text-generation-with-past")
K_PROJ = "/model/layers.0/self_attn/k_proj/MatMul"


def _run(model, feed):
    import onnxruntime as ort
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items()
                                               if k in {i.name for i in session.get_inputs()}})))


def _step_feeds(kv_heads: int, rng):
    """A 3-token prefix at past 0, then 5 new tokens: (prefix feed, step feed without the caches)."""
    prefix = {"input_ids": rng.integers(0, 128, (2, 3)), "attention_mask": np.ones((2, 3), np.int64),
              "position_ids": np.tile(np.arange(3), (2, 1))}
    for n in range(2):
        for kind in ("key", "value"):
            prefix[f"past_key_values.{n}.{kind}"] = np.zeros((2, kv_heads, 0, 8), np.float32)
    step = {"input_ids": rng.integers(0, 128, (2, 5)), "attention_mask": np.ones((2, 8), np.int64),
            "position_ids": np.tile(np.arange(3, 8), (2, 1))}
    return prefix, step


def _cache(outputs):
    return {f"past_key_values.{n}.{k}": outputs[f"present.{n}.{k}"] for n in range(2) for k in ("key", "value")}


def test_new_heads_cache_is_what_the_grown_model_computes():
    """Under net2net a new KV head copies an old one in K and V, so the grown model's cache rows of that head are
    the source head's, not zeros: fed zeros there, the child's logits leave the parent's; fed what the child
    computed in the prefix run (what verify feeds), they are the parent's. And that chained run is the grown model's
    own: the same logits as one pass over the 8 tokens."""
    parent = onnx.load(LLAMA)
    child, result = api.widen(LLAMA, K_PROJ, width="24", method="net2net", seed=2)   # 2 -> 3 KV heads in layer 0
    assert result.verification.passed
    rng = np.random.default_rng(0)
    prefix, step = _step_feeds(2, rng)
    parent_prefix = _run(parent, prefix)
    expected = _run(parent, {**step, **_cache(parent_prefix)})["logits"]
    child_prefix = _run(child, {**prefix, **{k: np.zeros((2, 3 if k.startswith("past_key_values.0") else 2, 0, 8),
                                                       np.float32) for k in _cache(parent_prefix)}})
    own = _cache(child_prefix)
    fed = _run(child, {**step, **own})["logits"]
    assert np.abs(fed - expected).max() <= 1e-5 * np.abs(expected).max()
    zeros = dict(own)
    for kind in ("key", "value"):
        zeros[f"past_key_values.0.{kind}"] = zeros[f"past_key_values.0.{kind}"].copy()
        zeros[f"past_key_values.0.{kind}"][:, 2:] = 0   # the new head's rows zeroed
        assert np.abs(own[f"past_key_values.0.{kind}"][:, 2:]).max() > 0.1
    wrong = _run(child, {**step, **zeros})["logits"]
    assert np.abs(wrong - expected).max() > 1e-2 * np.abs(expected).max()
    # the chained run is the grown model over the whole sequence
    whole = {"input_ids": np.concatenate([prefix["input_ids"], step["input_ids"]], 1),
             "attention_mask": np.ones((2, 8), np.int64), "position_ids": np.tile(np.arange(8), (2, 1)),
             **{k: v[:, :, :0] for k, v in own.items()}}
    assert np.abs(_run(child, whole)["logits"][:, 3:] - fed).max() <= 1e-5 * np.abs(fed).max()


def test_new_heads_of_netmorph_do_not_read_their_cache():
    """Under netmorph the new heads' K and V rows are random, so their cache rows are not zero in the grown model,
    and their output-projection columns are zero: the logits do not depend on those rows."""
    child, _ = api.widen(LLAMA, K_PROJ, width="24", seed=2)
    prefix, step = _step_feeds(2, np.random.default_rng(1))
    for n in ("key", "value"):
        prefix[f"past_key_values.0.{n}"] = np.zeros((2, 3, 0, 8), np.float32)
    own = _cache(_run(child, prefix))
    assert np.abs(own["past_key_values.0.key"][:, 2:]).max() > 0.1
    zeros = {k: v.copy() for k, v in own.items()}
    zeros["past_key_values.0.key"][:, 2:] = zeros["past_key_values.0.value"][:, 2:] = 0
    assert np.array_equal(_run(child, {**step, **own})["logits"], _run(child, {**step, **zeros})["logits"])


# --- grown children generate their parent's tokens --------------------------------------------------------------

def greedy_ort(path: str, steps: int = STEPS) -> list:
    """Greedy decoding through ONNX Runtime, present fed back as past (the cache starts empty)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    outs = [o.name for o in session.get_outputs()]
    past = {n: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for n, i in inputs.items()
            if n.startswith("past_key_values")}
    ids, tokens, total = PROMPT, [], 0
    for _ in range(steps):
        length = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((2, total + length), np.int64),
                "position_ids": np.tile(np.arange(total, total + length), (2, 1)), **past}
        result = dict(zip(outs, session.run(outs, {k: v for k, v in feed.items() if k in inputs})))
        nxt = result["logits"][:, -1].argmax(-1)
        tokens.append(nxt.tolist())
        total += length
        ids = nxt[:, None].astype(np.int64)
        past = {n: result[n.replace("past_key_values", "present")] for n in past}
    return np.array(tokens).T.tolist()


def greedy_optimum(folder: Path, head_dim: int | None = None, steps: int = STEPS) -> list:
    """Greedy generation by optimum's ORTModelForCausalLM from the folder. head_dim: optimum 0.1.0 sizes the first,
    empty cache with hidden_size // num_attention_heads (not config.head_dim) for these families; a child with
    more heads needs its head size set on the loaded model."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ORTModelForCausalLM.from_pretrained(folder, use_io_binding=False)
        if head_dim:
            model.embed_size_per_head = head_dim
        prompt = torch.tensor(PROMPT)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False)
    return out[:, PROMPT.shape[1]:].tolist()


GROW = {"gpt2": ("/transformer/h.{}/attn/c_attn/Gemm", "/transformer/h.0/mlp/c_fc/Gemm", "/transformer/h.0/Add"),
        "phi": ("/model/layers.{}/self_attn/q_proj/MatMul", "/model/layers.0/mlp/fc1/MatMul", "/model/layers.0/Add_1"),
        "phi3": ("/model/layers.{}/self_attn/qkv_proj/MatMul", "/model/layers.0/mlp/gate_up_proj/MatMul",
                 "/model/layers.0/Add")}
LLAMA_LIKE = ("/model/layers.{}/self_attn/q_proj/MatMul", "/model/layers.0/mlp/up_proj/MatMul", "/model/layers.0/Add")


@pytest.mark.parametrize("family", FAMILIES)
def test_grown_children_generate_the_parents_tokens(family, tmp_path):
    """A child with a new decoder layer and a wider MLP (each written as an export folder, config.json updated),
    and a child with a head (or GQA group) more in every layer: greedy decoding over 5 steps gives the parent's
    tokens, through ONNX Runtime and through ORTModelForCausalLM."""
    pytest.importorskip("optimum.onnxruntime")
    import json
    folder = OPTIMUM / f"{family}_text-generation-with-past"
    heads, mlp, block = GROW.get(family, LLAMA_LIKE)
    expected = greedy_ort(str(folder / "model.onnx"))
    assert greedy_optimum(folder) == expected
    api.deepen(str(folder / "model.onnx"), block=block, seed=1, output=f"{tmp_path / 'deeper'}/")
    _, result = api.widen(str(tmp_path / "deeper" / "model.onnx"), mlp, width="2x", seed=1,
                          output=f"{tmp_path / 'wider'}/")
    config = json.loads((tmp_path / "wider" / "config.json").read_text())
    parent_config = json.loads((folder / "config.json").read_text())
    layers = [k for k in ("num_hidden_layers", "n_layer") if k in config][0]
    assert config[layers] == parent_config[layers] + 1 and "intermediate_size" in config["onnxmorph_layer_sizes"]
    assert (tmp_path / "wider" / "generation_config.json").exists()
    grown = str(tmp_path / "wider" / "model.onnx")
    assert len(onnx.load(grown).graph.input) == len(onnx.load(str(folder / "model.onnx")).graph.input) + 2
    assert greedy_ort(grown) == expected
    assert greedy_optimum(tmp_path / "wider") == expected
    # one unit more in every layer's attention (its heads' folder: config.json's heads per layer agree again)
    source = str(folder / "model.onnx")
    units = {layer.id: (layer.out_channels, unit) for layer, unit in _qkv_units(source)}
    for n in range(2):
        channels, unit = units[heads.format(n)]
        api.widen(source, heads.format(n), width=str(channels + unit), seed=1, output=f"{tmp_path / f'heads{n}'}/")
        source = str(tmp_path / f"heads{n}" / "model.onnx")
    config = json.loads((tmp_path / "heads1" / "config.json").read_text())
    assert "onnxmorph_layer_sizes" not in config and config.get("head_dim") == 8
    assert greedy_ort(source) == expected
    assert greedy_optimum(tmp_path / "heads1", head_dim=8) == expected


def _coverage_table() -> list[str]:
    """The README table, from the sweep (every layer), plus the forms refused as a whole."""
    rows = ["| fixture | Q/K/V projections | heads exact (one unit more) | blocks | blocks exact | refused, why |",
            "|---|---|---|---|---|---|"]
    for folder in SWEEP + LEGACY:
        row = sweep(folder)
        exact = sum(ok for ok, _, _ in row["qkv"].values())
        blocks = sum(ok for _, ok, _ in row["blocks"].values())
        why = sorted({w.split(": ")[-1][:90] for ok, w, _ in row["qkv"].values() if not ok} |
                     {s.split(": ")[-1][:90] for s, ok, _ in row["blocks"].values() if not ok})
        rows.append(f"| {folder} | {len(row['qkv'])} | {exact} | {len(row['blocks'])} | {blocks} | "
                    f"{'; '.join(why) or '-'} | ")
    for folder in REFUSED:
        rows.append(f"| {folder} | - | - | - | - | {'; '.join(api.inspect(_model(folder)).notes)[:120]} |")
    return rows


if __name__ == "__main__":
    FULL["on"] = True
    print("\n".join(_coverage_table()))

"""Does a grown child reach a better model for less compute than the same architecture trained from scratch?
Every training step is counted, the parent's own included (issue 21).

Two tasks made on this machine, each with a parent that is capacity-limited:
  teacher-mlp  labels from a fixed random teacher 8 → 16 (tanh) → 10 on Gaussian inputs; the parent is softmax
               regression 8 → 10, the child an 8 → 64 → 10 MLP (layer `fc` deepened).
  digits-cnn   scikit-learn's 8×8 digits as images; the parent is one 3×3 conv (6 channels) → ReLU → global
               average pool → linear 6 → 10; the child has that conv deepened into 3×3 (32 channels) →
               P-activation → 3×3 (6 channels).
Per seed the parent trains P steps, is written as ONNX, grown with onnxmorph's API (each child verified exact on
ONNX Runtime), handed to PyTorch with onnxmorph.torch.to_torch and trained S more steps. Arms, all at the
child's architecture except IdMorph alone, whose hidden width is the grown layer's output width:
  parent                 the parent, trained on for the same S steps
  netmorph-prelu/-ptanh  deepen, NetMorph (full rank), hidden width H, PReLU / P-tanh
  netmorph-widen         deepen, NetMorph at the layer's own output width, then NetMorph widen to H
  idmorph                deepen, IdMorph (F_l = G, F_{l+1} = identity), PReLU
  idmorph+widen          IdMorph, then NetMorph widen to H
  net2net-widen(+noise)  IdMorph (Net2DeeperNet), then Net2Net widen to H, without / with exact zero-sum noise
  scratch                the child's architecture (PReLU) from a fresh PyTorch initialisation, P + S steps
  scratch-ptanh          the same with the P-tanh child's activation (a learnable, from 0: tanh): the
                         control for netmorph-ptanh, so that a better activation is not read as growth
One SGD everywhere (momentum 0.9, batch 64, the task's lr, gradient norm clipped to 1), a fresh optimiser at
the growth. Compute is counted in steps: a parent step costs less than a child step, so counting them alike
favours scratch.
Needs the torch extra (torch, onnx2torch, scikit-learn, matplotlib).

Usage: python benchmarks/learn_growth.py [--quick] [--out DIR] [--task teacher-mlp|digits-cnn|all] [--seeds N]
The last line printed is one JSON object {"task": ..., "arms": {arm: {"final": test accuracy, "steps": total}}};
"scratch@S" and "scratch-ptanh@S" are the scratch children after S steps (equal steps after the growth); with
more than one task, "task" lists them and each arm is named "<arm>/<task>".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learn_digits import parent_onnx, scratch_mlp  # noqa: E402

from onnxmorph import api  # noqa: E402
from onnxmorph.torch import to_torch  # noqa: E402

BATCH = 64
CLIP = 1.0            # gradient-norm clipping, every arm: without it the IdMorph children diverge (README)
NET2NET_NOISE = 0.1   # relative std of Net2Net's zero-sum noise on the replicas' consumer columns
ARMS = ("parent", "netmorph-prelu", "netmorph-ptanh", "netmorph-widen", "idmorph", "idmorph+widen",
        "net2net-widen", "net2net-widen+noise", "scratch", "scratch-ptanh")
SCRATCH = ("scratch", "scratch-ptanh")
CONTROL = {"netmorph-ptanh": "scratch-ptanh"}   # each grown arm's scratch at its activation; others: scratch
LABELS = {"parent": "parent (trained on)", "netmorph-prelu": "NetMorph deepen, PReLU",
          "netmorph-ptanh": "NetMorph deepen, P-tanh", "netmorph-widen": "NetMorph deepen + NetMorph widen",
          "idmorph": "IdMorph (narrow), PReLU", "idmorph+widen": "IdMorph + NetMorph widen",
          "net2net-widen": "IdMorph + Net2Net widen", "net2net-widen+noise": "IdMorph + Net2Net widen, noise",
          "scratch": "same child from scratch", "scratch-ptanh": "same P-tanh child from scratch"}


@dataclass
class Task:
    name: str
    about: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    layer: str                                    # the parent layer that grows
    width: int                                    # H, the child's hidden width
    lr: float
    kernels: dict                                 # k1/k2 for deepen (Conv only)
    make_parent: Callable[[int], torch.nn.Module]       # seed → module with a softmax output
    parent_to_onnx: Callable[[torch.nn.Module], onnx.ModelProto]
    make_scratch: Callable[[int], torch.nn.Module]      # seed → the child's architecture (PReLU), fresh


def teacher_data(features=8, hidden=16, classes=10, train=20000, test=5000, seed=1234):
    """Gaussian inputs labelled by argmax of a fixed random tanh network, with per-class offsets that make the
    classes equally likely (a random network's argmax is far from uniform)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 2 / np.sqrt(features), (hidden, features))
    b1 = rng.normal(0, 0.5, hidden)
    w2 = rng.normal(0, 3 / np.sqrt(hidden), (classes, hidden))

    def logits(x):
        return np.tanh(x @ w1.T + b1) @ w2.T

    probe, shift = logits(rng.standard_normal((50000, features))), np.zeros(classes)
    for _ in range(50):
        share = np.bincount((probe + shift).argmax(1), minlength=classes) / len(probe)
        shift += 0.5 * np.log((1 / classes) / np.maximum(share, 1e-4))
    x = rng.standard_normal((train + test, features)).astype(np.float32)
    y = (logits(x) + shift).argmax(1).astype(np.int64)
    return x[:train], y[:train], x[train:], y[train:]


def teacher_task(width=64) -> Task:
    x, y, x_test, y_test = teacher_data()
    features, classes = x.shape[1], 10

    def make_parent(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(features, classes), torch.nn.Softmax(dim=1))

    def to_onnx(module):
        return parent_onnx(module[0].weight.detach().numpy(), module[0].bias.detach().numpy())

    return Task("teacher-mlp", f"teacher {features} → 16 (tanh) → {classes}, {len(x)} train / {len(x_test)} test; "
                f"parent softmax regression {features} → {classes}, child {features} → {width} → {classes}",
                x, y, x_test, y_test, "fc", width, 0.02, {}, make_parent, to_onnx,
                lambda seed: scratch_mlp(width, seed, features, classes))


def digits_images(seed=0):
    """sklearn's 8×8 digits as (N, 1, 8, 8) images standardised with the training set's mean and std; 50/50."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x, x_test, y, y_test = train_test_split(data.images[:, None], data.target.astype(np.int64), test_size=0.5,
                                            random_state=seed, stratify=data.target)
    mean, std = x.mean(), x.std()
    return ((x - mean) / std).astype(np.float32), y, ((x_test - mean) / std).astype(np.float32), y_test


def cnn_parent_onnx(conv_w, conv_b, fc_w, fc_b) -> onnx.ModelProto:
    """Conv 3×3 ('same' padding) → Relu → GlobalAveragePool → Flatten → Gemm → Softmax (opset 17)."""
    k = conv_w.shape[-1]
    nodes = [h.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                         kernel_shape=[k, k], pads=[k // 2] * 4),
             h.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
             h.make_node("GlobalAveragePool", ["relu_out"], ["pooled"], name="pool"),
             h.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
             h.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
             h.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    inits = [nh.from_array(np.asarray(v, np.float32), n) for n, v in
             (("conv.weight", conv_w), ("conv.bias", conv_b), ("fc.weight", fc_w), ("fc.bias", fc_b))]
    graph = h.make_graph(nodes, "digits_cnn", [h.make_tensor_value_info("x", T.FLOAT, ["N", 1, 8, 8])],
                         [h.make_tensor_value_info("prob", T.FLOAT, ["N", fc_w.shape[0]])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def digits_cnn_task(channels=6, width=32) -> Task:
    x, y, x_test, y_test = digits_images()
    nn = torch.nn

    def make_parent(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(channels, 10), nn.Softmax(dim=1))

    def to_onnx(module):
        conv, fc = module[0], module[4]
        return cnn_parent_onnx(*(t.detach().numpy() for t in (conv.weight, conv.bias, fc.weight, fc.bias)))

    def make_scratch(seed):
        # The deepened child's geometry: F_l takes the padding (2: G's 1 plus the composite's extra tap), F_{l+1}
        # none (passes/deepen.py, "Border exactness").
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=2), nn.PReLU(width, init=0.25),
                             nn.Conv2d(width, channels, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(channels, 10), nn.Softmax(dim=1))

    return Task("digits-cnn", f"digits 8×8 images, {len(x)} train / {len(x_test)} test; parent conv 3×3 "
                f"({channels}) → ReLU → global average pool → linear, child conv 3×3 ({width}) → P-act → 3×3 "
                f"({channels}) → ReLU → pool → linear", x, y, x_test, y_test, "conv", width, 0.1,
                {"k1": 3, "k2": 3}, make_parent, to_onnx, make_scratch)


TASKS = {"teacher-mlp": teacher_task, "digits-cnn": digits_cnn_task}


class PTanh(torch.nn.Module):
    """The P-activation NetMorph inserts for tanh, tanh(x) + a·(x − tanh(x)) with one learnable a; from scratch
    a starts at 0 (plain tanh), where the morph starts it at 1 (the identity)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        t = torch.tanh(x)
        return t + self.a * (x - t)


def scratch_arm(task: Task, name: str, seed: int) -> torch.nn.Module:
    """The scratch child; scratch-ptanh swaps the hidden activation (module 1 in both tasks) for P-tanh."""
    module = task.make_scratch(seed)
    if name == "scratch-ptanh":
        assert isinstance(module[1], torch.nn.PReLU)
        module[1] = PTanh()
    return module


def nll(prob, y):
    return torch.nn.functional.nll_loss(torch.log(prob.clamp_min(1e-12)), y)


def evaluate(module, task: Task) -> tuple[float, float, float]:
    """(test accuracy, test loss, train loss) of a softmax-output module, on the whole sets."""
    with torch.no_grad():
        test = module(torch.from_numpy(task.x_test))
        yt = torch.from_numpy(task.y_test)
        train_loss = nll(module(torch.from_numpy(task.x)), torch.from_numpy(task.y))
        return float((test.argmax(1) == yt).float().mean()), float(nll(test, yt)), float(train_loss)


def train(module, task: Task, steps: int, seed: int, every: int, start: int = 0) -> np.ndarray:
    """SGD with momentum 0.9 on batches of 64 from reshuffled passes over the training set, the gradient's norm
    clipped to CLIP. Rows (cumulative step,
    test accuracy, test loss, train loss) at `start` (before training) and every `every` steps after it."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=task.lr, momentum=0.9)
    x, y = torch.from_numpy(task.x), torch.from_numpy(task.y)
    rows = [(start, *evaluate(module, task))]
    batches: list = []
    for step in range(1, steps + 1):
        if not batches:
            batches = list(torch.randperm(len(x), generator=g).split(BATCH))
        idx = batches.pop()
        opt.zero_grad()
        nll(module(x[idx]), y[idx]).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
        opt.step()
        if step % every == 0 or step == steps:
            rows.append((start + step, *evaluate(module, task)))
    return np.array(rows)


def grown_children(task: Task, parent: onnx.ModelProto, seed: int) -> list[tuple[str, onnx.ModelProto]]:
    """(arm, child) for every growth arm; api.deepen/widen verify each child against its input on ONNX Runtime."""
    layer, width = task.layer, task.width

    def deepen(**options):
        return api.deepen(parent, layer=layer, seed=seed, verify=True, **task.kernels, **options)[0]

    def widen(model, **options):
        return api.widen(model, layer=f"{layer}/morph_l", width=width, seed=seed, verify=True, **options)[0]

    own_width = next(t for t in parent.graph.initializer if t.name == f"{layer}.weight").dims[0]
    out = [("netmorph-prelu", deepen(width=width, activation="prelu", method="netmorph", full_rank=True)),
           ("netmorph-ptanh", deepen(width=width, activation="tanh", method="netmorph", full_rank=True)),
           ("netmorph-widen", widen(deepen(width=own_width, activation="prelu", method="netmorph", full_rank=True),
                                    method="netmorph"))]
    identity = deepen(activation="prelu", method="idmorph")
    out += [("idmorph", identity), ("idmorph+widen", widen(identity, method="netmorph")),
            ("net2net-widen", widen(identity, method="net2net")),
            ("net2net-widen+noise", widen(identity, method="net2net", noise=NET2NET_NOISE))]
    return out


def pair_stats(weights: dict[str, np.ndarray], layer: str) -> str:
    """The inserted pair F_l, F_{l+1}: shape, non-zero share, std, rank as an (out, in·k) matrix; for F_l also
    its distinct units (rows of weight and bias that no other row repeats: Net2Net's copies stay copies)."""
    parts = []
    for suffix in ("morph_l", "morph_l1"):
        w = weights[f"{layer}/{suffix}.weight"]
        m = w.reshape(w.shape[0], -1).astype(np.float64)
        text = (f"{suffix} {'×'.join(map(str, w.shape))} non-zero {np.mean(m != 0):.0%} std {m.std():.3f} "
                f"rank {np.linalg.matrix_rank(m)}")
        if suffix == "morph_l":
            bias = weights.get(f"{layer}/morph_l.bias")
            rows = m if bias is None else np.hstack([m, bias.reshape(-1, 1)])
            dist = np.linalg.norm(rows[:, None] - rows[None], axis=2)
            tol = 1e-6 * max(np.abs(rows).max(), 1e-12)
            copies = sum(bool((dist[j, :j] <= tol).any()) for j in range(len(rows)))
            text += f" distinct units {len(rows) - copies}"
        parts.append(text)
    return "; ".join(parts)


def layer_shapes(module) -> list[tuple]:
    """(weight shape, padding) of every Conv/Linear layer in order: the architecture up to activations."""
    return [(tuple(m.weight.shape), getattr(m, "padding", None)) for m in module.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def onnx_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


def module_weights(module) -> dict[str, np.ndarray]:
    params = dict(module.named_parameters())
    return {onnx_name: params[qual].detach().numpy() for qual, onnx_name in module.onnx_parameters.items()}


def run_seed(task: Task, seed: int, parent_steps: int, steps: int, every: int, stats: dict | None):
    """{arm: rows over cumulative steps 0 … P + S} for one seed; with `stats`, records the pair statistics."""
    parent_module = task.make_parent(seed)
    before = train(parent_module, task, parent_steps, seed, every)
    parent = task.parent_to_onnx(parent_module)
    reference = to_torch(parent)
    with torch.no_grad():
        parent_prob = reference(torch.from_numpy(task.x_test))
    after_seed = 1000 + seed   # one batch order after the growth, for every grown arm and the parent
    curves = {"parent": np.vstack([before[:-1], train(reference, task, steps, after_seed, every, parent_steps)])}
    scratch_layers = layer_shapes(task.make_scratch(seed))
    for name, child in grown_children(task, parent, seed):
        module = to_torch(child)
        with torch.no_grad():
            gap = float((module(torch.from_numpy(task.x_test)) - parent_prob).abs().max())
        assert gap < 1e-4, f"{name}: the child's output differs from the parent's by {gap:.2e}"
        assert name == "idmorph" or layer_shapes(module) == scratch_layers, \
            f"{name}: layers {layer_shapes(module)}, the scratch child's {scratch_layers}"
        if stats is not None:
            stats[name] = {"handoff": pair_stats(onnx_weights(child), task.layer)}
        curves[name] = np.vstack([before[:-1], train(module, task, steps, after_seed, every, parent_steps)])
        if stats is not None:
            stats[name]["trained"] = pair_stats(module_weights(module), task.layer)
    for name in SCRATCH:
        curves[name] = train(scratch_arm(task, name, seed), task, parent_steps + steps, seed, every)
    return curves


def first_step_at(rows: np.ndarray, accuracy: float):
    """The first cumulative step of a mean curve whose test accuracy reaches `accuracy`, or None."""
    hit = np.nonzero(rows[:, 1] >= accuracy - 1e-9)[0]
    return int(rows[hit[0], 0]) if len(hit) else None


def report(task: Task, runs: dict[str, list[np.ndarray]], parent_steps: int, steps: int, seeds: int, stats: dict):
    """Print the table and comparisons; returns the JSON arms {arm: {"final", "steps"}}."""
    total = parent_steps + steps
    step_axis = runs["scratch"][0][:, 0]
    shown = [parent_steps, parent_steps + steps // 4, parent_steps + steps // 2, total]
    cols = [int(np.argmin(np.abs(step_axis - s))) for s in shown]
    at_s = int(np.argmin(np.abs(step_axis - steps)))
    print(f"\n{task.name}: test accuracy (%), mean ± std over {seeds} seeds, at cumulative training steps (parent's "
          f"{parent_steps} included; growth at step {parent_steps}); SGD momentum 0.9, lr {task.lr}, batch {BATCH}")
    header = (f"| {'arm':<34} | " + " | ".join(f"step {int(step_axis[c]):>5}" for c in cols)
              + " | best       | train loss  |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    final, arms_json = {}, {}
    for name in ARMS:
        a = np.array(runs[name])                    # seeds × points × (step, acc, test loss, train loss)
        acc, loss = a[:, :, 1] * 100, a[:, :, 3]
        grown = name != "parent" and name not in SCRATCH   # a grown arm's best counts from the growth on
        best = acc[:, step_axis >= parent_steps].max(axis=1) if grown else acc.max(axis=1)
        cells = [f"{acc[:, c].mean():5.1f}±{acc[:, c].std():4.1f}" for c in cols]
        print(f"| {LABELS[name]:<34} | " + " | ".join(f"{c:<10}" for c in cells)
              + f" | {best.mean():5.1f}±{best.std():4.1f} | {loss[:, -1].mean():.3f}±{loss[:, -1].std():.3f} |")
        final[name] = acc[:, -1]
        arms_json[name] = {"final": round(float(acc[:, -1].mean()) / 100, 4), "steps": total}
    at_after, mean_curve = {}, {}
    for name in SCRATCH:
        at_after[name] = np.array(runs[name])[:, at_s, 1] * 100
        mean_curve[name] = np.mean(np.array(runs[name]), axis=0)
        arms_json[f"{name}@{steps}"] = {"final": round(float(at_after[name].mean()) / 100, 4), "steps": steps}
        print(f"\n{name} − parent at {total} steps: {np.mean(final[name] - final['parent']):+.1f} points", end="")
    print(f"\n\ngrown arm − its scratch (scratch-ptanh for P-tanh, else scratch), paired by seed (points): at "
          f"equal total compute ({total} steps); at equal steps after the growth ({steps}: scratch at "
          f"{int(step_axis[at_s])}); the step at which that scratch's mean reaches the arm's final mean")
    for name in ARMS[1:]:
        if name in SCRATCH:
            continue
        control = CONTROL.get(name, "scratch")
        need = first_step_at(mean_curve[control], final[name].mean() / 100)
        d_total, d_after = final[name] - final[control], final[name] - at_after[control]
        print(f"  {LABELS[name]:<34} {d_total.mean():+5.1f}±{d_total.std():3.1f}   {d_after.mean():+5.1f}±"
              f"{d_after.std():3.1f}   " + (f"{need} of {total}" if need is not None else f"not within {total}"))
    print("\ninserted layers (seed 0), at the handoff → after training:")
    for name, s in stats.items():
        print(f"  {name}: {s['handoff']}\n  {'':<{len(name)}}  → {s['trained']}")
    return arms_json


def plot(results: dict, out: Path) -> Path:
    """Test accuracy and train loss against cumulative steps, one row per task; the mean over seeds, with a band
    from the lowest to the highest seed (a ±std band would cross zero on the loss's log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.6 * len(results)), squeeze=False)
    colours = dict(zip(ARMS, plt.get_cmap("tab10").colors))
    for row, (task_name, (runs, parent_steps, _)) in enumerate(results.items()):
        for col, (index, what) in enumerate(((1, "test accuracy"), (3, "train loss (cross-entropy)"))):
            ax = axes[row][col]
            for name in ARMS:
                a = np.array(runs[name])
                steps, values = a[0, :, 0], a[:, :, index]
                keep = steps >= parent_steps if name != "parent" and name not in SCRATCH else steps >= 0
                ax.plot(steps[keep], values.mean(0)[keep], color=colours[name], label=LABELS[name],
                        linestyle="--" if name in SCRATCH else "-", linewidth=2 if name in SCRATCH else 1.2)
                ax.fill_between(steps[keep], values.min(0)[keep], values.max(0)[keep], color=colours[name],
                                alpha=0.15)
            ax.axvline(parent_steps, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{task_name}: {what}")
            ax.set_xlabel("cumulative training steps (parent's included)")
            if index == 3:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "learn_growth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 1000 + 1000 steps (minutes on 2 cores)")
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--seeds", type=int, help="default 3 with --quick, else 5")
    parser.add_argument("--parent-steps", type=int, help="P: the parent's training (default 1000 quick, 3000)")
    parser.add_argument("--steps", type=int, help="S: training after the growth (default 1000 quick, 3000)")
    parser.add_argument("--every", type=int, help="evaluate every N steps (default 100 quick, 200)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for learn_growth.png")
    args = parser.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 5)
    parent_steps = args.parent_steps or (1000 if args.quick else 3000)
    steps = args.steps or (1000 if args.quick else 3000)
    every = args.every or (100 if args.quick else 200)
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = list(TASKS) if args.task == "all" else [args.task]
    results, arms = {}, {}
    for task_name in names:
        task_start = time.perf_counter()
        task = TASKS[task_name]()
        print(f"{task.name}: {task.about}")
        runs: dict[str, list[np.ndarray]] = {}
        stats: dict = {}
        for seed in range(seeds):
            for name, rows in run_seed(task, seed, parent_steps, steps, every, stats if seed == 0 else None).items():
                runs.setdefault(name, []).append(rows)
        task_arms = report(task, runs, parent_steps, steps, seeds, stats)
        arms.update(task_arms if len(names) == 1 else {f"{k}/{task_name}": v for k, v in task_arms.items()})
        results[task_name] = (runs, parent_steps, stats)
        print(f"{task.name}: {time.perf_counter() - task_start:.1f} s")
    print(f"\nplot: {plot(results, args.out)}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    print(json.dumps({"task": names[0] if len(names) == 1 else names, "arms": arms}))
    return results   # {task: (runs, P, seed 0's pair statistics)}, for tests


if __name__ == "__main__":
    main()

"""The network morphism paper's MNIST experiment (section 4.1), on scikit-learn's bundled digits, 4×4-pooled.

A softmax-regression parent (16 → 10) is trained, written as ONNX, morphed with onnxmorph's API into a
16 → H → 10 MLP, handed to PyTorch with onnxmorph.torch.to_torch, and trained further. Arms, all with the
same optimiser, epochs and seeds:
  parent          the parent itself, trained on (the baseline any child must beat)
  netmorph-prelu  deepen, NetMorph, PReLU hidden layer of width H
  netmorph-ptanh  deepen, NetMorph, P-tanh hidden layer of width H
  idmorph         deepen, IdMorph (hidden width 10), PReLU
  idmorph+widen   IdMorph, then widen the hidden layer to H (netmorph): the width-matched control
  scratch         the same 16 → H → 10 PReLU MLP from a fresh PyTorch initialisation
With a deepen that takes full_rank (the solver's null-space component), each NetMorph arm runs with and
without it. Needs the torch extra (torch, onnx2torch, scikit-learn).

Usage: python benchmarks/learn_digits.py [--seeds 3] [--epochs 60] [--width 64]
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import torch

from onnxmorph import api
from onnxmorph.torch import to_torch


def digits_4x4(seed: int = 0):
    """sklearn's 8×8 digits, 2×2 average-pooled to 4×4 (16 features), scaled to [0, 1]; a fixed 50/50 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x = data.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16) / 16.0
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    return train_test_split(x, data.target.astype(np.int64), test_size=0.5, random_state=seed,
                            stratify=data.target)


def accuracy(module, x, y) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(module, x, y, x_test, y_test, epochs: int, seed: int, lr: float, batch: int = 64) -> list[float]:
    """Minibatch SGD with momentum on the cross-entropy of the model's softmax output; test accuracy per epoch
    (entry 0: before training)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    curve = [accuracy(module, x_test, y_test)]
    for _ in range(epochs):
        module.train()
        for idx in torch.randperm(len(xt), generator=g).split(batch):
            opt.zero_grad()
            prob = module(xt[idx])
            torch.nn.functional.nll_loss(torch.log(prob.clamp_min(1e-12)), yt[idx]).backward()
            opt.step()
        module.eval()
        curve.append(accuracy(module, x_test, y_test))
    return curve


def parent_onnx(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """softmax(x Wᵀ + b) as ONNX (opset 17), batch dimension free; sizes from W (classes × features)."""
    classes, features = w.shape
    graph = h.make_graph(
        [h.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
         h.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)],
        "digits_softmax", [h.make_tensor_value_info("x", T.FLOAT, ["N", features])],
        [h.make_tensor_value_info("prob", T.FLOAT, ["N", classes])],
        [nh.from_array(w.astype(np.float32), "fc.weight"), nh.from_array(b.astype(np.float32), "fc.bias")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def train_parent(x, y, x_test, y_test, epochs: int, lr: float) -> tuple[onnx.ModelProto, list[float]]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 10)
    model = torch.nn.Sequential(linear, torch.nn.Softmax(dim=1))
    curve = train(model, x, y, x_test, y_test, epochs, 0, lr)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    return parent_onnx(w, b), curve


def scratch_mlp(width: int, seed: int, features: int = 16, classes: int = 10):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(features, width), torch.nn.PReLU(width, init=0.25),
                               torch.nn.Linear(width, classes), torch.nn.Softmax(dim=1))


def inserted_stats(result) -> str:
    layers = getattr(result.details, "new_layers", [])
    return ", ".join(f"{n.name.split('/')[-1]} std {n.std:.3f} non-zero {n.nonzero_share:.0%}"
                     + (f" rank {n.rank}" if getattr(n, "rank", None) is not None else "") for n in layers)


def arms(parent: onnx.ModelProto, width: int, seed: int, full_rank_known: bool):
    """(name, module factory or ONNX child, morph note) for every arm of one seed."""
    out = [("parent", parent, "")]
    variants = [None] if not full_rank_known else [False, True]
    for act in ("prelu", "tanh"):
        for full in variants:
            extra = {} if full is None else {"full_rank": full}
            child, res = api.deepen(parent, layer="fc", width=width, activation=act, method="netmorph", seed=seed,
                                    **extra)
            name = f"netmorph-p{act.replace('prelu', 'relu')}" + ("" if full is None else
                                                                    (" full-rank" if full else " min-norm"))
            out.append((name, child, inserted_stats(res)))
    child, res = api.deepen(parent, layer="fc", method="idmorph", activation="prelu", seed=seed)
    out.append(("idmorph", child, inserted_stats(res)))
    widened, wres = api.widen(child, layer="fc/morph_l", width=width, seed=seed)
    out.append(("idmorph+widen", widened, f"zeros on the {wres.details.zeros_on}"))
    out.append(("scratch", None, "fresh PyTorch init"))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--parent-epochs", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    x, x_test, y, y_test = digits_4x4()
    parent, parent_curve = train_parent(x, y, x_test, y_test, args.parent_epochs, args.lr)
    print(f"digits 4x4-pooled: {len(x)} train, {len(x_test)} test; parent softmax regression after "
          f"{args.parent_epochs} epochs: test accuracy {parent_curve[-1]:.1%}")
    full_rank_known = "full_rank" in inspect.signature(api.deepen).parameters
    if not full_rank_known:
        print("full-rank arm left out: this onnxmorph's deepen has no full_rank option")
    curves: dict[str, list[list[float]]] = {}
    notes: dict[str, str] = {}
    for seed in range(args.seeds):
        for name, child, note in arms(parent, args.width, seed, full_rank_known):
            module = scratch_mlp(args.width, seed) if child is None else to_torch(child)
            if child is not None and name != "parent":
                ref = to_torch(parent)
                same = np.abs(accuracy(module, x_test, y_test) - accuracy(ref, x_test, y_test))
                assert same <= 1.0 / len(y_test), f"{name}: the child does not start at the parent's accuracy"
            curves.setdefault(name, []).append(train(module, x, y, x_test, y_test, args.epochs, seed, args.lr))
            notes.setdefault(name, note)
    shown = sorted({0, 1, 2, 5, 10, 20, args.epochs} & set(range(args.epochs + 1)))
    print(f"\ntest accuracy (%), mean ± std over {args.seeds} seeds; SGD momentum 0.9, lr {args.lr}, batch 64, "
          f"hidden width {args.width}")
    header = f"| {'arm':<26} | " + " | ".join(f"epoch {e:>3}" for e in shown) + " | best      |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    final = {}
    for name, runs in curves.items():
        a = np.array(runs) * 100
        cells = [f"{a[:, e].mean():4.1f}±{a[:, e].std():3.1f}" for e in shown]
        final[name] = a[:, -1].mean()
        best = a.max(axis=1)
        print(f"| {name:<26} | " + " | ".join(cells) + f" | {best.mean():4.1f}±{best.std():3.1f} |")
    print("\ninserted layers at the handoff (seed 0):")
    for name, note in notes.items():
        if note:
            print(f"  {name}: {note}")
    net = {k: v for k, v in final.items() if k.startswith("netmorph")}
    best_net = max(net, key=net.get)
    print(f"\nafter {args.epochs} epochs: best NetMorph arm {best_net} {net[best_net]:.1f}%; "
          f"idmorph {final['idmorph']:.1f}%, idmorph+widen {final['idmorph+widen']:.1f}%, "
          f"parent (trained on) {final['parent']:.1f}%, scratch {final['scratch']:.1f}%")
    for name, value in net.items():
        print(f"  {name}: beats idmorph: {value > final['idmorph']}, beats idmorph+widen: "
              f"{value > final['idmorph+widen']}, beats the parent: {value > final['parent']}")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())

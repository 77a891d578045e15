"""Hand a child to PyTorch, and check that what the morph created trains (extra `onnxmorph[torch]`).

`to_torch` converts with onnx2torch, then makes every learnable initializer (weights, biases, PRelu slopes,
P-activation values, norm scales and shifts) one `nn.Parameter`: onnx2torch keeps those read at run time as
frozen buffers, one per reader, so a value read twice would drift into two copies once unfrozen.
`trainability` runs a few SGD steps on the converted child and reports, for every initializer the morph
created or changed, whether it got a gradient and moved.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import CannotConvert, UsageError
from .graph.external import tensor_array
from .graph.model_io import load_model
from .graph.precision import HALF, model_precision, type_name, upcast

# (op, input index) whose initializer is learnable; the modules onnx2torch builds keep them as these attributes.
LEARNABLE_INPUTS = {
    "Conv": {1: "weight", 2: "bias"}, "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: None, 1: "weight", 2: "bias"},
    "MatMul": {0: None, 1: None}, "PRelu": {1: None}, "BatchNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"}, "InstanceNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"}, "Gather": {0: None}, "Einsum": {},
}
# Running statistics: changed by widen, never trained by gradients.
RUNNING_STATS = {("BatchNormalization", 3), ("BatchNormalization", 4)}
ELEMENTWISE = ("Add", "Sub", "Mul")
# A float tensor joined to the activations is a learned token (ViT's class token: Expand in the legacy export,
# folded into the Concat by dynamo).
TOKEN_INPUTS = {"Concat": None, "Expand": 0}   # op: the input index that holds it (None: any)
_P_ACTIVATION_VALUE = re.compile(r"/morph_act\d*\.a(_\d+)?$")


def _require_torch():
    try:
        import torch  # noqa: F401
        import onnx2torch  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"PyTorch export needs the torch extra (pip install 'onnxmorph[torch]'): {exc}") from None
    from . import torch_ops  # noqa: F401  (our converters join onnx2torch's registry)


def _float_initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return {t.name: t for t in model.graph.initializer if t.data_type in floats}


def learnable_initializers(model: onnx.ModelProto) -> dict[str, str]:
    """{initializer name: role} for every float initializer a network trains; role says why."""
    floats = _float_initializers(model)
    out = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in floats:
                continue
            if node.op_type == "Einsum" or i in LEARNABLE_INPUTS.get(node.op_type, {}):
                out.setdefault(name, f"{node.op_type} input {i}")
            elif _P_ACTIVATION_VALUE.search(name):
                out.setdefault(name, "P-activation value")
            elif node.op_type in ELEMENTWISE and int(np.prod(floats[name].dims)) > 1:
                out.setdefault(name, f"{node.op_type} per-channel value")
            elif (node.op_type in TOKEN_INPUTS and TOKEN_INPUTS[node.op_type] in (None, i)
                  and int(np.prod(floats[name].dims)) > 1):
                out.setdefault(name, f"{node.op_type} learned token")
    return out


def _frozen_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Float initializers that are fixed by design: running statistics, and scalars at no learnable position
    (ε, GELU's √2, Clip bounds: helper constants)."""
    out = {name: "helper constant (a scalar at no learnable position)"
           for name, t in _float_initializers(model).items() if int(np.prod(t.dims)) == 1}
    out.update({name: "running statistic" for node in model.graph.node for i, name in enumerate(node.input)
                if (node.op_type, i) in RUNNING_STATS})
    return out


def _unsupported_ops(model: onnx.ModelProto) -> list[str]:
    from onnx2torch.node_converters import get_converter
    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain or ""
        try:
            get_converter(domain=domain, operation_type=node.op_type, version=opsets.get(domain, opsets.get("", 1)))
        except NotImplementedError:
            label = f"{node.op_type} (opset {opsets.get(domain)}{', domain ' + domain if domain else ''})"
            if label not in missing:
                missing.append(label)
    return missing


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose tensor-valued Constant nodes are initializers (onnx2torch wants weights as initializers)."""
    if not any(n.op_type == "Constant" for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None:
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
    model.graph.ClearField("node")
    model.graph.node.extend(keep)
    return model


@contextlib.contextmanager
def _converters_that_name_the_node():
    """onnx2torch's converters raise bare NotImplementedError/KeyError; name the op and node instead."""
    import onnx2torch.converter as converter_module
    original = converter_module.get_converter

    def get_converter(*args, **kwargs):
        convert_node = original(*args, **kwargs)

        def wrapped(node, graph):
            try:
                return convert_node(node, graph)
            except (NotImplementedError, KeyError, ValueError) as exc:
                raise CannotConvert(f"onnx2torch cannot convert {node.operation_type} node {node.name!r}: "
                                    f"{str(exc).strip(chr(39))}") from None
        return wrapped

    converter_module.get_converter = get_converter
    try:
        yield
    finally:
        converter_module.get_converter = original


def _identifier(name: str, taken: set) -> str:
    base = re.sub(r"\W", "_", name).strip("_") or "param"
    if base[0].isdigit():
        base = "p_" + base
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


def upcast_for_torch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A float16 or bfloat16 model as its float32 upcast (the same weights, exactly), and the one line that says
    so ("" for a model that is not half precision): SGD steps on half-precision weights round away wherever
    they are below a weight's resolution (an identity-start slope of 1 in float16 moves only by steps of 1e-3)."""
    precision = model_precision(model)
    if precision not in HALF:
        return model, ""
    name = type_name(precision)
    return upcast(model), (f"the {name} model is handed to PyTorch as its float32 upcast (the same weights): "
                           f"{name} SGD steps smaller than a weight's resolution would not move it")


def to_torch(model):
    """The ONNX model as a torch.nn.Module (a torch.fx.GraphModule) whose learnable values are nn.Parameters.

    `module.onnx_parameters` maps each parameter's qualified name to the ONNX initializer it came from. A
    float16 or bfloat16 model becomes a float32 module (upcast_for_torch); `module.onnx_upcast` says so ("" when
    the model was not half precision). Raises CannotConvert naming the ops onnx2torch has no converter for.
    """
    _require_torch()
    import torch
    from onnx2torch import convert
    from onnx2torch.onnx_graph import OnnxGraph

    model, upcast_note = upcast_for_torch(_constants_as_initializers(load_model(model, lazy=False)))
    missing = _unsupported_ops(model)
    if missing:
        raise CannotConvert(f"onnx2torch cannot convert {', '.join(missing)}")
    with _converters_that_name_the_node():
        module = convert(model, attach_onnx_mapping=True)
    learnable = learnable_initializers(model)
    floats = _float_initializers(model)
    nodes = OnnxGraph(model.graph).nodes  # the unique names onnx2torch gave its modules
    readers: dict[str, list] = {name: [] for name in learnable}  # ("attr", fx node) | ("param", module, attr, same)
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module" or fx_node.target not in nodes:
            continue
        onnx_node = nodes[fx_node.target].proto
        sub = module.get_submodule(fx_node.target)
        mapping = getattr(sub, "onnx_mapping", None)
        passed = list(mapping.inputs) if mapping is not None else []
        for name, arg in _runtime_args(sub, fx_node, passed):
            if name in learnable and getattr(arg, "op", None) == "get_attr":
                readers[name].append(("attr", arg))
        for i, attr_name in LEARNABLE_INPUTS.get(onnx_node.op_type, {}).items():
            if attr_name is None or i >= len(onnx_node.input) or onnx_node.input[i] not in learnable:
                continue
            if onnx_node.input[i] in passed:
                continue
            param = getattr(sub, attr_name, None)
            if isinstance(param, torch.nn.Parameter):
                value = tensor_array(floats[onnx_node.input[i]])
                same = tuple(param.shape) == value.shape and np.array_equal(param.detach().numpy(), value)
                readers[onnx_node.input[i]].append(("param", sub, attr_name, same))
    container = torch.nn.Module()
    module.add_module("morph_params", container)
    taken: set = set()
    onnx_parameters = {}
    qualified = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    for name, uses in readers.items():
        if not uses:
            continue
        canonical = next((u for u in uses if u[0] == "param" and u[3]), None)
        canonical = canonical or next((u for u in uses if u[0] == "param"), None)
        if canonical is not None:
            parameter = getattr(canonical[1], canonical[2])
            param_name = qualified[id(parameter)]
        else:
            value = tensor_array(floats[name])
            parameter = torch.nn.Parameter(torch.from_numpy(np.array(value)).to(_dtype_of(value)))
            attr = _identifier(name, taken)
            container.register_parameter(attr, parameter)
            param_name = f"morph_params.{attr}"
        for use in uses:
            if use[0] == "attr":
                use[1].target = param_name
            elif use is not canonical and use[3] and tuple(parameter.shape) == tuple(getattr(use[1], use[2]).shape):
                setattr(use[1], use[2], parameter)  # the same initializer read twice: one tied parameter
        onnx_parameters[param_name] = name
    module.graph.eliminate_dead_code()
    module.recompile()
    _drop_unused_buffers(module)
    module.onnx_parameters = onnx_parameters
    module.onnx_ops = {name: node.operation_type for name, node in nodes.items()}
    module.onnx_upcast = upcast_note
    module.eval()
    return module


def _dtype_of(value: np.ndarray):
    import torch
    return {np.dtype(np.float64): torch.float64, np.dtype(np.float16): torch.float16}.get(value.dtype, torch.float32)


def _runtime_args(sub, fx_node, passed: list[str]):
    """(ONNX input name, fx argument) pairs: onnx2torch passes inputs in order, skipped ones as keywords."""
    import inspect
    args = list(fx_node.args)
    pairs = list(zip(passed, args))
    if fx_node.kwargs:
        forward = list(inspect.signature(sub.forward).parameters)[len(args):len(passed)]
        by_name = dict(zip(forward, passed[len(args):]))
        pairs += [(by_name[k], v) for k, v in fx_node.kwargs.items() if k in by_name]
    return pairs


def _drop_unused_buffers(module) -> None:
    used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    if not hasattr(module, "initializers"):
        return
    container = module.get_submodule("initializers")
    for name, _ in list(container.named_buffers(recurse=False)):
        if f"initializers.{name}" not in used:
            delattr(container, name)


def run_torch(module, feed: dict, input_names: list[str]):
    """The module's outputs on one feed (numpy in, a list of numpy arrays out). A converted op that fails to
    run raises CannotConvert naming it."""
    import torch
    args = [torch.from_numpy(np.asarray(feed[n])) for n in input_names]
    with torch.no_grad():
        try:
            out = module(*args)
        except Exception:
            out = _run_naming_the_failure(module, args)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def _run_naming_the_failure(module, args):
    """Run node by node to say which converted ONNX node fails."""
    import torch.fx

    class Named(torch.fx.Interpreter):
        def run_node(self, node):
            try:
                return super().run_node(node)
            except Exception as exc:
                ops = getattr(module, "onnx_ops", {})
                what = f"{ops[node.target]} node {node.target!r}" if node.target in ops else f"node {node.name!r}"
                first = (str(exc).strip().splitlines() or [""])[0]
                raise CannotConvert(f"onnx2torch cannot convert {what}: the converted module fails to run "
                                    f"({type(exc).__name__}: {first})") from None

    try:
        return Named(module).run(*args)
    except CannotConvert as exc:  # fx appends its own lines to the message
        raise CannotConvert(str(exc).strip().splitlines()[0]) from None


def compare_with_ort(model, module=None, samples: int = 2, seed: int = 0, input_shape=None) -> float:
    """Max relative error (against each output's max |value|) of the torch module against ONNX Runtime. A
    half-precision model is compared as the float32 upcast the module computes (upcast_for_torch)."""
    from .verify import _compare, _real_inputs, _session, make_inputs, parse_input_shapes
    model, _ = upcast_for_torch(load_model(model, lazy=False))
    module = module if module is not None else to_torch(model)
    feeds = make_inputs(model, samples, seed, parse_input_shapes(input_shape))
    names = [i.name for i in _real_inputs(model)]
    with tempfile.TemporaryDirectory(prefix="onnxmorph-torch-") as workdir:
        sess = _session(model, "cpu", workdir, "model")
        out_names = [o.name for o in sess.get_outputs()]
        ort_runs = [sess.run(out_names, feed) for feed in feeds]
    torch_runs = [run_torch(module, feed, names) for feed in feeds]
    worst = 0.0
    for i, name in enumerate(out_names):
        comp = _compare(name, [r[i] for r in ort_runs], [r[i] for r in torch_runs], 0.0, 0.0)
        worst = max(worst, comp.max_rel)
    return worst


@dataclass
class ExportReport:
    output: str | None
    parameters: int
    parameter_values: int
    buffers: int
    max_rel: float | None
    upcast: str = ""    # why the module is float32 when the model is half precision

    def lines(self) -> list[str]:
        out = [f"torch module: {self.parameters} parameters ({self.parameter_values} values), "
               f"{self.buffers} buffers"]
        if self.upcast:
            out.append(self.upcast)
        if self.max_rel is not None:
            out.append(f"output against ONNX Runtime: max rel error {self.max_rel:.2e}")
        if self.output:
            out.append(f"wrote {self.output} (torch.save of the whole module; load with "
                       "torch.load(path, weights_only=False), onnx2torch installed)")
        return out

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def export_torch(model, output=None, force: bool = False, check: bool = True, rtol: float = 1e-5,
                 input_shape=None):
    """Convert, compare with ONNX Runtime, and torch.save the whole module atomically. Returns (module, report)."""
    _require_torch()
    import torch
    model = load_model(model, lazy=False)
    if output is not None and Path(output).exists() and not force:
        raise UsageError(f"{output} exists; use --force to overwrite")
    module = to_torch(model)
    max_rel = compare_with_ort(model, module, input_shape=input_shape) if check else None
    if max_rel is not None and not max_rel <= rtol:
        raise CannotConvert(f"the torch module differs from ONNX Runtime: max rel error {max_rel:.2e} > {rtol:g}")
    params = list(module.parameters())
    report = ExportReport(None, len(params), sum(p.numel() for p in params), len(list(module.buffers())), max_rel,
                          module.onnx_upcast)
    if output is not None:
        path = Path(output)
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(module, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        report.output = str(path)
    return module, report


# A gradient below this share of the step's largest is float rounding, not a signal: a key bias, which softmax cancels,
# shows 1e-12..1e-10 of it; the smallest real ones in the transformer fixtures are above 1e-6.
GRADIENT_NOISE = 1e-8
DEAD_LISTED = 64


@dataclass
class ParamTraining:
    onnx_name: str
    change: str                 # "created" | "changed"
    role: str                   # why it is learnable, or why it is fixed
    torch_name: str | None      # None: not a parameter after conversion
    grad: float = 0.0           # max |gradient| over the steps
    moved: float = 0.0          # max |change| after the steps
    dead: float = 0.0           # share of its elements with zero gradient at every step
    dead_at: list[int] = field(default_factory=list)   # the first of them (flat indices), at most DEAD_LISTED
    fixed_by_design: bool = False
    noise: float = 0.0          # the rounding level of the gradients: GRADIENT_NOISE x the largest one

    @property
    def trains(self) -> bool:
        return self.fixed_by_design or (self.torch_name is not None and self.grad > self.noise and self.moved > 0)

    def line(self) -> str:
        if self.fixed_by_design:
            return f"  {self.onnx_name} ({self.change}): {self.role}, not trained by design"
        where = self.torch_name or "NOT a parameter"
        verdict = "trains" if self.trains else "DOES NOT TRAIN"
        return (f"  {self.onnx_name} ({self.change}, {self.role}) -> {where}: max |grad| {self.grad:.2e}, "
                f"moved {self.moved:.2e}, elements never reached by a gradient {self.dead:.1%}: {verdict}")


@dataclass
class TrainabilityReport:
    steps: int
    max_rel: float
    params: list[ParamTraining] = field(default_factory=list)
    upcast: str = ""    # why the child trained as float32 (a half-precision child), "" otherwise

    @property
    def passed(self) -> bool:
        return self.max_rel <= 1e-5 and all(p.trains for p in self.params)

    def lines(self) -> list[str]:
        ok = sum(p.trains for p in self.params)
        out = [f"trainability: {ok}/{len(self.params)} created or changed values train within {self.steps} SGD "
               f"steps; torch against ONNX Runtime max rel {self.max_rel:.2e}"]
        if self.upcast:
            out.append(f"  {self.upcast}")
        out.extend(p.line() for p in self.params)
        return out


def changed_initializers(parent: onnx.ModelProto, child: onnx.ModelProto) -> dict[str, str]:
    """{name: "created" | "changed"} for the child's float initializers that are new or differ from the parent's."""
    before = {t.name: t for t in parent.graph.initializer}
    out = {}
    for name, tensor in _float_initializers(child).items():
        if name not in before:
            out[name] = "created"
        else:
            old, new = tensor_array(before[name]), tensor_array(tensor)
            if old.shape != new.shape or not np.array_equal(old, new):
                out[name] = "changed"
    return out


def trainability(parent, child, steps: int = 2, seed: int = 0, lr: float = 0.01, batch: int = 2,
                 input_shape=None) -> TrainabilityReport:
    """Convert the child, run `steps` SGD steps (eval mode, MSE to random targets on every float output) on
    random inputs, and report for each created or changed initializer whether it got a gradient above float
    rounding and moved. A changed one stuck in the parent as well is fixed by design (a key bias)."""
    _require_torch()
    import torch
    from .verify import _real_inputs, make_inputs, parse_input_shapes
    # Weights may live in Constant nodes: compare and classify them as the initializers to_torch makes of them.
    # Half-precision models train as their float32 upcasts, as to_torch hands them over (inputs included).
    parent, _ = upcast_for_torch(_constants_as_initializers(load_model(parent, lazy=False)))
    child, upcast_note = upcast_for_torch(_constants_as_initializers(load_model(child, lazy=False)))
    module = to_torch(child)
    max_rel = compare_with_ort(child, module, seed=seed, input_shape=input_shape)
    by_onnx = {v: k for k, v in module.onnx_parameters.items()}
    named = dict(module.named_parameters())
    learnable, frozen = learnable_initializers(child), _frozen_roles(child)
    computed = {o for n in parent.graph.node for o in n.output}
    report = TrainabilityReport(steps, max_rel, upcast=upcast_note)
    for name, change in changed_initializers(parent, child).items():
        if change == "created" and name in computed and name not in learnable:
            # a value the parent computes at run time from constants and static shapes, folded (graph/fold.py):
            # T5's relative position buckets, read by Log, not a parameter
            report.params.append(ParamTraining(name, change, "constant folded from the parent's computation",
                                               None, fixed_by_design=True))
        elif name in frozen and name not in learnable:
            report.params.append(ParamTraining(name, change, frozen[name], None, fixed_by_design=True))
        else:
            role = learnable.get(name, "a float value no rule calls learnable")
            report.params.append(ParamTraining(name, change, role, by_onnx.get(name)))
    torch.manual_seed(seed)
    names = [i.name for i in _real_inputs(child)]
    feeds = make_inputs(child, steps * batch, seed + 1, parse_input_shapes(input_shape))
    start = {p.torch_name: named[p.torch_name].detach().clone() for p in report.params if p.torch_name}
    reached = {name: torch.zeros_like(value, dtype=torch.bool) for name, value in start.items()}
    noise = 0.0

    def record(grads: dict, step_noise: float):
        nonlocal noise
        noise = max(noise, step_noise)
        for p in report.params:
            if p.torch_name in grads:
                p.grad = max(p.grad, float(grads[p.torch_name].abs().max()))
                reached[p.torch_name] |= grads[p.torch_name] != 0

    _sgd_steps(module, feeds, names, steps, batch, lr, seed, record)
    for p in report.params:
        p.noise = noise
        if p.torch_name:
            p.moved = float((named[p.torch_name].detach() - start[p.torch_name]).abs().max())
            p.dead = 1.0 - float(reached[p.torch_name].float().mean())
            p.dead_at = [int(i) for i in torch.nonzero(~reached[p.torch_name].reshape(-1))[:DEAD_LISTED, 0]]
    _fixed_in_the_parent_too(parent, report, feeds, names, batch, lr, seed)
    return report


def _sgd_steps(module, feeds, names, steps, batch, lr, seed, record):
    """SGD on MSE to seeded random targets (one per float output); record(grads by parameter name, rounding level)
    after each backward."""
    import torch
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    targets = None
    for step in range(steps):
        optimizer.zero_grad()
        loss = 0.0
        for feed in feeds[step * batch:(step + 1) * batch]:
            out = module(*[torch.from_numpy(np.asarray(feed[n])) for n in names])
            outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if o.is_floating_point()]
            if targets is None:
                g = torch.Generator().manual_seed(seed)
                targets = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
            loss = loss + sum(((o - t) ** 2).mean() for o, t in zip(outs, targets))
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
        record(grads, GRADIENT_NOISE * max((float(g.abs().max()) for g in grads.values()), default=0.0))
        optimizer.step()


def _fixed_in_the_parent_too(parent, report, feeds, names, batch, lr, seed) -> None:
    """A changed value with no gradient in the child and none in the parent either (same inputs and targets) is
    fixed by the network's design, not by the morph: a key projection's bias, which softmax over the keys cancels.
    So is a block copy of such a value."""
    stuck = [p for p in report.params if p.torch_name and not p.trains and
             (p.change == "changed" or _copied_from(p.onnx_name))]
    if not stuck:
        return
    module = to_torch(parent)
    by_onnx = {v: k for k, v in module.onnx_parameters.items()}
    silent = set()

    def record(grads, step_noise):
        silent.update(name for name, torch_name in by_onnx.items()
                      if torch_name not in grads or float(grads[torch_name].abs().max()) <= step_noise)

    _sgd_steps(module, feeds, names, 1, batch, lr, seed, record)
    for p in stuck:
        if p.onnx_name in silent:
            p.fixed_by_design = True
            p.role += ", no gradient in the parent either (e.g. a key bias: softmax over the keys cancels it)"
        elif _copied_from(p.onnx_name) in silent:
            p.fixed_by_design = True
            p.role += (f", a block copy of {_copied_from(p.onnx_name)!r}, which has no gradient in the parent "
                       "either (e.g. a key bias: softmax over the keys cancels it)")


def _copied_from(name: str) -> str | None:
    """The parent value a block copy's value was copied from (passes/block.py names it <unit>/morph_block<k>/<it>)."""
    found = re.search(r"/morph_block\d+/(.+)$", name)
    return found.group(1) if found else None

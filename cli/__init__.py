"""Thin click front end over onnxmorph.api: parse, call, print, pick the exit code.

Installed as `onnxmorph.cli` (setuptools package-dir), entry point `onnxmorph = onnxmorph.cli:main`.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from onnxmorph import api, progress, runtime_dist
from onnxmorph.errors import (EXIT_CANNOT_CONVERT, EXIT_CANNOT_MORPH, EXIT_INTERNAL, EXIT_USAGE,
                              EXIT_VERIFY_FAILED, OnnxmorphError, VerificationFailed, compact, one_line)
from onnxmorph.verify import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SAMPLES, FLOOR_MULTIPLE

_CALIBRATED = (f"Without --atol/--rtol an output passes when its max rel error is at most {FLOOR_MULTIPLE:g} x the "
               f"parent's own floor, measured on the same inputs, and at least {DEFAULT_RTOL:g}.")
ATOL_HELP = (f"Fixed rule instead: pass an output whose max absolute error is at most this (default {DEFAULT_ATOL:g} "
             "once --rtol is given). See --rtol.")
RTOL_HELP = ("Fixed rule instead: pass an output whose max error relative to its scale (max |parent value|) is at "
             f"most this (default {DEFAULT_RTOL:g} once --atol is given). {_CALIBRATED}")

_DEBUG = {"on": False}


def _emit(result, as_json: bool):
    if as_json:
        click.echo(json.dumps(compact(result.to_dict()), indent=2, default=str))
    else:
        for line in result.lines():
            click.echo(line)


def _default_output(model: str, verb: str) -> Path:
    p = Path(model)
    return p.with_name(f"{p.stem}.{verb}.onnx")


def morph_options(fn=None, *, seed=True):
    """Options every morph takes (--seed only where the morph draws random numbers)."""
    if fn is None:
        return lambda f: morph_options(f, seed=seed)
    options = [
        click.option("-o", "--output", type=click.Path(), help="Where to write the child (default: "
                     "<stem>.<verb>.onnx next to the input). A folder (DIR/ or an existing directory): the child "
                     "keeps the input's file name there, and an input from a Hugging Face export folder brings "
                     "its config.json (new sizes) and other files."),
        click.option("--force", is_flag=True, help="Overwrite the output if it exists."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
        if seed else None,
        click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime function check."),
        click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                     help="Where to run the check: auto (CUDA if it works here, else CPU), cuda or cpu."),
        click.option("--atol", type=float, default=None, help=ATOL_HELP),
        click.option("--rtol", type=float, default=None, help=RTOL_HELP),
        click.option("--input-shape", multiple=True, help="NAME:1x3x224x224 for dynamic input dims."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (failures too: {error, exit_code, kind})."),
    ]
    for option in reversed([o for o in options if o is not None]):
        fn = option(fn)
    return fn


def _run_morph(verb, call, model, output, force, no_verify, provider, atol, rtol, input_shape, as_json, **options):
    out = output if output else str(_default_output(model, verb))   # as given: a trailing / names a folder
    progress.silence(as_json)  # progress lines only for people at a terminal, never beside JSON
    try:
        _, result = call(model, output=out, force=force, verify=not no_verify, provider=provider, atol=atol,
                         rtol=rtol, input_shape=list(input_shape) or None, **options)
    except VerificationFailed as exc:
        if exc.report is not None and not as_json:  # with --json the report goes inside the error object
            _emit(exc.report, as_json)
        raise
    _emit(result, as_json)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="onnxmorph")
def cli(debug):
    """Grow a trained ONNX network into a larger one that computes exactly the same function."""
    _DEBUG["on"] = _DEBUG["on"] or debug  # main() may have taken --debug from elsewhere on the line


@cli.command("inspect", short_help="Summarise a model and list its morphable layers.")
@click.argument("model", type=str)
@click.option("--layer", help="Only list what widening this layer would grow (its coupled group).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (failures too: {error, exit_code, kind}).")
def inspect_cmd(model, layer, as_json):
    """Summarise MODEL and list its Conv/Gemm/MatMul layers with the morphs that apply."""
    _emit(api.inspect(model, layer=layer), as_json)


@cli.command("verify", short_help="Check that a child computes its parent's function.")
@click.argument("parent", type=str)
@click.argument("child", type=str)
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Where to run the check: auto (CUDA if it works here, else CPU), cuda or cpu.")
@click.option("--atol", type=float, default=None, help=ATOL_HELP)
@click.option("--rtol", type=float, default=None, help=RTOL_HELP)
@click.option("--samples", type=int, default=DEFAULT_SAMPLES, show_default=True, help="Random inputs to compare on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--input-shape", multiple=True, help="NAME:1x3x224x224 for dynamic input dims.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (failures too: {error, exit_code, kind}).")
def verify_cmd(parent, child, provider, atol, rtol, samples, seed, input_shape, as_json):
    """Check that CHILD computes PARENT's function on ONNX Runtime; exit 1 if it does not."""
    report = api.verify(parent, child, provider=provider, atol=atol, rtol=rtol, samples=samples, seed=seed,
                        input_shape=list(input_shape) or None)
    _emit(report, as_json)
    if not report.passed:
        sys.exit(1)


@cli.command("deepen", short_help="Replace a layer by two with the same function.")
@click.argument("model", type=str)
@click.option("--layer", help="Node name, weight name or output tensor of the layer to replace; a glob or re:REGEX "
              "deepens every match.")
@click.option("--after", help="Insert identity-start layers after this layer's activation instead.")
@click.option("--k1", help="Kernel of the first new layer (K or HxW; default: the layer's kernel).")
@click.option("--k2", help="Kernel of the second new layer (default 1).")
@click.option("--width", help="Channels between the new layers: a count or a multiplier like 4x "
              "(default: the smallest exact width, at least the layer's outputs).")
@click.option("--activation", default="auto", show_default=True,
              help="P-activation between the layers: auto, none, relu, tanh, sigmoid, ...")
@click.option("--method", type=click.Choice(["netmorph", "idmorph"]), default="netmorph", show_default=True,
              help="netmorph: solve for the two layers; idmorph: the identity on one of them (sparse, the paper's "
              "baseline).")
@click.option("--algorithm", type=click.Choice(["practical", "general"]), default="practical", show_default=True,
              help="Algorithm 2 (practical) or Algorithm 1 (general) of the network morphism paper.")
@click.option("--batchnorm", is_flag=True, help="Add an identity-start BatchNorm after the first layer.")
@click.option("--full-rank/--min-norm", default=True, show_default=True,
              help="Full-rank factors (minimum-norm solution plus a random null-space part, same residual), or "
                   "the minimum-norm solution alone (rank of the layer).")
@click.option("--block", help="Insert copies of this residual block after it instead: the residual Add's node "
              "name or output tensor, or A:B for a span of units (inspect lists them); all, every:N or a range "
              "A..B (positions from 1 or ids) for a copy after each block picked.")
@click.option("--copy/--random", "copy_weights", default=True, show_default=True,
              help="--block: the copies take the block's weights, or random ones at its scale.")
@click.option("--count", type=int, default=1, show_default=True, help="--block: how many copies.")
@morph_options
def deepen_cmd(model, copy_weights, **kw):
    """Replace a layer G by F_l -> P-activation -> F_{l+1} with the same function."""
    if kw["block"] is not None:
        kw["init"] = "copy" if copy_weights else "random"
    elif kw.pop("count") != 1 or not copy_weights:
        raise click.UsageError("--count, --copy and --random apply to --block")
    else:
        kw.pop("block")
    _run_morph("deepen", api.deepen, model, **kw)


@cli.command("kernel", short_help="Zero-pad a Conv kernel: same function, wider field.")
@click.argument("model", type=str)
@click.option("--layer", required=True, help="The Conv layer whose kernel grows (a glob or re:REGEX: every match).")
@click.option("--size", required=True, help="New kernel size: K, HxW or DxHxW.")
@morph_options(seed=False)
def kernel_cmd(model, **kw):
    """Zero-pad a Conv kernel and its padding: same outputs, bigger receptive field to train."""
    _run_morph("kernel", api.kernel, model, **kw)


@cli.command("subnet", short_help="Split a layer into parallel paths that sum to it.")
@click.argument("model", type=str)
@click.option("--layer", required=True, help="The Conv/Gemm/MatMul layer to split (a glob or re:REGEX: every "
              "match).")
@click.option("--paths", type=int, default=2, show_default=True, help="Parallel paths that sum to the layer.")
@click.option("--depth", type=int, default=0, show_default=True, help="Extra layers per path (P in eq. 19).")
@click.option("--kernels", help="Kernels of each path's depth+1 layers, e.g. 5,3,1 (default: the layer's, then 1).")
@click.option("--split", type=click.Choice(["random", "equal"]), default="random", show_default=True,
              help="How the layer's weight is shared among the paths: random parts or equal shares.")
@click.option("--width", help="Channels between a path's layers: a count or a multiplier like 2x.")
@click.option("--activation", default="auto", show_default=True, help="P-activation between a path's layers.")
@click.option("--algorithm", type=click.Choice(["practical", "general"]), default="practical", show_default=True,
              help="Algorithm 2 (practical) or Algorithm 1 (general) of the network morphism paper.")
@morph_options
def subnet_cmd(model, **kw):
    """Split a layer into paths that sum to it (equation 20), each path optionally several layers (eq. 19)."""
    _run_morph("subnet", api.subnet, model, **kw)


@cli.command("widen", short_help="Give a layer more output channels, same function.")
@click.argument("model", type=str)
@click.option("--layer", required=True, help="The Conv/Gemm/MatMul layer whose outputs grow; a glob or re:REGEX "
              "widens every match, each coupled group once.")
@click.option("--width", help="New output channel count, or a multiplier like 2x.")
@click.option("--heads", type=int, help="Instead of --width, for a Q/K/V projection: how many heads it should have "
              "(per part of a fused QKV), of the same head size.")
@click.option("--method", type=click.Choice(["netmorph", "net2net"]), default="netmorph", show_default=True,
              help="netmorph: random values and zeros (paper 3.4.1); net2net: copies of existing channels.")
@click.option("--noise", type=float, default=0.0, show_default=True,
              help="net2net only: symmetry-breaking noise (relative std), zero-sum over each channel's copies (exact).")
@click.option("--zeros", type=click.Choice(["auto", "producers", "consumers"]), default="auto", show_default=True,
              help="netmorph only: which side of the new channels gets zeros (auto: consumers before a ReLU-like "
              "op, so new channels train).")
@click.option("--stream", type=click.Choice(["auto", "duplicate", "lemon"]), default="auto", show_default=True,
              help="A residual stream under LayerNorm/RMSNorm: duplicate (integer multiples, any norm), lemon (any "
              "width, pre-norm: new channels carry the mean, or 0 under RMSNorm), auto (duplicate when it can).")
@click.option("--dry-run", is_flag=True, help="Only list the coupled group: what would grow.")
@morph_options
def widen_cmd(model, dry_run, **kw):
    """Give a layer more output channels; every tensor coupled to them follows."""
    if dry_run:
        _, result = api.widen(model, kw["layer"], width=kw["width"], heads=kw["heads"], method=kw["method"],
                              noise=kw["noise"],
                              zeros=kw["zeros"], stream=kw["stream"], seed=kw["seed"], dry_run=True)
        _emit(result, kw["as_json"])
        return
    _run_morph("widen", api.widen, model, **kw)


@cli.command("grow", short_help="Run a growth plan: many morphs, one load, one check, one save.")
@click.argument("model", type=str)
@click.option("--plan", required=True, type=click.Path(dir_okay=False),
              help="TOML file of [[step]] tables: verb = deepen|widen|kernel|subnet and that verb's long options "
                   "with - as _ (layer, width, block, ...).")
@click.option("--verify-each", is_flag=True, help="Check the child against the parent after every step, not only "
              "at the end.")
@click.option("--dry-run", is_flag=True, help="Print each step with what it selects and the parameter count before "
              "and after; solve, check and write nothing.")
@morph_options
def grow_cmd(model, dry_run, **kw):
    """Run the steps of a plan on MODEL in memory, in order: one load, one check against MODEL, one save."""
    if dry_run:
        progress.silence(kw["as_json"])
        _, result = api.grow(model, kw["plan"], seed=kw["seed"], dry_run=True,
                             input_shape=list(kw["input_shape"]) or None)
        _emit(result, kw["as_json"])
        return
    _run_morph("grow", api.grow, model, **kw)


@cli.command("export-torch", short_help="Convert a model to a trainable PyTorch module.")
@click.argument("model", type=str)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the module "
              "(default: <stem>.pt next to the input).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with ONNX Runtime.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True,
              help="Refuse the module if its max error against ONNX Runtime, relative to each output's scale, "
              "exceeds this.")
@click.option("--input-shape", multiple=True, help="NAME:1x3x224x224 for dynamic input dims.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (failures too: {error, exit_code, kind}).")
def export_torch_cmd(model, output, force, no_verify, rtol, input_shape, as_json):
    """Convert MODEL to a PyTorch module whose weights are trainable parameters (needs onnxmorph[torch])."""
    out = Path(output) if output else Path(model).with_suffix(".pt")
    _, report = api.export_torch(model, output=str(out), force=force, verify=not no_verify, rtol=rtol,
                                 input_shape=list(input_shape) or None)
    _emit(report, as_json)


_KINDS = {EXIT_VERIFY_FAILED: "verification_failed", EXIT_USAGE: "usage", EXIT_CANNOT_MORPH: "cannot_morph",
          EXIT_INTERNAL: "internal", EXIT_CANNOT_CONVERT: "cannot_convert", 130: "interrupted"}


def _fail(message: str, exit_code: int, as_json: bool, report=None):
    """One line on stderr, or with --json one object on stdout; then the exit code."""
    if as_json:
        error = {"error": message, "exit_code": exit_code, "kind": _KINDS[exit_code]}
        if report is not None:
            error["report"] = report.to_dict()
        click.echo(json.dumps(compact(error), indent=2, default=str))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(exit_code)


def _flag_given(argv, flag: str) -> bool:
    return flag in argv[:argv.index("--")] if "--" in argv else flag in argv


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if _flag_given(argv, "--debug"):  # accepted anywhere on the line
        argv.remove("--debug")
        _DEBUG["on"] = True
    as_json = _flag_given(argv, "--json")  # known even when parsing fails
    clash = runtime_dist.clash_line()  # two ONNX Runtimes in one directory: say so, with the fix, and carry on
    if clash:
        click.echo(clash, err=True)
    try:
        cli.main(args=argv, prog_name="onnxmorph", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", EXIT_USAGE, as_json)
    except click.ClickException as exc:
        _fail(exc.format_message(), EXIT_USAGE, as_json)
    except OnnxmorphError as exc:
        if _DEBUG["on"]:
            traceback.print_exc()
        _fail(str(exc), exc.exit_code, as_json, getattr(exc, "report", None))
    except KeyboardInterrupt:
        _fail("interrupted", 130, as_json)
    except Exception as exc:  # a bug: still one line unless --debug
        if _DEBUG["on"]:
            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {one_line(str(exc))} (rerun with --debug for the traceback)",
              EXIT_INTERNAL, as_json)

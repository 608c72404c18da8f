"""Thin Typer app: flags, help texts and calls. What a command does is ``commands``; what it prints is ``console``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxstyle import __version__, commands, console, defaults

app = typer.Typer(
    name="onnxstyle",
    help="Neural style transfer on ONNX Runtime and torch: export, stylize, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
weights_app = typer.Typer(help="The weights catalogue: list, verify, where.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
report_app = typer.Typer(help="Saved bench reports: show, compare.", no_args_is_help=True)
app.add_typer(report_app, name="report")

# Options several commands take, with one help text each.
Weights = Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH (auto: real weights if present, else synthetic, timing only).")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads, pinned (default: the CPUs this process may use).")]


def _version(value: bool) -> None:
    if value:
        console.out.print(f"onnxstyle {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = None,
    ep_library: Annotated[Optional[list[str]], typer.Option("--ep-library", help="PATH[:NAME] of a plugin execution provider library to register (repeatable; before the command, e.g. onnxstyle --ep-library /opt/libfoo.so:FooExecutionProvider bench --provider foo). Also ONNXSTYLE_EP_LIBRARIES, ';'-separated; worker processes inherit it.")] = None,
) -> None:
    """onnxstyle: portable, measurable neural style transfer."""
    if ep_library:
        from onnxstyle.plugin_eps import add_libraries

        add_libraries(ep_library)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Print a copy-pasteable fingerprint of this machine and its software."""
    commands.env(as_json=as_json)


@app.command()
def providers(
    check: Annotated[bool, typer.Option("--check", help="Run the loss and gradient on each usable provider: placement, parity with the CPU, TF32, libraries.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (with --check: every measurement).")] = False,
) -> None:
    """List ONNX Runtime providers and torch devices, and why each unusable one is unusable (each usable one ran a Conv and a MatMul)."""
    commands.providers(check=check, as_json=as_json)


@app.command()
def auto(
    clear: Annotated[bool, typer.Option("--clear", help="Delete the cached measurements: the next --engine auto run measures again.")] = False,
) -> None:
    """Where --engine auto keeps what it measured on this machine (seconds per iteration of each candidate), and what it holds."""
    commands.auto(clear=clear)


@app.command()
def export(
    backbone: Annotated[str, typer.Argument(help="vgg (vgg19) or nin.")],
    weights: Weights = "auto",
    layers: Annotated[Optional[str], typer.Option(help="Feature outputs, comma-separated (default: content+style layers).")] = None,
    content_layers: Annotated[Optional[str], typer.Option(help="Content layers of the loss graph.")] = None,
    style_layers: Annotated[Optional[str], typer.Option(help="Style layers of the loss graph.")] = None,
    pooling: Annotated[str, typer.Option(help="max or avg.")] = "max",
    opset: Annotated[int, typer.Option(help="ONNX opset (13..17).")] = 17,
    precision: Annotated[str, typer.Option(help="fp32, or fp16: network and adjoint in fp16, Grams and losses fp32 (validated to 1e-2).")] = "fp32",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Features model path; X.onnx also writes X.loss.onnx and X.json (default: models/…).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files at --output (it refuses otherwise).")] = False,
) -> None:
    """Export the feature extractor and the loss+gradient graph to ONNX, validated against torch."""
    commands.export(
        backbone=backbone, weights=weights, layers=layers, content_layers=content_layers, style_layers=style_layers,
        pooling=pooling, opset=opset, precision=precision, output=output, force=force,
    )


@app.command()
def stylize(
    content: Annotated[Optional[str], typer.Argument(help="Content image.")] = None,
    styles: Annotated[Optional[list[str]], typer.Argument(help="One or more style images.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image (.png/.jpg/.webp/.tif).")] = Path("out.png"),
    demo: Annotated[bool, typer.Option(help=f"Use the built-in demo images (offline; {defaults.DEMO_SIZE} px, {defaults.DEMO_ITERATIONS} iterations from the content image unless set).")] = False,
    engine: Annotated[str, typer.Option(help="auto (the fastest runner here, measured once and cached: onnxstyle auto), onnxruntime or torch.")] = "auto",
    provider: Annotated[Optional[str], typer.Option(help="ORT provider (cpu, cuda, tensorrt, openvino, …) or torch device (cpu, cuda). Default: auto's choice, or cpu for a named engine.")] = None,
    model: Annotated[str, typer.Option(help="vgg or nin.")] = "vgg",
    weights: Weights = "auto",
    size: Annotated[Optional[str], typer.Option(help=f"Longest side, or WIDTHxHEIGHT (default {defaults.SIZE}).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help=f"Iterations (L-BFGS: loss+gradient evaluations); default {defaults.ITERATIONS}.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="lbfgs (default), adam (gradient scaled to unit mean, step cosine-decayed over the budget) or adam-plain (the classic constant step on the raw gradient).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate (pixels in [0, 1]).")] = defaults.LEARNING_RATE,
    content_weight: Annotated[float, typer.Option()] = defaults.CONTENT_WEIGHT,
    style_weight: Annotated[float, typer.Option()] = defaults.STYLE_WEIGHT,
    tv_weight: Annotated[float, typer.Option()] = defaults.TV_WEIGHT,
    content_layers: Annotated[Optional[str], typer.Option()] = None,
    style_layers: Annotated[Optional[str], typer.Option()] = None,
    style_blend_weights: Annotated[Optional[str], typer.Option(help="One weight per style image, e.g. 3,7.")] = None,
    style_scale: Annotated[float, typer.Option()] = 1.0,
    init: Annotated[Optional[str], typer.Option(help="random | content | PATH (default random; content with --demo).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    original_colors: Annotated[bool, typer.Option(help="Keep the content's colours (luminance-only transfer).")] = False,
    pooling: Annotated[str, typer.Option(help="max or avg.")] = "max",
    save_every: Annotated[int, typer.Option(help="Also save every N iterations (0: only at the end).")] = 0,
    threads: Threads = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32; bf16 (torch on CPUs with AVX-512-BF16/AMX, CUDA); fp16 (onnxruntime, torch on CUDA); tf32 (CUDA). Default: auto's choice, or fp32 for a named engine.")] = None,
    cuda_graph: Annotated[bool, typer.Option(help="ONNX Runtime on cuda/tensorrt: capture the loss+gradient run once per size and replay it.")] = False,
    tile: Annotated[Optional[int], typer.Option(help="Tile core edge in px for the exact tiled gradient; 0 never tiles. Default: tile only when the image would not fit in free memory.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Run the tiles on a Ray cluster: HOST:PORT, ray://HOST:PORT, or local (pip install 'onnxstyle[cluster]').")] = None,
    scales: Annotated[Optional[str], typer.Option(help=f"Multi-resolution sizes, increasing (e.g. 512,1024,2048,4096,7680); each starts from the last result. Default from {defaults.MULTI_SCALE_FROM} px: {defaults.COARSEST_SIDE}, doubling, up to --size.")] = None,
    scale_iterations: Annotated[Optional[str], typer.Option(help="Iterations per scale (comma list); default --iterations at the first scale, halved per scale.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Wall-time budget in seconds for the whole run, set-up included; the best image so far is written when it ends (with --iterations, whichever comes first).")] = None,
) -> None:
    """Optimise an image so its features match CONTENT and its Gram matrices match STYLE(s)."""
    commands.stylize(
        content=content, styles=styles, output=output, demo=demo, engine=engine, provider=provider, model=model,
        weights=weights, size=size, iterations=iterations, optimizer=optimizer, learning_rate=learning_rate,
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, content_layers=content_layers,
        style_layers=style_layers, style_blend_weights=style_blend_weights, style_scale=style_scale, init=init,
        seed=seed, original_colors=original_colors, pooling=pooling, save_every=save_every, threads=threads,
        precision=precision, cuda_graph=cuda_graph, tile=tile, cluster=cluster, scales=scales,
        scale_iterations=scale_iterations, max_time=max_time,
    )


@app.command()
def bench(
    provider: Annotated[Optional[str], typer.Option(help="Comma list: cpu, cuda, tensorrt, … (ONNX Runtime), torch, torch-cuda, eager, eager-cuda; or all. Default: every usable one.")] = None,
    model: Annotated[str, typer.Option(help="Comma list of vgg19/vgg, nin.")] = "vgg19,nin",
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes or WIDTHxHEIGHT.")] = "64,128,256",
    precision: Annotated[str, typer.Option(help="Comma list of fp32, bf16, fp16, tf32; a runner that cannot run one shows the cell as skipped, with why.")] = "fp32",
    duration: Annotated[float, typer.Option(help="Seconds of timed iterations per cell, split over --runs windows.")] = 6.0,
    iterations: Annotated[Optional[int], typer.Option(help="Iterations per window instead of --duration.")] = None,
    runs: Annotated[int, typer.Option(help="Timed windows per cell (median and spread are over these).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed iterations after the first.")] = 3,
    threads: Threads = None,
    weights: Weights = "auto",
    check: Annotated[bool, typer.Option(help="Gradient check against torch autograd per runner and model.")] = True,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON, CSV, Markdown and PNG reports.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default bench-YYYYmmdd-HHMMSS).")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Tile core edge (px) for our engines; 0 never tiles. Default: tile cells that would not fit.")] = None,
    cuda_graph: Annotated[bool, typer.Option(help="ONNX Runtime runners on cuda/tensorrt capture each cell's run as a CUDA graph.")] = False,
    interleave: Annotated[bool, typer.Option("--interleave/--sequential", help="Alternate the timed windows of a size's runners (ratios under the same load) where they fit in memory together, or run cells one after another.")] = True,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE set in every worker process before it starts (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE; recorded in the report.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Measure on every node of a Ray cluster (HOST:PORT, ray://HOST:PORT or local), each node the cells it can run; one report, by node.")] = None,
) -> None:
    """Iterations per minute by runner × model × size, beside the 2016 study; writes reports."""
    commands.bench(
        provider=provider, model=model, sizes=sizes, precision=precision, duration=duration, iterations=iterations,
        runs=runs, warmup=warmup, threads=threads, weights=weights, check=check, out_dir=out_dir, name=name, tile=tile,
        cuda_graph=cuda_graph, interleave=interleave, env=env, cluster=cluster,
    )


@app.command("cluster-scale")
def cluster_scale(
    size: Annotated[str, typer.Option(help="The image the scale table is for, WIDTHxHEIGHT.")] = "7680x4320",
    tile: Annotated[int, typer.Option(help="Tile core edge in px.")] = 512,
    overhead_size: Annotated[int, typer.Option(help="Square size at which Ray's overhead is measured on a local cluster; 0 skips it.")] = 2048,
    weights: Weights = "auto",
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON and Markdown report.")] = Path("reports"),
    name: Annotated[str, typer.Option(help="Report file stem.")] = "cluster-scale",
) -> None:
    """Tiled VGG19 over N nodes: bytes and compute per tile, the modelled speed-up on 1–64 nodes, and Ray's measured overhead."""
    commands.cluster_scale(
        size=size, tile=tile, overhead_size=overhead_size, weights=weights, out_dir=out_dir, name=name,
    )


@app.command()
def parity(
    provider: Annotated[str, typer.Option(help="Comma list of runners, as bench's --provider (cpu, cuda, torch-cuda, eager-cuda, …).")] = "cpu,torch",
    model: Annotated[str, typer.Option(help="Comma list of vgg19/vgg, nin.")] = "vgg19",
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes or WIDTHxHEIGHT.")] = "256",
    precision: Annotated[str, typer.Option(help="fp32, tf32, fp16 or bf16, for every runner.")] = "fp32",
    weights: Weights = "auto",
    threads: Threads = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON and Markdown report.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default parity-YYYYmmdd-HHMMSS).")] = None,
) -> None:
    """Gradient parity of each runner against torch autograd (CPU, fp32) at the sizes given, with the same targets."""
    commands.parity(
        provider=provider, model=model, sizes=sizes, precision=precision, weights=weights, threads=threads,
        out_dir=out_dir, name=name,
    )


@app.command()
def converge(
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes.")] = "256,512",
    seconds: Annotated[str, typer.Option(help="Wall time per configuration: one number, or one per size (e.g. 60,150).")] = "60",
    configs: Annotated[str, typer.Option(help="Comma list of RUNNER[:PRECISION[:OPTIMIZER[:c2f]]][@SECONDS] or auto[@SECONDS], e.g. cpu:fp32:lbfgs:c2f,torch:bf16:adam,eager:fp32:adam,auto@60 (c2f: coarse to fine; auto: what stylize --max-time runs with no other flags; @SECONDS: a budget of its own). Default: every usable one of the built-in set.")] = "",
    weights: Annotated[str, typer.Option(help="auto | catalogue id | PATH (real weights: a loss is only a quality on them).")] = "auto",
    threads: Threads = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON, Markdown and PNG report.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default quality-YYYYmmdd-HHMMSS).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder for each configuration's final picture (CONFIG-SIZEpx.png); only files converge wrote are replaced.")] = None,
) -> None:
    """Time to quality: every configuration runs the same problem for the same wall time; the fp32 torch loss scores its snapshots."""
    commands.converge(
        sizes=sizes, seconds=seconds, configs=configs, weights=weights, threads=threads, out_dir=out_dir, name=name, images=images,
    )


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="vgg19/vgg or nin.")] = "vgg19",
    size: Annotated[str, typer.Option(help="Image size: one side or WIDTHxHEIGHT.")] = "256",
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider (cpu, cuda, tensorrt, …).")] = "cpu",
    runs: Annotated[int, typer.Option(help="Profiled loss+gradient runs (after --warmup unprofiled ones).")] = 5,
    warmup: Annotated[int, typer.Option(help="Runs before the profiled ones (first-run costs excluded).")] = 2,
    threads: Threads = None,
    weights: Weights = "auto",
    conv: Annotated[str, typer.Option(help="auto | direct | winograd: how the wide 3x3 convolutions are built (auto: as stylize and bench run them).")] = "auto",
    top: Annotated[int, typer.Option(help="Slowest nodes to list.")] = 15,
) -> None:
    """Where one loss+gradient run spends its time on ONNX Runtime: ORT's profiler by operator and by node."""
    commands.profile(
        model=model, size=size, provider=provider, runs=runs, warmup=warmup, threads=threads, weights=weights,
        conv=conv, top=top,
    )


@report_app.command("show")
def report_show(path: Annotated[Path, typer.Argument(help="A bench, quality (converge), parity or cluster-scale report (.json).")]) -> None:
    """Re-render a saved report of any kind (bench, converge, parity, cluster-scale), read by the schema it names."""
    commands.report_show(path=path)


@report_app.command("compare")
def report_compare(
    paths: Annotated[list[Path], typer.Argument(help="Two or more reports; the first is the baseline.")],
    plot_path: Annotated[Path, typer.Option("--plot", help="Where to write the comparison plot.")] = Path("comparison.png"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --plot file that is not an earlier comparison plot.")] = False,
) -> None:
    """How the machines differ, then each cell's speed relative to the first report (± uncertainty)."""
    commands.report_compare(paths=paths, plot_path=plot_path, force=force)


@weights_app.command("list")
def weights_list() -> None:
    """Show every known weight set with its source, check, preprocessing and licence."""
    commands.weights_list()


@weights_app.command("where")
def weights_where() -> None:
    """Where weight files are looked for, and the URL of each."""
    commands.weights_where()


@weights_app.command("verify")
def weights_verify(
    ids: Annotated[Optional[list[str]], typer.Argument(help="Catalogue ids or files (default: every cached entry).")] = None,
) -> None:
    """Re-hash cached weight files against the catalogue, or check that a file loads; non-zero exit on any failure."""
    commands.weights_verify(ids=ids)


def main() -> None:
    """Console entry point: typed errors print one line and exit with their code, never a traceback."""
    console.run(app)


if __name__ == "__main__":
    main()

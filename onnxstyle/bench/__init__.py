"""How fast does the style loop run here? Iterations per minute by runner × model × size × precision.

Method (hyperfine/torch.utils.benchmark style): one iteration is one Adam step including loss and
gradient; setup (graph build, session creation, engine build, targets) and the first iteration are timed
apart; then warm-up iterations; then several timed windows, each closed by a device synchronisation. A
cell reports the median of its windows' it/min with min/max and IQR, keeps every per-iteration time, the
loop overhead (share of an iteration outside loss+gradient), its worker's peak RSS, achieved GFLOP/s
against this machine's measured fp32 GEMM roof, and a gradient check against torch autograd at a small
size. A cell that would not fit in free memory is skipped with the estimate, never attempted.

Every runner is measured in a worker process of its own (``onnxstyle.workers``), so thread pools,
precision flags and allocators belong to one runner by construction; the GEMM roof gets a worker too.
Each window also records what else used the CPUs (``onnxstyle.interference``), and a cell whose windows
spread or that shared the machine is marked noisy, with the reason.

- ``options``: what a run is asked to do, parsed and checked once (``bench_options``).
- ``records``: what it records — windows, cells, GEMM roofs, statistics — as plain data without torch.
- ``run``: the parent — skip rules, workers, interleaved rounds, statistics and noise verdicts.
- ``session`` and ``loops``: inside a cell's worker — the loop, its clocks and counters, the gradient check.
- ``gemm``: the machine's fp32 GEMM roof.

This package module imports nothing, so ``onnxstyle.bench.records`` (what reports read) stays light.
"""

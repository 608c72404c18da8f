"""Every default that more than one entry point shares, in one table.

Plain numbers, importing nothing: the CLI reads them for its options and ``--help`` without loading torch.
"""

from __future__ import annotations

# Adam's step (pixels in [0, 1]): stylize's default, and the step of the bench's and converge's timed loops. The eager
# baseline takes it as a user would, on the raw gradient with a constant step; stylize's Adam takes it on a gradient
# scaled to a mean magnitude of 1, and lowers it along a half cosine to ADAM_FINAL_FRACTION of itself as the budget is spent.
LEARNING_RATE = 0.02
ADAM_FINAL_FRACTION = 0.1

# stylize: iterations (L-BFGS: loss+gradient evaluations) and the longest side of the output image.
ITERATIONS = 1000
SIZE = 512
# stylize without --scales: coarse to fine from COARSEST_SIDE px, doubling, for outputs of MULTI_SCALE_FROM px and more
# (measured against one scale with `onnxstyle converge`; see stylize.default_scales).
COARSEST_SIDE = 128
MULTI_SCALE_FROM = 512
# A run that only --max-time ends gives each coarse scale at most this many evaluations (L-BFGS has settled the
# layout by then); the time they leave goes to the finer scales.
COARSE_ITERATIONS = 100
# stylize --demo: the built-in images, small and short enough to run anywhere in seconds.
DEMO_ITERATIONS = 100
DEMO_SIZE = 256

# jcjohnson/neural-style's loss weights, per content layer and per style layer, and for total variation.
CONTENT_WEIGHT = 5.0
STYLE_WEIGHT = 100.0
TV_WEIGHT = 1e-3

# Side of the problem every runner's gradient is checked on against torch autograd.
CHECK_SIZE = 64

# --engine auto's probe: each candidate runs one warm-up and this many timed loss+gradient evaluations, at the run's
# size but at most PROBE_SIDE px (larger sizes rank like it and would make a first run's probe cost minutes), and a
# --max-time run stops probing once this share of its budget is spent.
PROBE_SIDE = 256
PROBE_EVALUATIONS = 2
PROBE_SHARE = 0.15

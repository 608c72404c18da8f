"""Every default that more than one entry point shares, in one table.

Plain numbers, importing nothing: the CLI reads them for its options and ``--help`` without loading torch.
"""

from __future__ import annotations

# Adam's step (pixels in [0, 1]): stylize's default, and the step of the bench's and converge's timed loops.
LEARNING_RATE = 0.02

# stylize: iterations (L-BFGS: loss+gradient evaluations) and the longest side of the output image.
ITERATIONS = 1000
SIZE = 512
# stylize --demo: the built-in images, small and short enough to run anywhere in seconds.
DEMO_ITERATIONS = 100
DEMO_SIZE = 256

# jcjohnson/neural-style's loss weights, per content layer and per style layer, and for total variation.
CONTENT_WEIGHT = 5.0
STYLE_WEIGHT = 100.0
TV_WEIGHT = 1e-3

# Side of the problem every runner's gradient is checked on against torch autograd.
CHECK_SIZE = 64

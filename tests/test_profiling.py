"""ORT's profiler, per operator and per node: what `onnxstyle profile` shows."""

import pytest

from onnxstyle.errors import UsageError
from onnxstyle.profiling import parse_profile, profile_loss


def _event(name, ts, dur, op=None):
    event = {"name": name, "ts": ts, "dur": dur, "cat": "Node" if op else "Session"}
    if op:
        event["args"] = {"op_name": op}
    return event


def test_parse_keeps_only_the_last_runs():
    events = [
        _event("model_run", 0, 9000), _event("conv1_kernel_time", 10, 8000, "Conv"),  # warm-up: first-run costs
        _event("model_run", 10000, 3000), _event("conv1_kernel_time", 10010, 2000, "Conv"), _event("relu_kernel_time", 12010, 500, "Relu"),
        _event("model_run", 20000, 5000), _event("conv1_kernel_time", 20010, 4000, "Conv"), _event("relu_kernel_time", 24010, 500, "Relu"),
    ]
    run_ms, nodes = parse_profile(events, runs=2)
    assert run_ms == pytest.approx(4.0)
    by_name = {node.name: node for node in nodes}
    assert by_name["conv1"].milliseconds == pytest.approx(3.0) and by_name["conv1"].op_type == "Conv"
    assert by_name["relu"].milliseconds == pytest.approx(0.5)
    with pytest.raises(UsageError, match="fewer than the 5"):
        parse_profile(events, runs=5)


def test_profile_of_a_real_loss_run():
    result = profile_loss(model="nin", size=(80, 64), runs=2, warmup=1, weights="synthetic", winograd=True)
    operators = {op_type: share for op_type, _, share in result.by_operator()}
    assert "Conv" in operators and sum(operators.values()) == pytest.approx(1.0)
    assert 0 < result.kernel_milliseconds <= 1.05 * result.run_milliseconds  # one inter-op thread: kernels run one at a time
    slowest = result.slowest(3)
    assert len(slowest) == 3 and slowest[0].milliseconds >= slowest[-1].milliseconds
    assert (result.width, result.height) == (80, 64) and result.provider == "CPUExecutionProvider"
    assert result.conv_algorithm == "direct"  # NIN's wide 3x3 layers have fewer than 16 tiles at 80x64

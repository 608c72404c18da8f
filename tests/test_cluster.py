"""Ray: tiled loss and gradient computed on a local multi-node cluster (one process, ``ray.cluster_utils``) equal
the local tiled run, a lost worker's tiles are rerun elsewhere, and bad clusters are refused in one line."""

import sys

import pytest
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.errors import UsageError
from onnxstyle.losses import LossWeights
from onnxstyle.weights import resolve

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from onnxstyle.cluster import connect  # noqa: E402
from onnxstyle.cluster.tiles import cluster_engine  # noqa: E402

STORE = 80 * 2**20
HEIGHT, WIDTH, CORE = 260, 300, 224


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each (this machine has two), with custom resources as a lab would label machines."""
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE, "resources": {"head": 1}})
    local.add_node(num_cpus=1, object_store_memory=STORE, resources={"cpu-box": 1})
    ray.init(address=local.address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    yield local
    ray.shutdown()
    local.shutdown()


def _problem():
    nin = get_backbone("nin")
    spec = EngineSpec(nin, ("relu7",), ("relu0", "relu3", "relu7"), "max", resolve("synthetic", nin))
    generator = torch.Generator().manual_seed(0)
    content, style, noise = (torch.rand(1, 3, HEIGHT, WIDTH, generator=generator) for _ in range(3))
    return spec, content, style, 0.7 * content + 0.3 * noise, LossWeights((5.0,), (100.0,) * 3, 1e-3)


def _local(engine, spec, content, style, weights):
    local = create_engine(engine, spec, threads=1, tile=CORE, sizes=[(HEIGHT, WIDTH)])
    targets = local.build_targets(content, [style], [1.0], weights)
    local.set_targets(targets)
    return local, targets


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_cluster_tiles_equal_the_local_tiled_run(cluster, engine):
    spec, content, style, image, weights = _problem()
    local, targets = _local(engine, spec, content, style, weights)
    expected_terms, expected_grad = local.loss_and_grad(image)
    remote = cluster_engine(engine, spec, address=cluster.address, core=CORE, sizes=[(HEIGHT, WIDTH)], threads=1)
    try:
        assert len({worker.node.node_id for worker in remote.cluster.workers}) == 2  # one tile worker on every node
        built = remote.build_targets(content, [style], [1.0], weights)  # the map-reduce over tile cores, for the targets
        for layer, gram in targets.style.items():
            assert torch.allclose(built.style[layer], gram, rtol=1e-6, atol=0)
        remote.set_targets(targets)
        terms, grad = remote.loss_and_grad(image)
    finally:
        remote.cluster.close()
    assert terms.total == pytest.approx(expected_terms.total, rel=1e-6)
    assert float((grad - expected_grad).norm() / expected_grad.norm()) < 1e-5
    assert remote.plan(HEIGHT, WIDTH).count == 4


def test_a_lost_node_has_its_tiles_rerun_and_the_iteration_completes(cluster):
    spec, content, style, image, weights = _problem()
    local, targets = _local("torch", spec, content, style, weights)
    expected_terms, expected_grad = local.loss_and_grad(image)
    extra = cluster.add_node(num_cpus=1, object_store_memory=STORE, resources={"doomed": 1})
    cluster.wait_for_nodes()
    remote = cluster_engine("torch", spec, address=cluster.address, core=CORE, sizes=[(HEIGHT, WIDTH)], threads=1)
    try:
        assert len(remote.cluster.workers) == 3
        remote.set_targets(targets)
        cluster.remove_node(extra)
        terms, grad = remote.loss_and_grad(image)
        assert len(remote.cluster.workers) == 2 and len(remote.cluster.lost) == 1
        reruns = remote.cluster.last["statistics"].rerun + remote.cluster.last["gradient"].rerun
        assert reruns >= 1
    finally:
        remote.cluster.close()
    assert terms.total == pytest.approx(expected_terms.total, rel=1e-6)
    assert float((grad - expected_grad).norm() / expected_grad.norm()) < 1e-5


def test_stylize_on_the_cluster_makes_the_same_image(cluster, tmp_path):
    from onnxstyle.stylize import stylize

    options = {"engine": "torch", "model": "nin", "weights": "synthetic", "iterations": 3, "optimizer": "adam", "tile": CORE, "threads": 1}
    local = stylize(output=tmp_path / "local.png", size=(WIDTH, HEIGHT), seed=3, **options)
    remote = stylize(output=tmp_path / "cluster.png", size=(WIDTH, HEIGHT), seed=3, cluster=cluster.address, **options)
    assert remote.losses == pytest.approx(local.losses, rel=1e-6)
    assert float((remote.image - local.image).abs().max()) < 1e-5
    assert len(remote.engine["cluster"]["workers"]) == 2


def test_mixed_versions_are_refused_naming_the_nodes(cluster, monkeypatch):
    import onnxstyle

    monkeypatch.setattr(onnxstyle, "__version__", "0.0.0-other")
    with pytest.raises(UsageError, match=r"mixed onnxstyle versions in the cluster: this machine has 0.0.0-other, .* has 0\.\d"):
        connect(cluster.address)


def test_unreachable_addresses_and_missing_ray_fail_in_one_line(monkeypatch):
    from onnxstyle.cluster import _check_reachable, require_ray

    with pytest.raises(UsageError, match=r"cannot reach a Ray cluster at 127.0.0.1:9 within 2 s"):
        _check_reachable("127.0.0.1:9", 2.0)
    with pytest.raises(UsageError, match="takes HOST:PORT"):
        _check_reachable("nowhere", 2.0)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"--cluster needs Ray, which is not installed: pip install 'onnxstyle\[cluster\]'"):
        require_ray()


def test_bench_on_the_cluster_measures_on_every_node_into_one_report(cluster, cli, tmp_path):
    import json

    result = cli(
        "bench", "--cluster", cluster.address, "--provider", "cpu,cuda", "--model", "nin", "--sizes", "64", "--duration", "0.3",
        "--runs", "1", "--warmup", "0", "--no-check", "--out", tmp_path, "--name", "lab",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "lab.json").read_text())
    measured = [cell for cell in report["cells"] if cell["status"] == "ok"]
    assert len(measured) == 2 and len({cell["node"] for cell in measured}) == 2 and {cell["runner"] for cell in measured} == {"ort-cpu"}
    skipped = [cell for cell in report["cells"] if cell["runner"] == "ort-cuda"]
    assert len(skipped) == 1 and skipped[0]["status"] == "skipped" and skipped[0]["reason"].startswith("no node can run it (")
    assert set(report["nodes"]) == {cell["node"] for cell in measured}
    assert all(node["fingerprint"]["onnxstyle"] for node in report["nodes"].values())
    shown = cli("report", "show", tmp_path / "lab.json")
    assert shown.returncode == 0 and shown.stdout.count("ort-cpu@") >= 2 and "node " in shown.stdout


@pytest.mark.slow  # ≈40 s: three nodes bench two cells each on two CPUs (make test-all)
def test_a_node_lost_during_a_cluster_bench_fails_its_cells_and_keeps_the_rest(cluster, tmp_path):
    from onnxstyle.cluster.bench import run_cluster_bench

    doomed = cluster.add_node(num_cpus=1, object_store_memory=STORE, resources={"doomed": 1})
    cluster.wait_for_nodes()
    request = {
        "provider": "cpu", "model": "nin", "sizes": "64,72", "precision": "fp32", "duration": 0.3, "iterations": None, "runs": 1,
        "warmup": 0, "threads": None, "weights": "synthetic", "check": False, "tile": None, "cuda_graph": False, "interleave": True,
        "environment": [],
    }

    def on_change(run):  # the doomed node goes away as soon as it has delivered its first cell
        label = next(label for label, node in run.nodes.items() if node["node_id"] == doomed.node_id)
        if any(cell.node == label and cell.status == "ok" for cell in run.cells) and doomed in cluster.worker_nodes:
            cluster.remove_node(doomed)

    run = run_cluster_bench(request, [("nin", 64, 64), ("nin", 72, 72)], address=cluster.address, on_change=on_change)
    label = next(label for label, node in run.nodes.items() if node["node_id"] == doomed.node_id)
    mine = [cell for cell in run.cells if cell.node == label]
    assert sorted(cell.status for cell in mine) == ["failed", "ok"]
    assert "was lost" in next(cell.reason for cell in mine if cell.status == "failed")
    assert len([cell for cell in run.cells if cell.status == "ok" and cell.node != label]) == 4


def test_the_scale_model_counts_bytes_and_waves():
    from onnxstyle.cluster.scale import NODE_COUNTS, speedup_rows, tile_traffic

    vgg = get_backbone("vgg19")
    spec = EngineSpec.defaults(vgg, resolve("synthetic", vgg))
    traffic = tile_traffic(spec, 662, 662)
    assert traffic.pixels_in == 2 * 4 * 3 * 662 * 662 and traffic.gradient_out == 4 * 3 * 662 * 662
    assert traffic.gram_sums_out == 4 * (64**2 + 128**2 + 256**2 + 512**2 + 512**2) == traffic.directions_in
    rows = speedup_rows(135, 3.0, traffic.per_tile, traffic.directions_in, 1.5, 10.0)
    assert [row.nodes for row in rows] == list(NODE_COUNTS) and [row.waves for row in rows] == [135, 34, 9, 3]
    assert rows[0].speedup == 1.0 and rows[0].network_seconds == 0.0
    assert all(later.speedup > earlier.speedup for earlier, later in zip(rows, rows[1:]))
    assert rows[-1].iteration_seconds == pytest.approx(3 * 3.0 + rows[-1].network_seconds + 1.5)


def test_a_node_finds_the_drivers_weights_by_id_and_hash(tmp_path):
    from dataclasses import replace

    from onnxstyle.cluster.tiles import node_weights
    from onnxstyle.errors import WeightsError

    vgg = get_backbone("vgg19")
    real = resolve("auto", vgg)
    if real.path is None:
        pytest.skip("no real VGG19 weights installed")
    spec = EngineSpec.defaults(vgg, real)
    assert node_weights(spec) is spec  # the file is here: nothing to look up
    elsewhere = replace(spec, weights=replace(real, path=tmp_path / "only-on-the-driver.bin"))
    assert node_weights(elsewhere).weights.path == real.path
    with pytest.raises(WeightsError, match="has other .* weights"):
        node_weights(replace(spec, weights=replace(real, path=tmp_path / "x.bin", sha256="0" * 64)))

"""The benchmark runs and reports a speedup; the CUDA-only code paths are checked on the CPU
where they can be (configs, decisions, autocast, the CUDA-graph step's schedule with a stand-in
graph) and by CUDA-only tests where they cannot (the real capture and replay; these ran on an
H100, docs/results/gpu_h100/tests.txt).

These are not timed tests: no assertion here depends on how fast anything is.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from mnist_bench import bench
from mnist_bench.config import DeviceConf, register_configs
from mnist_bench.models.lenet import LeNet5
from mnist_bench.train import (
    DEFAULT_NUM_THREADS,
    apply_device_settings,
    prepare_model,
    seed_everything,
    train_epoch,
)
from mnist_bench.train_step import (
    CUDAGraphTrainStep,
    TrainStep,
    grad_scaler,
    make_train_step,
    uses_cuda_graphs,
)

register_configs()


def device_cfg(**overrides) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.structured(DeviceConf), overrides)


def test_benchmark_runs_tiny_and_prints_a_ratio(tmp_path, data_root, capsys):
    out = tmp_path / "bench.csv"
    rows = bench.main(["--models", "mlp", "--max-train-samples", "128", "--repeats", "1",
                       "--device", "cpu", "--data-root", str(data_root), "--output", str(out)])
    stdout = capsys.readouterr().out
    assert "| model | path |" in stdout and "x report" in stdout
    saved = list(csv.DictReader(out.open()))
    assert [row["path"] for row in saved] == ["report", "default"] == [r.path for r in rows]
    report, default = (float(row["train_s"]) for row in saved)
    assert float(saved[1]["speedup"]) == pytest.approx(report / default, rel=0.01)
    assert float(saved[1]["images_per_s"]) == pytest.approx(128 / default, rel=0.01)
    ratio = re.search(r"^\| mlp \| default \|(?: [^|]+ \|){5} (\d+\.\d\d) \|$", stdout,
                      re.MULTILINE)
    assert ratio and float(ratio.group(1)) == pytest.approx(report / default, abs=0.01), stdout


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    for option in ("--models", "--repeats", "--batch-size", "--max-train-samples",
                   "--data-root", "--output", "--variant", "--paths"):
        assert option in stdout


def test_fastest_path_is_refused_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--paths", "fastest", "--device", "cpu"])
    assert exit_info.value.code != 0
    assert "needs CUDA" in str(exit_info.value.code) + capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "cuda"], "--device cuda was requested but cuda is not available"),
    (["--data-root", "/nowhere"], "with --data-root /path/to/root or"),
])
def test_unavailable_device_or_data_is_one_message_not_a_traceback(argv, message):
    if torch.cuda.is_available() and "cuda" in argv:
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "mlp", *argv])
    assert message in str(exit_info.value.code)


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-train-samples", "0"], "--max-train-samples must be >= 1"),
    (["--variant", "default: device.num_threads=1"], "from the paths (report, default, fastest)"),
    (["--variant", "a: device.num_threads=1", "--variant", "a: device.amp=bf16"], ": a"),
])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("model", ["mlp", "lenet", "resnet18", "googlenet"])
def test_every_path_composes_to_a_valid_config(model):
    """The CUDA-only path is checked against the schema here too, on any machine."""
    args = bench.parse_args(["--paths", "report", "default", "fastest", "--device", "cuda",
                             "--variant", "t1: device.num_threads=1", "--data-root", "/x"])
    paths = bench.path_overrides(args, model)
    assert list(paths) == ["report", "default", "fastest", "t1"]
    cfgs = {name: bench.compose_config(overrides) for name, overrides in paths.items()}
    report, fastest = cfgs["report"], cfgs["fastest"]
    assert report.data.loader == "torch" and report.data.num_workers == 0
    assert report.optimizer.fused is None and report.optimizer.foreach is None
    assert not report.device.compile and report.device.amp is None
    assert report.trainer.eval_batch_size == report.trainer.batch_size == 64
    assert not report.device.cuda_graphs
    assert fastest.device.type == "cuda" and fastest.device.cuda_graphs
    assert not fastest.device.compile and fastest.device.amp == "bf16"
    assert fastest.device.channels_last and fastest.optimizer.fused
    assert cfgs["default"].data.loader == "tensor"
    assert cfgs["t1"].device.num_threads == 1


def test_the_default_path_is_what_the_cli_runs_by_default():
    args = bench.parse_args(["--paths", "report", "default", "--data-root", "/x"])
    default = bench.compose_config(bench.path_overrides(args, "mlp")["default"])
    cli_default = bench.compose_config(["data.root=/x"])
    assert OmegaConf.to_container(default.device) == OmegaConf.to_container(cli_default.device)
    assert default.optimizer == cli_default.optimizer and default.data == cli_default.data


def test_variant_syntax_is_checked():
    assert bench.parse_variant("cl: device.channels_last=true model.pool=max") == (
        "cl", ["device.channels_last=true", "model.pool=max"])
    with pytest.raises(Exception, match="NAME"):
        bench.parse_variant("device.channels_last=true")


def test_synchronize_waits_on_the_device_it_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    bench.synchronize(torch.device("cpu"))
    assert calls == []
    bench.synchronize(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]


def test_device_settings_apply_and_restore_threads():
    try:
        apply_device_settings(device_cfg(num_threads=1, cudnn_benchmark=True))
        assert torch.get_num_threads() == 1 and torch.backends.cudnn.benchmark
        apply_device_settings(device_cfg(num_threads=None, cudnn_benchmark=False))
        assert torch.get_num_threads() == DEFAULT_NUM_THREADS
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.set_num_threads(DEFAULT_NUM_THREADS)


def test_prepare_model_sets_memory_format_and_wraps_for_compile():
    model, step_model = prepare_model(LeNet5(), torch.device("cpu"),
                                      device_cfg(channels_last=True, compile=True))
    conv = model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert step_model is not model and step_model._orig_mod is model  # compiled lazily
    eager, same = prepare_model(LeNet5(), torch.device("cpu"), device_cfg())
    assert same is eager


def test_grad_scaler_is_on_for_fp16_only():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "fp16").is_enabled()
    assert not grad_scaler(cpu, "bf16").is_enabled()
    assert not grad_scaler(cpu, None).is_enabled()


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_train_epoch_runs_every_autocast_setting(amp):
    """The autocast and loss-scaling code that CUDA runs, exercised on the CPU."""
    torch.manual_seed(0)
    cfg = device_cfg(amp=amp, channels_last=True)
    cpu = torch.device("cpu")
    model, step_model = prepare_model(LeNet5(activation="relu"), cpu, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.rand(96, 1, 28, 28), torch.randint(0, 10, (96,))
    batches = [(x[:64], y[:64]), (x[64:], y[64:])]
    before = [p.detach().clone() for p in model.parameters()]
    step = make_train_step(model, step_model, optimizer, cpu, cfg)
    loss, acc = train_epoch(step, batches, epoch=1, desc="t", refresh_every=1, progress=False)
    assert abs(loss - math.log(10)) < 0.5  # an untrained network on noise: chance-level loss
    assert acc * 96 == pytest.approx(round(acc * 96)) and step.seen == 96  # hits / images
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_cuda_graphs_apply_on_cuda_only_and_not_with_compile_or_fp16(caplog):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # no CUDA call: a decision table
    assert uses_cuda_graphs(cuda, device_cfg(cuda_graphs=True))
    assert uses_cuda_graphs(cuda, device_cfg(cuda_graphs=True, amp="bf16"))
    assert not uses_cuda_graphs(cuda, device_cfg(cuda_graphs=False))
    assert not uses_cuda_graphs(cpu, device_cfg(cuda_graphs=True))
    with caplog.at_level("INFO"):
        assert not uses_cuda_graphs(cuda, device_cfg(cuda_graphs=True, compile=True))
        assert not uses_cuda_graphs(cuda, device_cfg(cuda_graphs=True, amp="fp16"))
    assert "device.compile=true" in caplog.text and "device.amp=bf16" in caplog.text
    model = LeNet5()
    step = make_train_step(model, model, torch.optim.Adam(model.parameters()), cpu,
                           device_cfg(cuda_graphs=True))
    assert type(step) is TrainStep


def test_a_cuda_graph_runs_checkpoint_resumes_with_eager_steps():
    """An optimizer state saved by a CUDA-graph run (capturable=True) loads and trains on the
    CPU: the eager step clears the flag, which Adam refuses on the CPU."""
    torch.manual_seed(0)
    model = LeNet5()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    first = make_train_step(model, model, torch.optim.Adam(model.parameters()),
                            torch.device("cpu"), device_cfg())
    first(x, y)
    saved = first.optimizer.state_dict()  # with moments and step counts, as a run saves it
    saved["param_groups"][0]["capturable"] = True  # as a CUDA-graph run saves it
    optimizer = torch.optim.Adam(model.parameters())
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["capturable"] and optimizer.state
    step = make_train_step(model, model, optimizer, torch.device("cpu"), device_cfg())
    step(x, y)  # raises "If capturable=True, params and state_steps must be on ..." without it
    assert not optimizer.param_groups[0]["capturable"] and step.seen == 8
    assert all(state["step"].item() == 2 for state in optimizer.state.values())


def test_cuda_default_configs_turn_cuda_graphs_on():
    for option in ("auto", "cuda"):
        assert bench.compose_config([f"device={option}"]).device.cuda_graphs
    assert not bench.compose_config(["device=cpu"]).device.cuda_graphs


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),  # momentum buffers
}


def train_steps(step_kind: type[TrainStep], model_fn, cfg, batches, device: str = "cuda",
                optimizer: str = "adam") -> tuple[TrainStep, list[torch.Tensor],
                                                  tuple[float, float]]:
    """Train a fresh ``model_fn()`` with ``step_kind`` for two epochs over ``batches``; return
    the step, the final state (weights and buffers) and the last epoch's loss and accuracy."""
    torch.manual_seed(0)
    model, step_model = prepare_model(model_fn(), torch.device(device), cfg)
    step = step_kind(model, step_model, OPTIMIZERS[optimizer](model.parameters()),
                     torch.device(device), cfg)
    for epoch in (1, 2):
        metrics = train_epoch(step, batches, epoch, desc="t", refresh_every=4, progress=False)
    return step, [t.detach().float().cpu() for t in model.state_dict().values()], metrics


def random_batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight batches of 32 random images and a last, partial batch of 10."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(8 * 32 + 10, 1, 28, 28, generator=gen), torch.randint(0, 10, (266,))
    return [(x[i:i + 32].to(device), y[i:i + 32].to(device)) for i in range(0, len(y), 32)]


class StandInGraph:
    """A CUDA graph's stand-in on the CPU: ``replay()`` runs the recorded step eagerly."""

    def __init__(self, step) -> None:
        self.step, self.replays = step, 0

    def replay(self) -> None:
        self.replays += 1
        self.step()


class StandInGraphStep(CUDAGraphTrainStep):
    """The CUDA-graph step's own schedule (warm-up, capture, static inputs, eager partial
    batches), with the recording swapped for :class:`StandInGraph`."""

    capturable = False  # Adam refuses capturable=True on the CPU
    _record = staticmethod(StandInGraph)


@pytest.fixture
def cpu_streams(monkeypatch):
    """``torch.cuda``'s stream calls as no-ops on the CPU."""

    class Stream:
        def __init__(self, *args) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_cuda_graph_step_schedule_trains_every_batch_once(cpu_streams, optimizer):
    """On the CPU, with a stand-in graph: 3 eager warm-up steps, one capture, replays on the
    static inputs for every later full batch, the partial batches eager, and exactly the
    weights and metrics of the eager step. A batch trained twice, skipped, or replayed on
    stale inputs would change the weights."""
    batches = random_batches("cpu")
    cfg = device_cfg(cuda_graphs=True)
    _, eager_state, eager_metrics = train_steps(TrainStep, LeNet5, cfg, batches, "cpu",
                                                optimizer)
    graphed, graphed_state, graphed_metrics = train_steps(StandInGraphStep, LeNet5, cfg, batches,
                                                          "cpu", optimizer)
    assert graphed.eager_steps == 3 + 2  # warm-up + the partial batch of each epoch
    assert graphed.graph.replays == 2 * 8 - 3
    for a, b in zip(eager_state, graphed_state, strict=True):
        assert torch.equal(a, b)
    assert graphed_metrics == eager_metrics


@pytest.fixture
def deterministic_cudnn():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("model_name", "amp", "optimizer"), [
    ("lenet", None, "adam"), ("lenet", "bf16", "adam"), ("resnet18", None, "adam"),
    ("resnet18", "bf16", "adam"), ("lenet", None, "sgd"),
])
def test_cuda_graph_step_trains_like_the_eager_step(model_name, amp, optimizer,
                                                    deterministic_cudnn):
    """Same start, same batches (with a last, partial one): same weights, buffers and metrics.

    ResNet-18 with the small stem: the default stem's max-pool has no deterministic backward.
    SGD with momentum creates its buffers during the warm-up, Adam its moments.
    """
    from mnist_bench.models.resnet import resnet18_mnist

    model_fn = {"lenet": lambda: LeNet5(activation="relu"),
                "resnet18": lambda: resnet18_mnist(stem="small")}[model_name]
    cfg = device_cfg(amp=amp, channels_last=amp is not None, cuda_graphs=True)
    batches = random_batches("cuda")
    _, eager_state, eager_metrics = train_steps(TrainStep, model_fn, cfg, batches,
                                                optimizer=optimizer)
    graphed, graphed_state, graphed_metrics = train_steps(CUDAGraphTrainStep, model_fn, cfg,
                                                          batches, optimizer=optimizer)
    assert graphed.graph is not None and graphed.eager_steps == 3 + 2  # warm-up + 2 partial
    tol = 2e-4 if amp is None else 2e-2
    for a, b in zip(eager_state, graphed_state, strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    assert graphed_metrics == pytest.approx(eager_metrics, rel=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_resumes_an_unfused_adam_state():
    """Unfused, uncapturable Adam keeps its step count on the host; the graphed step moves it."""
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    model = LeNet5().to(cuda)
    optimizer = torch.optim.Adam(model.parameters(), fused=False, foreach=False)
    x, y = torch.rand(16, 1, 28, 28, device=cuda), torch.randint(0, 10, (16,), device=cuda)
    TrainStep(model, model, optimizer, cuda, device_cfg())(x, y)
    assert next(iter(optimizer.state.values()))["step"].device.type == "cpu"
    step = CUDAGraphTrainStep(model, model, optimizer, cuda, device_cfg(cuda_graphs=True))
    for _ in range(step.warmup_steps + 2):
        step(x, y)
    assert step.graph is not None and step.seen == 16 * (step.warmup_steps + 2)


def test_a_deterministic_job_does_not_leave_deterministic_kernels_on():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=False)  # the next job of the same multirun process
    assert not torch.are_deterministic_algorithms_enabled()

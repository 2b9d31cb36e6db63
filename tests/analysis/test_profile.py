"""attnexp-profile, activation memory, the fast defaults and eager-vs-compiled agreement."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path

import pytest
import torch

from attnexp.analysis import profile as prof
from attnexp.attention import available
from attnexp.cli.zoo import main as list_zoo
from attnexp.cli.zoo import zoo_entries
from attnexp.models import build_model
from attnexp.training import fast_defaults, host_memory


def resnet20(attention: str | None = None) -> torch.nn.Module:
    placements = [{"module": attention}] if attention else []
    return build_model("resnet20", num_classes=10, placements=placements)


# --------------------------------------------------------------------------- memory, speed
def test_saved_activations_on_meta_equal_a_real_forward() -> None:
    model = resnet20("se")
    shape = (2, 3, 32, 32)
    meta = prof.saved_activation_bytes(model, shape)
    real = prof._saved_bytes(copy.deepcopy(model), shape, torch.device("cpu"))
    assert meta == real
    # at least every block's conv inputs: 19 convs x (2, 16..64, 32..8, ...) floats
    assert meta > 2 * 16 * 32 * 32 * 4 * 7


def test_profile_model_measures_speed() -> None:
    settings = prof.Settings(device="cpu", batch=2, steps=1, warmup=0).resolved(None, 16)
    assert settings.precision == "32-true" and settings.batch == 2
    result = prof.profile_model(resnet20(), image_size=16, num_classes=10, settings=settings)
    assert result.costs.params == 269_722
    assert result.train_images_per_s > 0 and result.infer_images_per_s > 0
    assert result.activation_method == prof.SAVED_TENSORS_METHOD
    assert json.dumps(result.as_dict())  # serialisable


def test_speed_is_skipped_when_activations_exceed_the_limit() -> None:
    settings = prof.Settings(device="cpu", batch=2, max_activation_bytes=1).resolved(None, 32)
    result = prof.profile_model(resnet20(), image_size=32, num_classes=10, settings=settings)
    assert result.train_images_per_s is None and "speed skipped" in result.note


# --------------------------------------------------------------------------- configs, CLI
def test_sweep_jobs_follow_the_preset_and_the_command_line() -> None:
    jobs = prof.sweep_jobs(["experiment=demo"])
    assert [swept for swept, _ in jobs] == [
        ["attention=none"],
        ["attention=se"],
        ["attention=cbam"],
    ]
    jobs = prof.sweep_jobs(["experiment=demo", "attention=eca,gc"])
    assert [swept for swept, _ in jobs] == [["attention=eca"], ["attention=gc"]]
    assert all(job[0] == "experiment=demo" for _, job in jobs)


def test_zoo_jobs_cover_the_registry() -> None:
    jobs = prof.zoo_jobs([])
    assert sorted(name for name, _ in jobs) == available() and jobs[0][0] == "none"
    assert all("model=resnet50" in job and "data=imagenet" in job for _, job in jobs)
    jobs = prof.zoo_jobs(["model=resnet20", "attention=se"])
    assert all(job[0] == "model=resnet20" and job.count("attention=se") <= 1 for _, job in jobs)


def test_profile_cli_prints_costs_and_creates_no_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnexp.cli.profile import main

    monkeypatch.chdir(tmp_path)
    out_json = tmp_path / "p.json"
    assert main(["model=resnet20", "attention=se", "--no-speed", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "272,095" in text and "conv+linear multiply-adds" in text
    assert "saved_tensors_hooks" in text and "placements" in text
    assert os.listdir(tmp_path) == ["p.json"]  # no outputs/ run directory
    payload = json.loads(out_json.read_text())
    assert payload["results"][0]["costs"]["params"] == 272_095


def test_profile_cli_sweep_gives_one_row_per_job(capsys: pytest.CaptureFixture[str]) -> None:
    from attnexp.cli.profile import main

    assert main(["-m", "experiment=demo", "--no-speed"]) == 0
    text = capsys.readouterr().out
    for name in ("attention=none", "attention=se", "attention=cbam"):
        assert name in text


@pytest.mark.parametrize(
    ("overrides", "size", "why"),
    [
        (["model=resnet50"], 224, "ImageNet-family default of resnet50"),
        (["model=resnet20"], 32, "CIFAR-family default of resnet20"),
        (["model=resnet50", "data.image_size=64"], 64, "data.image_size of data=synthetic"),
        (["model=resnet18", "data=cifar10"], 32, "data.image_size of data=cifar10"),
    ],
)
def test_profile_input_size_follows_the_model_family_unless_data_is_given(
    overrides: list[str], size: int, why: str
) -> None:
    cfg = prof.compose(overrides)
    got, reason = prof.choose_image_size(cfg, overrides)
    assert (got, cfg.data.image_size, cfg.model.image_size) == (size, size, size)
    assert why in reason
    assert prof.choose_image_size(prof.compose(overrides), overrides, 96)[0] == 96


def test_profile_cli_says_which_input_size(capsys: pytest.CaptureFixture[str]) -> None:
    from attnexp.cli.profile import main

    assert main(["model=resnet50", "--no-speed"]) == 0
    text = capsys.readouterr().out
    assert "input 224x224 (the ImageNet-family default of resnet50" in text
    assert "4.087 G" in text  # ResNet-50 at 224 (10 classes: the synthetic data default)


def test_attention_listing() -> None:
    rows = zoo_entries(channels=64, size=8)
    assert [r.name for r in rows] == available()
    assert not [r.name for r in rows if r.error]
    by_name = {r.name: r for r in rows}
    assert by_name["none"].params == 0 and by_name["none"].macs == 0
    assert by_name["se"].params == 2 * 64 * 4 + 4 + 64  # SE: 2 C c + c + C
    assert list_zoo(["--channels", "32", "--size", "8", "--markdown"]) == 0


# --------------------------------------------------------------------------- fast defaults
def test_fast_defaults_resolve_per_device() -> None:
    assert fast_defaults.resolve_channels_last("auto", "cuda") is True
    assert fast_defaults.resolve_channels_last("auto", "cpu") is fast_defaults.CPU_CHANNELS_LAST
    assert fast_defaults.resolve_channels_last(True, "cpu") is True
    assert fast_defaults.resolve_compile("auto") == "auto"  # decided during fit
    assert fast_defaults.resolve_compile({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    assert fast_defaults.resolve_precision("auto", "cpu") == "32-true"
    assert fast_defaults.resolve_precision("16-mixed", "cpu") == "16-mixed"
    assert fast_defaults.device_type("gpu") == "cuda"
    with pytest.raises(ValueError, match="channels_last"):
        fast_defaults.resolve_channels_last("yes", "cpu")


def test_fast_optimizer_kernels() -> None:
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    cpu_kernel = fast_defaults.STEP_KERNEL["cpu"]
    assert fast_defaults.fast_optimizer(sgd, "cpu").keywords[cpu_kernel] is True
    assert fast_defaults.fast_optimizer(sgd, "cuda").keywords["fused"] is True
    user = functools.partial(torch.optim.SGD, lr=0.1, foreach=False)
    assert fast_defaults.fast_optimizer(user, "cuda") is user  # the user's choice stands
    opt = fast_defaults.fast_optimizer(sgd, "cpu")([torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults[cpu_kernel] is True
    for name in ("SGD", "AdamW"):  # the CPU kernel exists for the optimisers we configure
        factory = fast_defaults.fast_optimizer(getattr(torch.optim, name), "cpu")
        param = torch.nn.Parameter(torch.ones(3))
        param.grad = torch.ones(3)
        factory([param], lr=0.1).step()
        assert param.detach().lt(1).all()
    training, factory = fast_defaults.apply(
        {"channels_last": "auto", "compile": "auto"}, sgd, "cpu"
    )
    assert training == {
        "channels_last": fast_defaults.CPU_CHANNELS_LAST,
        "compile": "auto",
        "retain_host_memory": host_memory._glibc() is not None,  # on for CPU where it applies
    }
    assert factory.keywords[cpu_kernel] is True


# --------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("attention", [None, "se", "cbam", "eca", "gc"])
def test_compiled_model_matches_eager(attention: str | None) -> None:
    """torch.compile must not change results (known wrong-result bugs with some pooling +
    flatten patterns): float32 logits in eval and train mode, and the gradients of a
    cross-entropy loss, compared in float64. In float32 a rounding difference of 1e-7 can
    flip a ReLU or a max near a tie and move a gradient by a discrete step (measured: 1.7e-3
    relative for SE, 1.9e-3 for CBAM even between float32 and float64 *eager*), so float32
    gradients cannot tell a compiler bug from a kink; in float64 they can. About a minute per
    case on a 2-core CPU."""
    torch.manual_seed(0)
    eager = resnet20(attention)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    for mode in ("eval", "train"):
        getattr(eager, mode)()
        getattr(compiled, mode)()
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
    eager64 = copy.deepcopy(eager).double().train()
    compiled64 = copy.deepcopy(eager64)
    compiled64.compile()
    grads = []
    for model in (eager64, compiled64):
        torch.nn.functional.cross_entropy(model(x.double()), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    error = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert error < 1e-9, f"compiled gradients differ from eager by {error:.2e} (relative)"

"""The contract every registered module keeps, as checks that run on any registry name.

One implementation for two users: the test suite parametrises these checks over the whole
registry (``tests/attention/test_gate_contract.py``, ``test_conv_contract.py``), and
``python -m attnexp.attention check <name>`` runs them on one module, including a module
loaded from user code. A check raises :class:`ContractViolation` (an AssertionError, so
pytest shows it as a failed assertion) with a message naming the module and what broke.

Gates (and stage modules): (B, C, H, W) in, the same shape and dtype out, for several widths
and map sizes (H != W, odd, 1x1); a training batch of one; gradients reach every parameter
and are finite; deterministic eval; the same output in channels_last; finite under bf16
autocast; maps exposed only while recording; unknown options refused with the valid ones
listed; every option has a default; only ops with a deterministic CUDA kernel; and an exact
identity start that can still learn. Conv modules: the output size of a padded 3x3 conv for
strides 1 and 2, and the same gradient, memory-format, precision, map and option checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from attnexp.attention.base import AttentionModule, record_attention
from attnexp.attention.identity import init_identity
from attnexp.attention.registry import build_attention, build_conv, get_spec
from attnexp.errors import ConfigError

__all__ = [
    "CHECKS",
    "CUDA_NONDETERMINISTIC",
    "Check",
    "CheckResult",
    "ContractViolation",
    "checks_for",
    "ops_of_training_step",
    "run_check",
    "run_checks",
]

#: Gate widths: narrow CIFAR stages (16, 24: one-channel bottlenecks) and a wide one.
GATE_CHANNELS = (16, 24, 256)
#: Map sizes: H != W, odd, and 1x1 (the last stage of an ImageNet-stem ResNet on 32 px).
GATE_SIZES = ((8, 6), (7, 5), (1, 1))
CONV_CHANNELS = ((32, 32), (32, 64), (64, 64))
CONV_SIZES = ((8, 8), (7, 9))

#: Ops that raise on CUDA under ``torch.use_deterministic_algorithms(True)`` (forward ops
#: whose CUDA kernel is nondeterministic or raises; backward ops as ATen names them).
CUDA_NONDETERMINISTIC = frozenset(
    {
        "_adaptive_avg_pool2d_backward",
        "_adaptive_avg_pool3d_backward",
        "adaptive_max_pool2d_backward",
        "adaptive_max_pool3d_backward",
        "avg_pool3d_backward",
        "max_pool3d_with_indices_backward",
        "fractional_max_pool2d_backward",
        "fractional_max_pool3d_backward",
        "max_unpool2d",
        "max_unpool3d",
        "upsample_linear1d_backward",
        "upsample_bilinear2d_backward",
        "upsample_bicubic2d_backward",
        "upsample_trilinear3d_backward",
        "reflection_pad1d_backward",
        "reflection_pad2d_backward",
        "reflection_pad3d_backward",
        "replication_pad1d_backward",
        "replication_pad2d_backward",
        "replication_pad3d_backward",
        "grid_sampler_2d_backward",
        "grid_sampler_3d_backward",
        "embedding_bag",
        "_embedding_bag",
        "histc",
        "bincount",
        "kthvalue",
        "median",
        "nll_loss2d_forward",
        "ctc_loss",
        "_ctc_loss",
    }
)


class ContractViolation(AssertionError):
    """A module breaks the zoo's contract; the message says which module and how."""


def _expect(condition: object, message: str) -> None:
    if not condition:
        raise ContractViolation(message)


@dataclass(frozen=True)
class Check:
    """One contract check: a function of the registry name, for gates or conv modules."""

    name: str
    kinds: frozenset[str]
    run: Callable[[str], None]

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.run) or "").splitlines()[0]


@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    message: str = ""


CHECKS: dict[str, Check] = {}


def _check(*kinds: str) -> Callable[[Callable[[str], None]], Callable[[str], None]]:
    def add(fn: Callable[[str], None]) -> Callable[[str], None]:
        CHECKS[fn.__name__] = Check(fn.__name__, frozenset(kinds), fn)
        return fn

    return add


def _family(name: str) -> str:
    """``gate`` for gate and stage modules, ``conv`` for conv modules."""
    return "conv" if get_spec(name).kind == "conv" else "gate"


def checks_for(name: str) -> list[Check]:
    """The checks that apply to the registered module ``name``."""
    family = _family(name)
    return [c for c in CHECKS.values() if family in c.kinds]


def run_check(name: str, check: str) -> None:
    """Run one check on ``name`` with a fixed seed (global RNG state restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CHECKS[check].run(name)


def run_checks(name: str) -> list[CheckResult]:
    """Every applicable check on ``name``; failures are collected, not raised."""
    results = []
    for c in checks_for(name):
        try:
            run_check(name, c.name)
        except Exception as err:  # noqa: BLE001 - a crash is a failed check, reported
            message = str(err) or type(err).__name__
            if not isinstance(err, AssertionError):
                message = f"{type(err).__name__}: {message}"
            results.append(CheckResult(c.name, False, message))
        else:
            results.append(CheckResult(c.name, True))
    return results


# ----------------------------------------------------------------------------- helpers
def _sizes(name: str) -> list[tuple[int, int]]:
    m = get_spec(name).min_size
    return [s for s in GATE_SIZES if min(s) >= m] or [(m, m + 1)]


def _size(name: str) -> tuple[int, int]:
    return _sizes(name)[0]


def _gate(name: str, channels: int = 16) -> nn.Module:
    return build_attention(name, channels)


def _backward(out: torch.Tensor) -> None:
    (out * torch.randn_like(out)).sum().backward()


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_of_training_step(module: nn.Module, x: torch.Tensor) -> set[str]:
    """Every ATen op of a forward + backward pass in training mode (CPU dispatch)."""
    module.train()
    x = x.requires_grad_(True)
    with _OpNames() as recorder:
        module(x).float().square().mean().backward()
    return recorder.names


# ----------------------------------------------------------------------------- both kinds
@_check("gate", "conv")
def is_a_zoo_module(name: str) -> None:
    """A subclass of AttentionModule with a paper and a boolean has_residual."""
    spec = get_spec(name)
    _expect(issubclass(spec.cls, AttentionModule), f"{name}: not a subclass of AttentionModule")
    _expect(isinstance(spec.cls.has_residual, bool), f"{name}: has_residual is not a bool")
    _expect(spec.paper, f"{name}: register(..., paper=...) is empty")


@_check("gate", "conv")
def unknown_option_lists_the_valid_ones(name: str) -> None:
    """An unknown option is a ConfigError that names it and lists every valid option."""
    try:
        if _family(name) == "conv":
            build_conv(name, 32, 32, 1, not_an_option=1)
        else:
            build_attention(name, 16, not_an_option=1)
    except ConfigError as err:
        message = str(err)
    else:
        raise ContractViolation(f"{name}: an unknown option was accepted")
    _expect("not_an_option" in message, f"{name}: the error does not name the bad option")
    for option in get_spec(name).option_names():
        _expect(option in message, f"{name}: the error does not list option {option!r}")


@_check("gate", "conv")
def every_option_has_a_default(name: str) -> None:
    """The module builds from its name alone (the paper's module): no required knobs."""
    spec = get_spec(name)
    params = inspect.signature(spec.cls.__init__).parameters
    missing = [o for o in spec.option_names() if params[o].default is inspect.Parameter.empty]
    _expect(not missing, f"{name}: options without a default: {missing}")


@_check("gate", "conv")
def uses_only_deterministic_cuda_ops(name: str) -> None:
    """A training step uses no op without a deterministic CUDA kernel (trainer.deterministic)."""
    if _family(name) == "conv":
        module, x = build_conv(name, 32, 32, 2), torch.randn(2, 32, 8, 8)
    else:
        size = max(8, get_spec(name).min_size)
        module, x = build_attention(name, 32), torch.randn(2, 32, size, size)
    bad = ops_of_training_step(module, x) & CUDA_NONDETERMINISTIC
    _expect(not bad, f"{name}: ops without a deterministic CUDA kernel: {sorted(bad)}")


# ----------------------------------------------------------------------------- gates
@_check("gate")
def keeps_shape_and_dtype(name: str) -> None:
    """(B, C, H, W) in, the same shape and dtype out, finite, for every width and map size."""
    for channels in GATE_CHANNELS:
        module = build_attention(name, channels).train()
        for h, w in _sizes(name):
            x = torch.randn(2, channels, h, w)
            out = module(x)
            where = f"{name} at C={channels}, {h}x{w}"
            _expect(out.shape == x.shape, f"{where}: output shape {tuple(out.shape)}")
            _expect(out.dtype == x.dtype, f"{where}: output dtype {out.dtype}")
            _expect(torch.isfinite(out).all(), f"{where}: non-finite output")


@_check("gate")
def trains_on_a_batch_of_one(name: str) -> None:
    """A training batch of one (BatchNorm on pooled features fails there unless handled)."""
    h, w = _size(name)
    out = _gate(name).train()(torch.randn(1, 16, h, w))
    _expect(out.shape == (1, 16, h, w), f"{name}: batch of one gives {tuple(out.shape)}")
    _expect(torch.isfinite(out).all(), f"{name}: batch of one gives non-finite values")


@_check("gate")
def gradients_reach_every_parameter(name: str) -> None:
    """Every parameter gets a finite gradient, and a non-zero one in eval mode (none dead)."""
    # C=32, not 16: at 16 some papers' bottlenecks have one channel (GC: C/16 = 1, and a
    # LayerNorm over one value cuts the gradient to the context branch; documented there).
    module = _gate(name, 32)
    # Move zero-initialised parameters (identity-start gates, SGE/SA scales) off zero so
    # that every parameter can influence the output.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, *_size(name), requires_grad=True)
    module.train()
    _backward(module(x))
    _expect(x.grad is not None and torch.isfinite(x.grad).all(), f"{name}: input gradient")
    for pname, p in module.named_parameters():
        _expect(p.grad is not None, f"{name}.{pname} gets no gradient")
        _expect(torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient")
    # Eval mode: every parameter changes the output. In training mode a bias right before a
    # BatchNorm (BAM's official channel gate) has an exactly zero gradient by construction,
    # so this part is checked with running statistics.
    module.zero_grad()
    module.eval()
    _backward(module(x))
    for pname, p in module.named_parameters():
        _expect(p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} is dead")


@_check("gate")
def gradients_are_finite_on_the_smallest_map(name: str) -> None:
    """Finite output and gradients on the smallest map the module accepts."""
    m = get_spec(name).min_size
    module = _gate(name).train()
    x = torch.randn(2, 16, m, m, requires_grad=True)
    out = module(x)
    _backward(out)
    _expect(torch.isfinite(out).all(), f"{name}: non-finite output on a {m}x{m} map")
    _expect(x.grad is not None and torch.isfinite(x.grad).all(), f"{name}: input gradient")
    for pname, p in module.named_parameters():
        _expect(p.grad is None or torch.isfinite(p.grad).all(), f"{name}.{pname}")


@_check("gate")
def eval_output_is_deterministic(name: str) -> None:
    """Two eval passes on the same input give bit-identical outputs."""
    module = _gate(name).eval()
    x = torch.randn(2, 16, *_size(name))
    with torch.no_grad():
        _expect(torch.equal(module(x), module(x)), f"{name}: eval output differs between calls")


def _channels_last_matches(name: str, module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = module(x)
        module = module.to(memory_format=torch.channels_last)
        got = module(x.to(memory_format=torch.channels_last))
    _expect(got.shape == expected.shape, f"{name}: channels_last changes the shape")
    try:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    except AssertionError as err:
        raise ContractViolation(f"{name}: channels_last changes the output: {err}") from None


@_check("gate")
def channels_last_gives_the_same_output(name: str) -> None:
    """NHWC input and weights give the NCHW output (rtol 1e-4, atol 1e-5)."""
    _channels_last_matches(name, _gate(name).eval(), torch.randn(2, 16, *_size(name)))


@_check("gate")
def bf16_autocast_is_finite(name: str) -> None:
    """A training pass under CPU bf16 autocast keeps the shape and stays finite."""
    x = torch.randn(2, 16, *_size(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _gate(name).train()(x)
    _expect(out.shape == x.shape, f"{name}: bf16 changes the shape")
    _expect(torch.isfinite(out.float()).all(), f"{name}: non-finite output under bf16")


@_check("gate")
def maps_are_exposed_only_while_recording(name: str) -> None:
    """Maps appear under record_attention (detached float32, batch first) and only then."""
    module = _gate(name).eval()
    x = torch.randn(2, 16, *_size(name))
    with torch.no_grad():
        module(x)
        _expect(module.attention_maps == {}, f"{name}: maps kept without record_attention")
        with record_attention(module) as recorded:
            module(x)
            maps = dict(recorded[""].attention_maps)
    _expect(module.attention_maps == {} and not module.record_maps, f"{name}: maps not cleared")
    if not module.exposes_maps:
        return
    _expect(maps, f"{name} exposes no attention map (call self.expose(...) in forward)")
    for key, value in maps.items():
        where = f"{name} map {key!r} {tuple(value.shape)}"
        _expect(value.shape[0] == 2, f"{where}: batch axis first")
        _expect(value.dtype == torch.float32, f"{where}: not float32")
        _expect(torch.isfinite(value).all(), f"{where}: non-finite")
        _expect(not value.requires_grad, f"{where}: not detached")
    if "channel" in maps:
        _expect(maps["channel"].dim() == 2, f"{name}: 'channel' map must be (B, C)")
    if "spatial" in maps:
        spatial = maps["spatial"]
        _expect(
            spatial.dim() == 4 and spatial.shape[2:] == x.shape[2:],
            f"{name}: 'spatial' map must be (B, k, H, W), got {tuple(spatial.shape)}",
        )


@_check("gate")
def starts_as_the_identity_and_learns(name: str) -> None:
    """After init_identity the output equals the input exactly, and one step moves it."""
    module = _gate(name, 32)
    init_identity(module)
    h, w = _size(name)
    x = torch.randn(2, 32, h, w)
    for mode in ("train", "eval"):
        module.train(mode == "train")
        with torch.no_grad():
            diff = (module(x) - x).abs().max().item()
        _expect(diff < 1e-6, f"{name}: identity start is off by {diff:.3g} ({mode} mode)")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return  # parameter-free and the identity already (the 'none' gate)
    module.train()
    loss = (module(x) * torch.randn_like(x)).sum()
    loss.backward()
    moved = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
    _expect(moved, f"{name}: no parameter gets a gradient at the identity start")
    with torch.no_grad():
        for p in moved:
            p.sub_(p.grad.sign() * 0.1)
        module.eval()
        diff = (module(x) - x).abs().max().item()
    _expect(diff > 1e-6, f"{name}: one gradient step does not move it off the identity")


# ----------------------------------------------------------------------------- conv modules
@_check("conv")
def output_size_matches_a_padded_3x3_conv(name: str) -> None:
    """For strides 1 and 2 and several widths and sizes: the shape of Conv2d(k=3, pad=1)."""
    for stride in (1, 2):
        for c_in, c_out in CONV_CHANNELS:
            module = build_conv(name, c_in, c_out, stride).eval()
            reference = nn.Conv2d(c_in, c_out, 3, stride, padding=1)
            for h, w in CONV_SIZES:
                x = torch.randn(2, c_in, h, w)
                with torch.no_grad():
                    got, want = module(x).shape, reference(x).shape
                _expect(got == want, f"{name} {c_in}->{c_out} s{stride} {h}x{w}: {got} != {want}")


@_check("conv")
def conv_gradients_reach_every_parameter(name: str) -> None:
    """Every parameter of a strided conv module gets a finite gradient."""
    module = build_conv(name, 32, 64, 2).train()
    _backward(module(torch.randn(4, 32, 7, 9)))
    for pname, p in module.named_parameters():
        _expect(p.grad is not None, f"{name}.{pname} gets no gradient")
        _expect(torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient")


@_check("conv")
def conv_channels_last_gives_the_same_output(name: str) -> None:
    """NHWC input and weights give the NCHW output (rtol 1e-4, atol 1e-5)."""
    _channels_last_matches(name, build_conv(name, 32, 64, 1).eval(), torch.randn(2, 32, 7, 9))


@_check("conv")
def conv_bf16_autocast_is_finite(name: str) -> None:
    """A strided training pass under CPU bf16 autocast has the right shape and is finite."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build_conv(name, 32, 32, 2).train()(torch.randn(2, 32, 8, 8))
    _expect(out.shape == (2, 32, 4, 4), f"{name}: bf16 output shape {tuple(out.shape)}")
    _expect(torch.isfinite(out.float()).all(), f"{name}: non-finite output under bf16")


@_check("conv")
def branch_weights_are_exposed_while_recording(name: str) -> None:
    """Branch weights, if exposed, are (B, K) or (B, K, C); cleared when recording stops."""
    module = build_conv(name, 32, 64, 1).eval()
    with record_attention(module) as recorded, torch.no_grad():
        module(torch.randn(3, 32, 8, 8))
        maps = dict(recorded[""].attention_maps)
    _expect(module.attention_maps == {}, f"{name}: maps not cleared after recording")
    if "branch" in maps:
        weights = maps["branch"]
        _expect(weights.dim() in (2, 3), f"{name}: branch weights {tuple(weights.shape)}")
        _expect(weights.shape[0] == 3, f"{name}: branch weights must have the batch axis first")


@_check("conv")
def declares_whether_it_includes_norm_act(name: str) -> None:
    """``includes_norm_act`` is a bool (the backbone skips its own BN+ReLU when True)."""
    flag = getattr(get_spec(name).cls, "includes_norm_act", None)
    _expect(isinstance(flag, bool), f"{name}: class attribute includes_norm_act must be a bool")


@_check("conv")
def refuses_an_identity_start(name: str) -> None:
    """init_identity refuses a conv module with a ConfigError naming it."""
    try:
        init_identity(build_conv(name, 8, 8, 1))
    except ConfigError as err:
        _expect(name in str(err), f"{name}: the init_identity error does not name the module")
    else:
        raise ContractViolation(f"{name}: init_identity accepted a conv module")

"""Token family (BoTNet MHSA, external attention, ResT EMSA) against the papers' equations.

References are independent of the modules: the MHSA one follows BoTNet's official
formulation (relative logits via the ``rel_to_abs`` reshaping trick on tables of length
2L-1), the others are the papers' formulas in plain tensor ops, in float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from attnexp.attention import build_attention, get_spec, record_attention
from attnexp.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not spin on busy shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


# ----------------------------------------------------------------------------------------
# MHSA (BoTNet)
# ----------------------------------------------------------------------------------------
def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """(B, n, L, 2L-1) relative logits -> (B, n, L, L) absolute, by padding and reshaping."""
    b, n, length, _ = x.shape
    x = torch.cat([x, x.new_zeros(b, n, length, 1)], dim=3)
    flat = torch.cat([x.reshape(b, n, -1), x.new_zeros(b, n, length - 1)], dim=2)
    return flat.reshape(b, n, length + 1, 2 * length - 1)[:, :, :length, length - 1 :]


def relative_logits_1d(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """q (B, n, X, Y, d), table (2Y-1, d) -> (B, n, X, Y, Y_key)."""
    b, n, xs, ys, _ = q.shape
    logits = torch.einsum("bnxyd,md->bnxym", q, table).reshape(b, n * xs, ys, 2 * ys - 1)
    return rel_to_abs(logits).reshape(b, n, xs, ys, ys)


def mhsa_reference(m, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    heads, d = m.heads, c // m.heads
    weight = m.qkv.weight.reshape(3, heads, d, c)
    q, k, v = (torch.einsum("ndc,bchw->bnhwd", weight[i], x) for i in range(3))
    q = q * d**-0.5
    logits = torch.einsum("bnxyd,bnpqd->bnxypq", q, k)
    size = m.max_size
    if m.position == "relative":
        table_w = m.width_embedding[size - w : size + w - 1]  # offsets -(W-1)..(W-1)
        table_h = m.height_embedding[size - h : size + h - 1]
        rel_w = relative_logits_1d(q, table_w)  # (b, n, x, y, q)
        rel_h = relative_logits_1d(q.transpose(2, 3), table_h).transpose(2, 3)  # (b,n,x,y,p)
        logits = logits + rel_w[:, :, :, :, None, :] + rel_h[:, :, :, :, :, None]
    elif m.position == "absolute":
        emb = m.height_embedding[:h, None, :] + m.width_embedding[None, :w, :]
        logits = logits + torch.einsum("bnxyd,pqd->bnxypq", q, emb)
    logits = logits.reshape(b, heads, h * w, h * w)
    attn = torch.exp(logits - logits.amax(-1, keepdim=True))
    attn = attn / attn.sum(-1, keepdim=True)
    out = attn @ v.reshape(b, heads, h * w, d)  # (b, n, HW, d)
    return out.permute(0, 1, 3, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("position", ["relative", "absolute", "none"])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (3, 8)])
def test_mhsa_matches_botnet_formulation(position: str, size: tuple[int, int]) -> None:
    m = build_attention("mhsa_gate", 8, heads=2, position=position, max_size=8).double()
    randomise(m, seed=5)
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), mhsa_reference(m, x))


@pytest.mark.parametrize("size", [(1, 1), (2, 7), (7, 5), (8, 8)])
def test_mhsa_any_size_up_to_max_size(size: tuple[int, int]) -> None:
    m = build_attention("mhsa_gate", 16, max_size=8)
    x = torch.randn(2, 16, *size)
    with record_attention(m):
        y = m(x)
        pos = m.attention_maps["position"]
    assert y.shape == x.shape
    assert pos.shape == (2, 4, *size)
    torch.testing.assert_close(pos.sum((2, 3)), torch.ones(2, 4))


@pytest.mark.parametrize("position", ["relative", "absolute"])
def test_mhsa_beyond_max_size_is_config_error(position: str) -> None:
    m = build_attention("mhsa_gate", 16, position=position, max_size=8)
    with pytest.raises(ConfigError, match="max_size"):
        m(torch.randn(1, 16, 9, 2))
    with pytest.raises(ConfigError, match="max_size"):
        build_attention("mhsa_gate", 16)(torch.randn(1, 16, 3, 65))  # default max_size 64
    build_attention("mhsa_gate", 16, position="none", max_size=2)(torch.randn(1, 16, 3, 3))


def test_mhsa_heads_must_divide_channels() -> None:
    for c in (16, 24, 64, 256):
        assert build_attention("mhsa_gate", c).heads == 4  # the default works for every width
    with pytest.raises(ConfigError, match=r"heads.*valid heads for 24 channels: 1, 2, 3, 4, 6"):
        build_attention("mhsa_gate", 24, heads=5)


@pytest.mark.parametrize("channels", [16, 24, 256])
@pytest.mark.parametrize("position", ["relative", "absolute", "none"])
def test_mhsa_parameter_count(channels: int, position: str) -> None:
    d, size = channels // 4, 64
    table = {"relative": 2 * (2 * size - 1) * d, "absolute": 2 * size * d, "none": 0}[position]
    m = build_attention("mhsa_gate", channels, position=position)
    assert n_params(m) == 3 * channels * channels + table


# ----------------------------------------------------------------------------------------
# External attention
# ----------------------------------------------------------------------------------------
def external_reference(m, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    sd = m.state_dict()
    f = torch.einsum("oc,bcn->bon", sd["conv_in.weight"].reshape(c, c), x.reshape(b, c, -1))
    if m.norm == "softmax":  # the only mode where this bias can matter
        f = f + sd["conv_in.bias"][None, :, None]
    logits = torch.einsum("sc,bcn->bsn", sd["memory_key.weight"].reshape(-1, c), f)  # (B,S,N)
    e = torch.exp(logits)
    if m.norm == "double":
        a = e / e.sum(dim=2, keepdim=True)  # softmax over the N positions
        a = a / a.sum(dim=1, keepdim=True)  # then L1 over the S memory units
    else:
        a = e / e.sum(dim=1, keepdim=True)  # one softmax over the memory units
    out = torch.einsum("cs,bsn->bcn", sd["memory_value.weight"].reshape(c, -1), a)
    out = torch.einsum("oc,bcn->bon", sd["conv_out.weight"].reshape(c, c), out)
    bn = m.bn
    out = (out - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + 1e-5)
    out = out * bn.weight[None, :, None] + bn.bias[None, :, None]
    out = out.reshape(b, c, h, w)
    return (out + x if m.residual else out), a.reshape(b, -1, h, w)


@pytest.mark.parametrize("norm", ["double", "softmax"])
@pytest.mark.parametrize("residual", [True, False])
def test_external_attention_matches_formulas(norm: str, residual: bool) -> None:
    m = build_attention("external", 6, memory_size=5, norm=norm, residual=residual).double()
    randomise(m, seed=6)
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    m.eval()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    ref_out, ref_attn = external_reference(m, x)
    with record_attention(m):
        out = m(x)
        attn = m.attention_maps["spatial"].double()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-6, atol=1e-7)  # exposed as float32
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 4, 3, dtype=torch.float64))
    assert m.has_residual is residual


def test_external_double_norm_differs_from_single_softmax() -> None:
    """The two normalisations are different functions (not a renaming)."""
    x = torch.randn(2, 16, 5, 4)
    maps = {}
    for norm in ("double", "softmax"):
        torch.manual_seed(0)
        m = build_attention("external", 16, norm=norm)
        with record_attention(m):
            m(x)
            maps[norm] = m.attention_maps["spatial"]
    assert not torch.allclose(maps["double"], maps["softmax"])


@pytest.mark.parametrize("channels", [16, 24, 256])
@pytest.mark.parametrize("memory_size", [8, 64])
@pytest.mark.parametrize("norm", ["double", "softmax"])
def test_external_parameter_count(channels: int, memory_size: int, norm: str) -> None:
    c, s = channels, memory_size
    # conv_in C*C (+C bias with softmax), M_k S*C, M_v C*S, conv_out C*C (no bias), BN 2C
    expected = c * c + 2 * s * c + c * c + 2 * c + (c if norm == "softmax" else 0)
    assert n_params(build_attention("external", c, memory_size=s, norm=norm)) == expected


# ----------------------------------------------------------------------------------------
# EMSA (ResT)
# ----------------------------------------------------------------------------------------
def emsa_reference(m, x: torch.Tensor, dead: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """ResT eq. 3. ``dead``: values for the official biases the module omits (default 0)."""
    dead = dead or {}
    b, c, h, w = x.shape
    n, d = m.heads, c // m.heads
    tokens = x.reshape(b, c, h * w).transpose(1, 2)
    q = (tokens @ m.q.weight.T + m.q.bias).reshape(b, h * w, n, d).transpose(1, 2)
    transform = m.transform and n > 1
    # The official module has biases on k, v and the LayerNorm; those that cannot change the
    # output are absent from the module, so they are zero here.
    zeros = torch.zeros(c, dtype=x.dtype)
    ln_bias = dead.get("ln", zeros) if transform else m.sr_norm.bias if m.sr_ratio > 1 else None
    v_bias = dead.get("v", zeros) if transform else m.v_bias
    kv_bias = torch.cat([dead.get("k", zeros), v_bias])
    if m.sr_ratio > 1:
        s = m.sr_ratio
        red = F.conv2d(x, m.sr.weight, m.sr.bias, stride=s, padding=s // 2, groups=c)
        red = red.reshape(b, c, -1).transpose(1, 2)
        mu, var = red.mean(-1, keepdim=True), red.var(-1, unbiased=False, keepdim=True)
        red = (red - mu) / torch.sqrt(var + 1e-5) * m.sr_norm.weight + ln_bias
    else:
        red = tokens
    kv = red @ m.kv.weight.T + kv_bias
    k = kv[..., :c].reshape(b, -1, n, d).transpose(1, 2)
    v = kv[..., c:].reshape(b, -1, n, d).transpose(1, 2)
    attn = q @ k.transpose(-1, -2) / d**0.5
    if transform:
        attn = torch.einsum("mn,bnij->bmij", m.transform_conv.weight.reshape(n, n), attn)
        attn = attn + dead.get("transform", torch.zeros(n, dtype=x.dtype))[None, :, None, None]
        attn = torch.softmax(attn, -1)
        attn = F.instance_norm(attn, eps=1e-5)
    else:
        attn = torch.softmax(attn, -1)
    out = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
    out = out @ m.proj.weight.T + m.proj.bias
    return out.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize(
    ("heads", "sr_ratio", "transform", "size"),
    [
        (4, 2, True, (7, 5)),
        (4, 2, False, (7, 5)),
        (2, 1, True, (3, 4)),
        (1, 2, True, (4, 4)),
        (4, 4, True, (9, 6)),
        (2, 3, True, (5, 7)),
    ],
)
def test_emsa_matches_paper(heads: int, sr_ratio: int, transform: bool, size) -> None:
    # float32: float64 grouped convs take a very slow reference path on CPU.
    m = build_attention("emsa", 8, heads=heads, sr_ratio=sr_ratio, transform=transform)
    randomise(m, seed=7)
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(m(x), emsa_reference(m, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transform", [True, False])
def test_emsa_official_biases_left_out_are_dead(transform: bool) -> None:
    m = build_attention("emsa", 8, heads=4, sr_ratio=2, transform=transform)
    randomise(m, seed=8)
    gen = torch.Generator().manual_seed(9)
    dead = {k: torch.randn(n, generator=gen) for k, n in [("k", 8), ("transform", 4)]}
    if transform:  # rows of the instance-normalised attention sum to 0: value shifts cancel
        dead |= {k: torch.randn(8, generator=gen) for k in ("v", "ln")}
    x = torch.randn(2, 8, 5, 6)
    expected = emsa_reference(m, x, dead)
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_emsa_small_maps_and_sr_limits() -> None:
    m = build_attention("emsa", 16)
    for size in [(1, 1), (1, 3), (2, 2), (7, 5)]:
        x = torch.randn(2, 16, *size)
        with record_attention(m):
            y = m(x)
            grid = tuple((n - 1) // 2 + 1 for n in size)  # kernel 3, stride 2, padding 1
            assert m.attention_maps["position"].shape == (2, 4, *grid)
        assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ConfigError, match="sr_ratio"):
        build_attention("emsa", 16, sr_ratio=3)(torch.randn(2, 16, 1, 1))
    with pytest.raises(ConfigError, match="heads"):
        build_attention("emsa", 24, heads=16)


@pytest.mark.parametrize("channels", [16, 24, 256])
@pytest.mark.parametrize(("heads", "sr_ratio"), [(4, 2), (1, 1), (2, 4)])
def test_emsa_parameter_count(channels: int, heads: int, sr_ratio: int) -> None:
    c, transform = channels, heads > 1
    expected = 4 * c * c + 2 * c  # q (C->C, bias), kv (C->2C, no bias), proj (C->C, bias)
    if not transform:
        expected += c  # v bias: only live without the instance-normalised attention
    if sr_ratio > 1:
        expected += c * (sr_ratio + 1) ** 2 + c  # depth-wise conv with bias
        expected += c if transform else 2 * c  # LayerNorm (its shift is dead with transform)
    if transform:
        expected += heads * heads  # 1x1 conv across heads, no bias
    m = build_attention("emsa", c, heads=heads, sr_ratio=sr_ratio)
    assert n_params(m) == expected


# ----------------------------------------------------------------------------------------
# Registry facts and option validation
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "residual", "memory"),
    [
        ("mhsa_gate", False, "quadratic"),
        ("external", True, "linear"),
        ("emsa", False, "quadratic"),
    ],
)
def test_registry_entries(name: str, residual: bool, memory: str) -> None:
    spec = get_spec(name)
    assert spec.residual is residual
    assert spec.cls.has_residual is residual
    assert build_attention(name, 16).has_residual is residual
    assert spec.memory == memory
    assert spec.min_size == 1


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("mhsa_gate", {"heads": 0}, "heads"),
        ("mhsa_gate", {"heads": 3}, "heads"),
        ("mhsa_gate", {"position": "rotary"}, "position"),
        ("mhsa_gate", {"max_size": 0}, "max_size"),
        ("external", {"memory_size": 0}, "memory_size"),
        ("external", {"norm": "l2"}, "norm"),
        ("external", {"residual": 1}, "residual"),
        ("emsa", {"sr_ratio": 0}, "sr_ratio"),
        ("emsa", {"heads": 5}, "heads"),
        ("emsa", {"transform": "no"}, "transform"),
    ],
)
def test_invalid_options_name_the_option(name: str, options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_attention(name, 16, **options)

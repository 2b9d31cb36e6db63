"""Augmentation: mixup/cutmix targets, and the in-memory (batched) and streaming
(torchvision.transforms.v2) paths drawing from the same distributions.

Statistical tests use fixed seeds, so each runs the same numbers every time (they cannot
flake); the thresholds are the two-sample critical values at p = 1e-6, so a real
difference in distribution fails them while sampling noise of this size never would.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.transforms import v2

from attnexp.data import build_datamodule
from attnexp.data.augment import (
    OPS,
    AugmentOptions,
    ImageAugment,
    Mixer,
    _apply_op,
    augment_options,
    erasing_boxes,
    mixed_targets,
    sample_ops,
)
from attnexp.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from datagen import write_image_folder  # noqa: E402

N = 4000  # draws per distribution


def _ks_limit(n: int, m: int, p: float = 1e-6) -> float:
    """Two-sample Kolmogorov-Smirnov critical value at level ``p``."""
    return math.sqrt(-math.log(p / 2) / 2) * math.sqrt((n + m) / (n * m))


# -- mixup / cutmix ---------------------------------------------------------------------------
def test_mixup_mixes_images_and_targets_as_specified() -> None:
    mixer = Mixer(AugmentOptions(mixup_alpha=0.4), seed=3)
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8)
    mixed, partner, lam = mixer(x, y, step=5)
    assert 0.0 <= lam <= 1.0
    assert torch.equal(partner, y.roll(1))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    # the lam-weighted CE the module uses is the CE of the mixed one-hot targets
    logits = torch.randn(8, 10)
    weighted = F.cross_entropy(logits, y) * lam + F.cross_entropy(logits, partner) * (1 - lam)
    soft = F.cross_entropy(logits, mixed_targets(y, partner, lam, 10))
    torch.testing.assert_close(weighted, soft)
    # the same step draws the same lam (resume), another step another one
    assert mixer(x, y, step=5)[2] == lam and mixer(x, y, step=6)[2] != lam


def test_cutmix_pastes_the_box_and_corrects_lam_to_its_area() -> None:
    mixer = Mixer(AugmentOptions(cutmix_alpha=1.0), seed=0)
    x, y = torch.randn(4, 3, 20, 24), torch.arange(4)
    for step in range(50):
        params = mixer.sample(20, 24, mixer.rng(step))
        mixed, partner = Mixer.apply(x, y, params)
        y1, y2, x1, x2 = params.box
        inside = torch.zeros(20, 24, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(mixed[..., inside], x.roll(1, 0)[..., inside])
        assert torch.equal(mixed[..., ~inside], x[..., ~inside])
        assert params.lam == pytest.approx(1 - inside.sum().item() / (20 * 24))


def _torchvision_lams(transform: v2.Transform, n: int, size: int = 32) -> np.ndarray:
    torch.manual_seed(0)
    images, labels = torch.rand(2, 3, size, size), torch.tensor([0, 1])
    return np.array([float(transform(images, labels)[1][0, 0]) for _ in range(n)])


def _our_lams(options: AugmentOptions, n: int, size: int = 32) -> np.ndarray:
    mixer = Mixer(options, seed=0)
    return np.array([mixer.sample(size, size, mixer.rng(step)).lam for step in range(n)])


@pytest.mark.parametrize(
    ("options", "reference"),
    [
        (AugmentOptions(mixup_alpha=0.2), v2.MixUp(alpha=0.2, num_classes=2)),
        (AugmentOptions(mixup_alpha=1.0), v2.MixUp(alpha=1.0, num_classes=2)),
        (AugmentOptions(cutmix_alpha=1.0), v2.CutMix(alpha=1.0, num_classes=2)),
    ],
    ids=["mixup0.2", "mixup1.0", "cutmix1.0"],
)
def test_mixing_coefficients_follow_torchvision(options, reference) -> None:
    ours, theirs = _our_lams(options, N), _torchvision_lams(reference, N)
    statistic = stats.ks_2samp(ours, theirs).statistic
    assert statistic < _ks_limit(N, N), f"KS {statistic:.4f}"
    if options.mixup_alpha:  # and lam ~ Beta(alpha, alpha) itself
        beta = stats.kstest(ours, "beta", args=(options.mixup_alpha, options.mixup_alpha))
        assert beta.statistic < _ks_limit(N, 10**9)


def test_mix_prob_and_switch_prob() -> None:
    mixer = Mixer(AugmentOptions(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.5, switch_prob=0.25))
    kinds = [mixer.sample(32, 32, mixer.rng(s)).kind for s in range(N)]
    counts = {k: kinds.count(k) / N for k in ("none", "mixup", "cutmix")}
    # expected 0.5 / 0.375 / 0.125; 6 binomial standard deviations
    for kind, p in (("none", 0.5), ("mixup", 0.375), ("cutmix", 0.125)):
        assert abs(counts[kind] - p) < 6 * math.sqrt(p * (1 - p) / N), counts


# -- RandAugment / TrivialAugmentWide -------------------------------------------------------
class _Recording:
    """Wraps a torchvision auto-augment instance to record the (op, magnitude) it applies."""

    def __init__(self, transform: v2.Transform) -> None:
        self.seen: list[tuple[str, float]] = []
        original = transform._apply_image_or_video_transform

        def record(image, transform_id, magnitude, interpolation, fill):
            self.seen.append((transform_id, round(float(magnitude), 6)))
            return original(image, transform_id, magnitude, interpolation, fill)

        transform._apply_image_or_video_transform = record


def _streaming_policy(tmp_path: Path, augment: dict) -> v2.Transform:
    root = write_image_folder(tmp_path / "folder", per_class=2, special=False)
    dm = build_datamodule(
        {
            "name": "imagefolder",
            "root": str(root),
            "in_memory": False,
            "num_workers": 0,
            "augment": augment,
        }
    )
    policies = [
        t
        for t in dm.datasets["train"].transform.transforms
        if isinstance(t, (v2.RandAugment, v2.TrivialAugmentWide))
    ]
    assert len(policies) == 1, "the streaming path must use torchvision's policy"
    return policies[0]


def _compare_draws(ours: list[tuple[str, float]], theirs: list[tuple[str, float]]) -> None:
    keys = sorted(set(ours) | set(theirs))
    a = np.array([sum(1 for d in ours if d == k) for k in keys])
    b = np.array([sum(1 for d in theirs if d == k) for k in keys])
    assert set(ours) <= set(theirs) | set(ours)
    # chi-square test of homogeneity between the two samples (fixed seeds: deterministic)
    result = stats.chi2_contingency(np.stack([a, b]) + 0)
    assert result.pvalue > 1e-6, f"p = {result.pvalue:.3g}: op/magnitude draws differ"


@pytest.mark.parametrize(
    "augment",
    [{"randaugment": {"num_ops": 2, "magnitude": 9}}, {"trivialaugment": True}],
    ids=["randaugment", "trivialaugment"],
)
def test_in_memory_and_streaming_draw_the_same_ops(augment: dict, tmp_path: Path) -> None:
    policy = _streaming_policy(tmp_path, augment)
    recorder = _Recording(policy)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    draws = 2000
    for _ in range(draws):
        policy(image)
    options = augment_options({"augment": augment})
    ops, mags = sample_ops(
        draws, 32, 32, torch.Generator().manual_seed(0), options.randaugment, options.trivialaugment
    )
    ours = [
        (
            OPS[int(o)],
            round(float(m), 6)
            if OPS[int(o)] not in ("Identity", "AutoContrast", "Equalize")
            else 0.0,
        )
        for o, m in zip(ops.flatten().tolist(), mags.flatten().tolist(), strict=True)
    ]
    # torchvision draws slot 1 then slot 2 per image; ours are grouped by slot: same multiset
    theirs = [
        (op, m if op not in ("Identity", "AutoContrast", "Equalize") else 0.0)
        for op, m in recorder.seen
    ]
    theirs = [(op, float(int(m))) if op == "Posterize" else (op, m) for op, m in theirs]
    ours = [(op, float(int(m))) if op == "Posterize" else (op, m) for op, m in ours]
    assert len(ours) == len(theirs)
    assert {op for op, _ in ours} == set(OPS)
    _compare_draws(ours, theirs)


def _reference(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    ra = v2.RandAugment()
    return ra._apply_image_or_video_transform(image, op, magnitude, ra.interpolation, ra._fill)


@pytest.mark.parametrize("op", [o for o in OPS if o != "Identity"])
def test_batched_ops_equal_torchvision_per_image(op: str) -> None:
    torch.manual_seed(1)
    # smooth images with structure (a gradient plus noise), so every op changes them
    base = torch.linspace(0, 255, 32).view(1, 1, 1, 32) * torch.linspace(0.3, 1, 32).view(
        1, 1, 32, 1
    )
    x = (base + torch.randint(-30, 30, (6, 3, 32, 32))).clamp(0, 255).to(torch.uint8)
    signed = {"ShearX": 0.3, "ShearY": 0.2, "TranslateX": 7.9, "TranslateY": -5.5, "Rotate": 23.0}
    magnitude = {
        **signed,
        "Brightness": 0.6,
        "Color": -0.5,
        "Contrast": 0.7,
        "Sharpness": -0.9,
        "Posterize": 4.0,
        "Solarize": 0.55,
        "AutoContrast": 0.0,
        "Equalize": 0.0,
    }[op]
    mags = torch.tensor(
        [magnitude, -magnitude, magnitude / 2, magnitude, -magnitude / 3, magnitude],
        dtype=torch.float64,
    )
    if op in ("Posterize",):
        mags = torch.tensor([4.0, 2.0, 8.0, 5.0, 3.0, 6.0], dtype=torch.float64)
    if op == "Solarize":
        mags = mags.abs()
    ours = _apply_op(x, op, mags)
    theirs = torch.stack(
        [
            _reference(x[i], op, int(m) if op == "Posterize" else float(m))
            for i, m in enumerate(mags.tolist())
        ]
    )
    diff = (ours.int() - theirs.int()).abs()
    assert torch.equal(ours, theirs), f"{op}: {int((diff > 0).sum())} pixels differ"


def test_random_erasing_boxes_follow_torchvision() -> None:
    torch.manual_seed(0)
    erasing = v2.RandomErasing(p=0.5, value=0)
    image = torch.zeros(3, 32, 40)
    theirs = []
    for _ in range(N):
        if torch.rand(1) < erasing.p:
            params = erasing.make_params([image])
            theirs.append(params["h"] * params["w"] if params["v"] is not None else 0)
        else:
            theirs.append(0)
    boxes = erasing_boxes(N, 32, 40, 0.5, torch.Generator().manual_seed(0))
    ours = (boxes[:, 2] * boxes[:, 3]).numpy()
    assert ((boxes[:, 0] + boxes[:, 2]) <= 32).all() and ((boxes[:, 1] + boxes[:, 3]) <= 40).all()
    statistic = stats.ks_2samp(ours, np.array(theirs)).statistic
    assert statistic < _ks_limit(N, N), f"KS {statistic:.4f}"


# -- the in-memory loader ---------------------------------------------------------------------
def test_in_memory_loader_applies_the_policy_deterministically() -> None:
    cfg = {"name": "synthetic", "num_train": 64, "num_val": 32, "num_test": 32, "batch_size": 32}
    plain = build_datamodule(cfg)
    augmented = build_datamodule(
        {**cfg, "augment": {"trivialaugment": True, "random_erasing": 0.5}}
    )
    assert augmented.augment.extra == ImageAugment(None, True, 0.5)
    a = [x for x, _ in augmented.train_dataloader()]
    b = [
        x
        for x, _ in build_datamodule(
            {**cfg, "augment": {"trivialaugment": True, "random_erasing": 0.5}}
        ).train_dataloader()
    ]
    p = [x for x, _ in plain.train_dataloader()]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # same seed, same batches
    assert not all(torch.equal(u, v) for u, v in zip(a, p, strict=True))
    # validation batches are never augmented
    assert torch.equal(
        next(iter(augmented.val_dataloader()))[0], next(iter(plain.val_dataloader()))[0]
    )


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown data.augment option"):
        augment_options({"augment": {"mixup": 0.2}})
    with pytest.raises(ConfigError, match="mix_prob must be in"):
        augment_options({"augment": {"mix_prob": 2}})
    with pytest.raises(ConfigError, match="magnitude must be an integer"):
        augment_options({"augment": {"randaugment": {"num_ops": 2, "magnitude": 40}}})
    with pytest.raises(ConfigError, match="choose one"):
        augment_options({"augment": {"randaugment": {}, "trivialaugment": True}})

"""Models, losses, metrics, optimizers by name; bad names and combinations fail at once."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")

from raysegment.config import TrainConfig, load_config  # noqa: E402
from raysegment.errors import ConfigError, UnknownNameError  # noqa: E402
from raysegment.train.components import (  # noqa: E402
    ARCHITECTURES,
    LOSSES,
    METRICS,
    NNUNET_ARCHITECTURES,
    OPTIMIZERS,
    DeepSupervision,
    build_model,
    check_combination,
    check_encoder,
    make_loss,
    metric_values,
    supervise,
    unet_topology,
)
from raysegment.train.data import IGNORE  # noqa: E402
from raysegment.train.loop import EarlyStopping, _stats, forward, place, train_step  # noqa: E402

CPU = torch.device("cpu")

REQUIRED = ["images.dir=i", "labels.dir=l", "output=o"]
SIZES = {"PAN": 128, "DPT": 224}
ENCODERS = {"DPT": "tu-vit_tiny_patch16_224"}


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, (), REQUIRED + list(overrides))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_runs_and_traces(arch: str) -> None:
    encoder = ENCODERS.get(arch, "resnet18")
    check_combination(_cfg(f"model.arch={arch}", f"model.encoder={encoder}"))
    check_encoder(encoder)
    model = build_model(arch, encoder, in_channels=2, classes=3).eval()
    x = torch.randn(1, 2, SIZES.get(arch, 64), SIZES.get(arch, 64))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), y, atol=1e-4)
    assert y.shape == (1, 3, *x.shape[2:])
    # Each trains in channels-last, the layout CPU workers take (``layout=auto``).
    assert place(model, (2, *x.shape[2:]), CPU, "auto", "float32") == "channels_last"
    optimizer = OPTIMIZERS.get("Adam")(model.train().parameters(), 1e-3)
    loss_fn = LOSSES.get("DiceLoss")[0]("multiclass")
    labels = torch.randint(0, 3, (2, *x.shape[2:]))
    x = torch.randn(2, *x.shape[1:]).contiguous(memory_format=torch.channels_last)
    assert math.isfinite(train_step(model, optimizer, loss_fn, x, labels, "float32", None))


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.names() if n != "SparseAdam"])
def test_every_optimizer_takes_a_step(name: str) -> None:
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    before = model.weight.detach().clone()
    opt = OPTIMIZERS.get(name)(model.parameters(), 0.1)
    x = torch.randn(2, 1, 8, 8)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - 1).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert not torch.equal(before, model.weight)


MODE_TARGETS = {
    "binary": lambda: (torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16)).float()),
    "multilabel": lambda: (torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 3, 16, 16)).float()),
    "multiclass": lambda: (torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))),
}


def _confident(target: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Logits that predict ``target`` with high confidence."""
    if target.dtype == torch.int64:  # multiclass indices -> one-hot logits
        onehot = torch.nn.functional.one_hot(target, shape[1]).permute(0, 3, 1, 2).float()
        return (onehot * 2 - 1) * 20
    return (target * 2 - 1) * 20


@pytest.mark.parametrize("loss", LOSSES.names())
@pytest.mark.parametrize("mode", list(MODE_TARGETS))
def test_losses_compute_or_refuse_the_mode(loss: str, mode: str) -> None:
    factory, modes = LOSSES.get(loss)
    cfg = _cfg(f"loss={loss}", f"mode={mode}")
    if mode not in modes:
        with pytest.raises(ConfigError, match=f"loss={loss} does not support mode={mode}"):
            check_combination(cfg)
        return
    check_combination(cfg)
    for seed in range(5):  # several draws: a loss given logits where it wants probabilities
        torch.manual_seed(seed)  # can come out NaN for some inputs only
        logits, target = MODE_TARGETS[mode]()
        logits = (logits * 4).requires_grad_(True)
        value = factory(mode)(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
        perfect = factory(mode)(_confident(target, logits.shape), target)
        assert perfect < value  # the loss rewards a right prediction


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("mode", list(MODE_TARGETS))
@pytest.mark.parametrize("dims", [2, 3])
def test_dice_ce_is_nnunets_loss(mode: str, ignore: bool, dims: int) -> None:
    """``DiceCELoss`` is nnU-Net's loss as its trainer builds it, value (plus 1: its Dice
    term is -Dice) and gradient: ``DC_and_CE_loss`` (softmax; batch Dice without the
    background) and, for sigmoid outputs, ``DC_and_BCE_loss`` (a region-based training's;
    every channel), with pixels not labelled (``ignore_label``; a last target channel
    marking them) or without."""
    losses = pytest.importorskip("nnunetv2.training.loss.compound_losses")
    dice = pytest.importorskip("nnunetv2.training.loss.dice")
    torch.manual_seed(1)
    classes = 3 if mode != "binary" else 1
    shape = (4, classes, *[12] * dims)
    logits = torch.randn(shape) * 3
    if mode == "multiclass":
        target = torch.randint(0, classes, (shape[0], *shape[2:]))
    else:
        target = (torch.rand(shape) > 0.6).float()
    unlabelled = torch.rand(shape[0], *shape[2:]) < 0.3
    kwargs = {"batch_dice": True, "smooth": 1e-5, "ddp": False}
    memory = dice.MemoryEfficientSoftDiceLoss
    if mode == "multiclass":
        theirs = losses.DC_and_CE_loss(
            {**kwargs, "do_bg": False}, {}, 1, 1, IGNORE if ignore else None, memory
        )
        if ignore:
            target[unlabelled] = IGNORE
        their_target = target[:, None]
    else:
        theirs = losses.DC_and_BCE_loss({}, {**kwargs, "do_bg": True}, 1, 1, ignore, memory)
        their_target = target
        if ignore:
            target = torch.where(unlabelled[:, None], IGNORE, target)
            their_target = torch.cat([their_target, unlabelled[:, None].float()], 1)
    ours = LOSSES.get("DiceCELoss")[0](mode, IGNORE if ignore else None)
    mine, their = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    value, want = ours(mine, target), theirs(their, their_target)
    value.backward()
    want.backward()
    assert float(value) == pytest.approx(float(want) + 1, rel=1e-5)
    torch.testing.assert_close(mine.grad, their.grad, rtol=1e-4, atol=1e-7)


SUPPORTED = [(loss, mode) for loss in LOSSES.names() for mode in LOSSES.get(loss)[1]]


def _partly_unlabelled(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, targets with about 40% of pixels IGNORE, and where the logits' pixels are
    not labelled."""
    logits, target = MODE_TARGETS[mode]()
    ignored = torch.rand(target.shape) < 0.4
    target = target.masked_fill(ignored, IGNORE)
    unlabelled = ignored[:, None].expand_as(logits) if mode == "multiclass" else ignored
    return logits, target, unlabelled


@pytest.mark.parametrize("loss, mode", SUPPORTED)
def test_losses_leave_out_pixels_not_labelled(loss: str, mode: str) -> None:
    """With pixels not labelled, a loss neither sees them (its value is the same whatever
    the logits there) nor learns from them (their gradient is zero) but learns from the
    rest; a batch without a labelled pixel gives 0; MCCLoss, which cannot leave pixels
    out, is refused in one line."""
    if loss == "MCCLoss":
        with pytest.raises(ConfigError, match="loss=MCCLoss cannot leave out pixels"):
            make_loss(loss, mode, ignores=True)
        return
    loss_fn = make_loss(loss, mode, ignores=True)
    for seed in range(3):
        torch.manual_seed(seed)
        logits, target, unlabelled = _partly_unlabelled(mode)
        logits = (logits * 4).requires_grad_(True)
        value = loss_fn(logits, target)
        value.backward()
        assert torch.isfinite(value)
        assert (logits.grad[unlabelled] == 0).all() and logits.grad[~unlabelled].abs().sum() > 0
        moved = logits.detach() + torch.randn_like(logits) * 10 * unlabelled
        assert torch.allclose(loss_fn(moved, target), value.detach(), atol=1e-5)
        perfect = _confident(target.clamp(min=0), logits.shape)
        assert loss_fn(perfect, target) < value
    nothing = torch.full_like(target, IGNORE)
    logits = torch.randn(logits.shape, requires_grad=True)
    zero = loss_fn(logits, nothing)
    zero.backward()
    assert zero == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("mode, classes", [("binary", 1), ("multilabel", 3), ("multiclass", 3)])
def test_metrics_count_the_labelled_pixels_only(mode: str, classes: int) -> None:
    """The validation counts (tp, fp, fn, tn per class) leave out pixels not labelled: a
    batch whose second patch is wholly unlabelled counts as its first patch alone; with
    none unlabelled they are segmentation-models-pytorch's."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    logits, target, _ = _partly_unlabelled(mode)
    counts = _stats(logits, target, mode, classes)
    labelled = target != IGNORE
    labelled = labelled.sum() if mode == "multiclass" else labelled.sum((0, 2, 3))
    assert torch.equal(counts.sum(0), torch.as_tensor(labelled).double().expand(classes))
    logits, target = MODE_TARGETS[mode]()
    first = _stats(logits[:1], target[:1], mode, classes)
    target[1] = IGNORE
    assert torch.equal(_stats(logits, target, mode, classes), first)
    if mode != "multiclass":
        target = target.clamp(min=0).long()
        tp, fp, fn, tn = smp.metrics.get_stats(torch.sigmoid(logits), target, mode, threshold=0.5)
        want = torch.stack([tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)]).double()
        assert torch.equal(_stats(logits, target.float(), mode, classes), want)


@pytest.mark.parametrize("arch", NNUNET_ARCHITECTURES)
@pytest.mark.parametrize("patch", [(64, 64), (16, 32, 48)])
def test_nnunets_networks_build_for_2d_and_3d_patches_and_train(arch: str, patch: tuple) -> None:
    check_combination(_cfg(f"model.arch={arch}", f"patch_size=[{','.join(map(str, patch))}]"))
    model = build_model(arch, "resnet18", 2, 3, patch=patch, features=4).eval()
    convolutions = [
        m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
    ]
    assert {m.weight.ndim - 2 for m in convolutions} == {len(patch)}
    # nnU-Net's widths: the first stage's features, doubled a stage
    stages = len(unet_topology(patch)[0])
    assert model.encoder.output_channels == [4 * 2**i for i in range(stages)]
    x = torch.randn(1, 2, *patch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), y, atol=1e-4)
    assert y.shape == (1, 3, *patch)
    optimizer = OPTIMIZERS.get("Adam")(model.train().parameters(), 1e-3)
    loss_fn = LOSSES.get("DiceLoss")[0]("multiclass")
    labels = torch.randint(0, 3, (2, *patch))
    assert math.isfinite(
        train_step(model, optimizer, loss_fn, torch.randn(2, 2, *patch), labels, "float32", None)
    )


@pytest.mark.parametrize("mode,classes", [("multiclass", 3), ("binary", 1)])
def test_deep_supervision_weighs_every_stage_against_its_downsampled_labels(
    mode: str, classes: int
) -> None:
    """nnU-Net's deep supervision: each decoder stage's logits against the labels at its
    size (nearest: every f-th voxel from f // 2, IGNORE kept), weighted 1, 1/2, .. the
    coarsest 0, summing to 1; every parameter gets a gradient; off, the full resolution's
    logits alone, from the same weights."""
    patch, spacing = (16, 32, 48), (2.0, 0.5, 0.5)
    model = build_model("PlainConvUNet", "", 1, classes, patch=patch, features=4, spacing=spacing)
    x = torch.randn(2, 1, *patch)
    assert supervise(model, True)
    stages = model(x)
    # Strides [1,1,1], [1,2,2], [1,2,2], [2,2,2]: the decoder's outputs at 1, (1,2,2), (1,4,4).
    factors = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert [tuple(s.shape[2:]) for s in stages] == [
        tuple(p // f for p, f in zip(patch, fs, strict=True)) for fs in factors
    ]
    if mode == "multiclass":
        target = torch.randint(0, classes, (2, *patch))
    else:
        target = torch.randint(0, 2, (2, 1, *patch)).float()
    target[0, ..., :4, :] = IGNORE
    plain = make_loss("DiceLoss", mode, ignores=True)
    want = 0.0
    for w, out, fs in zip([1, 0.5, 0], stages, factors, strict=True):
        at = tuple(slice(f // 2, None, f) for f in fs)
        want += w / 1.5 * plain(out, target[(..., *at)])
    loss = DeepSupervision(plain)(stages, target)
    assert torch.allclose(loss, want)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert supervise(model, False)
    with torch.no_grad():
        assert torch.allclose(model(x), stages[0].detach(), atol=1e-5)
    assert not supervise(build_model("Unet", "resnet18", 1, 1), True)  # SMP's: none


def test_nnunets_recipe_loads_on_the_defaults_and_its_names_resolve() -> None:
    """conf/nnunet.yaml over conf/train.yaml: nnU-Net's planner (patch and batch), voxel
    size, resampling and normalization, network, loss, optimizer (SGD, Nesterov momentum
    0.99, weight decay 3e-5), schedule and augmentations; a patch of one's own in its
    place."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    files = [conf / "train.yaml", conf / "nnunet.yaml"]
    cfg = load_config(TrainConfig, files, REQUIRED)
    check_combination(cfg)
    assert (cfg.model.arch, cfg.loss, cfg.augment) == ("PlainConvUNet", "DiceCELoss", "nnunet")
    assert cfg.model.deep_supervision and cfg.lr_schedule.name.value == "poly"
    assert (cfg.plan, cfg.patch_size, cfg.batch_size, cfg.dims()) == ("3d_fullres", None, None, 3)
    assert (cfg.resample_to, cfg.resampling, cfg.normalization) == ("median", "nnunet", "nnunet")
    assert (cfg.steps_per_epoch, cfg.max_epochs, cfg.keep) == (250, 1000, "last")
    assert (cfg.oversample_foreground, cfg.oversample_by) == (0.33, "batch")
    own = load_config(TrainConfig, files, [*REQUIRED, "plan=null", "patch_size=[32,64,64]"])
    check_combination(own)
    assert own.patch() == (32, 64, 64)
    optimizer = OPTIMIZERS.get(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))], cfg.lr)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.99, 3e-5)


def test_nnunets_networks_stride_and_convolve_as_nnunets_planner_does() -> None:
    """Each stage's strides and kernels: nnU-Net's planner's for the patch and spacing
    (isotropic; a CT's 5 mm slices of 0.8 mm voxels; an EM volume's 40 nm sections of 8 nm
    pixels), and a patch its network cannot halve evenly is refused naming nnU-Net's."""
    topology = pytest.importorskip(
        "nnunetv2.experiment_planning.experiment_planners.network_topology"
    )
    cases = [
        ((16, 32, 32), None),
        ((20, 48, 48), None),
        ((28, 256, 256), None),
        ((40, 224, 192), None),
        ((512, 512), None),
        ((16, 32, 48), None),
        ((16, 160, 160), (5.0, 0.8, 0.8)),
        ((24, 192, 160), (2.5, 0.7, 0.7)),
        ((32, 256, 256), (40.0, 8.0, 8.0)),
        ((64, 96, 96), (1.0, 1.2, 1.2)),
        ((256, 224), (0.5, 0.3)),
        ((8, 8), None),
    ]
    for patch, spacing in cases:
        _, strides, kernels, planned, _ = topology.get_pool_and_conv_props(
            list(spacing or [1.0] * len(patch)), patch, 4, 999999
        )
        assert tuple(planned) == patch
        want = [list(s) for s in strides], [list(k) for k in kernels]
        assert unet_topology(patch, spacing) == want, (patch, spacing)
    # nnU-Net would pad this patch to a multiple of what it halves it by: named.
    _, _, _, planned, _ = topology.get_pool_and_conv_props([1.0] * 3, (36, 64, 64), 4, 999999)
    with pytest.raises(ConfigError, match=r"of \[8, 16, 16\], e.g. patch_size=\[40, 64, 64\]$"):
        unet_topology((36, 64, 64))
    assert list(planned) == [40, 64, 64]
    # The smallest patch it halves passes the check made before the data are read.
    check_combination(_cfg("model.arch=PlainConvUNet", "patch_size=[8,8]"))


@pytest.mark.parametrize(
    "patch,arch,match",
    [
        ("[16,64,64]", "Unet", r"trains a 3D network and model.arch=Unet is 2D"),
        ("[4,6,10]", "PlainConvUNet", r"too small for PlainConvUNet"),
        ("[8,16,16,16]", "PlainConvUNet", r"give 1 to 3 positive sizes"),
    ],
)
def test_3d_patches_need_nnunets_networks_of_a_few_stages(
    patch: str, arch: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check_combination(_cfg(f"patch_size={patch}", f"model.arch={arch}"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.arch=Unett", "unknown model.arch 'Unett' \\(did you mean 'Unet'\\?\\)"),
        ("model.encoder=resnet19", "not a segmentation-models-pytorch encoder; did you mean"),
        ("model.encoder=tu-not_a_model", "timm has no model"),
        ("optimizer=Adamm", "unknown optimizer 'Adamm'; choose from \\['ASGD'"),
        ("loss=DiceLos", "unknown loss 'DiceLos'; choose from"),
        ("metric=dice", "unknown metric 'dice'; choose from \\['accuracy', 'fscore', 'iou'"),
        ("optimizer=SparseAdam", "needs sparse gradients"),
        ("model.weights=/nonexistent.pt", "nothing is downloaded"),
    ],
)
def test_bad_names_fail_at_once_with_choices(override: str, match: str) -> None:
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        cfg = _cfg(override)
        check_combination(cfg)
        check_encoder(cfg.model.encoder)


def test_weights_file_loads_whole_model_or_encoder(tmp_path) -> None:
    model = build_model("Unet", "resnet18", 1, 1)
    torch.save(model.state_dict(), tmp_path / "whole.pt")
    torch.save(model.encoder.state_dict(), tmp_path / "encoder.pt")
    for name in ("whole.pt", "encoder.pt"):
        loaded = build_model("Unet", "resnet18", 1, 1, str(tmp_path / name))
        assert torch.equal(loaded.encoder.conv1.weight, model.encoder.conv1.weight)
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("Unet", "resnet18", 1, 1, str(tmp_path / "bad.pt"))


def test_metrics_from_summed_stats() -> None:
    target = torch.tensor([[[[1, 1, 0, 0]]]]).float()
    logits = torch.tensor([[[[5.0, -5.0, 5.0, -5.0]]]])
    stats = _stats(logits, target, "binary", 1)
    assert stats[:, 0].tolist() == [1, 1, 1, 1]  # tp, fp, fn, tn
    values = metric_values(stats)
    assert set(values) == set(METRICS.names())
    assert values["iou"] == pytest.approx(1 / 3) and values["accuracy"] == pytest.approx(0.5)
    assert values["precision"] == pytest.approx(0.5) and values["recall"] == pytest.approx(0.5)


def test_early_stopping_stops_after_patience_bad_epochs() -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    losses = [1.0, 0.9, 0.895, 0.89, 0.95, 0.5, 0.6, 0.7, 0.8]
    decisions = [stopper.update(v, e) for e, v in enumerate(losses)]
    stops = [e for e, (_, stop) in enumerate(decisions) if stop]
    # 0.895 and 0.89 do not beat 0.9 by 0.01; 0.95 is the third bad epoch -> stop at epoch 4
    assert stops[0] == 4
    fresh = EarlyStopping(patience=3, min_delta=0.01)
    for e, v in enumerate(losses[:5]):
        improved, stop = fresh.update(v, e)
    assert stop and not improved and fresh.best == 0.9 and fresh.best_epoch == 1
    clone = EarlyStopping(3, 0.01)
    clone.load_state_dict(fresh.state_dict())
    assert clone.state_dict() == fresh.state_dict()


def test_reduced_precision_steps_run_the_model_in_it_and_keep_float32_weights() -> None:
    """bfloat16: the convolutions run in it (autocast), weights and loss stay float32 and
    it learns; float16 scales its loss (the path GPU workers take) and learns too."""
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", in_channels=1, classes=1)
    seen: list[torch.dtype] = []
    model.encoder.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    optimizer = OPTIMIZERS.get("Adam")(model.parameters(), 0.003)
    loss_fn = LOSSES.get("DiceLoss")[0]("binary")
    x = torch.randn(4, 1, 64, 64)
    y = (x > 0.5).float()
    losses = [train_step(model, optimizer, loss_fn, x, y, "bfloat16", None) for _ in range(6)]
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]
    seen.clear()
    train_step(model, optimizer, loss_fn, x, y, "float32", None)
    assert seen == [torch.float32]

    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(conv.parameters(), 0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    target = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    mse = torch.nn.functional.mse_loss
    fp16 = [train_step(conv, optimizer, mse, x, target, "float16", scaler) for _ in range(20)]
    assert fp16[-1] < fp16[0] / 2 and scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in conv.parameters())


@pytest.mark.parametrize("mode, classes", [("binary", 1), ("multilabel", 3), ("multiclass", 3)])
def test_channels_last_training_agrees_with_channels_first(mode: str, classes: int) -> None:
    """The same model and batches in either layout: its convolutions run channels-last,
    the gradients are the same (float64), three float32 steps' losses and the metrics
    after them agree; ``place`` leaves the batch norms' statistics as they were."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 64, 64)
    if mode == "multiclass":
        y = torch.randint(0, classes, (4, 64, 64))
    else:
        y = (torch.randn(4, classes, 64, 64) > 0.3).float()
    runs = {}
    for layout in ("channels_first", "channels_last"):
        torch.manual_seed(1)
        model = build_model("Unet", "resnet18", in_channels=1, classes=classes)
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        # auto on a CPU: channels-last, after its test forwards
        asked = "auto" if layout == "channels_last" else layout
        assert place(model, (1, 64, 64), CPU, asked, "float32") == layout
        assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
        last: list[bool] = []

        def hook(m: object, i: object, out: torch.Tensor, last: list[bool] = last) -> None:
            last.append(out.is_contiguous(memory_format=torch.channels_last))

        model.encoder.conv1.register_forward_hook(hook)
        memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        batch = x.contiguous(memory_format=memory)
        optimizer = OPTIMIZERS.get("SGD")(model.train().parameters(), 0.1)
        loss_fn = LOSSES.get("DiceLoss")[0](mode)
        twin = copy.deepcopy(model).double()  # same weights and layout, float64 arithmetic
        loss_fn(twin(batch.double()), y).backward()
        gradient = torch.cat([p.grad.flatten() for p in twin.parameters()])
        losses = [
            train_step(model, optimizer, loss_fn, batch, y, "float32", None) for i in (0, 1, 2)
        ]
        with torch.no_grad():
            stats = _stats(forward(model.eval(), batch, "float32"), y, mode, classes)
        runs[layout] = (losses, stats, gradient, set(last))
    (lf, sf, gf, cf), (ll, sl, gl, cl) = runs["channels_first"], runs["channels_last"]
    assert cf == {False} and cl == {True}
    assert ll == pytest.approx(lf, rel=1e-3)
    assert torch.allclose(sl, sf, rtol=0.01, atol=64)  # pixel counts of 4 x 64^2
    # The same arithmetic: float64 gradients agree to its rounding (1e-14 of their norm
    # here; float32's kernels round differently in each layout, up to 1% of it).
    assert float((gl - gf).norm() / gf.norm()) < 1e-9


def test_float16_training_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="precision=float16 trains on GPUs"):
        _cfg("precision=float16", "device=cpu")
    with pytest.raises(ConfigError, match="LBFGS evaluates the loss again"):
        check_combination(_cfg("precision=float16", "optimizer=LBFGS"))
    check_combination(_cfg("precision=bfloat16", "optimizer=LBFGS"))


def _ddp_worker(rank: int, port: int, mode: str) -> None:
    """One of 2 gloo processes, its half of a batch of 4: our ``DiceCELoss`` and nnU-Net's
    (``ddp=True``), value and gradient; the Dice term gathered is the whole batch's."""
    import torch.distributed as dist
    from nnunetv2.training.loss import compound_losses, dice

    from raysegment.train.components import _BatchDice

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(2)
        classes = 3 if mode == "multiclass" else 2
        logits = torch.randn(4, classes, 10, 12) * 3
        settings = {"batch_dice": True, "smooth": 1e-5, "ddp": True}
        if mode == "multiclass":
            target = torch.randint(0, classes, (4, 10, 12))
            their_target = target[:, None]
            theirs = compound_losses.DC_and_CE_loss(
                {**settings, "do_bg": False}, {}, 1, 1, None, dice.MemoryEfficientSoftDiceLoss
            )
        else:
            target = their_target = (torch.rand(logits.shape) > 0.6).float()
            theirs = compound_losses.DC_and_BCE_loss(
                {}, {**settings, "do_bg": True}, 1, 1, False, dice.MemoryEfficientSoftDiceLoss
            )
        ours = LOSSES.get("DiceCELoss")[0](mode, None)
        half = slice(2 * rank, 2 * rank + 2)
        mine = logits[half].clone().requires_grad_(True)
        their = logits[half].clone().requires_grad_(True)
        value, want = ours(mine, target[half]), theirs(their, their_target[half])
        value.backward()
        want.backward()
        assert float(value) == pytest.approx(float(want) + 1, rel=1e-5)
        torch.testing.assert_close(mine.grad, their.grad, rtol=1e-4, atol=1e-7)
        term = _BatchDice(mode)
        gathered = term(logits[half].clone().requires_grad_(True), target[half])
        with torch.no_grad():  # not gathered (validation's batches differ among workers)
            whole, own = term(logits, target), term(logits[half], target[half])
        assert float(gathered) == pytest.approx(float(whole), rel=1e-6)
        assert float(own) != pytest.approx(float(whole), rel=1e-3)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_dice_ce_gathers_the_workers_batch_dice_as_nnunet_does(mode: str) -> None:
    """Data-parallel workers (2 gloo processes): the batch Dice of every worker's patches
    together, the gradient of each worker's own summed back (nnU-Net's ``AllGatherGrad``),
    equal to nnU-Net's ``ddp=True`` loss; validation (no gradient) sums its own."""
    pytest.importorskip("nnunetv2.training.loss.compound_losses")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, mode), nprocs=2)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_model_directory_keeps_the_best_or_the_last_epochs_weights(tmp_path, keep) -> None:
    """``keep=best``: the weights of the epoch of the lowest validation loss; ``keep=last``:
    the last epoch's (nnU-Net predicts with its final checkpoint's), trained channels-last
    or not: TorchScript and state dict alike."""
    import numpy as np
    import tifffile

    from raysegment.train.components import model_for
    from raysegment.train.data import prepare
    from raysegment.train.export import export_model
    from raysegment.train.loop import METRIC_COLUMNS

    rng = np.random.default_rng(0)
    for folder in ("img", "lbl"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "img" / f"a{i}.tif", rng.integers(0, 999, (48, 64), np.uint16))
        tifffile.imwrite(tmp_path / "lbl" / f"a{i}.tif", rng.integers(0, 2, (48, 64), np.uint8))
    cfg_args = [
        f"images.dir={tmp_path / 'img'}",
        f"labels.dir={tmp_path / 'lbl'}",
        f"output={tmp_path / 'out'}",
        "patch_size=32",
        "model.arch=PlainConvUNet",
        "model.features=4",
    ]
    cfg = load_config(TrainConfig, (), [*cfg_args, f"keep={keep}"])
    data = prepare(cfg)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(model_for(cfg, data, weights=False).state_dict())
    last = {
        k: v.to(memory_format=torch.channels_last) if v.ndim == 4 else v
        for k, v in states[1].items()
    }
    stopper = EarlyStopping(10, 0.0)
    history = []
    for epoch, loss in enumerate((0.5, 0.7)):  # the first epoch is the best
        stopper.update(loss, epoch)
        history.append({k: 0.0 for k in METRIC_COLUMNS} | {"epoch": epoch + 1, "val_loss": loss})
    state = {"best": states[0], "model": last, "history": history, "stopper": stopper.state_dict()}
    summary = export_model(tmp_path / "out", cfg, data, state, {}, "test")
    assert summary.best_epoch == 1
    want = states[0] if keep == "best" else states[1]
    weights = torch.load(tmp_path / "out" / "weights.pt")
    assert weights.keys() == want.keys()
    assert all(torch.equal(weights[k], want[k]) and weights[k].is_contiguous() for k in want)
    traced = torch.jit.load(str(tmp_path / "out" / "model.pth"))
    model = model_for(cfg, data, weights=False)
    model.load_state_dict(want)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model.eval()(x))
    with pytest.raises(ConfigError, match=r"keep='first': choose best \(the epoch of"):
        load_config(TrainConfig, (), [*cfg_args, "keep=first"])

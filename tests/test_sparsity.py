"""Fine-grained / N:M sparsity: scores, masks, prune reparametrisation, and the sparse safetensors format."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

import search_spaces.sparsity as sp
from search_spaces.sparse_format import dense_bytes, load_sparse, save_sparse
from search_spaces.zoo.resnet_cifar import CifarResNet
from search_spaces.zoo.small_cnn import SmallCNN

Batch = tuple[torch.Tensor, torch.Tensor]


def _t(model: nn.Module, path: str) -> torch.Tensor:
    """A tensor attribute by dotted path ("fc.weight", "0.weight_mask"), typed for mypy."""
    module_path, _, attr = path.rpartition(".")
    tensor = getattr(model.get_submodule(module_path), attr)
    assert isinstance(tensor, torch.Tensor)
    return tensor


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _batches(shape: tuple[int, ...], sizes: tuple[int, ...] = (3, 2), classes: int = 10) -> list[Batch]:
    return [(torch.randn(b, *shape), torch.randint(0, classes, (b,))) for b in sizes]


def _magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    scores = sp.weight_scores(model, _layers(model), "magnitude", None)
    return {n: sp.unstructured_mask(s, sparsity, per_output=False) for n, s in scores.items()}


# ---------------------------------------------------------------- masks


def test_magnitude_mask_keeps_exactly_the_larger_half() -> None:
    scores = torch.randperm(16).float().reshape(4, 4)
    assert torch.equal(sp.unstructured_mask(scores, 0.5, per_output=False), scores >= 8)


def test_mask_removes_round_of_sparsity_times_n_even_with_ties() -> None:
    assert int((~sp.unstructured_mask(torch.rand(10), 0.26, per_output=False)).sum()) == 3
    assert int(sp.unstructured_mask(torch.zeros(10), 0.5, per_output=False).sum()) == 5
    assert sp.unstructured_mask(torch.rand(3, 3), 0.0, per_output=True).all()
    assert not sp.unstructured_mask(torch.rand(3, 3), 1.0, per_output=True).any()
    with pytest.raises(ValueError, match="sparsity"):
        sp.unstructured_mask(torch.rand(3), 1.5, per_output=False)


def test_per_output_mask_keeps_the_same_count_in_every_row() -> None:
    # Row o holds scores around 100 * o, so a global threshold would empty the low rows.
    scores = torch.rand(4, 2, 3, 3) + 100 * torch.arange(4.0).reshape(4, 1, 1, 1)
    global_mask = sp.unstructured_mask(scores, 0.5, per_output=False)
    assert global_mask.reshape(4, -1).sum(1).tolist() == [0, 0, 18, 18]
    mask = sp.unstructured_mask(scores, 0.5, per_output=True)
    assert mask.reshape(4, -1).sum(1).tolist() == [9, 9, 9, 9]
    rows, keep = scores.reshape(4, -1), mask.reshape(4, -1)
    for o in range(4):
        assert rows[o][keep[o]].min() > rows[o][~keep[o]].max()


@pytest.mark.parametrize("shape", [(8, 16), (8, 16, 3, 3)])
def test_nm_mask_keeps_the_top_two_of_every_four(shape: tuple[int, ...]) -> None:
    scores = torch.rand(shape)
    mask = sp.nm_mask(scores, 2, 4)
    groups, keep = scores.reshape(8, -1, 4), mask.reshape(8, -1, 4)
    assert (keep.sum(2) == 2).all()
    kept_min = torch.where(keep, groups, torch.inf).amin(2)
    dropped_max = torch.where(keep, -torch.inf, groups).amax(2)
    assert (kept_min > dropped_max).all()
    weight = torch.randn(shape)
    assert sp.is_nm_sparse(weight * mask, 2, 4)
    assert not sp.is_nm_sparse(weight, 2, 4)
    assert sp.is_nm_sparse(weight * sp.nm_mask(scores, 1, 4), 1, 4)


def test_nm_rejects_input_dims_not_divisible_by_m() -> None:
    with pytest.raises(ValueError, match="m=4"):
        sp.nm_mask(torch.rand(16, 3, 3, 3), 2, 4)
    assert not sp.is_nm_sparse(torch.zeros(16, 3, 3, 3), 2, 4)
    three_in_group = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    assert not sp.is_nm_sparse(three_in_group, 2, 4)


def test_nm_eligible() -> None:
    assert not sp.nm_eligible(nn.Conv2d(3, 16, 3))  # RGB stem: 27 inputs per output
    assert sp.nm_eligible(nn.Conv2d(16, 16, 3))
    assert not sp.nm_eligible(nn.Conv2d(16, 16, 3, groups=16))  # depthwise: 9 inputs per output
    assert sp.nm_eligible(nn.Linear(12, 4))
    assert not sp.nm_eligible(nn.Linear(10, 4))
    assert not sp.nm_eligible(nn.BatchNorm2d(16))


# ---------------------------------------------------------------- scores


def test_unknown_criterion_and_missing_calibration() -> None:
    model = SmallCNN(width=4)
    with pytest.raises(ValueError, match=r"sparse_criterion.*magnitude.*wanda.*obd"):
        sp.weight_scores(model, ["fc"], "taylor", None)
    for criterion in ("wanda", "obd"):
        with pytest.raises(ValueError, match=criterion):
            sp.weight_scores(model, ["fc"], criterion, None)
    with pytest.raises(ValueError, match=r"stem\.1"):
        sp.weight_scores(model, ["stem.1"], "magnitude", None)  # BatchNorm, not a weight layer
    with pytest.raises(ValueError, match="nope"):
        sp.weight_scores(model, ["nope"], "magnitude", None)


def test_magnitude_scores_are_abs_weight() -> None:
    model = SmallCNN(width=4)
    scores = sp.weight_scores(model, ["stem.0", "fc"], "magnitude", None)
    assert torch.equal(scores["fc"], model.fc.weight.detach().abs())
    assert scores["stem.0"].shape == model.stem[0].weight.shape


def test_wanda_ranking_follows_weight_times_input_norm() -> None:
    layer = nn.Linear(3, 1, bias=False)
    layer.weight.data = torch.tensor([[1.0, 2.0, 4.0]])
    scale = torch.tensor([100.0, 1.0, 0.01])
    batches = [(torch.randn(b, 3) * scale, torch.zeros(b, dtype=torch.long)) for b in (5, 4)]
    model = nn.Sequential(layer)
    wanda = sp.weight_scores(model, ["0"], "wanda", batches)["0"]
    norms = torch.cat([x for x, _ in batches]).norm(dim=0)
    assert torch.allclose(wanda, layer.weight.detach().abs() * norms)
    magnitude = sp.weight_scores(model, ["0"], "magnitude", None)["0"]
    assert wanda.argsort(dim=1).tolist() == [[2, 1, 0]]
    assert magnitude.argsort(dim=1).tolist() == [[0, 1, 2]]
    assert sp.unstructured_mask(wanda, 1 / 3, per_output=True).tolist() == [[True, True, False]]
    assert sp.unstructured_mask(magnitude, 1 / 3, per_output=True).tolist() == [[False, True, True]]


def test_wanda_linear_on_token_inputs_uses_every_token() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    batches = [(torch.randn(b, 5, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(b)) for b in (2, 3)]
    scores = sp.weight_scores(model, ["0"], "wanda", batches)["0"]
    norms = torch.cat([x.reshape(-1, 4) for x, _ in batches]).norm(dim=0)
    assert torch.allclose(scores, _t(model, "0.weight").detach().abs() * norms)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_wanda_conv_maps_input_channels_per_group(groups: int) -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=groups, bias=False)
    model = nn.Sequential(conv)
    batches = [(torch.randn(b, 4, 5, 5) * torch.tensor([1.0, 10.0, 100.0, 1000.0]).reshape(4, 1, 1), torch.zeros(b))
               for b in (2, 1)]
    scores = sp.weight_scores(model, ["0"], "wanda", batches)["0"]
    x = torch.cat([x for x, _ in batches])
    norms = x.transpose(0, 1).reshape(4, -1).norm(dim=1)
    in_per_group, out_per_group = 4 // groups, 8 // groups
    w = conv.weight.detach().abs()
    for o in range(8):
        for j in range(in_per_group):
            channel = (o // out_per_group) * in_per_group + j
            assert torch.allclose(scores[o, j], w[o, j] * norms[channel])


def test_wanda_leaves_no_hooks_and_restores_mode() -> None:
    model = SmallCNN(width=4).train()
    sp.weight_scores(model, _layers(model), "wanda", _batches((1, 8, 8)))
    assert model.training
    assert all(not m._forward_pre_hooks for m in model.modules())


def _reference_obd(model: nn.Module, layer: str, batches: list[Batch]) -> torch.Tensor:
    """0.5 * mean per-sample squared gradient * w^2, by plain autograd one sample at a time."""
    ref = copy.deepcopy(model).eval()
    weight = _t(ref, f"{layer}.weight")
    sq, count = torch.zeros_like(weight), 0
    for x, y in batches:
        for i in range(len(x)):
            ref.zero_grad()
            F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]).backward()
            assert weight.grad is not None
            sq += weight.grad.detach() ** 2
            count += 1
    return 0.5 * sq / count * weight.detach() ** 2


def test_obd_is_half_fisher_times_w_squared_and_zero_without_gradient() -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    batches = _batches((3,), classes=4)
    for x, _ in batches:
        x[:, 2] = 0.0  # input feature 2 never fires: column 2 has zero gradient
    scores = sp.weight_scores(model, ["0"], "obd", batches)["0"]
    assert torch.allclose(scores, _reference_obd(model, "0", batches), rtol=1e-4, atol=1e-9)
    assert (scores[:, 2] == 0).all()
    assert (scores[:, :2] > 0).all()


def test_obd_on_a_bn_cnn_leaves_no_grads_and_keeps_state() -> None:
    model = SmallCNN(width=4).train()
    batches = _batches((1, 8, 8))
    bn_before = _t(model, "stem.1.running_mean").clone()
    scores = sp.weight_scores(model, _layers(model), "obd", batches)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(_t(model, "stem.1.running_mean"), bn_before)
    for layer in ("stem.0", "conv3.0", "fc"):
        assert torch.allclose(scores[layer], _reference_obd(model, layer, batches), rtol=1e-3, atol=1e-10)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.func.vmap cannot batch it, so OBD must loop per sample."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out if out.sum() > -1e30 else -out


def test_obd_falls_back_to_a_per_sample_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    fc = nn.Linear(5, 3)
    batches = _batches((5,), classes=3)
    loops: list[int] = []
    real_loop = sp._per_sample_loop

    def counting_loop(*args: object) -> dict[str, list[torch.Tensor]]:
        loops.append(1)
        return real_loop(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sp, "_per_sample_loop", counting_loop)
    vmapped = sp.weight_scores(nn.Sequential(fc), ["0"], "obd", batches)["0"]
    assert not loops
    looped = sp.weight_scores(_Branchy(fc), ["fc"], "obd", batches)["fc"]
    assert loops
    assert torch.allclose(vmapped, looped, rtol=1e-5, atol=1e-10)


def test_obd_on_a_masked_model_scores_masked_weights_zero() -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    mask = torch.rand(3, 6) > 0.5
    sp.apply_masks(model, {"0": mask})
    scores = sp.weight_scores(model, ["0"], "obd", _batches((6,), classes=3))["0"]
    assert (scores[~mask] == 0).all()
    assert (scores[mask] > 0).all()
    weight = _t(model, "0.weight")  # the prune hook's tensor must not be left as a functorch wrapper
    assert not torch._C._functorch.is_functorch_wrapped_tensor(weight)
    assert torch.equal(weight, _t(model, "0.weight_orig") * _t(model, "0.weight_mask"))


# ---------------------------------------------------------------- applying masks


def _pruning_hooks(model: nn.Module) -> int:
    return sum(isinstance(h, prune.BasePruningMethod) for m in model.modules() for h in m._forward_pre_hooks.values())


def test_masks_survive_sgd_and_make_permanent() -> None:
    model = SmallCNN(width=8)
    masks = _magnitude_masks(model, 0.5)
    sp.apply_masks(model, masks)
    before = {n: _t(model, f"{n}.weight_orig").detach().clone() for n in masks}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for x, y in _batches((1, 8, 8), sizes=(4, 4, 4)):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    probe = torch.randn(2, 1, 8, 8)
    model.eval()
    out_masked = model(probe)  # the forward also refreshes each .weight from weight_orig * mask
    for name, mask in masks.items():
        assert (_t(model, f"{name}.weight")[~mask] == 0).all()
        assert not torch.equal(_t(model, f"{name}.weight_orig")[mask], before[name][mask])  # it did train

    sp.make_permanent(model)
    assert _pruning_hooks(model) == 0
    assert not [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]
    for name, mask in masks.items():
        weight = _t(model, f"{name}.weight")
        assert isinstance(weight, nn.Parameter)
        zeros = weight.detach()[~mask]
        assert (zeros == 0).all() and not zeros.signbit().any()  # +0.0, not orig * 0 = -0.0
    assert torch.equal(model(probe), out_masked)


def test_apply_masks_combines_with_an_earlier_mask_and_checks_shapes() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    first, second = torch.rand(2, 4) > 0.5, torch.rand(2, 4) > 0.5
    sp.apply_masks(model, {"0": first})
    sp.apply_masks(model, {"0": second})
    assert torch.equal(_t(model, "0.weight_mask").bool(), first & second)
    with pytest.raises(ValueError, match="'0'"):
        sp.apply_masks(model, {"0": torch.ones(4, 2, dtype=torch.bool)})


def test_nm_masks_on_a_model_give_nm_sparse_weights() -> None:
    model = CifarResNet(20, 10, 1)
    eligible = [n for n in _layers(model) if sp.nm_eligible(model.get_submodule(n))]
    assert "conv1" not in eligible and "layer1.0.conv1" in eligible  # 1-channel stem: 9 inputs
    scores = sp.weight_scores(model, eligible, "magnitude", None)
    sp.apply_masks(model, {n: sp.nm_mask(s) for n, s in scores.items()})
    sp.make_permanent(model)
    assert all(sp.is_nm_sparse(_t(model, f"{n}.weight")) for n in eligible)


def test_nonzero_parameters_counts_effective_weights_once() -> None:
    model = CifarResNet(20, 10, 1)
    dense = sum(int(p.count_nonzero()) for p in model.parameters())
    assert sp.nonzero_parameters(model) == dense
    masks = _magnitude_masks(model, 0.7)
    masked = sum(int((~m).sum()) for m in masks.values())
    sp.apply_masks(model, masks)
    assert sum(int(p.count_nonzero()) for p in model.parameters()) == dense  # weight_orig is still dense
    assert sp.nonzero_parameters(model) == dense - masked
    sp.make_permanent(model)
    assert sp.nonzero_parameters(model) == dense - masked
    shared = nn.Linear(3, 3)
    assert sp.nonzero_parameters(nn.Sequential(shared, shared)) == 12


# ---------------------------------------------------------------- sparse format


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(ints), b.view(ints))


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_sparse_format_round_trips_bit_exactly(tmp_path: Path) -> None:
    sparse_f32 = torch.randn(40, 25) * (torch.rand(40, 25) > 0.8)
    sparse_f32[0, :3] = torch.tensor([-0.0, float("nan"), float("-inf")])
    state = {
        "sparse.f32": sparse_f32,
        "sparse.bf16": (torch.randn(64, 64) * (torch.rand(64, 64) > 0.9)).bfloat16(),
        "sparse.i64": torch.randint(-5, 5, (500,)) * (torch.rand(500) > 0.9),
        "sparse.bool": torch.rand(4096) > 0.99,
        "zeros": torch.zeros(2000),
        "dense.f16": torch.randn(8, 8).half(),
        "dense.u8": torch.randint(0, 255, (300,), dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "m.safetensors"
    size = save_sparse(state, path)
    assert size == path.stat().st_size
    back = load_sparse(path)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert _same_bits(back[name], tensor), name
    keys = _keys(path)
    for name in ("sparse.f32", "sparse.bf16", "sparse.i64", "sparse.bool", "zeros"):
        assert {f"{name}.__values", f"{name}.__bitmask"} <= keys and name not in keys
    assert {"dense.f16", "dense.u8", "scalar", "empty"} <= keys


def test_sparse_resnet20_file_is_smaller_than_dense(tmp_path: Path) -> None:
    model = CifarResNet(20, 10, 1)
    sp.apply_masks(model, _magnitude_masks(model, 0.7))
    sp.make_permanent(model)
    state = model.state_dict()
    dense = dense_bytes(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "plain.safetensors"))
    assert dense == (tmp_path / "plain.safetensors").stat().st_size
    size = save_sparse(state, tmp_path / "sparse.safetensors")
    assert size < 0.5 * dense  # ~30% values + 1 bit per weight
    back = load_sparse(tmp_path / "sparse.safetensors")
    assert all(_same_bits(back[k], v) for k, v in state.items())
    fresh = CifarResNet(20, 10, 1)
    fresh.load_state_dict(back)
    assert sp.nonzero_parameters(fresh) == sp.nonzero_parameters(model)


def _corrupt(raw: dict[str, torch.Tensor], meta: dict[str, str], how: str) -> None:
    if how == "shape":
        meta["w"] = json.dumps({"shape": [64, 65], "dtype": "torch.float32"})
    elif how == "values_count":
        raw["w.__values"] = raw["w.__values"][:-1].clone()
    elif how == "dtype":
        meta["w"] = json.dumps({"shape": [64, 64], "dtype": "torch.float64"})
    elif how == "json":
        meta["w"] = "{not json"
    elif how == "missing_bitmask":
        del raw["w.__bitmask"]
    elif how == "orphan_values":
        del meta["w"]
    elif how == "padding_bits":
        raw["w.__bitmask"] = torch.cat([raw["w.__bitmask"], torch.tensor([255], dtype=torch.uint8)])
        meta["w"] = json.dumps({"shape": [64 * 64 + 1], "dtype": "torch.float32"})


@pytest.mark.parametrize(
    "how", ["shape", "values_count", "dtype", "json", "missing_bitmask", "orphan_values", "padding_bits"]
)
def test_inconsistent_metadata_is_rejected(tmp_path: Path, how: str) -> None:
    path = tmp_path / "m.safetensors"
    save_sparse({"w": torch.randn(64, 64) * (torch.rand(64, 64) > 0.8), "b": torch.randn(4)}, path)
    with safe_open(str(path), framework="pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    _corrupt(raw, meta, how)
    save_file(raw, str(path), metadata=meta)
    with pytest.raises(ValueError, match="'w"):
        load_sparse(path)


_UNPICKLED: list[int] = []


def _record_unpickle() -> None:
    _UNPICKLED.append(1)


class _Evil:
    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _record_unpickle, ()


def test_load_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(ValueError, match="safetensors"):
        load_sparse(path)
    assert not _UNPICKLED


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_sparse({"w.__values": torch.zeros(3)}, tmp_path / "x.safetensors")

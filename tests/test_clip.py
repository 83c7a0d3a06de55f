"""mudg_fast.clip: encoding against direct open_clip calls, input errors, offline loading."""

import importlib.util
import io
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

HAS_CLIP = all(importlib.util.find_spec(m) for m in ("torch", "open_clip", "PIL"))
needs_clip = pytest.mark.skipif(not HAS_CLIP, reason="needs the [clip] extra (torch, open_clip)")

if HAS_CLIP:
    import open_clip
    import torch
    from PIL import Image

    import clip_helpers as ch
    from mudg_fast.clip import ClipEncoder, load_model

    @pytest.fixture(autouse=True)
    def _single_thread():
        yield from ch.single_thread()


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "open_clip", "torchvision"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, Block())
""")


def test_works_without_torch(tmp_path):
    """With torch and open_clip unimportable: the package, the CLI's help for train/eval and the
    torch-free helpers work, and using a model fails with an ImportError naming the extra."""
    script = BLOCK_TORCH + textwrap.dedent("""
        import contextlib, io, sys
        import mudg_fast, mudg_fast.clip, mudg_fast.train, mudg_fast.evaluation
        from mudg_fast.train import TrainConfig
        from mudg_fast.train.prompts import class_prompts
        from mudg_fast.evaluation import score_average
        import numpy as np
        from mudg_fast import cli
        for cmd in ("train", "eval"):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    cli.main([cmd, "--help"])
                except SystemExit as e:
                    assert e.code == 0, e.code
            assert "--out" in buf.getvalue()
        TrainConfig(image_folder="x", iterations=3)
        assert class_prompts(["dog"], "a {}.", ", fluffy.") == ["a dog, fluffy."]
        eye = np.eye(2, dtype=np.float32)
        assert score_average(eye, eye[None]).shape == (2, 2)
        try:
            mudg_fast.clip.ClipEncoder()
        except ImportError as e:
            assert "mudg_fast[clip]" in str(e), e
        else:
            raise AssertionError("ClipEncoder() should need torch")
        try:
            mudg_fast.train.finetune("out", image_folder="x")
        except ImportError:
            pass
        else:
            raise AssertionError("finetune should need torch")
        assert "torch" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


@needs_clip
def test_import_mudg_fast_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, mudg_fast, mudg_fast.clip, "
                        "mudg_fast.train, mudg_fast.evaluation, mudg_fast.train.cli, "
                        "mudg_fast.commands.evaluate; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# --- encoding ------------------------------------------------------------------------------------

@pytest.fixture
def tiny():
    model, _, pre, tok = ch.tiny_parts(0)
    return model, pre, tok


@needs_clip
def test_encode_text_matches_open_clip(tiny):
    model, pre, tok = tiny
    texts = ["a photo of a red.", "a blue thing, which can be any color.", "", "x " * 100]
    enc = ClipEncoder.from_model(model, tok, pre, batch_size=3)
    got = enc.encode_text(texts)
    with torch.no_grad():
        ref = model.encode_text(tok(texts)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert got.dtype == np.float32 and got.shape == (4, enc.dim) == (4, 32)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    # batching does not change results
    np.testing.assert_allclose(ClipEncoder.from_model(model, tok, pre, batch_size=1)
                               .encode_text(texts), got, atol=2e-6)


@needs_clip
def test_encode_images_paths_and_pil_agree_with_open_clip(tiny, tmp_path):
    model, pre, tok = tiny
    files = ch.write_image_folder(tmp_path, 3, classes=["red", "blue"], ext=".png")
    paths = files["red"] + files["blue"]
    enc = ClipEncoder.from_model(model, tok, pre, batch_size=4)
    got = enc.encode_images(paths)
    pil = [Image.open(p) for p in paths]
    np.testing.assert_allclose(enc.encode_images(pil), got, atol=2e-6)
    with torch.no_grad():
        ref = model.encode_image(torch.stack([pre(Image.open(p).convert("RGB"))
                                              for p in paths])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert got.shape == (6, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6)
    # a grey-scale image is converted to RGB; thread decoding gives the same numbers
    Image.open(paths[0]).convert("L").save(tmp_path / "grey.png")
    enc2 = ClipEncoder.from_model(model, tok, pre, batch_size=2, num_workers=2)
    out = enc2.encode_images(paths + [tmp_path / "grey.png"])
    np.testing.assert_allclose(out[:6], got, atol=2e-6)
    assert np.isfinite(out).all()


@needs_clip
def test_empty_inputs_give_zero_rows(tiny):
    model, pre, tok = tiny
    enc = ClipEncoder.from_model(model, tok, pre)
    for out in (enc.encode_text([]), enc.encode_images([])):
        assert out.shape == (0, 32) and out.dtype == np.float32


@needs_clip
def test_bad_inputs_raise_clear_errors(tiny, tmp_path):
    model, pre, tok = tiny
    enc = ClipEncoder.from_model(model, tok, pre)
    good = ch.write_image_folder(tmp_path / "imgs", 1, classes=["red"])["red"]
    with pytest.raises(FileNotFoundError, match=r"2 image file\(s\) not found: .*nope1\.jpg"):
        enc.encode_images(good + [str(tmp_path / "nope1.jpg"), str(tmp_path / "nope2.jpg")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image .*broken.jpg"):
        enc.encode_images(good + [broken])
    with pytest.raises(TypeError, match="list"):
        enc.encode_text("a single string")
    with pytest.raises(TypeError, match="strings"):
        enc.encode_text(["ok", 3])
    with pytest.raises(TypeError, match="paths or PIL"):
        enc.encode_images([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="batch_size"):
        ClipEncoder.from_model(model, tok, pre, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ClipEncoder.from_model(model, tok, pre, device="cuda")


@needs_clip
def test_progress_works_without_tqdm(tiny, monkeypatch):
    model, pre, tok = tiny
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    enc = ClipEncoder.from_model(model, tok, pre, batch_size=1, progress=True)
    assert enc.encode_text(["a", "b", "c"]).shape == (3, 32)


# --- loading -------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test. Offline mode sets
    HF_HUB_OFFLINE in the environment; it is restored afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@needs_clip
def test_offline_uncached_tag_fails_fast_and_clearly(tmp_path, no_network):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        ClipEncoder("ViT-B-32", "openai", offline=True, cache_dir=tmp_path)
    msg = str(e.value)
    assert "ViT-B-32" in msg and "'openai'" in msg and str(tmp_path) in msg
    assert "vit_base_patch32_clip_224.openai" in msg  # the hub repo it expected
    assert time.perf_counter() - t0 < 10
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@needs_clip
def test_offline_uncached_hf_hub_fails_clearly(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="laion/nothing-here.*not in the local"):
        load_model("ViT-B-32", "hf-hub:laion/nothing-here", offline=True, cache_dir=tmp_path)


@needs_clip
def test_unknown_model_or_tag_lists_choices(no_network):
    with pytest.raises(ValueError, match="unknown pretrained tag 'no-such-tag'.*laion2b"):
        load_model("ViT-B-32", "no-such-tag", offline=True)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_model("ViT-Q-99", None)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_model("ViT-B-32", "/no/such/weights.pt")


@needs_clip
def test_cached_tag_is_found_without_network(tmp_path, no_network):
    """The cache lookup finds hub files where huggingface_hub puts them, preferring the
    safetensors twin, and URL downloads in cache_dir."""
    from mudg_fast.clip import _tag_cache_lookup

    bin_path = ch.fake_hf_cache(tmp_path, "org/model", "open_clip_pytorch_model.bin")
    found, _ = _tag_cache_lookup({"hf_hub": "org/model/"}, str(tmp_path))
    assert found == bin_path
    safe = ch.fake_hf_cache(tmp_path, "org/model", "open_clip_model.safetensors")
    assert _tag_cache_lookup({"hf_hub": "org/model/"}, str(tmp_path))[0] == safe
    (tmp_path / "w.pt").write_bytes(b"x")
    found, _ = _tag_cache_lookup({"url": "https://example.org/a/w.pt"}, str(tmp_path))
    assert found == str(tmp_path / "w.pt")
    found, looked = _tag_cache_lookup({"hf_hub": "org/other/", "url": "https://e.org/v.pt"},
                                      str(tmp_path))
    assert found is None and any("models--org--other" in p for p in looked)


@needs_clip
def test_local_checkpoint_file_loads_offline(tiny, tmp_path, no_network):
    model, pre, tok = tiny
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    enc = ClipEncoder(ch.TINY_MODEL, pretrained=str(path), offline=True)
    for k, v in model.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    ref = ClipEncoder.from_model(model, tok, pre)
    texts = ["a photo of a green.", "hello"]
    np.testing.assert_array_equal(enc.encode_text(texts), ref.encode_text(texts))
    img = [ch.colour_image(np.random.default_rng(0), (10, 200, 10))]
    np.testing.assert_allclose(enc.encode_images(img), ref.encode_images(img), atol=1e-6)


@needs_clip
def test_local_dir_loads_as_model_or_pretrained(tmp_path, no_network):
    spec = ch.write_local_dir(tmp_path / "tiny_dir", seed=3)
    model, _, pre, tok = ch.tiny_parts(3)
    ref = ClipEncoder.from_model(model, tok, pre).encode_text(["a photo of a red."])
    a = ClipEncoder(spec, pretrained=None, offline=True).encode_text(["a photo of a red."])
    b = ClipEncoder("tiny", pretrained=spec, offline=True).encode_text(["a photo of a red."])
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(b, ref)
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_model("local-dir:" + str(tmp_path / "missing"), None, offline=True)


@needs_clip
def test_cached_tag_loads_offline_with_the_tags_activation(tiny, tmp_path, monkeypatch,
                                                           no_network):
    """A pretrained tag whose weights sit in the hub cache loads offline, and a tag trained with
    QuickGELU gets QuickGELU although the plain config does not ask for it."""
    from open_clip.transformer import QuickGELU

    model, pre, tok = tiny
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    ch.fake_hf_cache(tmp_path, "org/tiny-clip", "open_clip_pytorch_model.bin", buf.getvalue())
    real = open_clip.get_pretrained_cfg

    def fake_cfg(name, tag):
        if name == ch.TINY_MODEL and tag == "fake-tag":
            return {"hf_hub": "org/tiny-clip/", "url": "", "quick_gelu": True,
                    "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        return real(name, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", fake_cfg)
    parts = load_model(ch.TINY_MODEL, "fake-tag", offline=True, cache_dir=tmp_path)
    assert any(isinstance(m, QuickGELU) for m in parts.model.modules())
    assert not any(isinstance(m, QuickGELU) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(parts.model.state_dict()[k], v), k
    assert "mean=(0.5, 0.5, 0.5)" in repr(parts.preprocess)  # the tag's preprocessing
    with torch.no_grad():
        t = tok(["a photo of a red."])
        assert not torch.allclose(parts.model.encode_text(t), model.encode_text(t), atol=1e-4)


@needs_clip
def test_finetuned_bundle_restores_activation_and_preprocessing(tiny, tmp_path, no_network):
    from open_clip.transformer import QuickGELU

    from mudg_fast.clip import BUNDLE_FORMAT

    model, pre, tok = tiny
    path = tmp_path / "bundle.pt"
    torch.save({"format": BUNDLE_FORMAT, "model": ch.TINY_MODEL, "pretrained": None,
                "quick_gelu": True, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3],
                                                       "std": [0.3, 0.2, 0.1]},
                "state_dict": model.state_dict()}, path)
    parts = load_model(None, str(path), offline=True)
    assert any(isinstance(m, QuickGELU) for m in parts.model.modules())
    assert "mean=(0.1, 0.2, 0.3)" in repr(parts.preprocess)
    assert parts.finetuned["quick_gelu"] is True and "state_dict" not in parts.finetuned
    for k, v in model.state_dict().items():
        assert torch.equal(parts.model.state_dict()[k], v), k

"""mudg_fast.evaluation: score averaging, reports checked against direct encoder computations,
fine-tuned bundles with their learned prompt, manifests, the CLI."""

import json

import numpy as np
import pytest

from mudg_fast.evaluation import accuracy_report, score_average

DESCRIPTORS = [", which can be any color.", ", which is small.", ", seen from far away."]


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- pure numpy (no torch needed) ----------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 7])
def test_score_average_is_the_mean_of_per_descriptor_similarities(rng, m):
    x, t = _unit(rng, 20, 9), _unit(rng, m, 5, 9)
    got = score_average(x, t)
    want = np.mean([x.astype(np.float64) @ t[d].astype(np.float64).T for d in range(m)], axis=0)
    assert got.shape == (20, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if m == 1:
        np.testing.assert_allclose(got, x @ t[0].T, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="at least one descriptor"):
        score_average(x, t[:0])
    with pytest.raises(ValueError, match="expected image features"):
        score_average(x, t[0])


def test_accuracy_report_counts_by_hand():
    scores = np.array([[0.9, 0.1, 0.0],   # label 0, pred 0
                       [0.2, 0.7, 0.1],   # label 0, pred 1
                       [0.1, 0.8, 0.1],   # label 1, pred 1
                       [0.3, 0.3, 0.4]])  # label 1, pred 2
    r = accuracy_report(scores, np.array([0, 0, 1, 1]), 4)
    assert r["top1"] == 0.5 and r["n"] == [2, 2, 0, 0]
    assert r["per_class"] == [0.5, 0.5, None, None] and r["mean_per_class"] == 0.5
    r = accuracy_report(scores[:3], np.array([0, 0, 1]), 3)
    assert r["top1"] == pytest.approx(2 / 3) and r["mean_per_class"] == pytest.approx(0.75)


# --- with a tiny CLIP ----------------------------------------------------------------------------

torch_missing = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("torch", "open_clip", "PIL")),
    reason="needs the [clip] extra")


@pytest.fixture
def clip_env():
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    import clip_helpers as ch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ch
    torch.set_num_threads(n)


@pytest.fixture
def test_dir(tmp_path, clip_env):
    clip_env.write_image_folder(tmp_path / "test", 4, seed=5, classes=["red", "green", "blue"])
    (tmp_path / "test" / "yellow").mkdir()  # a class without test images
    return tmp_path / "test"


@torch_missing
def test_report_matches_direct_encoder_computation(clip_env, test_dir, tmp_path):
    from mudg_fast.clip import ClipEncoder
    from mudg_fast.evaluation import evaluate
    from mudg_fast.train.data import scan_image_folder
    from mudg_fast.train.prompts import class_prompts

    ch = clip_env
    out = tmp_path / "report.json"
    res = evaluate(parts=ch.tiny_clip_parts(0), image_folder=test_dir, descriptors=DESCRIPTORS,
                   batch_size=5, out=out, progress=False)
    model, _, pre, tok = ch.tiny_parts(0)
    enc = ClipEncoder.from_model(model, tok, pre)
    data = scan_image_folder(test_dir)
    names = ["blue", "green", "red", "yellow"]
    x = enc.encode_images(data.sources)
    zs = x @ enc.encode_text(class_prompts(names, "a photo of a {}.")).T
    sims = [x @ enc.encode_text(class_prompts(names, "a photo of a {}.", d)).T
            for d in DESCRIPTORS]
    np.testing.assert_allclose(res.image_features, x, atol=2e-6)
    np.testing.assert_allclose(res.zero_shot_scores, zs, atol=1e-5)
    np.testing.assert_allclose(res.score_averaging_scores, np.mean(sims, axis=0), atol=1e-5)
    y = data.labels
    r = res.report
    assert r["zero_shot"]["top1"] == pytest.approx(np.mean(zs.argmax(1) == y))
    assert r["score_averaging"]["top1"] == pytest.approx(np.mean(np.mean(sims, 0).argmax(1) == y))
    assert r["n_images"] == 12 and r["n_classes"] == 4 and r["descriptors"] == DESCRIPTORS
    for c, row in enumerate(r["per_class"]):
        assert row["label"] == c and row["classname"] == names[c]
        assert row["n"] == int((y == c).sum())
        if row["n"]:
            assert row["zero_shot"] == pytest.approx(np.mean(zs[y == c].argmax(1) == c))
        else:
            assert row["zero_shot"] is None and row["score_averaging"] is None
    assert json.loads(out.read_text()) == r
    assert not r["finetuned"] and not r["learned_prompt"]


@torch_missing
def test_without_descriptors_only_zero_shot(clip_env, test_dir):
    from mudg_fast.evaluation import evaluate

    res = evaluate(parts=clip_env.tiny_clip_parts(0), image_folder=test_dir, progress=False)
    assert res.score_averaging_scores is None and res.report["score_averaging"] is None
    assert res.score_averaging_top1 is None and 0 <= res.zero_shot_top1 <= 1


@torch_missing
def test_finetuned_bundle_uses_its_learned_prompt(clip_env, test_dir, tmp_path):
    """A bundle's context vectors replace 'a photo of': moving them moves the text features
    exactly as encode_text_with_ctx says; template and descriptors default to the bundle's."""
    import torch

    from mudg_fast.clip import ClipEncoder
    from mudg_fast.evaluation import evaluate
    from mudg_fast.train import TrainConfig, Trainer
    from mudg_fast.train.prompts import class_prompts
    from mudg_fast.train.text import encode_text_with_ctx

    ch = clip_env
    tr = Trainer(TrainConfig(image_folder=str(test_dir), descriptors=DESCRIPTORS[:2],
                             template="itap of a {}.", n_blocks=1, progress=False),
                 parts=ch.tiny_clip_parts(0))
    with torch.no_grad():
        tr.ema["prompt.ctx"] += 0.3 * torch.randn(tr.ema["prompt.ctx"].shape,
                                                  generator=torch.Generator().manual_seed(1))
    path = tr.save_model(tmp_path / "model.pt")
    res = evaluate(model=None, pretrained=path, image_folder=test_dir, progress=False)
    assert res.report["learned_prompt"] and res.report["template"] == "itap of a {}."
    assert res.report["descriptors"] == DESCRIPTORS[:2]
    model, _, pre, tok = ch.tiny_parts(0)
    x = ClipEncoder.from_model(model, tok, pre).encode_images(res.sources)
    names = ["blue", "green", "red", "yellow"]
    # the learned prompt is prepended: "<ctx> itap of a red."
    tokens = tok(["a photo of " + p for p in class_prompts(names, "itap of a {}.")])
    with torch.no_grad():
        t = torch.nn.functional.normalize(
            encode_text_with_ctx(model, tokens, tr.ema["prompt.ctx"]), dim=-1).numpy()
        plain = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(res.zero_shot_scores, x @ t.T, atol=1e-5)
    assert np.abs(x @ plain.T - res.zero_shot_scores).max() > 1e-3  # the prompt mattered
    only_zs = evaluate(model=None, pretrained=path, image_folder=test_dir, descriptors=[],
                       progress=False)
    assert only_zs.report["score_averaging"] is None


@torch_missing
def test_evaluate_on_a_manifest_and_errors(clip_env, test_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mudg_fast.evaluation import evaluate
    from mudg_fast.train.data import scan_image_folder

    ch = clip_env
    data = scan_image_folder(test_dir)
    pq.write_table(pa.table({"id": np.arange(len(data)), "label": data.labels,
                             "classname": [data.classnames[y] for y in data.labels],
                             "path": data.sources}), tmp_path / "m.parquet")
    a = evaluate(parts=ch.tiny_clip_parts(0), manifest=tmp_path / "m.parquet",
                 classnames=data.classnames, descriptors=DESCRIPTORS[:1], progress=False)
    b = evaluate(parts=ch.tiny_clip_parts(0), image_folder=test_dir,
                 descriptors=DESCRIPTORS[:1], progress=False)
    np.testing.assert_allclose(a.score_averaging_scores, b.score_averaging_scores, atol=1e-6)
    assert a.report["per_class"] == b.report["per_class"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        evaluate(parts=ch.tiny_clip_parts(0), image_folder=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="folder for the report"):
        evaluate(parts=ch.tiny_clip_parts(0), image_folder=test_dir,
                 out=tmp_path / "no" / "r.json")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(parts=ch.tiny_clip_parts(0), image_folder=test_dir, batch_size=0)


@torch_missing
def test_cli_eval_writes_the_report(clip_env, test_dir, tmp_path, capsys):
    from mudg_fast import cli

    spec = clip_env.write_local_dir(tmp_path / "tiny_dir")
    desc = tmp_path / "d.txt"
    desc.write_text("\n".join(DESCRIPTORS) + "\n")
    out = tmp_path / "r.json"
    argv = ["eval", "--model", spec, "--pretrained", "none", "--image_folder", str(test_dir),
            "--descriptors", str(desc), "--max_descriptors", "2", "--out", str(out),
            "--offline", "--no_progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["descriptors"] == DESCRIPTORS[:2] and r["n_images"] == 12
    assert f"{100 * r['zero_shot']['top1']:.2f}%" in printed
    assert cli.main(["eval", "--model", spec, "--pretrained", "none", "--out", str(out)]) == 2
    assert "--manifest or --image_folder" in capsys.readouterr().err

"""mudg_fast.train: the loss, the trained parameters, EMA, descriptor rotation, data sources,
exact resume, the CLI, and a real learning signal on a tiny random CLIP."""

import io
import json
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("PIL")

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

import clip_helpers as ch  # noqa: E402
from mudg_fast import cli  # noqa: E402
from mudg_fast.train import TrainConfig, Trainer, finetune, soft_target_loss  # noqa: E402
from mudg_fast.train.data import (BatchPlan, TarMember, load_data, open_image,  # noqa: E402
                                  read_manifest, scan_image_folder)
from mudg_fast.train.prompts import (apply_descriptor, class_prompts,  # noqa: E402
                                     load_classnames, load_descriptors)
from mudg_fast.train.text import (PromptLearner, encode_text_with_ctx,  # noqa: E402
                                  trainable_parameter_names)

DESCRIPTORS = [", which can be any color.", ", which is small.", ", seen from far away."]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from ch.single_thread()


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    ch.write_image_folder(root, 6, seed=1)
    return str(root)


def make_trainer(train_dir, seed=0, **kw):
    settings = dict(image_folder=train_dir, batch_size=8, n_blocks=2, iterations=20,
                    progress=False)
    settings.update(kw)
    return Trainer(TrainConfig(**settings), parts=ch.tiny_clip_parts(seed))


# --- prompts -------------------------------------------------------------------------------------

def test_descriptor_replaces_final_period():
    assert apply_descriptor("a photo of a dog.", ", which can be any color.") == \
        "a photo of a dog, which can be any color."
    assert apply_descriptor("a photo of a dog", ", fluffy.") == "a photo of a dog, fluffy."
    assert apply_descriptor("a photo of a dog. ", ", fluffy.") == "a photo of a dog, fluffy."
    assert apply_descriptor("a photo of a dog.", "") == "a photo of a dog."
    assert class_prompts(["cat", "dog"], "itap of a {}.", ", small.") == \
        ["itap of a cat, small.", "itap of a dog, small."]
    with pytest.raises(ValueError, match="exactly once"):
        class_prompts(["cat"], "a photo of a cat.")


def test_descriptor_and_classname_files(tmp_path):
    txt = tmp_path / "d.txt"
    txt.write_text(", which can be any color.\n\n, which is small.\r\n")
    assert load_descriptors(txt) == [", which can be any color.", ", which is small."]
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"descriptors": [{"descriptor": ", a."}, ", b.", {"text": ", c."}]}))
    assert load_descriptors(js, max_descriptors=2) == [", a.", ", b."]
    assert load_descriptors(None) == [] and load_descriptors([]) == []
    with pytest.raises(ValueError, match="duplicate descriptor"):
        load_descriptors([", a.", ", a."])
    with pytest.raises(ValueError, match="must be a string"):
        load_descriptors([", a.", 3])
    with pytest.raises(FileNotFoundError):
        load_descriptors(tmp_path / "missing.json")
    (tmp_path / "c.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    assert load_classnames(tmp_path / "c.json") == ["cat", "dog"]
    (tmp_path / "c.txt").write_text(" cat \ndog\n")
    assert load_classnames(tmp_path / "c.txt") == ["cat", "dog"]
    (tmp_path / "bad.json").write_text(json.dumps({"names": ["x"]}))
    with pytest.raises(ValueError, match="classnames"):
        load_classnames(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="duplicate class name 'cat'"):
        load_classnames(["cat", "cat"])


def test_config_rejects_bad_values():
    TrainConfig(image_folder="x")  # the defaults are valid
    for field, bad in [("lr", 0), ("lr", float("nan")), ("ema", 1.5), ("distill_weight", -0.1),
                       ("momentum", 1.0), ("batch_size", 0), ("n_blocks", -1), ("tau", 0),
                       ("iterations", 2.5), ("seed", True), ("template", "no placeholder"),
                       ("precision", "fp16"), ("ctx_init", " ")]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(image_folder="x", **{field: bad})
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(image_folder="x", manifest="y")
    with pytest.raises(ValueError, match="webdataset"):
        TrainConfig(image_folder="x", webdataset="y")
    cfg = TrainConfig(image_folder="x", lr=1e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict()))["lr"] == 1e-3


# --- the prompted text tower ---------------------------------------------------------------------

def test_prompted_text_equals_open_clip_at_init():
    """With the context vectors at their initial values the features are open_clip's, for
    prompts of several lengths (the sequence is cut after the end-of-text token)."""
    model, _, _, tok = ch.tiny_parts(0)
    learner = PromptLearner(model, tok, n_ctx=3, ctx_init="a photo of")
    texts = class_prompts(["red", "dark green", "blue"], "a photo of a {}.") + \
        class_prompts(["red"], "a photo of a {}.", DESCRIPTORS[0])
    tokens = learner.tokenize(texts)
    assert torch.equal(tokens, tok(texts))  # prompts starting with ctx_init keep their tokens
    with torch.no_grad():
        ref = model.encode_text(tokens)
        got = encode_text_with_ctx(model, tokens, learner.ctx)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    # the context slots are positions 1..3: changing ctx changes the result (a random change: a
    # constant shift of a token vector is invisible to the layer norms)
    with torch.no_grad():
        noise = torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(0))
        moved = encode_text_with_ctx(model, tokens, learner.ctx + 0.1 * noise)
    assert not torch.allclose(moved, ref, atol=1e-3)


def test_prompt_without_ctx_words_gets_them_prepended():
    model, _, _, tok = ch.tiny_parts(0)
    learner = PromptLearner(model, tok, n_ctx=3, ctx_init="a photo of")
    tokens = learner.tokenize(["itap of a red."])
    assert torch.equal(tokens, tok(["a photo of itap of a red."]))
    rand = PromptLearner(model, tok, n_ctx=4, ctx_init=None, generator=torch.Generator()
                         .manual_seed(0))
    assert rand.ctx.shape == (4, 64) and float(rand.ctx.detach().std()) < 0.05
    assert torch.equal(rand.tokenize(["a photo of a red."]), tok(["X X X X a photo of a red."]))
    with pytest.raises(ValueError, match="3 tokens but n_ctx=2"):
        PromptLearner(model, tok, n_ctx=2, ctx_init="a photo of")
    with pytest.raises(ValueError, match="more than the model's text context"):
        learner.tokenize(["a photo of " + "very " * 40 + "red."])


def test_trainable_parameter_names():
    model, *_ = ch.tiny_parts(0)
    names = trainable_parameter_names(model, 2)
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("visual.transformer.resblocks.1.",
                                 "visual.transformer.resblocks.2.", "transformer.resblocks.1.",
                                 "transformer.resblocks.2.", "visual.ln_post.", "ln_final."))
                or n in ("visual.proj", "text_projection")}
    assert set(names) == expected and len(names) == len(expected)
    assert set(trainable_parameter_names(model, 0)) == \
        {"visual.proj", "text_projection", "visual.ln_post.weight", "visual.ln_post.bias",
         "ln_final.weight", "ln_final.bias"}
    with pytest.raises(ValueError, match="n_blocks=4"):
        trainable_parameter_names(model, 4)


# --- one step ------------------------------------------------------------------------------------

def test_one_step_changes_exactly_the_intended_parameters(train_dir):
    tr = make_trainer(train_dir, descriptors=DESCRIPTORS)
    intended = {n for n, _ in tr.model.named_parameters()
                if any(n.startswith(p) for p in (
                    "visual.transformer.resblocks.1.", "visual.transformer.resblocks.2.",
                    "transformer.resblocks.1.", "transformer.resblocks.2.", "visual.ln_post.",
                    "ln_final.")) or n in ("visual.proj", "text_projection")}
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    buffers = {n: b.clone() for n, b in tr.model.named_buffers()}
    teacher = {n: p.detach().clone() for n, p in tr.teacher_visual.named_parameters()}
    teacher_text = tr.teacher_text.clone()
    ctx = tr.prompt.ctx.detach().clone()
    tr.step()
    for n, p in tr.model.named_parameters():
        if n in intended:
            assert not torch.equal(p, before[n]), f"{n} should have been trained"
        else:
            assert torch.equal(p, before[n]), f"{n} should be frozen"
            assert not p.requires_grad
    assert not torch.equal(tr.prompt.ctx, ctx)
    for n, b in tr.model.named_buffers():
        assert torch.equal(b, buffers[n])
    for n, p in tr.teacher_visual.named_parameters():
        assert torch.equal(p, teacher[n]), f"teacher {n} changed"
    assert torch.equal(tr.teacher_text, teacher_text)
    assert set(tr.params) == intended | {"prompt.ctx"}
    # the prompt learns 10x faster than the towers
    lrs = [g["lr"] for g in tr.optimizer.param_groups]
    assert lrs == [pytest.approx(6.4e-4), pytest.approx(6.4e-3)]


# --- the loss ------------------------------------------------------------------------------------

def _np_loss(logits, labels, teacher_probs, lam):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    onehot = np.eye(logits.shape[1])[labels]
    target = (1 - lam) * onehot + (lam * teacher_probs if lam else 0)
    return float(-(target * logp).sum(1).mean())


def _np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_soft_target_loss_matches_hand_computation(rng):
    logits = rng.normal(0, 3, (7, 5))
    labels = rng.integers(0, 5, 7)
    q = _np_softmax(rng.normal(0, 2, (7, 5)))
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    lab = torch.as_tensor(labels)
    for lam in (0.0, 0.2, 1.0):
        got = soft_target_loss(t(logits), lab, t(q), lam).item()
        assert got == pytest.approx(_np_loss(logits, labels, q, lam), rel=1e-5)
    # a tiny worked example: 2 classes, logits (0, ln 3) -> p = (1/4, 3/4); label 0, q = (1/2, 1/2)
    got = soft_target_loss(t([[0.0, np.log(3.0)]]), torch.tensor([0]), t([[0.5, 0.5]]), 0.2)
    assert got.item() == pytest.approx(-(0.9 * np.log(0.25) + 0.1 * np.log(0.75)), rel=1e-6)


def test_lambda_zero_is_plain_cross_entropy(rng, train_dir):
    logits = torch.as_tensor(rng.normal(0, 3, (6, 4)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 4, 6))
    q = torch.softmax(torch.as_tensor(rng.normal(size=(6, 4)), dtype=torch.float32), 1)
    ce = F.cross_entropy(logits, labels)
    assert torch.allclose(soft_target_loss(logits, labels, q, 0.0), ce, atol=1e-7)
    assert torch.allclose(soft_target_loss(logits, labels, None, 0.0), ce, atol=1e-7)
    tr = make_trainer(train_dir, distill_weight=0.0)
    assert tr.teacher_visual is None
    x, y = tr.batch(0)
    with torch.no_grad():
        assert torch.allclose(tr.compute_loss(x, y, 0),
                              F.cross_entropy(tr.student_logits(x, 0), y), atol=1e-6)


def test_trainer_loss_matches_hand_computation_with_frozen_teacher(train_dir):
    """After some steps the student has moved; the loss must still use the *initial* model
    (features computed here with a fresh copy) as teacher, with τ=10 and logit scale 25."""
    tr = make_trainer(train_dir, descriptors=DESCRIPTORS, lr=0.05)
    for _ in range(3):
        tr.step()
    x, y = tr.batch(3)
    d = 1
    prompts = class_prompts(tr.classnames, tr.config.template, DESCRIPTORS[d])
    initial, _, _, tok = ch.tiny_parts(0)
    with torch.no_grad():
        f0 = F.normalize(initial.encode_image(x), dim=-1).double().numpy()
        g0 = F.normalize(initial.encode_text(tok(prompts)), dim=-1).double().numpy()
        f = F.normalize(tr.model.encode_image(x), dim=-1).double().numpy()
        g = F.normalize(encode_text_with_ctx(tr.model, tok(prompts), tr.prompt.ctx),
                        dim=-1).double().numpy()
        got = tr.compute_loss(x, y, d).item()
    want = _np_loss(25 * f @ g.T, y.numpy(), _np_softmax(10 * f0 @ g0.T), 0.2)
    assert got == pytest.approx(want, rel=1e-5)
    wrong_teacher = _np_loss(25 * f @ g.T, y.numpy(), _np_softmax(10 * f @ g.T), 0.2)
    assert abs(want - wrong_teacher) > 1e-4  # the check above can tell the teachers apart


# --- EMA and descriptor rotation -----------------------------------------------------------------

def test_ema_follows_its_formula(train_dir):
    tr = make_trainer(train_dir, ema=0.9, lr=0.05)
    for n, p in tr.params.items():
        assert torch.equal(tr.ema[n], p)
    for _ in range(3):
        prev = {n: v.clone() for n, v in tr.ema.items()}
        tr.step()
        for n, p in tr.params.items():
            want = 0.9 * prev[n] + 0.1 * p.detach()
            torch.testing.assert_close(tr.ema[n], want, rtol=1e-6, atol=1e-7)
            assert not torch.equal(tr.ema[n], p.detach())  # it lags the weights


def test_descriptor_rotation_order(train_dir):
    tr = make_trainer(train_dir, descriptors=DESCRIPTORS, lr=0.05)
    assert tr.m == 3
    used = []
    for i in range(7):
        x, y = tr.batch(i)
        with torch.no_grad():
            per_d = [tr.compute_loss(x, y, d).item() for d in range(3)]
        assert min(abs(a - b) for a in per_d for b in per_d if a != b) > 1e-4  # distinguishable
        r = tr.step(x, y)
        used.append(r.descriptor)
        # (no_grad takes a fused attention kernel, so the values agree to rounding only)
        assert r.iteration == i and r.loss == pytest.approx(per_d[i % 3], rel=1e-6, abs=1e-7)
    assert used == [0, 1, 2, 0, 1, 2, 0]
    plain = make_trainer(train_dir)
    assert plain.descriptors == [""] and plain.m == 1
    assert torch.equal(plain.tokens[0], ch.tiny_parts(0)[3](
        class_prompts(plain.classnames, "a photo of a {}.")))


# --- data ----------------------------------------------------------------------------------------

def test_batch_plan_is_a_pure_function_of_seed_and_iteration():
    plan = BatchPlan(10, 4, seed=3)
    stream = np.concatenate([plan.indices(i) for i in range(5)])  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])
    again = BatchPlan(10, 4, seed=3, start=2, stop=5)
    assert [b for b in again] == [plan.batch(i) for i in range(2, 5)]
    assert len(again) == 3
    seeds = plan.seeds(0)
    assert len(set(seeds.tolist())) == 4 and not np.array_equal(seeds, plan.seeds(1))
    assert not np.array_equal(BatchPlan(10, 4, seed=4).indices(0), plan.indices(0))
    small = BatchPlan(3, 8, seed=0).indices(0)  # a batch larger than the data set
    assert np.bincount(small, minlength=3).tolist() in ([3, 3, 2], [3, 2, 3], [2, 3, 3])
    with pytest.raises(ValueError, match="empty"):
        BatchPlan(0, 4, seed=0)


def test_image_folder_scan(tmp_path):
    ch.write_image_folder(tmp_path, 2, classes=["red", "blue"])
    (tmp_path / "empty_class").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "red" / "notes.txt").write_text("x")
    data = scan_image_folder(tmp_path)
    assert data.classnames == ["blue", "empty class", "red"]
    assert data.labels.tolist() == [0, 0, 2, 2] and data.class_counts().tolist() == [2, 0, 2]
    assert all(s.endswith(".png") for s in data.sources)
    named = scan_image_folder(tmp_path, classnames=["b", "e", "r"])
    assert named.classnames == ["b", "e", "r"]
    with pytest.raises(ValueError, match="3 class folders"):
        scan_image_folder(tmp_path, classnames=["a", "b"])
    with pytest.raises(FileNotFoundError):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="exactly one"):
        load_data()


def _write_manifest(dest, **cols):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), dest)
    return dest


def test_manifest_with_paths(tmp_path):
    files = ch.write_image_folder(tmp_path / "img", 2, classes=["red", "blue"])
    rel = [os.path.relpath(p, tmp_path) for p in files["red"] + files["blue"]]
    m = _write_manifest(tmp_path / "sel.parquet", id=np.array([10, 11, 12, 13], np.int64),
                        label=np.array([1, 1, 0, 0]), classname=["red", "red", "blue", "blue"],
                        path=rel)
    data = read_manifest(m)
    assert data.classnames == ["blue", "red"] and data.labels.tolist() == [1, 1, 0, 0]
    assert data.ids.tolist() == [10, 11, 12, 13]
    assert data.sources[0] == os.path.join(str(tmp_path), rel[0])
    with pytest.raises(ValueError, match="class 1 is 'green'"):
        read_manifest(m, classnames=["blue", "green"])
    assert read_manifest(m, classnames=["blue", "red", "yellow"]).classnames[2] == "yellow"

    gap = _write_manifest(tmp_path / "gap.parquet", id=np.arange(2), label=[0, 2],
                          classname=["a", "c"], path=rel[:2])
    with pytest.raises(ValueError, match=r"no rows for labels \[1\]"):
        read_manifest(gap)
    nolabel = _write_manifest(tmp_path / "nl.parquet", id=np.arange(2), path=rel[:2])
    with pytest.raises(ValueError, match="no 'label' column"):
        read_manifest(nolabel)
    nopath = _write_manifest(tmp_path / "np.parquet", id=np.arange(2), label=[0, 1],
                             classname=["a", "b"])
    with pytest.raises(ValueError, match="no 'path' column"):
        read_manifest(nopath)
    missing = _write_manifest(tmp_path / "miss.parquet", id=np.arange(2), label=[0, 1],
                              classname=["a", "b"], path=["img/nope.png", rel[0]])
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) not found.*nope.png"):
        read_manifest(missing)
    partial = _write_manifest(tmp_path / "part.parquet", id=np.arange(3), label=[0, 1, 1],
                              classname=["a", "b", "b"], path=[rel[0], None, rel[1]])
    with pytest.warns(UserWarning, match="1 of 3 manifest rows have no path"):
        assert len(read_manifest(partial)) == 2
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")


def _write_shard(path, samples):
    """samples: (key, image bytes or None, json dict or None)."""
    with tarfile.open(path, "w") as tar:
        for key, img, meta in samples:
            for ext, payload in ((".jpg", img), (".json", None if meta is None else
                                                  json.dumps(meta).encode())):
                if payload is None:
                    continue
                info = tarfile.TarInfo(key + ext)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_manifest_with_img2dataset_webdataset(tmp_path, train_dir):
    files = ch.write_image_folder(tmp_path / "src", 3, classes=["red", "blue"], ext=".jpg")
    blobs = [Path(p).read_bytes() for p in files["red"] + files["blue"]]
    wds = tmp_path / "wds"
    wds.mkdir()
    _write_shard(wds / "00000.tar", [
        ("000000000", blobs[0], {"id": 100, "status": "success"}),   # matched by json id
        ("000000001", blobs[1], {"url": "http://x/b", "status": "success"}),  # by url
        ("000000002", blobs[2], {"id": 102, "status": "failed_to_download"}),  # skipped
    ])
    _write_shard(wds / "00001.tar", [
        ("103", blobs[3], None),                                     # by key
        ("000010001", blobs[4], {"id": 999, "status": "success"}),   # not in the manifest
    ])
    m = _write_manifest(tmp_path / "sel.parquet", id=np.array([100, 101, 102, 103, 104]),
                        label=[0, 0, 0, 1, 1], classname=["red"] * 3 + ["blue"] * 2,
                        url=["http://x/a", "http://x/b", "http://x/c", None, None])
    with pytest.warns(UserWarning, match="2 of 5 manifest rows have no image"):
        data = read_manifest(m, webdataset=wds)
    assert data.ids.tolist() == [100, 101, 103] and data.labels.tolist() == [0, 0, 1]
    assert all(isinstance(s, TarMember) for s in data.sources)
    for s, blob in zip(data.sources, [blobs[0], blobs[1], blobs[3]]):
        assert np.array_equal(np.asarray(open_image(s)),
                              np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    # a few training steps read from the shards
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = Trainer(TrainConfig(manifest=str(m), webdataset=str(wds), batch_size=4,
                                 n_blocks=1, progress=False), parts=ch.tiny_clip_parts(0))
    assert np.isfinite(tr.step().loss)
    with pytest.raises(ValueError, match="no .tar shards"):
        read_manifest(m, webdataset=tmp_path / "src")
    bad = data.sources[0]._replace(size=data.sources[0].size + 10 ** 6)
    with pytest.raises(ValueError, match="00000.tar:000000000.jpg: truncated"):
        open_image(bad)
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        open_image(str(tmp_path / "broken.png"))


# --- checkpoints and resume ----------------------------------------------------------------------

def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _assert_same_state(a, b):
    assert a["iteration"] == b["iteration"]
    for key in ("params", "ema"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), f"{key} {n} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(train_dir, tmp_path):
    common = dict(image_folder=train_dir, batch_size=8, n_blocks=2, lr=0.05, ema=0.9,
                  descriptors=DESCRIPTORS, seed=7, save_every=2, log_every=1, progress=False)
    full = finetune(tmp_path / "full", parts=ch.tiny_clip_parts(0), iterations=6, **common)
    part = finetune(tmp_path / "part", parts=ch.tiny_clip_parts(0), iterations=3, **common)
    assert _load(part.checkpoint_path)["iteration"] == 3
    # a new trainer, fresh model object, data read by worker processes this time
    resumed = finetune(tmp_path / "part", parts=ch.tiny_clip_parts(0), iterations=6,
                       resume=True, **dict(common, num_workers=2))
    a, b = _load(full.checkpoint_path), _load(resumed.checkpoint_path)
    assert a["iteration"] == b["iteration"] == 6
    _assert_same_state(a, b)
    ma, mb = _load(full.model_path), _load(resumed.model_path)
    for k in ma["state_dict"]:
        assert torch.equal(ma["state_dict"][k], mb["state_dict"][k]), k
    assert torch.equal(ma["prompt"]["ctx"], mb["prompt"]["ctx"])
    # the EMA is what is saved
    assert torch.equal(ma["state_dict"]["visual.proj"], a["ema"]["visual.proj"])
    assert not torch.equal(ma["state_dict"]["visual.proj"], a["params"]["visual.proj"])
    # the log of the resumed run has one line per iteration, like the uninterrupted one
    log = _read_log(resumed.log_path)
    full_log = _read_log(full.log_path)
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]
    assert [r["descriptor"] for r in log] == [0, 1, 2, 0, 1, 2]


def test_finetune_protects_existing_runs(train_dir, tmp_path):
    common = dict(image_folder=train_dir, batch_size=4, n_blocks=1, progress=False)
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=2, resume=True, **common)
    finetune(out, parts=ch.tiny_clip_parts(0), iterations=2, **common)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=2, **common)
    with pytest.raises(ValueError, match="lr=0.00064 .now 0.1"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=4, resume=True,
                 **dict(common, lr=0.1))
    with pytest.raises(ValueError, match="beyond iterations=1"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=1, resume=True, **common)
    with pytest.raises(ValueError, match="different class names or descriptors"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=4, resume=True,
                 descriptors=[", x."], **common)
    assert (out / "checkpoint.pt").read_bytes() == before
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["iterations"] == 2 and cfg["n_train_images"] == 24
    # a finished model without its checkpoint is protected too
    (out / "checkpoint.pt").unlink()
    model_bytes = (out / "model.pt").read_bytes()
    with pytest.raises(FileExistsError, match="model.pt"):
        finetune(out, parts=ch.tiny_clip_parts(0), iterations=2, **common)
    assert (out / "model.pt").read_bytes() == model_bytes


def test_checkpoint_write_is_atomic(train_dir, tmp_path, monkeypatch):
    tr = make_trainer(train_dir)
    path = tmp_path / "checkpoint.pt"
    tr.save_checkpoint(path)
    good = path.read_bytes()
    tr.step()

    def torn_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_bundle_loads_in_open_clip_and_mudg_fast(train_dir, tmp_path):
    import open_clip

    from mudg_fast.clip import load_model

    tr = make_trainer(train_dir, lr=0.05, descriptors=DESCRIPTORS[:2])
    tr.step()
    path = tr.save_model(tmp_path / "model.pt")
    bundle = _load(path)
    assert bundle["descriptors"] == DESCRIPTORS[:2] and bundle["template"] == "a photo of a {}."
    plain = open_clip.create_model(ch.TINY_MODEL, pretrained=path)  # open_clip reads state_dict
    for k, v in tr.ema_state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k
    parts = load_model(None, path)
    assert parts.model_name == ch.TINY_MODEL and parts.finetuned["prompt"]["n_ctx"] == 3
    assert torch.equal(parts.finetuned["prompt"]["ctx"], tr.ema["prompt.ctx"])
    with pytest.raises(ValueError, match="fine-tuned from"):
        load_model("ViT-B-32", path)


# --- command line and a real learning signal ----------------------------------------------------

def test_cli_train_runs_and_reports_errors(train_dir, tmp_path, capsys):
    spec = ch.write_local_dir(tmp_path / "tiny_dir")
    out = tmp_path / "run"
    argv = ["train", "--model", spec, "--pretrained", "none", "--image_folder", train_dir,
            "--iterations", "2", "--batch_size", "4", "--n_blocks", "1", "--out", str(out),
            "--no_progress", "--lambda_", "0.3", "--offline"]
    assert cli.main(argv) == 0
    assert "model (EMA)" in capsys.readouterr().out
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "config.json").read_text())["distill_weight"] == 0.3
    assert cli.main(argv) == 2
    assert "resume" in capsys.readouterr().err
    assert cli.main(argv[:-1] + ["--resume", "--iterations", "3"]) == 0
    bad = ["train", "--model", spec, "--image_folder", str(tmp_path / "missing"),
           "--out", str(tmp_path / "x"), "--offline"]
    assert cli.main(bad) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_short_run_learns_an_easy_task(tmp_path):
    """Four colour classes, a random tiny CLIP: fine-tuning the last 2 of 3 blocks lifts the
    EMA model's held-out accuracy from chance to near perfect."""
    from mudg_fast.evaluation import evaluate

    ch.write_image_folder(tmp_path / "train", 24, seed=1)
    ch.write_image_folder(tmp_path / "test", 16, seed=2)
    before = evaluate(parts=ch.tiny_clip_parts(0), image_folder=tmp_path / "test",
                      descriptors=DESCRIPTORS[:2], progress=False)
    result = finetune(tmp_path / "run", parts=ch.tiny_clip_parts(0),
                      image_folder=tmp_path / "train", descriptors=DESCRIPTORS[:2],
                      iterations=100, batch_size=32, lr=0.01, ema=0.9, n_blocks=2,
                      progress=False)
    after = evaluate(model=None, pretrained=result.model_path, image_folder=tmp_path / "test",
                     progress=False)
    assert after.report["descriptors"] == DESCRIPTORS[:2]  # taken from the bundle
    assert after.report["learned_prompt"]
    assert before.zero_shot_top1 <= 0.5 and before.score_averaging_top1 <= 0.5
    assert after.zero_shot_top1 >= 0.9, after.report
    assert after.score_averaging_top1 >= 0.9, after.report
    losses = [r["loss"] for r in _read_log(result.log_path)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3

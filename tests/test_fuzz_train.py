"""Fuzzing the fine-tuning API's argument checks: TrainConfig (every field, from_dict), the loss
(against a float64 numpy reference), the batch plan, and finetune() with bad settings."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pytest
from fuzzing import attempt, examples, raised
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from mudg_fast.train import TrainConfig, finetune, soft_target_loss
from mudg_fast.train.data import BatchPlan

JUNK = [None, -1, 0, 1, 2, 0.5, 1.0, 1.5, -0.5, float("nan"), float("inf"), True, "x", "", [],
        {}, 10**30, np.int64(3), np.float32(0.25)]

# field -> predicate for valid values, written from TrainConfig's documentation
INT_FIELDS = {"iterations": 0, "batch_size": 1, "n_blocks": 0, "n_ctx": 1, "seed": 0,
              "num_workers": 0, "save_every": 1, "log_every": 1}
REAL_FIELDS = {"lr": (0, math.inf, True, False), "prompt_lr_mult": (0, math.inf, False, False),
               "momentum": (0, 1, False, True), "weight_decay": (0, math.inf, False, False),
               "distill_weight": (0, 1, False, False), "tau": (0, math.inf, True, False),
               "logit_scale": (0, math.inf, True, False), "ema": (0, 1, False, False)}


def valid(field, v) -> bool:
    if field in INT_FIELDS:
        return not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Integral) and v >= INT_FIELDS[field]
    if field in REAL_FIELDS:
        lo, hi, lo_open, hi_open = REAL_FIELDS[field]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            return False
        return lo <= v <= hi and not (lo_open and v == lo) and not (hi_open and v == hi)
    if field == "max_descriptors":
        return v is None or valid("batch_size", v)
    if field == "precision":
        return v in (None, "amp", "fp32")
    if field == "template":
        return isinstance(v, str) and v.count("{}") == 1
    if field == "ctx_init":
        return v is None or (isinstance(v, str) and bool(v.strip()))
    raise AssertionError(field)


FIELDS = sorted([*INT_FIELDS, *REAL_FIELDS, "max_descriptors", "precision", "template", "ctx_init"])


@examples(600)
@given(field=st.sampled_from(FIELDS),
       value=st.one_of(st.sampled_from(JUNK + ["amp", "fp32", "a {} b", "{}{}", "a photo"]),
                       st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True)))
def test_train_config_fields(field, value):
    out = attempt(TrainConfig, **{field: value})
    if valid(field, value):
        assert not raised(out), out
        got = getattr(out, field)
        assert got == value or (field in REAL_FIELDS and got == float(value))
        again = attempt(TrainConfig.from_dict, out.to_dict())
        assert not raised(again) and again == out
    else:
        assert raised(out), f"TrainConfig accepted {field}={value!r}"
        assert field in str(out.exc)


@examples(100)
@given(extra=st.dictionaries(st.sampled_from(["bogus", "lr", "iterations", "manifest", "image_folder",
                                              "webdataset"]),
                             st.sampled_from(["a.parquet", "folder", 5, 0.1])))
def test_train_config_from_dict(extra):
    out = attempt(TrainConfig.from_dict, extra)
    bad = ("bogus" in extra or ("manifest" in extra and "image_folder" in extra)
           or ("webdataset" in extra and "manifest" not in extra)
           or not valid("lr", extra.get("lr", 0.1)) or not valid("iterations", extra.get("iterations", 5))
           or any(not isinstance(extra.get(f, ""), str) for f in ("manifest", "image_folder", "webdataset")))
    assert raised(out) == bad, (extra, out)


def reference_loss(logits, labels, teacher, lam):
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    nll = -log_p[np.arange(len(labels)), labels]
    soft = -(teacher * log_p).sum(1) if teacher is not None else 0.0
    return float(((1 - lam) * nll + lam * soft).mean())


@examples(500)
@given(data=st.data(), b=st.integers(0, 6), c=st.integers(0, 5))
def test_soft_target_loss(data, b, c):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    logits = rng.standard_normal((b, c)) * data.draw(st.sampled_from([1.0, 30.0]))
    labels = rng.integers(0, max(c, 1), b)
    kind = data.draw(st.sampled_from(["ok", "ok", "ok", "label-high", "label-negative", "float-labels",
                                      "labels-short", "teacher-shape", "lam-junk", "no-teacher",
                                      "logits-1d", "int-logits"]))
    lam = data.draw(st.sampled_from([0.0, 0.2, 1.0]))
    teacher = rng.dirichlet(np.ones(max(c, 1)), b) if c else np.zeros((b, 0))
    t_logits, t_labels = torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)
    t_teacher = torch.tensor(teacher, dtype=torch.float32)
    if kind == "label-high" and b:
        t_labels[0] = c
    elif kind == "label-negative" and b:
        t_labels[-1] = -1
    elif kind == "float-labels":
        t_labels = t_labels.float()
    elif kind == "labels-short":
        t_labels = t_labels[:-1] if b else torch.zeros(1, dtype=torch.int64)
    elif kind == "teacher-shape":
        t_teacher = torch.ones(b + 1, c)
    elif kind == "lam-junk":
        lam = data.draw(st.sampled_from([-0.1, 1.5, float("nan"), "0.2", None, True]))
    elif kind == "no-teacher":
        t_teacher = None
    elif kind == "logits-1d":
        t_logits = t_logits.reshape(-1)
    elif kind == "int-logits":
        t_logits = t_logits.long()
    out = attempt(soft_target_loss, t_logits, t_labels, t_teacher, lam)
    bad = (b == 0 or c == 0 or (kind not in ("ok", "no-teacher") and not
                                (kind in ("label-high", "label-negative") and b == 0)))
    if kind == "no-teacher" and lam != 0:
        bad = True
    if bad:
        assert raised(out), f"accepted a bad loss call ({kind}, b={b}, c={c}, lam={lam!r})"
        return
    assert not raised(out), out
    want = reference_loss(t_logits.double().numpy(), labels, None if lam == 0 else teacher, lam)
    assert abs(out.item() - want) <= 1e-5 * max(1.0, abs(want)), (out.item(), want)


@examples(200)
@given(n=st.integers(1, 50), batch=st.integers(1, 20), seed=st.integers(0, 2**32), it=st.integers(0, 30))
def test_batch_plan_covers_each_epoch_once(n, batch, seed, it):
    plan = BatchPlan(n, batch, seed)
    # batches it*n .. it*n + n - 1 together cover exactly `batch` epochs of the data
    idx = np.concatenate([attempt(plan.indices, i) for i in range(it * n, it * n + n)])
    assert np.array_equal(np.bincount(idx, minlength=n), np.full(n, batch))
    assert attempt(plan.indices, it).tolist() == BatchPlan(n, batch, seed).indices(it).tolist()


@examples(60)
@given(setting=st.sampled_from(["iterations", "batch_size", "lr", "precision", "template", "manifest"]),
       value=st.sampled_from([-1, 0.0, "bad", None, float("nan")]))
def test_finetune_refuses_bad_settings_before_loading_anything(setting, value, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ft")
    kwargs = {setting: value}
    if setting != "manifest":
        kwargs["manifest"] = out_dir / "missing.parquet"
    res = attempt(finetune, out_dir / "run", allowed=(TypeError, ValueError, FileNotFoundError), **kwargs)
    assert raised(res), f"finetune accepted {kwargs}"
    if setting != "manifest" and not valid(setting, value):
        assert setting in str(res.exc), res  # the bad setting is named, before any data is read
    else:  # a bad manifest value, or nothing wrong but the missing manifest: either is named
        assert "missing.parquet" in str(res.exc) or "manifest" in str(res.exc) or \
            "data source" in str(res.exc), res
    assert not (out_dir / "run" / "checkpoint.pt").exists()

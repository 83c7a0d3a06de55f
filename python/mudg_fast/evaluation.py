"""Zero-shot and descriptor score-averaging accuracy of a CLIP model (docs/method.rst §6).

- **Zero-shot**: class ``c``'s prototype is the text feature of ``template.format(c)``; a test
  image gets the class with the highest cosine similarity.
- **Score averaging**: ``score(x, c) = mean over descriptors d of cos(f(x), g(prompt_c,d))``
  where ``prompt_c,d`` is the prompt with its final period replaced by descriptor ``d``; predict
  the arg-max. By linearity this is ``cos``-sum with the mean of the normalised prototypes, which
  is how it is computed (one matrix product instead of m).

A model fine-tuned by ``mudg_fast.train`` (``pretrained="<out>/model.pt"``) is evaluated with
its learned prompt vectors, and by default with its own template and descriptors.

Needs the ``[clip]`` extra; torch is imported only when :func:`evaluate` runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

__all__ = ["evaluate", "EvaluationResult", "score_average", "accuracy_report"]

DEFAULT_TEMPLATE = "a photo of a {}."


def score_average(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Descriptor score averaging.

    ``image_features`` float32 (n, D) and ``text_features`` float32 (m, C, D), both with
    L2-normalised rows; returns float32 (n, C) with entry ``[i, c] = mean_d <x_i, t_dc>``.
    """
    x = np.asarray(image_features, np.float32)
    t = np.asarray(text_features, np.float32)
    if x.ndim != 2 or t.ndim != 3 or t.shape[2] != x.shape[1]:
        raise ValueError(f"expected image features (n, D) and text features (m, C, D), got "
                         f"{x.shape} and {t.shape}")
    if t.shape[0] == 0:
        raise ValueError("score averaging needs at least one descriptor")
    mean_proto = t.astype(np.float64).mean(axis=0).astype(np.float32)  # (C, D)
    return x @ mean_proto.T


def accuracy_report(scores: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """``{"top1", "mean_per_class", "per_class" (list of accuracy or None), "n" (list)}`` for
    arg-max predictions of ``scores`` (n, C) against ``labels`` int (n,). Classes without test
    images have accuracy None and are left out of ``mean_per_class``."""
    labels = np.asarray(labels, np.int64)
    pred = np.asarray(scores).argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
    correct = pred == labels
    n = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=n_classes)
    per = [float(hits[c] / n[c]) if n[c] else None for c in range(n_classes)]
    seen = [a for a in per if a is not None]
    return {"top1": float(correct.mean()) if len(labels) else None,
            "mean_per_class": float(np.mean(seen)) if seen else None,
            "per_class": per, "n": n.tolist()}


@dataclasses.dataclass
class EvaluationResult:
    """``report``: the JSON-serialisable summary (also written to ``out``); ``labels`` int64
    (n,); ``zero_shot_scores`` float32 (n, C); ``score_averaging_scores`` float32 (n, C) or None
    without descriptors; ``image_features`` float32 (n, D); ``sources``: the n image paths."""
    report: dict
    labels: np.ndarray
    zero_shot_scores: np.ndarray
    score_averaging_scores: np.ndarray | None
    image_features: np.ndarray
    sources: list

    @property
    def zero_shot_top1(self) -> float:
        """Top-1 accuracy of the zero-shot classifier (0 to 1)."""
        return self.report["zero_shot"]["top1"]

    @property
    def score_averaging_top1(self) -> float | None:
        """Top-1 accuracy with descriptor score averaging (0 to 1); None when no descriptors were given."""
        sa = self.report["score_averaging"]
        return None if sa is None else sa["top1"]


def _text_features(parts, prompts: list[str], batch_size: int, device) -> np.ndarray:
    """Normalised float32 (len(prompts), D) features, with the learned prompt vectors when
    ``parts`` came from a fine-tuned bundle."""
    import torch
    import torch.nn.functional as F

    model = parts.model
    prompt = (parts.finetuned or {}).get("prompt")
    out = []
    with torch.inference_mode():
        if prompt is not None:
            from .train.text import PromptLearner, encode_text_with_ctx

            learner = PromptLearner(model, parts.tokenizer, n_ctx=int(prompt["n_ctx"]),
                                    ctx_init=prompt.get("ctx_init"),
                                    generator=torch.Generator().manual_seed(0))
            ctx = prompt["ctx"].to(device=device, dtype=learner.ctx.dtype)
            for s in range(0, len(prompts), batch_size):
                tokens = learner.tokenize(prompts[s:s + batch_size]).to(device)
                out.append(F.normalize(encode_text_with_ctx(model, tokens, ctx).float(), dim=-1))
        else:
            for s in range(0, len(prompts), batch_size):
                tokens = parts.tokenizer(prompts[s:s + batch_size]).to(device)
                out.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out).cpu().numpy().astype(np.float32)


def _image_features(parts, data, batch_size, num_workers, device, amp, progress) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from .clip import _progress
    from .train.data import ImageDataset

    # ImageDataset is a map-style dataset by protocol (it does not subclass torch's Dataset).
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        ImageDataset(data, parts.preprocess),  # type: ignore[arg-type]
        batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    feats = []
    ctx = (torch.autocast(device_type="cuda", dtype=torch.float16) if amp
           else torch.autocast(device_type="cpu", enabled=False))
    with torch.inference_mode(), ctx, _progress(len(data), "encode images", progress) as bar:
        for images, _ in loader:
            f = parts.model.encode_image(images.to(device, non_blocking=True))
            feats.append(F.normalize(f.float(), dim=-1).cpu())
            bar.update(len(images))
    return torch.cat(feats).numpy().astype(np.float32)


def evaluate(*, model: str | None = None, pretrained: str | None = "openai",
             image_folder=None, manifest=None, webdataset=None, classnames=None,
             template: str | None = None, descriptors: Any = None,
             max_descriptors: int | None = None, batch_size: int = 256, device="cpu",
             num_workers: int = 0, precision: str | None = None, out=None,
             offline: bool = False, cache_dir=None, parts=None,
             progress: bool = True) -> EvaluationResult:
    """Zero-shot and score-averaging accuracy on a labelled image set; optionally writes the
    report to ``out`` (JSON, atomically).

    Model: ``model``/``pretrained``/``offline``/``cache_dir`` as in
    ``mudg_fast.clip.load_model`` (``model=None``: ViT-L-14, or the architecture of a fine-tuned
    ``model.pt``, which also brings its learned prompt), or
    ``parts`` (a ``ClipParts``) to use an already loaded model. Data: ``image_folder``
    (``root/<class>/<image>``) or ``manifest`` (+ ``webdataset``), with optional ``classnames``
    (list or file; one per class, in label order). Text: ``template`` (default: the fine-tuned
    model's, else ``"a photo of a {}."``) and ``descriptors`` (list or JSON/text file; default:
    the fine-tuned model's, else none; pass ``[]`` for none). Without descriptors only zero-shot
    accuracy is reported. ``precision``: "amp" (float16 autocast, CUDA only) or "fp32"; default
    amp on CUDA.

    The report holds ``zero_shot`` and ``score_averaging`` (``top1``, ``mean_per_class``), and
    ``per_class`` (``label``, ``classname``, ``n``, both accuracies; None for classes without
    images).
    """
    from ._extras import require

    require("torch", "evaluating CLIP")
    from .clip import load_model, resolve_device
    from .train._io import atomic_write_json
    from .train.data import load_data
    from .train.prompts import class_prompts, load_descriptors

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = resolve_device(device)
    precision = precision or ("amp" if dev.type == "cuda" else "fp32")
    if precision not in ("amp", "fp32") or (precision == "amp" and dev.type != "cuda"):
        raise ValueError(f"precision must be 'fp32', or 'amp' on CUDA; got {precision!r} on "
                         f"{dev.type}")
    if out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"the folder for the report does not exist: {out}")
    data = load_data(manifest=manifest, image_folder=image_folder, webdataset=webdataset,
                     classnames=classnames)
    if parts is None:
        parts = load_model(model, pretrained, device=dev, offline=offline, cache_dir=cache_dir)
    parts.model.to(dev).eval()
    tuned = parts.finetuned or {}
    template = template or tuned.get("template") or DEFAULT_TEMPLATE
    if descriptors is None:
        descriptors = tuned.get("descriptors") or []
    descriptors = [d for d in load_descriptors(descriptors, max_descriptors) if d]
    names = list(data.classnames)

    image_features = _image_features(parts, data, batch_size, num_workers, dev,
                                     precision == "amp", progress)
    plain = _text_features(parts, class_prompts(names, template), batch_size, dev)
    zs_scores = image_features @ plain.T
    sa_scores = None
    if descriptors:
        per_d = np.stack([_text_features(parts, class_prompts(names, template, d), batch_size,
                                         dev) for d in descriptors])
        sa_scores = score_average(image_features, per_d)

    labels = data.labels
    zs = accuracy_report(zs_scores, labels, len(names))
    sa = accuracy_report(sa_scores, labels, len(names)) if sa_scores is not None else None
    report = {
        "model": parts.model_name or model, "pretrained": None if pretrained is None else
        os.fspath(pretrained), "finetuned": bool(tuned), "learned_prompt": "prompt" in tuned,
        "data": data.origin, "n_images": len(data), "n_classes": len(names),
        "template": template, "descriptors": descriptors,
        "zero_shot": {"top1": zs["top1"], "mean_per_class": zs["mean_per_class"]},
        "score_averaging": (None if sa is None else
                            {"top1": sa["top1"], "mean_per_class": sa["mean_per_class"]}),
        "per_class": [{"label": c, "classname": names[c], "n": zs["n"][c],
                       "zero_shot": zs["per_class"][c],
                       "score_averaging": None if sa is None else sa["per_class"][c]}
                      for c in range(len(names))],
    }
    if out is not None:
        atomic_write_json(out, report)
    return EvaluationResult(report, labels, zs_scores.astype(np.float32),
                            None if sa_scores is None else sa_scores.astype(np.float32),
                            image_features, [data.source_name(i) for i in range(len(data))])

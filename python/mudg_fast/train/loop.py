"""Fine-tuning with the diversity-preserving loss (docs/method.rst §6, fine-tuning).

Each iteration ``i`` uses descriptor ``d = i mod m`` for both the student's class prototypes and
the teacher:

- student logits ``s = logit_scale · normalise(f(x)) · normalise(g(prompt_c,d))ᵀ`` (B, C);
- teacher probabilities ``q = softmax(τ · normalise(f0(x)) · normalise(g0(prompt_c,d))ᵀ)``, where
  ``f0``/``g0`` are the frozen initial towers with the initial prompt;
- target ``t = (1 − λ)·onehot(y) + λ·q`` and loss ``−mean_b Σ_c t_bc · log_softmax(s)_bc``
  (λ = 0 is plain cross-entropy);
- SGD step (momentum, weight decay; the prompt vectors at ``prompt_lr_mult`` × lr), then
  ``ema ← β·ema + (1 − β)·θ`` for every trained tensor.

The teacher's text prototypes never change, so they are computed once for all descriptors
(m, C, D); the teacher's image tower is a frozen copy of the initial one. The EMA weights are what
is saved (``model.pt``) and evaluated.

Outputs in ``out``: ``model.pt`` (the EMA model: a full open_clip state dict under
``state_dict`` — ``open_clip.create_model(arch, pretrained="model.pt")`` loads it — plus the
learned prompt and run metadata), ``checkpoint.pt`` (everything needed to resume exactly),
``config.json`` and ``log.jsonl`` (one line per ``log_every`` iterations). Every file is written
atomically.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import numbers
import os
import random
import time
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..clip import BUNDLE_FORMAT, ClipParts, _progress, load_model, resolve_device
from ._io import atomic_torch_save, atomic_write_json, atomic_write_text
from .config import RESUMABLE_CHANGES, TrainConfig
from .data import BatchPlan, ImageDataset, LabeledImages, load_data, stack_batch
from .prompts import class_prompts, load_descriptors
from .text import PromptLearner, encode_text_with_ctx, trainable_parameter_names

__all__ = ["Trainer", "StepResult", "FinetuneResult", "finetune", "soft_target_loss",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "mudg_fast.train.checkpoint"
CHECKPOINT_VERSION = 1
BUNDLE_VERSION = 1
PROMPT_PARAM = "prompt.ctx"


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def soft_target_loss(logits: torch.Tensor, labels: torch.Tensor,
                     teacher_probs: torch.Tensor | None, distill_weight: float) -> torch.Tensor:
    """Soft-target cross-entropy, averaged over the batch.

    ``logits`` float (B, C); ``labels`` int64 (B,) in ``[0, C)``; ``teacher_probs`` float (B, C),
    rows summing to 1 (may be None when ``distill_weight`` is 0). Target
    ``(1 − λ)·onehot(labels) + λ·teacher_probs`` with λ = ``distill_weight``.
    """
    if not (isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.is_floating_point()):
        raise ValueError(f"logits must be a float tensor (B, C), got {_describe(logits)}")
    b, c = logits.shape
    if b == 0 or c == 0:
        raise ValueError(f"logits must have at least one row and one class, got shape {(b, c)}")
    if not (isinstance(labels, torch.Tensor) and labels.shape == (b,) and
            labels.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)):
        raise ValueError(f"labels must be an integer tensor of shape ({b},), got {_describe(labels)}")
    if bool(((labels < 0) | (labels >= c)).any()):
        raise ValueError(f"labels must lie in [0, {c}), got values from {int(labels.min())} to "
                         f"{int(labels.max())}")
    if isinstance(distill_weight, bool) or not isinstance(distill_weight, numbers.Real) or \
            not 0 <= distill_weight <= 1:
        raise ValueError(f"distill_weight must be a number in [0, 1], got {distill_weight!r}")
    if teacher_probs is not None and not (isinstance(teacher_probs, torch.Tensor) and
                                          teacher_probs.shape == logits.shape):
        raise ValueError(f"teacher_probs must be a tensor of shape {tuple(logits.shape)}, got "
                         f"{_describe(teacher_probs)}")
    labels = labels.long()
    log_p = F.log_softmax(logits.float(), dim=-1)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    if distill_weight == 0:
        return nll.mean()
    if teacher_probs is None:
        raise ValueError("teacher_probs are required when distill_weight > 0")
    soft = -(teacher_probs.float() * log_p).sum(dim=-1)
    return ((1.0 - distill_weight) * nll + distill_weight * soft).mean()


@dataclasses.dataclass
class StepResult:
    """One optimisation step: ``iteration`` (0-based index of the step just taken), ``loss``
    (its value before the update), ``descriptor`` (index used, ``iteration mod m``)."""
    iteration: int
    loss: float
    descriptor: int


@dataclasses.dataclass
class FinetuneResult:
    """Paths written by :func:`finetune` and a summary of the run."""
    model_path: str
    checkpoint_path: str
    log_path: str
    iterations: int
    final_loss: float | None
    classnames: list
    descriptors: list


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """``torch.use_deterministic_algorithms(True)`` for the duration (CPU runs), then the
    caller's setting again."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _mudg_version() -> str:
    from .. import __version__

    return __version__


def _uses_quick_gelu(model) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


class Trainer:
    """Fine-tunes one CLIP model; :func:`finetune` is the usual entry point.

    ``Trainer(config, parts=None, data=None)``: ``parts`` (a ``mudg_fast.clip.ClipParts``) and
    ``data`` (a :class:`~mudg_fast.train.data.LabeledImages`) default to loading what ``config``
    names. Building the trainer snapshots the initial model as the teacher, so pass the model
    *before* any fine-tuning. Attributes: ``model`` (the student open_clip model), ``prompt``
    (:class:`~mudg_fast.train.text.PromptLearner`), ``params`` (name -> trained tensor, including
    ``"prompt.ctx"``), ``ema`` (name -> EMA tensor), ``iteration`` (steps taken), ``descriptors``
    (m strings; ``[""]`` when none were given), ``classnames``.
    """

    def __init__(self, config: TrainConfig, *, parts: ClipParts | None = None,
                 data: LabeledImages | None = None):
        cfg = self.config = config.validate()
        self.device = resolve_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.precision = cfg.precision or ("amp" if cuda else "fp32")
        if self.precision == "amp" and not cuda:
            raise ValueError("precision='amp' (mixed precision) needs a CUDA device")
        self.amp_dtype = None
        if self.precision == "amp":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

        # Data and text first: they are cheap to check, the model may take minutes to load.
        self.data = data if data is not None else load_data(
            manifest=cfg.manifest, image_folder=cfg.image_folder, webdataset=cfg.webdataset,
            classnames=cfg.classnames)
        if len(self.data) == 0:
            raise ValueError("the training set is empty")
        self.classnames = list(self.data.classnames)
        self.descriptors = load_descriptors(cfg.descriptors, cfg.max_descriptors) or [""]

        if parts is None:
            parts = load_model(cfg.model, cfg.pretrained, device=self.device,
                               offline=cfg.offline, cache_dir=cfg.cache_dir)
        if parts.finetuned is not None:
            warnings.warn("starting from a fine-tuned bundle: its weights are used, its learned "
                          "prompt is not (a new prompt starts from ctx_init)", stacklevel=2)
        self.parts = parts
        self.model = model = parts.model.to(self.device).eval()
        self.tokenizer = parts.tokenizer
        if cfg.augment and parts.preprocess_train is None:
            raise ValueError("augment=True needs a training transform (parts.preprocess_train); "
                             "pass augment=False to train with the inference transform")

        # Student parameters: everything frozen except the chosen blocks, projections, norms.
        names = trainable_parameter_names(model, cfg.n_blocks)
        chosen = set(names)
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.prompt = PromptLearner(model, self.tokenizer, n_ctx=cfg.n_ctx,
                                    ctx_init=cfg.ctx_init, generator=gen).to(self.device)
        named = dict(model.named_parameters())
        self.params = {n: named[n] for n in names}
        self.params[PROMPT_PARAM] = self.prompt.ctx

        # Class-prompt tokens per descriptor, (C, context_length) each.
        self.tokens = [self.prompt.tokenize(class_prompts(self.classnames, cfg.template, d))
                       .to(self.device) for d in self.descriptors]

        # Teacher: the initial model with the initial prompt. Text prototypes are fixed (m, C, D).
        with torch.no_grad(), self._autocast():
            self.teacher_text = torch.stack([
                F.normalize(encode_text_with_ctx(model, t, self.prompt.ctx).float(), dim=-1)
                for t in self.tokens])
        self.teacher_visual = None
        if cfg.distill_weight > 0:
            self.teacher_visual = copy.deepcopy(model.visual).eval().requires_grad_(False)

        tower = [p for n, p in self.params.items() if n != PROMPT_PARAM]
        self.optimizer = torch.optim.SGD(
            [{"params": tower, "lr": cfg.lr},
             {"params": [self.prompt.ctx], "lr": cfg.lr * cfg.prompt_lr_mult}],
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scaler = (torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None)
        self.ema = {n: p.detach().clone() for n, p in self.params.items()}
        self.iteration = 0
        transform = parts.preprocess_train if cfg.augment else parts.preprocess
        self.dataset = ImageDataset(self.data, transform)
        self.plan = BatchPlan(len(self.data), cfg.batch_size, cfg.seed)
        self._last_loss: float | None = None

    # --- one step --------------------------------------------------------------------------

    @property
    def m(self) -> int:
        """Number of descriptors rotated through (1 when none were given)."""
        return len(self.descriptors)

    def descriptor_index(self, iteration: int) -> int:
        """The descriptor iteration ``iteration`` uses: ``iteration mod m``."""
        return iteration % self.m

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def batch(self, iteration: int):
        """The planned batch of ``iteration``: images float32 (B, 3, H, W) and labels int64 (B,),
        on the training device (read in this process)."""
        x, y = stack_batch(self.dataset, self.plan.batch(iteration))
        return x.to(self.device), y.to(self.device)

    def student_logits(self, images: torch.Tensor, descriptor: int) -> torch.Tensor:
        """``logit_scale · cos(f(images), g(prompts of descriptor))``, float32 (B, C)."""
        with self._autocast():
            f_img = F.normalize(self.model.encode_image(images).float(), dim=-1)
            f_txt = F.normalize(encode_text_with_ctx(self.model, self.tokens[descriptor],
                                                     self.prompt.ctx).float(), dim=-1)
        return self.config.logit_scale * f_img @ f_txt.T

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor, descriptor: int) -> torch.Tensor:
        """``softmax(τ · cos(f0(images), g0(prompts of descriptor)))``, float32 (B, C)."""
        if self.teacher_visual is None:
            raise ValueError("no teacher: distill_weight is 0")
        with self._autocast():
            f0 = F.normalize(self.teacher_visual(images).float(), dim=-1)
        return torch.softmax(self.config.tau * f0 @ self.teacher_text[descriptor].T, dim=-1)

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor,
                     descriptor: int) -> torch.Tensor:
        """The soft-target loss of a batch with descriptor ``descriptor`` (differentiable)."""
        if labels.dtype != torch.int64 or labels.ndim != 1 or len(labels) != len(images):
            raise ValueError("labels must be int64 of shape (B,) matching the images")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classnames)):
            raise ValueError(f"labels must lie in [0, {len(self.classnames)})")
        lam = self.config.distill_weight
        q = self.teacher_probs(images, descriptor) if lam > 0 else None
        return soft_target_loss(self.student_logits(images, descriptor), labels, q, lam)

    def step(self, images: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> StepResult:
        """One SGD step on ``(images, labels)`` (default: the planned batch of this iteration),
        then the EMA update. Uses descriptor ``iteration mod m``."""
        if images is None and labels is None:
            images, labels = self.batch(self.iteration)
        elif images is None or labels is None:
            raise ValueError("step() takes both images and labels, or neither (the planned batch)")
        d = self.descriptor_index(self.iteration)
        with _deterministic(self.device.type == "cpu"):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.compute_loss(images, labels, d)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iteration}; "
                                         "lower the learning rate")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self._update_ema()
        result = StepResult(self.iteration, float(loss.detach()), d)
        self.iteration += 1
        self._last_loss = result.loss
        return result

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.config.ema
        ema = [self.ema[n] for n in self.params]
        cur = [p.detach() for p in self.params.values()]
        torch._foreach_mul_(ema, beta)
        torch._foreach_add_(ema, cur, alpha=1.0 - beta)

    # --- saving and resuming ---------------------------------------------------------------

    def ema_state_dict(self) -> dict:
        """The full open_clip state dict (CPU tensors) with the EMA values of the trained
        tensors: the model that is saved and evaluated."""
        sd = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        for n, v in self.ema.items():
            if n != PROMPT_PARAM:
                sd[n] = v.detach().cpu().clone()
        return sd

    def bundle(self) -> dict:
        """The fine-tuned model file's content (see the module docstring)."""
        from open_clip import get_model_preprocess_cfg

        cfg = self.config
        pre = {k: (list(v) if isinstance(v, tuple) else v)
               for k, v in get_model_preprocess_cfg(self.model).items()}
        return {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
            "mudg_fast_version": _mudg_version(),
            "model": self.parts.model_name or cfg.model, "pretrained": cfg.pretrained,
            "quick_gelu": _uses_quick_gelu(self.model), "preprocess_cfg": pre,
            "state_dict": self.ema_state_dict(),
            "prompt": {"ctx": self.ema[PROMPT_PARAM].detach().cpu().clone(),
                       "n_ctx": self.prompt.n_ctx, "ctx_init": self.prompt.ctx_init,
                       "words": self.prompt.words},
            "classnames": list(self.classnames), "template": cfg.template,
            "descriptors": [d for d in self.descriptors if d],
            "iteration": self.iteration, "config": cfg.to_dict(),
        }

    def save_model(self, path) -> str:
        """Writes :meth:`bundle` atomically to ``path``."""
        return atomic_torch_save(self.bundle(), path)

    def state(self) -> dict:
        """Everything :meth:`load_state` needs to continue bit for bit."""
        np_state = cast(tuple, np.random.get_state(legacy=True))
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "iteration": self.iteration, "config": self.config.to_dict(),
            "data_fingerprint": self.data.fingerprint(), "classnames": list(self.classnames),
            "descriptors": list(self.descriptors),
            "params": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "ema": {n: v.detach().cpu().clone() for n, v in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                          int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": random.getstate(),
            },
            "last_loss": self._last_loss,
        }

    def save_checkpoint(self, path) -> str:
        """Writes :meth:`state` atomically to ``path``."""
        return atomic_torch_save(self.state(), path)

    def load_state(self, state: dict) -> None:
        """Restores a :meth:`state` taken from a trainer with the same settings and data.
        Raises ValueError naming what differs."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a mudg_fast training checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not supported "
                             f"(this mudg_fast writes {CHECKPOINT_VERSION})")
        saved, now = state["config"], self.config.to_dict()
        skip = RESUMABLE_CHANGES | {"manifest", "image_folder", "webdataset", "classnames",
                                    "descriptors"}
        diff = [k for k in now if k not in skip and saved.get(k) != now[k]]
        if diff:
            raise ValueError("the checkpoint was made with different settings: " + ", ".join(
                f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in diff))
        if state["classnames"] != self.classnames or state["descriptors"] != self.descriptors:
            raise ValueError("the checkpoint was made with different class names or descriptors")
        if state["data_fingerprint"] != self.data.fingerprint():
            raise ValueError("the checkpoint was made on different training data (images, labels "
                             "or their order differ)")
        if state["iteration"] > self.config.iterations:
            raise ValueError(f"the checkpoint is at iteration {state['iteration']}, beyond "
                             f"iterations={self.config.iterations}")
        if set(state["params"]) != set(self.params):
            raise ValueError("the checkpoint trains different parameters")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["params"][n])
                self.ema[n].copy_(state["ema"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        self.iteration = int(state["iteration"])
        self._last_loss = state.get("last_loss")

    def load_checkpoint(self, path) -> None:
        """:meth:`load_state` from a file written by :meth:`save_checkpoint`."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state(state)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> FinetuneResult:
        """Trains from ``iteration`` to ``config.iterations``, writing checkpoints every
        ``save_every`` iterations and the final checkpoint and model to ``config.out``."""
        cfg = self.config
        if cfg.out is None:
            raise ValueError("config.out (the output folder) is required to run")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt, model_path, log_path = out / "checkpoint.pt", out / "model.pt", out / "log.jsonl"
        self._trim_log(log_path)
        plan = BatchPlan(len(self.data), cfg.batch_size, cfg.seed, start=self.iteration,
                         stop=cfg.iterations)
        # ImageDataset is a map-style dataset by protocol (it does not subclass torch's Dataset,
        # so that its module imports without torch).
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_sampler=plan, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        window: list[float] = []
        t0 = time.perf_counter()
        with _progress(cfg.iterations, "train", cfg.progress) as bar:
            bar.update(self.iteration)
            for images, labels in loader:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                r = self.step(images, labels)
                window.append(r.loss)
                bar.update(1)
                bar.set_postfix(loss=f"{r.loss:.4f}", refresh=False)
                if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iterations:
                    self._append_log(log_path, {
                        "iteration": self.iteration, "loss": float(np.mean(window)),
                        "descriptor": r.descriptor, "lr": cfg.lr,
                        "elapsed_s": round(time.perf_counter() - t0, 3)})
                    window = []
                if self.iteration % cfg.save_every == 0 and self.iteration < cfg.iterations:
                    self.save_checkpoint(ckpt)
        self.save_checkpoint(ckpt)
        self.save_model(model_path)
        return FinetuneResult(str(model_path), str(ckpt), str(log_path), self.iteration,
                              self._last_loss, list(self.classnames),
                              [d for d in self.descriptors if d])

    def _trim_log(self, log_path: Path) -> None:
        """On resume, drops log lines past the checkpoint (steps that were redone)."""
        if not log_path.exists():
            return
        keep = []
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= self.iteration:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(log_path, "".join(k + "\n" for k in keep))

    @staticmethod
    def _append_log(log_path: Path, record: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def finetune(out, *, parts: ClipParts | None = None, data: LabeledImages | None = None,
             **settings) -> FinetuneResult:
    """Fine-tunes CLIP on a labelled image set and writes the EMA model to ``out/model.pt``.

    ``settings`` are :class:`~mudg_fast.train.config.TrainConfig` fields (``model``,
    ``pretrained``, ``manifest`` or ``image_folder``, ``descriptors``, ``iterations``, ...; the
    defaults are the authors'). ``parts``/``data`` inject an already loaded model or data set.

    A folder that already holds a ``checkpoint.pt`` or ``model.pt`` is never overwritten: pass
    ``resume=True`` to continue that run (bit for bit on CPU, with the same settings and data;
    ``iterations`` may grow), or choose another ``out``. Returns a :class:`FinetuneResult`.
    """
    if out is None:
        raise ValueError("out (the output folder) is required")
    cfg = TrainConfig(out=os.fspath(out), **settings)
    out = Path(os.fspath(out))
    ckpt = out / "checkpoint.pt"
    if cfg.resume and not ckpt.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
    existing = [p for p in (ckpt, out / "model.pt") if p.exists()]
    if not cfg.resume and existing:
        raise FileExistsError(f"{out} already holds a training run ({existing[0].name}); pass "
                              "resume=True to continue it, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, parts=parts, data=data)
    if cfg.resume:
        trainer.load_checkpoint(ckpt)
    record = cfg.to_dict()
    record["classnames"] = trainer.classnames
    record["descriptors"] = [d for d in trainer.descriptors if d]
    record["n_train_images"] = len(trainer.data)
    atomic_write_json(out / "config.json", record)
    return trainer.run()

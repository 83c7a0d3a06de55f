"""Fine-tuning settings (no torch import here: the CLI reads its defaults from this module)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any

__all__ = ["TrainConfig"]

# Fields that may differ between a checkpoint and the run that resumes it: they do not change
# what is computed at a given iteration (``iterations`` only extends or shortens the run).
RESUMABLE_CHANGES = frozenset({"iterations", "save_every", "log_every", "num_workers", "progress",
                               "out", "resume", "offline", "cache_dir", "device"})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a fine-tuning run. Defaults are the authors' unless noted.

    Model: ``model`` (open_clip architecture, default ``"ViT-L-14"``), ``pretrained`` (tag,
    checkpoint file, ``hf-hub:``/``local-dir:``; default ``"openai"``), ``offline``,
    ``cache_dir`` (see ``mudg_fast.clip.load_model``).

    Data (exactly one of ``manifest`` or ``image_folder``): ``manifest`` is the parquet file of
    the selection step (columns ``id``, ``label``, ``classname``, and ``path`` unless
    ``webdataset`` names an img2dataset output folder); ``image_folder`` is a
    ``root/<class>/<image>`` tree. ``classnames``: a list, or a JSON/text file (default: from the
    data). ``template``: the class prompt, ``{}`` is replaced by the class name.
    ``descriptors``: list or JSON/text file of descriptor phrases (docs/method.rst §2; default none: m = 1,
    the plain prompt); ``max_descriptors`` keeps the first ones.

    Optimisation: ``iterations`` [500; the authors used 100–1000 by data set],
    ``batch_size`` [128], ``lr`` [6.4e-4] for the towers, ``prompt_lr_mult`` [10] for the prompt
    vectors, ``momentum`` [0.9], ``weight_decay`` [1e-5] (SGD), ``distill_weight`` λ [0.2],
    ``tau`` τ [10], ``logit_scale`` [25], ``ema`` β [0.995], ``n_blocks`` trained transformer
    blocks per tower [3], ``n_ctx`` learnable prompt vectors [3] initialised from ``ctx_init``
    ["a photo of"] (None: random, std 0.02), ``augment`` [True]: open_clip's training transform
    (random resized crop, scale 0.9–1) instead of the inference one.

    Run: ``seed`` [0], ``device`` ["cpu"], ``precision`` ("amp": bfloat16/float16 autocast on
    CUDA, "fp32"; default None = amp on CUDA, fp32 on CPU), ``num_workers`` data-loading processes
    [0], ``out`` output folder, ``resume`` (continue from ``out/checkpoint.pt``), ``save_every``
    iterations between checkpoints [100], ``log_every`` [10], ``progress`` tqdm bar [True].
    """

    out: str | os.PathLike | None = None
    model: str | None = "ViT-L-14"
    pretrained: str | None = "openai"
    manifest: str | os.PathLike | None = None
    webdataset: str | os.PathLike | None = None
    image_folder: str | os.PathLike | None = None
    classnames: Any = None
    template: str = "a photo of a {}."
    descriptors: Any = None
    max_descriptors: int | None = None
    iterations: int = 500
    batch_size: int = 128
    lr: float = 6.4e-4
    prompt_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-5
    distill_weight: float = 0.2
    tau: float = 10.0
    logit_scale: float = 25.0
    ema: float = 0.995
    n_blocks: int = 3
    n_ctx: int = 3
    ctx_init: str | None = "a photo of"
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    precision: str | None = None
    num_workers: int = 0
    resume: bool = False
    save_every: int = 100
    log_every: int = 10
    progress: bool = True
    offline: bool = False
    cache_dir: str | os.PathLike | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raises ValueError/TypeError naming the first bad field."""
        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))

        def real(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {v!r}")
            setattr(self, name, float(v))

        integer("iterations", 0)
        integer("batch_size", 1)
        integer("n_blocks", 0)
        integer("n_ctx", 1)
        integer("seed", 0)
        integer("num_workers", 0)
        integer("save_every", 1)
        integer("log_every", 1)
        if self.max_descriptors is not None:
            integer("max_descriptors", 1)
        inf = float("inf")
        real("lr", 0, inf, lo_open=True)
        real("prompt_lr_mult", 0, inf)
        real("momentum", 0, 1, hi_open=True)
        real("weight_decay", 0, inf)
        real("distill_weight", 0, 1)
        real("tau", 0, inf, lo_open=True)
        real("logit_scale", 0, inf, lo_open=True)
        real("ema", 0, 1)
        if not isinstance(self.template, str) or self.template.count("{}") != 1:
            raise ValueError(f"template must contain '{{}}' exactly once (where the class name "
                             f"goes), got {self.template!r}")
        if self.ctx_init is not None and not (isinstance(self.ctx_init, str) and
                                              self.ctx_init.strip()):
            raise ValueError(f"ctx_init must be a non-empty string or None, got {self.ctx_init!r}")
        if self.precision not in (None, "amp", "fp32"):
            raise ValueError(f"precision must be 'amp', 'fp32' or None, got {self.precision!r}")
        for name in ("out", "manifest", "webdataset", "image_folder", "cache_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise TypeError(f"{name} must be a path (str or os.PathLike) or None, got "
                                f"{type(v).__name__} {v!r}")
            if isinstance(v, str) and not v.strip():
                raise ValueError(f"{name} must be a non-empty path, got {v!r}")
        if self.manifest is not None and self.image_folder is not None:
            raise ValueError("give one data source: manifest=<selection .parquet> or "
                             "image_folder=<root/<class>/<images>>, not both")
        if self.webdataset is not None and self.manifest is None:
            raise ValueError("webdataset=<img2dataset folder> needs manifest=<parquet> to label it")
        return self

    def to_dict(self) -> dict:
        """JSON-serialisable dict (paths as strings)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, os.PathLike):
                d[k] = os.fspath(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict of field values (e.g. a saved ``config.json``); unknown fields raise
        ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)

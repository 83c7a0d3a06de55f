"""CLIP encoding over open_clip: texts and images -> L2-normalised float32 arrays.

Needs the ``[clip]`` extra (``pip install mudg_fast[clip]``: torch, torchvision, open_clip_torch,
pillow). Nothing here imports torch or open_clip until a model is loaded, so ``import mudg_fast``
and ``import mudg_fast.clip`` stay light.

Where the weights come from (``pretrained``):

- an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``, ... see
  ``open_clip.list_pretrained_tags_by_model(model)``): looked up in the local cache first (the
  Hugging Face hub cache, or ``~/.cache/clip`` for URL downloads, or ``cache_dir``), downloaded
  only when missing and ``offline`` is false;
- a local checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) holding a state dict for
  the architecture ``model``; a fine-tuned bundle written by ``mudg_fast.train`` is recognised and
  carries its own architecture, activation and preprocessing;
- ``"local-dir:/path"`` (a folder with ``open_clip_config.json`` and weights) or
  ``"hf-hub:org/repo"``; the architecture then comes from that source's config and ``model`` is
  only a label. These may also be given as ``model`` (open_clip's convention).

A tag whose weights were trained with QuickGELU (all OpenAI tags) gets QuickGELU even when
``model`` names the plain config (``"ViT-L-14"`` with ``"openai"``): open_clip only warns about
the mismatch, and the wrong activation silently degrades every feature.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ._extras import require

__all__ = ["BUNDLE_FORMAT", "DEFAULT_MODEL", "ClipEncoder", "ClipParts", "decode_image",
           "load_images", "load_model", "resolve_device"]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
#: ``format`` field of the fine-tuned model files written by ``mudg_fast.train``.
BUNDLE_FORMAT = "mudg_fast.finetuned"
#: The architecture used when ``model=None`` and nothing else names one (the LAION-2B index's).
DEFAULT_MODEL = "ViT-L-14"


def _import_torch():
    return require("torch", "CLIP encoding and fine-tuning")


def _import_open_clip(offline: bool = False):
    if offline:
        # Read by huggingface_hub (and transformers) when they are first imported.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    _import_torch()
    return require("open_clip", "loading CLIP models")


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "on", "yes", "true")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_device(device) -> Any:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` -> ``torch.device``; raises
    ValueError for a CUDA device when CUDA is unavailable."""
    torch = _import_torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available "
                         "(torch.cuda.is_available() is False); use device='cpu'")
    return dev


@dataclasses.dataclass
class ClipParts:
    """A loaded CLIP model with what is needed to use it.

    ``model`` is an open_clip model (in eval mode, on ``device``); ``preprocess`` maps a PIL image
    to a float tensor (3, H, W) for inference and ``preprocess_train`` does the same with
    open_clip's training augmentation; ``tokenizer`` maps ``list[str]`` to an int64 tensor
    (n, context_length). ``finetuned`` is the metadata of a ``mudg_fast.train`` bundle (learned
    prompt, template, descriptors, class names) when the weights came from one, else None.
    """

    model: Any
    preprocess: Callable
    tokenizer: Callable
    preprocess_train: Callable | None = None
    model_name: str = ""
    pretrained: str | None = None
    finetuned: dict | None = None


def _schema(name: str | None) -> str | None:
    if isinstance(name, str):
        if name.startswith(HF_HUB_PREFIX):
            return "hf-hub"
        if name.startswith(LOCAL_DIR_PREFIX):
            return "local-dir"
    return None


def _hf_cache_root(cache_dir) -> str:
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _hf_cached(repo_id: str, filenames: Sequence[str], cache_dir) -> str | None:
    """Path of the first of ``filenames`` present in the local hub cache of ``repo_id``, or None.
    Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for f in filenames:
        p = try_to_load_from_cache(repo_id, f, cache_dir=cache_dir)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def _weight_filenames(filename: str) -> list[str]:
    """open_clip's preference: a .safetensors twin before the named file."""
    if not filename or filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _tag_cache_lookup(tag_cfg: dict, cache_dir) -> tuple[str | None, list[str]]:
    """(cached file or None, where it was looked for) for an open_clip pretrained-tag config."""
    looked: list[str] = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = _weight_filenames(filename)
        found = _hf_cached(repo_id, names, cache_dir)
        if found:
            return found, looked
        repo_dir = "models--" + repo_id.replace("/", "--")
        looked.append(os.path.join(_hf_cache_root(cache_dir), repo_dir, "snapshots",
                                   "<revision>", names[-1]))
    url = tag_cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path, looked
        looked.append(path)
    if "file" in tag_cfg and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"], looked
    return None, looked


def _peek_bundle(path: str) -> dict | None:
    """The metadata of a mudg_fast fine-tuned bundle at ``path`` (tensors memory-mapped, so this
    is cheap), or None when the file is something else (a plain state dict, a TorchScript
    archive, safetensors)."""
    if str(path).endswith((".safetensors", ".npz", ".npy")):
        return None
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch.save file (e.g. OpenAI's TorchScript archives)
        return None
    if isinstance(obj, dict) and obj.get("format") == BUNDLE_FORMAT:
        return obj
    return None


def _preprocess_kwargs(cfg: dict) -> dict:
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
            "resize_mode": "image_resize_mode"}
    return {v: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k])
            for k, v in keys.items() if cfg.get(k) is not None}


def load_model(model: str | None = "ViT-L-14", pretrained: str | None = "openai", *,
               device="cpu", offline: bool = False, cache_dir: str | os.PathLike | None = None,
               precision: str = "fp32") -> ClipParts:
    """Loads an open_clip model, its image transforms and its tokenizer.

    ``model``: an open_clip architecture name (``open_clip.list_models()``; ``/`` is accepted for
    ``-``), ``hf-hub:``/``local-dir:``, or None: the fine-tuned checkpoint's own architecture,
    else ``DEFAULT_MODEL``. ``pretrained``: a tag, a checkpoint file, ``hf-hub:``,
    ``local-dir:``, or None for random initialisation (see the module docstring). ``offline``
    never touches the network and raises FileNotFoundError naming the model, the tag and the
    paths searched when the weights are not cached; it sets ``HF_HUB_OFFLINE=1`` for the rest of
    the process, and that variable (or ``TRANSFORMERS_OFFLINE=1``) in the environment implies it.
    Unknown models or tags raise ValueError with the available choices. Returns
    :class:`ClipParts` with the model in eval mode on ``device``.
    """
    offline = bool(offline) or _env_offline()
    open_clip = _import_open_clip(offline)
    dev = resolve_device(device)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a string, got {type(model).__name__}")
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a string or path, got {type(pretrained).__name__}")
    pretrained = os.fspath(pretrained) if pretrained is not None else None
    if pretrained == "":
        pretrained = None

    kwargs: dict[str, Any] = dict(device=dev, precision=precision, cache_dir=cache_dir)
    bundle = None
    source = model  # what open_clip gets as model_name
    weights = None  # what open_clip gets as pretrained
    label = model

    if _schema(pretrained):
        source, label = pretrained, model or pretrained
    elif _schema(model):
        if pretrained is not None and not os.path.isfile(pretrained):
            warnings.warn(f"pretrained={pretrained!r} is ignored: model={model!r} names its own "
                          "weights", UserWarning, stacklevel=2)
        elif pretrained is not None:
            bundle = _peek_bundle(pretrained)
            if bundle is None:
                raise ValueError(f"model={model!r} names its own weights; a checkpoint file "
                                 f"({pretrained}) can only be combined with an architecture name")
    elif pretrained is not None and os.path.isfile(pretrained):
        bundle = _peek_bundle(pretrained)
        weights = None if bundle is not None else pretrained
    elif pretrained is not None and (os.sep in pretrained or pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))):
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")

    if bundle is not None:
        # A fine-tuned bundle knows its architecture: rebuild it without pretrained weights (no
        # network for built-in names), then load the bundle's state dict on top.
        base = bundle.get("model")
        if model is not None and base is not None and not _schema(model) and \
                model.replace("/", "-") != str(base).replace("/", "-"):
            raise ValueError(f"{pretrained} was fine-tuned from {base!r}, not {model!r}; pass "
                             f"model={base!r} or model=None")
        source = model if _schema(model) else base
        base_pretrained = bundle.get("pretrained")
        if _schema(base_pretrained):
            source = base_pretrained
        label = base
        kwargs["force_quick_gelu"] = bool(bundle.get("quick_gelu", False))
        kwargs.update(_preprocess_kwargs(bundle.get("preprocess_cfg") or {}))
        if _schema(source) == "local-dir" or _schema(source) == "hf-hub":
            kwargs["load_weights"] = False
    elif _schema(source) is None:
        if source is None:
            source = label = DEFAULT_MODEL
        name = source.replace("/", "-")
        if name not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if name.lower()[:6] in m.lower()][:12]
            raise ValueError(f"unknown open_clip model {source!r}"
                             + (f"; similar: {', '.join(close)}" if close else "")
                             + "; see open_clip.list_models()")
        source = name
        if pretrained is not None and weights is None:
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise ValueError(f"unknown pretrained tag {pretrained!r} for {name} and no such "
                                 f"file; available tags: {', '.join(tags) if tags else 'none'}")
            if tag_cfg.get("quick_gelu", False):
                kwargs["force_quick_gelu"] = True
            cached, looked = _tag_cache_lookup(tag_cfg, cache_dir)
            if cached is not None:
                # Load from the cache ourselves: no network round trip, even online.
                weights = cached
                kwargs.update(_preprocess_kwargs(tag_cfg))
            elif offline:
                raise FileNotFoundError(
                    f"offline: weights for model {name!r} with pretrained tag {pretrained!r} are "
                    f"not in the local cache. Looked for: {'; '.join(looked) or 'nothing'}. "
                    "Download them on a machine with network access (or copy the file there), "
                    "pass cache_dir=<folder holding them>, or pass pretrained=<checkpoint file>.")
            else:
                weights = pretrained
    if offline and source is not None and _schema(source):
        source = _offline_schema_source(source, cache_dir)

    try:
        m, pre_train, pre_val = open_clip.create_model_and_transforms(source, pretrained=weights,
                                                                      **kwargs)
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError) as e:
        what = f"model {source!r}" + (f" with pretrained {weights!r}" if weights else "")
        hint = ("" if offline else " If this machine has no network access, pass offline=True "
                "and a cached tag or a local checkpoint file.")
        raise RuntimeError(f"could not load {what}: {e}.{hint}") from e
    if bundle is not None:
        missing, unexpected = m.load_state_dict(bundle["state_dict"], strict=False)
        if missing or unexpected:
            raise ValueError(f"{pretrained} does not match the architecture {label!r}: missing "
                             f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        m.to(dev)
    tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
    m.eval()
    finetuned = None
    if bundle is not None:
        finetuned = {k: v for k, v in bundle.items() if k != "state_dict"}
    return ClipParts(model=m, preprocess=pre_val, tokenizer=tokenizer, preprocess_train=pre_train,
                     model_name=str(label), pretrained=pretrained, finetuned=finetuned)


def _offline_schema_source(source: str, cache_dir) -> str:
    """Offline ``hf-hub:org/repo`` -> ``local-dir:`` of its cached snapshot, or a clear error."""
    if _schema(source) == "local-dir":
        path = source[len(LOCAL_DIR_PREFIX):]
        if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
            raise FileNotFoundError(f"{source}: no open_clip_config.json in {path}")
        return source
    repo_id = source[len(HF_HUB_PREFIX):]
    cfg = _hf_cached(repo_id, ["open_clip_config.json"], cache_dir)
    weights = _hf_cached(repo_id, _weight_filenames("") + ["open_clip_pytorch_model.pth"],
                         cache_dir)
    if cfg is None or weights is None or os.path.dirname(cfg) != os.path.dirname(weights):
        where = os.path.join(_hf_cache_root(cache_dir), "models--" + repo_id.replace("/", "--"))
        raise FileNotFoundError(
            f"offline: {source} is not in the local Hugging Face cache (looked in {where} for "
            "open_clip_config.json and open_clip_model.safetensors / open_clip_pytorch_model.bin)."
            " Download it where there is network access, or pass local-dir:<folder>.")
    return LOCAL_DIR_PREFIX + os.path.dirname(cfg)


def _is_image_like(x) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode")


def load_images(items: Iterable, *, num_workers: int = 0) -> list:
    """Opens image paths (str or PathLike) as RGB PIL images; PIL images pass through (converted
    to RGB). Every path is checked before any is decoded: FileNotFoundError lists the missing
    files, ValueError names a file that cannot be decoded, TypeError reports anything else."""
    items = list(items)
    _check_paths([x for x in items if not _is_image_like(x)])
    return _decode(items, num_workers)


def decode_image(source, name: str | None = None):
    """A PIL image, a path or a binary file object -> RGB PIL image. Raises ValueError naming
    ``name`` (default: the path) when it cannot be read or decoded."""
    from PIL import Image, UnidentifiedImageError

    if _is_image_like(source):
        im = source.convert("RGB")
    else:
        try:
            with Image.open(source) as f:
                im = f.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            where = name if name is not None else os.fspath(source)
            raise ValueError(f"cannot decode image {where}: {e}") from e
    if 0 in im.size:
        where = name if name is not None else ("a PIL image" if _is_image_like(source) else os.fspath(source))
        raise ValueError(f"cannot encode {where} of size {im.size}: an image needs at least one pixel")
    return im


def _decode(items: list, num_workers: int) -> list:
    if num_workers > 1 and len(items) > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(num_workers) as pool:
            return list(pool.map(decode_image, items))
    return [decode_image(x) for x in items]


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar when tqdm is installed and ``enabled``; otherwise a no-op with the same API."""
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, desc=desc, unit="it", leave=False)
        except ImportError:
            pass

    class _Null:
        def update(self, n=1): pass
        def set_postfix(self, *a, **k): pass
        def close(self): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
    return _Null()


class ClipEncoder:
    """Texts and images -> L2-normalised float32 arrays of shape (n, dim).

    >>> enc = ClipEncoder("ViT-B-16", "openai", device="cuda")        # doctest: +SKIP
    >>> enc.encode_text(["a photo of a dog."]).shape                    # doctest: +SKIP
    (1, 512)

    Parameters: ``model``/``pretrained``/``offline``/``cache_dir`` as in :func:`load_model`;
    ``device`` ``"cpu"`` or ``"cuda[:N]"``; ``batch_size`` texts or images per forward pass
    (default 256); ``precision`` ``"fp32"`` or ``"amp"`` (float16 autocast, CUDA only; the default
    None means amp on CUDA, fp32 on CPU); ``num_workers`` threads decoding images (0: in the
    calling thread); ``progress`` shows a tqdm bar when more than one batch is encoded.
    Tests inject a tiny random model with :meth:`from_model`.
    """

    def __init__(self, model: str | None = "ViT-L-14", pretrained: str | None = "openai", *,
                 device="cpu", batch_size: int = 256, offline: bool = False,
                 cache_dir: str | os.PathLike | None = None, precision: str | None = None,
                 num_workers: int = 0, progress: bool = True):
        parts = load_model(model, pretrained, device=device, offline=offline, cache_dir=cache_dir)
        self._init(parts.model, parts.tokenizer, parts.preprocess, device=device,
                   batch_size=batch_size, precision=precision, num_workers=num_workers,
                   progress=progress)
        self.parts = parts

    @classmethod
    def from_model(cls, model, tokenizer, preprocess, *, device="cpu", batch_size: int = 256,
                   precision: str | None = None, num_workers: int = 0,
                   progress: bool = True) -> "ClipEncoder":
        """Wraps an already built open_clip-style model (``encode_text``/``encode_image``), a
        tokenizer (``list[str]`` -> int tensor) and an image transform (PIL -> tensor). The model
        is moved to ``device`` and put in eval mode."""
        self = cls.__new__(cls)
        self._init(model, tokenizer, preprocess, device=device, batch_size=batch_size,
                   precision=precision, num_workers=num_workers, progress=progress)
        self.parts = ClipParts(model=self.model, preprocess=preprocess, tokenizer=tokenizer)
        return self

    def _init(self, model, tokenizer, preprocess, *, device, batch_size, precision, num_workers,
              progress):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        self.device = resolve_device(device)
        if precision is None:
            precision = "amp" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "amp"):
            raise ValueError(f"precision must be 'fp32' or 'amp', got {precision!r}")
        if precision == "amp" and self.device.type != "cuda":
            raise ValueError("precision='amp' needs a CUDA device")
        self.model = model.to(self.device).eval()
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.batch_size, self.precision = batch_size, precision
        self.num_workers, self.progress = num_workers, progress
        self._dim = None

    @property
    def dim(self) -> int:
        """Embedding dimension (the width of every returned array)."""
        if self._dim is None:
            out_dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
            self._dim = int(out_dim) if out_dim else int(self.encode_text(["a"]).shape[1])
        return self._dim

    def _autocast(self):
        import contextlib

        torch = _import_torch()
        if self.precision == "amp":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _finish(self, feats) -> np.ndarray:
        torch = _import_torch()
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``texts`` (list of n strings) -> float32 (n, dim), rows L2-normalised. Texts longer
        than the model's context (77 tokens for CLIP) are truncated by the tokenizer. An empty
        list gives shape (0, dim)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings; wrap a single text in a list")
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_text expects strings, got {bad[0]}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        torch = _import_torch()
        out = []
        n_batches = -(-len(texts) // self.batch_size)
        with torch.inference_mode(), self._autocast(), \
                _progress(len(texts), "encode text", self.progress and n_batches > 1) as bar:
            for s in range(0, len(texts), self.batch_size):
                chunk = texts[s:s + self.batch_size]
                tokens = self.tokenizer(chunk).to(self.device)
                out.append(self._finish(self.model.encode_text(tokens)))
                bar.update(len(chunk))
        return np.concatenate(out)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """``images`` (list of n paths or PIL images) -> float32 (n, dim), rows L2-normalised.
        Every path is checked before decoding starts: FileNotFoundError lists the missing ones,
        ValueError names an undecodable file. An empty list gives shape (0, dim)."""
        if isinstance(images, (str, os.PathLike)) or _is_image_like(images):
            raise TypeError("encode_images expects a list; wrap a single image in a list")
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), np.float32)
        _check_paths([x for x in images if not _is_image_like(x)])
        torch = _import_torch()
        out = []
        n_batches = -(-len(images) // self.batch_size)
        with torch.inference_mode(), self._autocast(), \
                _progress(len(images), "encode images", self.progress and n_batches > 1) as bar:
            for s in range(0, len(images), self.batch_size):
                chunk = _decode(images[s:s + self.batch_size], self.num_workers)
                pixels = torch.stack([self.preprocess(im) for im in chunk]).to(self.device)
                out.append(self._finish(self.model.encode_image(pixels)))
                bar.update(len(chunk))
        return np.concatenate(out)


def _check_paths(items) -> None:
    bad = [type(x).__name__ for x in items if not isinstance(x, (str, os.PathLike))]
    if bad:
        raise TypeError(f"images must be paths or PIL images, got {bad[0]}")
    missing = [os.fspath(x) for x in items if not os.path.isfile(x)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} image file(s) not found: "
                                f"{', '.join(missing[:5])}{more}")


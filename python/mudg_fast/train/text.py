"""The learnable text prompt and which parameters are trained (docs/method.rst §6, fine-tuning).

**Prompt (CoOp-style, in place).** ``n_ctx`` context vectors are initialised from the token
embeddings of ``ctx_init`` (default ``"a photo of"``, 3 tokens) and take the place of those
tokens in every class prompt. A prompt that starts with ``ctx_init`` (``"a photo of a dog."``)
keeps its words and has positions ``1 .. n_ctx`` (right after the start-of-text token) replaced
by the vectors, so at initialisation the features equal the frozen model's for the same text.
A prompt that does not start with it (``"itap of a {}."``) gets ``ctx_init`` prepended first.
With ``ctx_init=None`` the vectors start random (normal, std 0.02) and ``n_ctx`` placeholder
words are prepended. Only these vectors are learnable on the text-input side.

**Trained parameters.** The last ``n_blocks`` transformer blocks of both towers, the image
projection ``visual.proj``, the text projection ``text_projection``, the final layer norms
``visual.ln_post`` and ``ln_final``, and the prompt vectors. Everything else (embeddings, earlier
blocks, ``logit_scale``) is frozen. Supported models: open_clip ``CLIP`` with the built-in text
transformer and a ViT image tower (OpenAI CLIP, LAION, DataComp ViTs...).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PromptLearner", "encode_text_with_ctx", "trainable_parameter_names",
           "check_trainable_model"]


def check_trainable_model(model) -> None:
    """Raises ValueError unless ``model`` is an open_clip CLIP with a ViT image tower and the
    built-in text transformer (what fine-tuning knows how to split into blocks)."""
    need = ["token_embedding", "positional_embedding", "transformer", "ln_final",
            "text_projection", "visual"]
    missing = [a for a in need if not hasattr(model, a)]
    vis = getattr(model, "visual", None)
    if vis is not None:
        missing += [f"visual.{a}" for a in ("transformer", "ln_post", "proj")
                    if not hasattr(vis, a)]
    if missing or not hasattr(getattr(model, "transformer", None), "resblocks") or \
            not hasattr(getattr(vis, "transformer", None), "resblocks"):
        raise ValueError(
            f"fine-tuning supports open_clip CLIP models with a ViT image tower and the built-in "
            f"text transformer; {type(model).__name__} lacks {', '.join(missing) or 'resblocks'} "
            "(timm/ResNet towers and Hugging Face text towers are not supported)")


def _block_prefixes(model, n_blocks: int) -> list[str]:
    nv = len(model.visual.transformer.resblocks)
    nt = len(model.transformer.resblocks)
    if n_blocks > min(nv, nt):
        raise ValueError(f"n_blocks={n_blocks} but the image tower has {nv} blocks and the text "
                         f"tower {nt}")
    return ([f"visual.transformer.resblocks.{i}" for i in range(nv - n_blocks, nv)] +
            ["visual.ln_post", "visual.proj"] +
            [f"transformer.resblocks.{i}" for i in range(nt - n_blocks, nt)] +
            ["ln_final", "text_projection"])


def trainable_parameter_names(model, n_blocks: int) -> list[str]:
    """Names (in ``model.named_parameters()`` order) of the parameters fine-tuning trains: the
    last ``n_blocks`` blocks of each tower, both projections and both final layer norms."""
    check_trainable_model(model)
    prefixes = _block_prefixes(model, n_blocks)
    return [n for n, _ in model.named_parameters()
            if any(n == p or n.startswith(p + ".") for p in prefixes)]


def _pool(model, x, tokens):
    pool = getattr(model, "text_pool_type", "argmax")
    rows = torch.arange(x.shape[0], device=x.device)
    if pool == "argmax":  # end-of-text has the largest id in CLIP's vocabulary
        return x[rows, tokens.argmax(dim=-1)]
    if pool == "eos":
        return x[rows, (tokens == model.text_eos_id).int().argmax(dim=-1)]
    if pool == "first":
        return x[:, 0]
    if pool == "last":
        return x[:, -1]
    return x


def encode_text_with_ctx(model, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Text features (n, embed_dim), not normalised, of ``tokens`` (int64 (n, context_length))
    with token positions 1 to ``k`` replaced by ``ctx`` (float (k, width)). Differentiable in
    ``ctx`` and the text tower.

    With the causal text mask and end-of-text pooling, positions after the last end-of-text token
    cannot influence the result, so the sequence is cut there (a large saving: class prompts are
    ~10 tokens of 77); the output equals ``model.encode_text`` for the same embeddings.
    """
    n, length = tokens.shape
    pool = getattr(model, "text_pool_type", "argmax")
    mask = getattr(model, "attn_mask", None)
    if mask is not None and pool in ("argmax", "eos"):
        if pool == "argmax":
            last = tokens.argmax(dim=-1).max()
        else:
            last = (tokens == model.text_eos_id).int().argmax(dim=-1).max()
        length = int(last) + 1
        tokens, mask = tokens[:, :length], mask[:length, :length]
    cast = model.transformer.get_cast_dtype()
    k = ctx.shape[0]
    emb = model.token_embedding(tokens).to(cast)
    x = torch.cat([emb[:, :1], ctx.to(cast).unsqueeze(0).expand(n, -1, -1), emb[:, 1 + k:]], 1)
    x = x + model.positional_embedding[:length].to(cast)
    batch_first = getattr(model.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    x = model.transformer(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    x = _pool(model, model.ln_final(x), tokens)
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


class PromptLearner(nn.Module):
    """``ctx``: the learnable prompt vectors, float32 (n_ctx, width) — see the module docstring.

    ``tokenize(texts)`` returns int64 (n, context_length) tokens whose positions ``1 .. n_ctx``
    are the context slots; it raises ValueError when a text is too long to keep its end-of-text
    token or when the tokenizer does not place the context words there.
    """

    def __init__(self, model, tokenizer, *, n_ctx: int = 3, ctx_init: str | None = "a photo of",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.tokenizer, self.ctx_init, self.n_ctx = tokenizer, ctx_init, int(n_ctx)
        width = model.token_embedding.weight.shape[1]
        words = ctx_init if ctx_init is not None else " ".join(["X"] * self.n_ctx)
        ids = self._word_ids(words)
        if len(ids) != self.n_ctx:
            raise ValueError(f"ctx_init {ctx_init!r} is {len(ids)} tokens but n_ctx={n_ctx}; "
                             "make them agree (or pass ctx_init=None for random vectors)")
        self.words, self.ctx_ids = words, ids
        if ctx_init is not None:
            with torch.no_grad():
                init = model.token_embedding.weight[torch.as_tensor(ids)].detach().float().cpu()
        else:
            init = torch.randn(self.n_ctx, width, generator=generator) * 0.02
        self.ctx = nn.Parameter(init.clone().to(model.token_embedding.weight.device))

    def _word_ids(self, words: str) -> list[int]:
        t = self.tokenizer([words])[0].tolist()
        end = t.index(max(t))  # end-of-text: the largest id (open_clip's SimpleTokenizer)
        return t[1:end]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids, k = self.ctx_ids, len(self.ctx_ids)
        rows = []
        for text in texts:
            if self.ctx_init is None or self.tokenizer([text])[0][1:1 + k].tolist() != ids:
                text = self.words + " " + text
            self._check_length(text)
            t = self.tokenizer([text])[0]
            if t[1:1 + k].tolist() != ids:
                raise ValueError(f"the tokenizer did not place the context words {self.words!r} "
                                 f"right after start-of-text for {text!r}")
            rows.append(t)
        if not rows:
            raise ValueError("no texts to tokenize")
        return torch.stack(rows)

    def _check_length(self, text: str) -> None:
        encode = getattr(self.tokenizer, "encode", None)
        limit = getattr(self.tokenizer, "context_length", None)
        if callable(encode) and limit:
            n = len(encode(text)) + 2  # start- and end-of-text
            if n > limit:
                raise ValueError(f"prompt {text!r} is {n} tokens, more than the model's text "
                                 f"context ({limit}); shorten the template or descriptor")

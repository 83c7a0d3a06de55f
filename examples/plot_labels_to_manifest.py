"""
From label names to a training-set manifest
===========================================

The whole method on a generated corpus whose images carry known concepts, so that the
pseudo-labels can be checked: choose descriptors that separate confusable classes, retrieve
with every augmented prompt in one batch, rank-vote pseudo-labels, filter by similarity to the
class prototype, keep a diverse subset per class, and write the parquet manifest that
img2dataset downloads. With real data the encoder is :class:`mudg_fast.clip.ClipEncoder`.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mudg_fast
from mudg_fast.pipeline import build_training_set, write_manifest
from mudg_fast.synthetic import make_corpus

corpus = make_corpus(60_000, n_concepts=60, seed=2)
index = mudg_fast.IVFIndex(corpus.dim, 128, codec="sq8")
index.train_paired(corpus.images, corpus.captions, seed=0)
index.add(corpus.images)

classes = corpus.concept_names[:8]
print("label names:", classes)

# %%
# Retrieval and selection: 8 descriptors x 8 classes = 64 queries, 64 neighbours each. The 8
# classes form 3 groups of confusable ones for the descriptor choice.
ts = build_training_set(index, corpus.text_encoder, classes, m=8, n_groups=3, k=64, nprobe=8, threshold=0.25,
                        k_per_class=24, embeddings=corpus.images, seed=0)
print("descriptors:", ts.descriptors[:4], "...")
print(len(ts), "images selected:", ts.counts())

# %%
# The generator knows every image's concept: how many pseudo-labels are right?
concept_of = {name: i for i, name in enumerate(corpus.concept_names)}
truth = corpus.labels[ts.ids]
want = np.array([concept_of[classes[c]] for c in ts.labels])
precision = [(truth[ts.labels == c] == want[ts.labels == c]).mean() for c in range(len(classes))]
print(f"pseudo-label precision: {(truth == want).mean():.3f}")

manifest, summary = write_manifest(ts, Path(tempfile.mkdtemp()) / "selection.parquet")
print("manifest:", manifest.name, "summary:", summary.name)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(range(len(classes)), precision)
ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
ax.set_ylim(0, 1.05)
ax.set_ylabel("pseudo-label precision")
ax.set_title("selected training set, per class")
fig.tight_layout()
plt.show()

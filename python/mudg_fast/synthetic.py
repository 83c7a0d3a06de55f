"""A synthetic image/caption embedding corpus whose cross-modal statistics match real CLIP.

Real CLIP data cannot be shipped at scale and CLIP weights are not always at hand, so the demo,
the cross-modal recall benchmark and the tests use this generator. Its defaults are fitted to the
500 real COCO pairs of :func:`mudg_fast.datasets.load_coco500` (OpenAI CLIP ViT-B/16, 512-d); see
:func:`cross_modal_statistics` for the measured quantities and ``SyntheticParams`` for the model.

The model (all vectors L2-normalised at the end, float32)::

    pair semantics   s_i = rho * c_{y_i} + sqrt(1 - rho^2) * v_i            (semantic subspace)
    image            x_i = a_I u_I + sqrt(1 - a_I^2) * [ s_i, semantic noise, nuisance, noise ]
    caption          p_i = a_T u_T + sqrt(1 - a_T^2) * [ s_i, semantic noise, style,    noise ]

``u_I``/``u_T`` are the modality mean directions (the modality gap); ``c_y`` is the vector of the
named concept ``y``, built from a category hierarchy (domain -> category -> concept), so concepts
of one category are confusable; ``v_i`` is per-pair semantic variation shared by the image and
its caption (a semantic continuum, not a few clean topics). Images carry a *nuisance* subspace
their captions never describe, captions a *style* subspace images never show; both modalities
also have modality-specific noise inside the semantic subspace and isotropic noise. The image-only
variance is what makes paired k-means beat standard k-means for caption->image IVF search
(docs/method.rst §1); ``model="offset"`` drops it (a constant modality offset only) as a negative
control.

A :class:`SyntheticTextEncoder` maps text into the same space deterministically: a prompt that
contains a concept name lands near that concept's captions, and every other word adds a perturbation
derived from a SHA-256 hash of the word (never Python's salted ``hash``), part shared by all classes
and part specific to the (word, class) pair, so descriptors move class prototypes differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import operator
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._arrays import as_matrix

__all__ = [
    "CONCEPT_CATEGORIES",
    "SyntheticParams",
    "SyntheticCorpus",
    "SyntheticTextEncoder",
    "make_corpus",
    "concept_vocabulary",
    "cross_modal_statistics",
    "modality_gap",
    "COCO500_STATISTICS",
]

# ---------------------------------------------------------------------------------------------
# Vocabulary: (domain, category) -> names. Ordinary English names of common things; each name
# appears once. Concepts of one category share a category vector, categories of one domain share
# a domain vector: that is where confusable classes come from.
# ---------------------------------------------------------------------------------------------
CONCEPT_CATEGORIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("animal", "dog"): (
        "golden retriever", "labrador", "poodle", "beagle", "german shepherd", "dachshund",
        "bulldog", "husky", "chihuahua", "border collie", "greyhound", "dalmatian", "pug",
        "corgi", "terrier", "spaniel"),
    ("animal", "cat"): (
        "tabby cat", "siamese cat", "persian cat", "black cat", "kitten", "maine coon",
        "sphynx cat", "bengal cat"),
    ("animal", "wild mammal"): (
        "lion", "tiger", "leopard", "cheetah", "jaguar", "wolf", "fox", "brown bear",
        "polar bear", "panda", "elephant", "giraffe", "zebra", "rhinoceros", "hippopotamus",
        "kangaroo", "koala", "gorilla", "chimpanzee", "deer", "moose", "raccoon", "squirrel",
        "hedgehog", "otter", "bat"),
    ("animal", "farm animal"): (
        "cow", "horse", "pig", "sheep", "goat", "donkey", "chicken", "duck", "goose", "turkey",
        "llama", "rabbit"),
    ("animal", "bird"): (
        "eagle", "owl", "parrot", "penguin", "flamingo", "swan", "pigeon", "sparrow", "robin",
        "hummingbird", "peacock", "pelican", "woodpecker", "seagull", "crow", "toucan"),
    ("animal", "sea creature"): (
        "shark", "dolphin", "whale", "octopus", "jellyfish", "sea turtle", "starfish", "crab",
        "lobster", "seal", "clownfish", "goldfish", "stingray", "seahorse"),
    ("animal", "reptile"): (
        "snake", "lizard", "crocodile", "tortoise", "chameleon", "iguana", "frog", "toad",
        "salamander", "gecko"),
    ("animal", "insect"): (
        "butterfly", "bee", "ladybug", "dragonfly", "ant", "beetle", "grasshopper", "moth",
        "spider", "snail", "caterpillar", "scorpion"),
    ("plant", "flower"): (
        "rose", "tulip", "sunflower", "daisy", "orchid", "lily", "lotus", "daffodil", "lavender",
        "poppy", "carnation", "hibiscus", "magnolia", "dandelion", "iris", "marigold"),
    ("plant", "tree"): (
        "oak tree", "palm tree", "pine tree", "maple tree", "birch tree", "willow tree",
        "cherry blossom", "bamboo", "cactus", "fern", "bonsai", "baobab"),
    ("food", "fruit"): (
        "apple", "banana", "orange", "strawberry", "grapes", "pineapple", "watermelon", "lemon",
        "mango", "peach", "pear", "cherry", "kiwi", "coconut", "blueberry", "pomegranate"),
    ("food", "vegetable"): (
        "carrot", "broccoli", "tomato", "potato", "onion", "cucumber", "bell pepper", "corn",
        "cabbage", "mushroom", "eggplant", "pumpkin", "lettuce", "garlic", "zucchini"),
    ("food", "dish"): (
        "pizza", "hamburger", "hot dog", "sandwich", "sushi", "pasta", "salad", "soup",
        "fried rice", "tacos", "steak", "omelette", "ramen", "curry", "dumplings", "french fries",
        "paella", "lasagna"),
    ("food", "dessert"): (
        "cake", "donut", "ice cream", "cupcake", "croissant", "cookie", "pancakes", "waffle",
        "muffin", "chocolate", "pie", "macaron", "cheesecake", "bread"),
    ("food", "drink"): (
        "coffee", "tea", "wine", "beer", "orange juice", "milkshake", "cocktail", "lemonade",
        "smoothie", "espresso"),
    ("vehicle", "road vehicle"): (
        "car", "truck", "bus", "motorcycle", "bicycle", "scooter", "taxi", "fire truck",
        "ambulance", "tractor", "van", "pickup truck", "sports car", "limousine", "police car"),
    ("vehicle", "aircraft"): (
        "airplane", "helicopter", "jet", "glider", "hot air balloon", "airship", "seaplane",
        "biplane", "drone", "fighter jet"),
    ("vehicle", "watercraft"): (
        "sailboat", "canoe", "kayak", "ferry", "cruise ship", "yacht", "speedboat", "submarine",
        "gondola", "rowboat", "tugboat", "cargo ship"),
    ("vehicle", "rail"): (
        "train", "tram", "subway train", "steam locomotive", "freight train", "monorail",
        "cable car"),
    ("object", "furniture"): (
        "chair", "sofa", "bed", "table", "desk", "bookshelf", "wardrobe", "armchair", "bench",
        "stool", "dresser", "rocking chair", "hammock", "cabinet"),
    ("object", "kitchenware"): (
        "cup", "mug", "plate", "bowl", "fork", "knife", "spoon", "frying pan", "teapot",
        "wine glass", "bottle", "cutting board", "whisk", "kettle"),
    ("object", "appliance"): (
        "refrigerator", "microwave", "oven", "toaster", "washing machine", "vacuum cleaner",
        "blender", "coffee maker", "hair dryer", "electric fan", "sewing machine"),
    ("object", "electronics"): (
        "laptop", "keyboard", "computer mouse", "television", "smartphone", "camera",
        "headphones", "remote control", "tablet", "printer", "loudspeaker", "wristwatch",
        "video game console", "radio"),
    ("object", "tool"): (
        "hammer", "screwdriver", "wrench", "saw", "drill", "shovel", "axe", "pliers", "ladder",
        "paintbrush", "scissors", "tape measure", "wheelbarrow"),
    ("object", "clothing"): (
        "t-shirt", "jeans", "dress", "jacket", "sweater", "hat", "scarf", "gloves", "sneakers",
        "boots", "sandals", "necktie", "raincoat", "swimsuit", "kimono"),
    ("object", "accessory"): (
        "backpack", "handbag", "umbrella", "sunglasses", "wallet", "suitcase", "necklace",
        "ring", "bracelet", "earrings", "belt", "crown"),
    ("object", "sports gear"): (
        "soccer ball", "basketball", "tennis racket", "baseball bat", "skateboard", "surfboard",
        "skis", "snowboard", "golf club", "frisbee", "kite", "boxing gloves", "dumbbell",
        "hockey stick"),
    ("object", "musical instrument"): (
        "guitar", "violin", "piano", "drum", "trumpet", "saxophone", "flute", "cello", "harp",
        "accordion", "banjo", "harmonica", "xylophone", "tuba"),
    ("object", "stationery"): (
        "book", "pencil", "notebook", "envelope", "stapler", "globe", "clock", "candle", "vase",
        "lamp", "mirror", "teddy bear", "balloon", "chess set"),
    ("place", "building"): (
        "castle", "lighthouse", "skyscraper", "church", "temple", "pagoda", "windmill", "barn",
        "bridge", "tower", "cabin", "igloo", "stadium", "pyramid", "mosque", "greenhouse"),
    ("place", "landscape"): (
        "mountain", "beach", "desert", "forest", "waterfall", "volcano", "glacier", "canyon",
        "river", "lake", "meadow", "island", "cave", "swamp", "coral reef", "sand dune"),
    ("place", "indoor place"): (
        "kitchen", "bedroom", "bathroom", "living room", "library", "classroom", "office",
        "restaurant", "supermarket", "gym", "museum", "airport terminal", "train station",
        "hospital room"),
    ("place", "outdoor place"): (
        "playground", "parking lot", "farm", "garden", "harbor", "city street", "highway",
        "park", "campsite", "market", "vineyard", "golf course", "ski slope", "train platform"),
}

# Modifiers for generated compound concepts ("arctic fox"-style) when more names are needed than
# the vocabulary holds. A compound sits close to its base concept (confusable by construction).
COMPOUND_MODIFIERS: tuple[str, ...] = (
    "small", "giant", "wild", "striped", "spotted", "antique", "miniature", "red", "white",
    "black", "golden", "arctic", "desert", "mountain", "jungle", "painted", "wooden", "metal",
    "toy", "vintage", "tropical", "northern", "southern", "royal", "common", "dwarf", "long",
    "curly", "silver", "blue")

# Words that carry little meaning of their own; their hash perturbation is down-weighted.
FUNCTION_WORDS: frozenset[str] = frozenset(
    "a an the of in on at to for with and or but is are was be been being can could may might "
    "which who that this these those it its their there here from by as into onto over under "
    "very often usually sometimes typically mostly also not no one some any".split())


def concept_vocabulary() -> list[str]:
    """All built-in concept names, in a fixed order (category by category); several hundred."""
    return [name for names in CONCEPT_CATEGORIES.values() for name in names]


def _name_category() -> dict[str, tuple[int, int]]:
    """name -> (domain index, category index)."""
    domains = sorted({d for d, _ in CONCEPT_CATEGORIES})
    out = {}
    for ci, ((dom, _), names) in enumerate(CONCEPT_CATEGORIES.items()):
        for name in names:
            out[name] = (domains.index(dom), ci)
    return out


_NAME_CATEGORY = _name_category()
_N_DOMAINS = len({d for d, _ in CONCEPT_CATEGORIES})
_N_CATEGORIES = len(CONCEPT_CATEGORIES)
_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _normalise_name(name: str) -> str:
    """Lower-case, words joined by single spaces (punctuation other than - and ' dropped)."""
    return " ".join(_WORD_RE.findall(name.lower()))


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticParams:
    """Generator parameters. Defaults are fitted to COCO-500 (CLIP ViT-B/16, ``dim=512``).

    Fitted by coordinate descent on 500-pair samples of 10k-pair corpora (defaults of
    ``make_corpus``: 100 concepts, half background) against :data:`COCO500_STATISTICS` plus
    the top-1/top-10 eigenvalue shares of each modality and the 16-cell IVF recall of
    standard/paired k-means. Held-out corpora (seeds 5, 6) measure: matched cosine 0.301
    (COCO 0.310), random 0.167 (0.162), modality gap 0.853 (0.851), recall@1/5/10
    0.507/0.760/0.851 (0.506/0.764/0.862), 16-cell IVF recall@10 at nprobe 1 standard
    0.58 / paired 0.75 (0.62 / 0.72). Recall@1 depends on how many near-duplicates a sample
    holds: with 1000 named concepts (fewer same-concept pairs per sample) it rises to about 0.56,
    with 3000 to 0.65.

    Variance budget: an image is ``a_I u_I + sqrt(1 - a_I^2) z`` before the final L2
    normalisation, where ``z`` has unit expected squared norm, split into fractions of its
    variance. ``image_semantic`` + ``image_semantic_noise`` + ``image_nuisance`` must be <= 1; the
    rest is isotropic noise over all ``dim`` coordinates. Captions likewise, with ``caption_style``
    in place of the nuisance. Subspace sizes are for ``dim=512`` and scale with ``dim``.

    Modality gap
        image_mean, caption_mean: norm of the modality mean component (``a_I``, ``a_T``).
        mean_cosine: cosine between the two modality mean directions.
        image_mean_jitter, caption_mean_jitter: per-item relative std of that component (some
        images/captions sit deeper in their modality's cone than others). The caption value is
        kept below what COCO's spread along the caption mean (0.081) would ask for (ours: about
        0.045): independent per-caption depth of that size makes paired k-means lose about 0.01
        recall at large nprobe (256 cells, nprobe 16), which real data does not show; real
        depth presumably follows content in a way this model does not capture.
    Semantics
        semantic_dim: size of the shared semantic subspace; semantic_decay: its eigenvalues fall
        as ``(k + 1) ** -semantic_decay`` (a few dominant directions, like real embeddings).
        concept_share: ``rho^2``, the fraction of a pair's semantic vector that is its concept;
        the rest is per-pair variation (the continuum).
        domain_weight, category_weight: squared weights of the domain and category vectors in a
        concept vector (the rest is the concept's own direction); confusability within a category.
        compound_weight: squared weight of the modifier in a generated compound concept.
    Image-only and caption-only variance
        image_semantic / caption_semantic: variance fraction of the shared pair semantics.
        image_semantic_noise / caption_semantic_noise: modality-specific noise in the semantic
        subspace (what one modality shows and the other does not mention).
        alignment_spread: captions differ in how much of their image they describe: caption i
        uses ``k_i * s_i + sqrt(1 - k_i^2) * o_i``, where ``o_i`` is the semantics of some other
        plausible thing (a random category of the hierarchy, with its own detail) and ``k_i`` is
        uniform on ``[1 - 2 * alignment_spread, 1]`` (clipped at 0); 0 = every caption equally
        faithful. This gives the heavy tail of real caption->image ranks.
        image_nuisance, nuisance_dim, nuisance_decay: the image-only subspace (viewpoint, lighting,
        background clutter: variance no caption describes).
        caption_style, style_dim, style_decay: the caption-only subspace (wording, phrasing).
    Text encoder
        prompt_semantic: squared weight of the concept anchor (with its context perturbation)
        in a prompt; the rest is a "prompt register" direction in the style subspace that all
        prompts share (short prompts are much more alike than captions, as in CLIP).
        prompt_context: scale of the hash perturbation each content word adds to a prompt,
        relative to the unit concept anchor; function words get ``function_word_weight`` of it.
    model
        "nuisance" (default) or "offset": the negative control, in which images and captions are
        built identically apart from their (constant) modality mean: the shared semantics with
        the image fraction, the rest isotropic noise; no semantic noise, nuisance/style
        subspaces, mean jitter or alignment spread. Paired k-means gains little there.
    """

    image_mean: float = 0.724
    caption_mean: float = 0.719
    mean_cosine: float = 0.298
    image_mean_jitter: float = 0.144
    caption_mean_jitter: float = 0.08
    semantic_dim: int = 128
    semantic_decay: float = 0.69
    concept_share: float = 0.79
    domain_weight: float = 0.20
    category_weight: float = 0.716
    compound_weight: float = 0.3
    image_semantic: float = 0.434
    image_semantic_noise: float = 0.098
    image_nuisance: float = 0.448
    nuisance_dim: int = 96
    nuisance_decay: float = 0.90
    caption_semantic: float = 0.338
    caption_semantic_noise: float = 0.018
    alignment_spread: float = 0.235
    caption_style: float = 0.487
    style_dim: int = 96
    style_decay: float = 1.11
    prompt_semantic: float = 0.5
    prompt_context: float = 0.35
    function_word_weight: float = 0.3
    model: str = "nuisance"

    def validate(self, dim: int) -> None:
        """Raises TypeError for a non-numeric field and ValueError for a value outside its range."""
        _check_int(dim, "dim")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "model":
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{f.name} must be a number, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"{f.name} must be finite, got {v!r}")
        for name in ("image_mean", "caption_mean"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not -1.0 <= self.mean_cosine <= 1.0:
            raise ValueError(f"mean_cosine must be in [-1, 1], got {self.mean_cosine!r}")
        for name in ("concept_share", "domain_weight", "category_weight", "compound_weight",
                     "image_semantic", "image_semantic_noise", "image_nuisance", "caption_semantic",
                     "caption_semantic_noise", "caption_style", "function_word_weight",
                     "alignment_spread", "prompt_semantic"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.domain_weight + self.category_weight > 1.0:
            total = self.domain_weight + self.category_weight
            raise ValueError("domain_weight + category_weight must be <= 1 (the rest is the "
                             f"concept's own direction), got {total}")
        for mod in ("image", "caption"):
            extra = "nuisance" if mod == "image" else "style"
            total = (getattr(self, f"{mod}_semantic") + getattr(self, f"{mod}_semantic_noise")
                     + getattr(self, f"{mod}_{extra}"))
            if total > 1.0 + 1e-12:
                raise ValueError(f"{mod}_semantic + {mod}_semantic_noise + {mod}_{extra} must be "
                                 f"<= 1 (the rest is isotropic noise), got {total}")
        for name in ("semantic_dim", "nuisance_dim", "style_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("semantic_decay", "nuisance_decay", "style_decay", "prompt_context",
                     "image_mean_jitter", "caption_mean_jitter"):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and math.isfinite(v) and float(v) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.model not in ("nuisance", "offset"):
            raise ValueError(f"model must be 'nuisance' or 'offset', got {self.model!r}")
        if dim < 8:
            raise ValueError(f"dim must be >= 8, got {dim}")

    def subspace_dims(self, dim: int) -> tuple[int, int, int]:
        """(semantic, nuisance, style) sizes for ``dim``: the 512-d sizes scaled by dim/512 and
        shrunk proportionally if they do not fit in ``dim - 2`` coordinates."""
        sizes = [self.semantic_dim, self.nuisance_dim, self.style_dim]
        scale = dim / 512.0
        sizes = [max(2, int(round(s * scale))) for s in sizes]
        room = dim - 2
        if sum(sizes) > room:
            f = room / sum(sizes)
            sizes = [max(1, int(s * f)) for s in sizes]
            while sum(sizes) > room:      # max(1, .) can overshoot when one size dominates
                sizes[sizes.index(max(sizes))] -= 1
        return sizes[0], sizes[1], sizes[2]


# ---------------------------------------------------------------------------------------------
# Deterministic hashing: every vector tied to a name or a word comes from a SHA-256 seeded RNG,
# so it is the same in every process and on every platform (Python's hash() is salted).
# ---------------------------------------------------------------------------------------------
def _hash_seed(*parts) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def _hash_rng(*parts) -> np.random.Generator:
    return np.random.default_rng(_hash_seed(*parts))


def _spectrum(n: int, decay: float) -> np.ndarray:
    """sqrt of eigenvalues ``(k + 1) ** -decay`` normalised to sum 1 (unit expected norm²)."""
    lam = (np.arange(n, dtype=np.float64) + 1.0) ** -float(decay)
    return np.sqrt(lam / lam.sum())


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


_PROJECT_BLOCK = 1024
# A word's split between shared and interaction parts is the angle (pi/2) * u**WORD_ANGLE_POWER,
# u uniform: most words mostly shift every class the same way (pull classes together), a few
# interact with the class (push classes apart). With 3, the built-in descriptor pool's scores
# spread over the whole range 0..n_groups instead of piling up at either end.
WORD_ANGLE_POWER = 3.0


def _project_rows(local: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """L2-normalised ``local @ basis.T`` in float64, rounded to float32. Runs on zero-padded
    blocks of exactly ``_PROJECT_BLOCK`` rows so every row goes through the same matrix-product
    call shape, whatever the batch: a row's result depends on that row only."""
    m = local.shape[0]
    out = np.empty((m, basis.shape[0]), dtype=np.float32)
    block = np.zeros((_PROJECT_BLOCK, local.shape[1]))
    for s0 in range(0, m, _PROJECT_BLOCK):
        k = min(_PROJECT_BLOCK, m - s0)
        block[:k] = local[s0:s0 + k]
        block[k:] = 0.0
        t = block @ basis.T
        out[s0:s0 + k] = _unit(t[:k])
    return out


class _Space:
    """The geometry shared by a corpus and its text encoder (all derived from ``seed``).

    Coordinates: ``basis`` (dim, r) has orthonormal columns; local coordinates are
    [2 modality | semantic | nuisance | style]. ``u_T`` is local coordinate 0 and ``u_I`` lies in
    the plane of coordinates 0 and 1 at angle arccos(mean_cosine).
    """

    def __init__(self, dim: int, params: SyntheticParams, seed: int):
        self.dim, self.params, self.seed = dim, params, seed
        ds, dn, dc = params.subspace_dims(dim)
        self.ds, self.dn, self.dc = ds, dn, dc
        self.r = 2 + ds + dn + dc
        g = _hash_rng(seed, "basis", dim).standard_normal((dim, self.r))
        q, rr = np.linalg.qr(g)
        self.basis = q * np.sign(np.diag(rr))[None, :]   # unique QR: deterministic columns
        self.sem = slice(2, 2 + ds)
        self.nuis = slice(2 + ds, 2 + ds + dn)
        self.style = slice(2 + ds + dn, self.r)
        # (k, dim) float32 maps from each modality's local coordinates, for corpus generation
        b = self.basis
        image_cols = np.concatenate([b[:, :2], b[:, self.sem], b[:, self.nuis]], axis=1)
        caption_cols = np.concatenate([b[:, :2], b[:, self.sem], b[:, self.style]], axis=1)
        self.image_basis32 = np.ascontiguousarray(image_cols.T, dtype=np.float32)
        self.caption_basis32 = np.ascontiguousarray(caption_cols.T, dtype=np.float32)
        # columns a text embedding uses: u_T, semantic, style (texts have no image nuisance)
        self.text_basis = np.ascontiguousarray(
            np.concatenate([b[:, :1], b[:, self.sem], b[:, self.style]], axis=1))
        self.sem_scale = _spectrum(ds, params.semantic_decay)
        self.nuis_scale = _spectrum(dn, params.nuisance_decay)
        self.style_scale = _spectrum(dc, params.style_decay)
        rng = _hash_rng(seed, "hierarchy")
        self.domain_vectors = _unit(rng.standard_normal((_N_DOMAINS, ds)) * self.sem_scale)
        self.category_vectors = _unit(rng.standard_normal((_N_CATEGORIES, ds)) * self.sem_scale)
        cat_domain = np.empty(_N_CATEGORIES, dtype=np.int64)
        for dom, cat in _NAME_CATEGORY.values():
            cat_domain[cat] = dom
        self.category_domain = cat_domain
        reg = _hash_rng(seed, "prompt register").standard_normal(dc)
        self.prompt_register = _unit(reg * self.style_scale)
        self._concepts: dict[str, np.ndarray] = {}
        self._words: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._signs: dict[str, np.ndarray] = {}

    # -- concepts ---------------------------------------------------------------------------
    def _own(self, *key) -> np.ndarray:
        return _unit(_hash_rng(self.seed, *key).standard_normal(self.ds) * self.sem_scale)

    def _hierarchical(self, dom: int, cat: int, own: np.ndarray) -> np.ndarray:
        p = self.params
        wo = 1.0 - p.domain_weight - p.category_weight
        return _unit(math.sqrt(p.domain_weight) * self.domain_vectors[dom]
                     + math.sqrt(p.category_weight) * self.category_vectors[cat]
                     + math.sqrt(wo) * own)

    def concept_vector(self, name: str) -> np.ndarray:
        """Unit float64 (semantic_dim,) vector of a (normalised) concept name.

        Built-in name: domain + category + own direction. "<modifier> <built-in name>": close to
        the base name, moved towards a modifier direction. Anything else: a hash vector drawn
        from the semantic prior (related to no category in particular)."""
        v = self._concepts.get(name)
        if v is not None:
            return v
        if name in _NAME_CATEGORY:
            dom, cat = _NAME_CATEGORY[name]
            v = self._hierarchical(dom, cat, self._own("concept", name))
        else:
            head, _, base = name.partition(" ")
            if head in COMPOUND_MODIFIERS and base in _NAME_CATEGORY:
                w = self.params.compound_weight
                mod = _unit(self._own("modifier", head) + self._own("compound", name))
                v = _unit(math.sqrt(1.0 - w) * self.concept_vector(base) + math.sqrt(w) * mod)
            else:
                v = self._own("unknown", name)
        self._concepts[name] = v
        return v

    def background_vectors(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """(m, semantic_dim) unit concept vectors of unnamed things: a random category of the
        hierarchy and a random own direction (the continuum between named concepts)."""
        cat = rng.integers(0, _N_CATEGORIES, size=m)
        own = _unit(rng.standard_normal((m, self.ds)) * self.sem_scale)
        p = self.params
        wo = 1.0 - p.domain_weight - p.category_weight
        return _unit(math.sqrt(p.domain_weight) * self.domain_vectors[self.category_domain[cat]]
                     + math.sqrt(p.category_weight) * self.category_vectors[cat]
                     + math.sqrt(wo) * own)

    # -- text ---------------------------------------------------------------------------------
    def word_vectors(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """(shared, interaction) float64 vectors over [semantic | style] coordinates for one
        context word. The shared part moves every class the same way (pulls classes together);
        the interaction part is multiplied by per-class signs (pushes classes apart). Their
        split is an angle drawn from the word's hash, so words differ in which effect wins."""
        cached = self._words.get(word)
        if cached is not None:
            return cached
        rng = _hash_rng(self.seed, "word", word)
        e = self.ds + self.dc
        shared = _unit(rng.standard_normal(e))
        inter = _unit(rng.standard_normal(e))
        strength = 0.5 + rng.random()                       # in [0.5, 1.5)
        # 0: all shared, pi/2: all interaction
        angle = 0.5 * math.pi * rng.random() ** WORD_ANGLE_POWER
        w = self.params.prompt_context * strength
        if word in FUNCTION_WORDS:
            w *= self.params.function_word_weight
        out = (w * math.cos(angle) * shared, w * math.sin(angle) * inter)
        self._words[word] = out
        return out

    def class_signs(self, key: str) -> np.ndarray:
        s = self._signs.get(key)
        if s is None:
            s = _hash_rng(self.seed, "signs", key).integers(0, 2, self.ds + self.dc) * 2.0 - 1.0
            self._signs[key] = s
        return s


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------
class SyntheticTextEncoder:
    """Deterministic stand-in for a CLIP text tower, consistent with a synthetic corpus.

    ``encode_text(texts)`` returns L2-normalised float32 (n, dim) embeddings in caption space
    (same modality mean as the corpus captions). A text is lower-cased and split into words
    (letters, digits, inner ``-``/``'``); concept names are matched greedily, longest first,
    against the vocabulary (this encoder's ``concept_names`` plus the built-in
    :func:`concept_vocabulary`, which covers generated compounds too).

    - The first matched concept is the *anchor*: the prompt lands near that concept's captions.
      Later matched concepts act like context with the concept's vector as shared part.
    - A text that names no known concept is anchored at the normalised sum of hash vectors of
      its content words (words not in ``FUNCTION_WORDS``; all words if there are none): a
      deterministic point in caption space near no concept in particular.
    - Every other word adds ``shared(word) + interaction(word) * signs(anchor)``: the shared part
      is the same for every class, the interaction part differs per class (random signs from a
      hash of the anchor's name). Which one dominates depends on the word (see
      ``_Space.word_vectors``), so descriptors differ in whether they spread classes apart.

    All vectors derive from SHA-256 hashes of ``(seed, word or name)``: identical in every process.
    Punctuation and case do not matter ("A photo of a Dog!" == "a photo of a dog").

    Parameters
    ----------
    seed, dim, params : the corpus geometry; ``make_corpus`` passes its own.
    concept_names : extra names to recognise (the corpus's concepts), in addition to the
        built-in vocabulary.
    """

    def __init__(self, *, seed: int = 0, dim: int = 512, params: SyntheticParams | None = None,
                 concept_names=()):
        params = SyntheticParams() if params is None else params
        if not isinstance(params, SyntheticParams):
            raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
        if isinstance(concept_names, str):
            raise TypeError("concept_names must be a list of str, got a single str")
        concept_names = list(concept_names)
        for name in concept_names:
            if not isinstance(name, str):
                raise TypeError(f"concept_names must hold str, got {type(name).__name__}")
        seed = _check_seed(seed)
        dim = _check_int(dim, "dim", minimum=8)
        params.validate(dim)
        self._space = _Space(dim, params, seed)
        vocab = {n: n for n in concept_vocabulary()}
        for name in concept_names:
            key = _normalise_name(name)
            if key:
                vocab[key] = key
        self._vocab = vocab
        by_first: dict[str, set] = {}
        for k in vocab:
            parts = k.split()
            by_first.setdefault(parts[0], set()).add(len(parts))
        self._lengths_by_first = {w: tuple(sorted(v, reverse=True)) for w, v in by_first.items()}
        lengths = {len(k.split()) for k in _NAME_CATEGORY}
        self._builtin_lengths = tuple(sorted(lengths, reverse=True))
        self._modifiers = frozenset(COMPOUND_MODIFIERS)

    @property
    def dim(self) -> int:
        """Dimension of the embeddings the encoder returns."""
        return self._space.dim

    @property
    def seed(self) -> int:
        """The seed of the embedding space (the corpus's seed)."""
        return self._space.seed

    def _lookup(self, words: list[str], i: int) -> int:
        """Length (in words) of the longest known concept name starting at words[i]; 0 if none."""
        w = words[i]
        best = 0
        for L in self._lengths_by_first.get(w, ()):       # descending
            if i + L <= len(words) and " ".join(words[i:i + L]) in self._vocab:
                best = L
                break
        if w in self._modifiers:    # a generated compound "<modifier> <built-in name>" is known too
            for L in self._builtin_lengths:
                if (L + 1 > best and i + 1 + L <= len(words)
                        and " ".join(words[i + 1:i + 1 + L]) in _NAME_CATEGORY):
                    return L + 1
        return best

    def parse(self, text: str) -> tuple[str | None, list[str], list[str]]:
        """(anchor concept or None, other matched concepts, context words) of one text."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        words = _WORD_RE.findall(text.lower())
        concepts, context = [], []
        i = 0
        while i < len(words):
            L = self._lookup(words, i)
            if L:
                concepts.append(" ".join(words[i:i + L]))
                i += L
            else:
                context.append(words[i])
                i += 1
        if concepts:
            return concepts[0], concepts[1:], context
        return None, [], context

    def _anchor(self, text: str):
        """(anchor vector over semantic coords, sign key, extra concepts, context words)."""
        anchor, others, context = self.parse(text)
        sp = self._space
        if anchor is not None:
            return sp.concept_vector(anchor), anchor, others, context
        content = [w for w in context if w not in FUNCTION_WORDS] or context
        key = " ".join(content)
        if not content:
            return sp._own("empty text"), key, [], context
        v = np.zeros(sp.ds)
        for w in content:
            v += sp._own("unknown word", w)
        return _unit(v), key, [], context

    def encode_text(self, texts, *, batch_size: int = 4096) -> np.ndarray:
        """Embeds texts. ``texts``: a list (or other sequence) of str; a single str is rejected
        to avoid embedding its characters. Returns float32 (len(texts), dim), rows L2-normalised.

        A row depends only on its own text: every per-text sum runs in a fixed order, and the
        final projection runs on fixed-size blocks, so batching and neighbours never change it."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got a single str; "
                            "wrap it in a list")
        texts = list(texts)
        batch_size = _check_int(batch_size, "batch_size", minimum=1)
        sp = self._space
        p = sp.params
        out = np.empty((len(texts), sp.dim), dtype=np.float32)
        vt = math.sqrt(1.0 - p.caption_mean ** 2)
        e = sp.ds + sp.dc
        for b0 in range(0, len(texts), batch_size):
            batch = texts[b0:b0 + batch_size]
            m = len(batch)
            # Texts that differ only in their class name share the context words, so sums are
            # made once per distinct context (row 0 of the word tables is a zero pad: every
            # context has >= 1 entry, and sums always run in word order).
            word_row: dict[str, int] = {}
            shared_rows, inter_rows = [np.zeros(e)], [np.zeros(e)]
            ctx_row: dict[tuple, int] = {}
            flat: list[int] = []
            offsets: list[int] = []
            which = np.empty(m, dtype=np.int64)
            anchors = np.empty((m, sp.ds))
            signs = np.empty((m, e))
            extra = np.zeros((m, sp.ds))
            for j, text in enumerate(batch):
                anchor, key, others, context = self._anchor(text)
                anchors[j] = anchor
                signs[j] = sp.class_signs(key)
                for c in others:
                    extra[j] += sp.concept_vector(c)
                ck = tuple(context)
                r = ctx_row.get(ck)
                if r is None:
                    r = ctx_row[ck] = len(offsets)
                    offsets.append(len(flat))
                    flat.append(0)
                    for w in context:
                        wr = word_row.get(w)
                        if wr is None:
                            wr = word_row[w] = len(shared_rows)
                            a, b = sp.word_vectors(w)
                            shared_rows.append(a)
                            inter_rows.append(b)
                        flat.append(wr)
                which[j] = r
            flat_ids = np.asarray(flat, dtype=np.int64)
            starts = np.asarray(offsets, dtype=np.int64)
            shared = np.add.reduceat(np.asarray(shared_rows)[flat_ids], starts, axis=0)[which]
            inter = np.add.reduceat(np.asarray(inter_rows)[flat_ids], starts, axis=0)[which]
            z = shared + inter * signs
            z[:, :sp.ds] += anchors + p.prompt_context * extra
            z *= math.sqrt(p.prompt_semantic)            # anchor + context, then the register
            z[:, sp.ds:] += math.sqrt(1.0 - p.prompt_semantic) * sp.prompt_register
            local = np.empty((m, 1 + e))              # [u_T | semantic | style] coordinates
            local[:, 0] = p.caption_mean
            local[:, 1:] = vt * _unit(z)
            out[b0:b0 + m] = _project_rows(local, sp.text_basis)
        return out

    def __repr__(self):
        return (f"SyntheticTextEncoder(dim={self.dim}, seed={self.seed}, "
                f"vocabulary={len(self._vocab)})")


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class SyntheticCorpus:
    """A generated image/caption corpus.

    Attributes
    ----------
    images : float32 (n, dim), L2-normalised rows.
    captions : float32 (n, dim), L2-normalised; ``captions[i]`` describes ``images[i]``.
    labels : int64 (n,), index into ``concept_names`` of each pair's concept; -1 = background
        (an unnamed thing from the semantic continuum, belonging to no target concept).
    concept_names : list of str, the named concepts (``len == n_concepts``).
    text_encoder : SyntheticTextEncoder consistent with this corpus.
    params : SyntheticParams used.
    seed : int.
    background_fraction : the requested expected share of label -1.
    """

    images: np.ndarray
    captions: np.ndarray
    labels: np.ndarray
    concept_names: list
    text_encoder: SyntheticTextEncoder
    params: SyntheticParams
    seed: int
    background_fraction: float = 0.0

    @property
    def n_images(self) -> int:
        """Number of image/caption pairs."""
        return self.images.shape[0]

    @property
    def dim(self) -> int:
        """Dimension of the embeddings."""
        return self.images.shape[1]

    def __repr__(self):
        return (f"SyntheticCorpus(n_images={self.n_images}, dim={self.dim}, "
                f"n_concepts={len(self.concept_names)}, "
                f"background_fraction={self.background_fraction}, "
                f"seed={self.seed}, model={self.params.model!r})")


def _check_int(v, name, minimum=None):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_seed(seed) -> int:
    return _check_int(seed, "seed", minimum=0)


def _compound_names(seed: int) -> list[str]:
    """All "<modifier> <built-in name>" compounds, in a seeded order."""
    base = concept_vocabulary()
    names = [f"{m} {b}" for m in COMPOUND_MODIFIERS for b in base]
    order = _hash_rng(seed, "compound order").permutation(len(names))
    return [names[i] for i in order]


def _choose_names(n_concepts, concept_names, seed) -> list[str]:
    if concept_names is not None:
        if isinstance(concept_names, str):
            raise TypeError("concept_names must be a list of str, got a single str")
        names = list(concept_names)
        if not names:
            raise ValueError("concept_names is empty; give at least one name")
        seen: dict[str, str] = {}
        for nm in names:
            if not isinstance(nm, str):
                raise TypeError(f"concept_names must hold str, got {type(nm).__name__}")
            key = _normalise_name(nm)
            if not key:
                raise ValueError(f"concept name {nm!r} has no letters or digits")
            if key in seen:
                raise ValueError(f"concept names {seen[key]!r} and {nm!r} are the same after "
                                 "lower-casing and dropping punctuation; names must be distinct")
            seen[key] = nm
        if n_concepts is not None and n_concepts != len(names):
            raise ValueError(f"n_concepts={n_concepts} but {len(names)} concept_names were given; "
                             "pass one of them")
        return names
    n_concepts = _check_int(100 if n_concepts is None else n_concepts, "n_concepts", minimum=1)
    vocab = concept_vocabulary()
    if n_concepts <= len(vocab):
        rng = _hash_rng(seed, "concept choice")
        pick = np.sort(rng.choice(len(vocab), n_concepts, replace=False))
        return [vocab[i] for i in pick]
    compounds = _compound_names(seed)
    limit = len(vocab) + len(compounds)
    if n_concepts > limit:
        raise ValueError(f"n_concepts={n_concepts} exceeds the {limit} names the generator can "
                         "make; pass concept_names explicitly")
    return vocab + compounds[:n_concepts - len(vocab)]


CHUNK_ROWS = 32768


def make_corpus(n_images: int, *, n_concepts: int | None = None, concept_names=None,
                dim: int = 512, background_fraction: float = 0.5, concept_imbalance: float = 0.0,
                seed: int = 0, params: SyntheticParams | None = None,
                num_threads: int | None = None, rows: tuple[int, int] | None = None,
                **stats) -> SyntheticCorpus:
    """Generates ``n_images`` image/caption pairs with named concepts and a CLIP-like modality gap.

    Parameters
    ----------
    n_images : number of pairs (>= 1).
    n_concepts : number of named concepts [100]: a seeded choice from the built-in vocabulary
        (``concept_vocabulary()``, several hundred names), then generated compounds
        ("striped tiger", ...) beyond it. Must equal ``len(concept_names)`` if both are given.
    concept_names : explicit names instead (list of str, distinct ignoring case/punctuation).
        Built-in names keep their place in the hierarchy; others get a hash vector.
    dim : embedding size [512, as CLIP ViT-B/16; the defaults are fitted for it].
    background_fraction : expected fraction of pairs that belong to no named concept
        (label -1) [0.5]; in [0, 1).
    concept_imbalance : concept ``c`` is drawn with weight ``(c + 1) ** -concept_imbalance``
        [0 = uniform; 1 = Zipf].
    seed : all randomness (geometry, names, pairs) derives from it.
    params, **stats : a SyntheticParams, and/or overrides of its fields by name
        (e.g. ``image_nuisance=0.3``, ``model="offset"``).
    num_threads : chunks generated in parallel [None = all cores]; the result is the same for
        any value.
    rows : ``(start, stop)``: generate only pairs ``start .. stop - 1`` of the ``n_images``-pair
        corpus, identical to those rows of the whole one (for corpora larger than memory,
        written part by part). None [default]: all of them.

    Returns
    -------
    SyntheticCorpus with float32 ``images``/``captions`` (n_images, dim) and int64 ``labels``
    (``stop - start`` rows with ``rows``).

    Generated in chunks of 32768 rows, each from its own seeded stream (so threads cannot change
    the result); peak memory is the two outputs plus a few chunk-sized float32 temporaries per
    thread (1,000,000 x 512 needs about 4.1 GB for the outputs).
    """
    n_images = _check_int(n_images, "n_images", minimum=1)
    if num_threads is not None:
        num_threads = _check_int(num_threads, "num_threads", minimum=1)
    dim = _check_int(dim, "dim", minimum=8)
    seed = _check_seed(seed)
    params = SyntheticParams() if params is None else params
    if not isinstance(params, SyntheticParams):
        raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
    if stats:
        valid = {f.name for f in dataclasses.fields(SyntheticParams)}
        unknown = sorted(set(stats) - valid)
        if unknown:
            raise TypeError(f"unknown generator parameter(s) {unknown}; valid: {sorted(valid)}")
        params = dataclasses.replace(params, **stats)
    params.validate(dim)
    bf = float(background_fraction)
    if not 0.0 <= bf < 1.0:
        raise ValueError(f"background_fraction must be in [0, 1), got {background_fraction!r}")
    imb = float(concept_imbalance)
    if not (math.isfinite(imb) and imb >= 0):
        raise ValueError("concept_imbalance must be a finite number >= 0, "
                         f"got {concept_imbalance!r}")
    if rows is None:
        lo, hi = 0, n_images
    else:
        try:
            lo, hi = (int(operator.index(v)) for v in rows)
        except (TypeError, ValueError):
            raise TypeError(f"rows must be a (start, stop) pair of integers, got {rows!r}") from None
        if not 0 <= lo < hi <= n_images:
            raise ValueError(f"rows must satisfy 0 <= start < stop <= n_images={n_images}, got {rows!r}")
    names = _choose_names(n_concepts, concept_names, seed)
    encoder = SyntheticTextEncoder(seed=seed, dim=dim, params=params, concept_names=names)
    sp = encoder._space
    n_c = len(names)
    concepts = np.stack([sp.concept_vector(_normalise_name(nm)) for nm in names])  # (C, ds)

    w = (np.arange(n_c, dtype=np.float64) + 1.0) ** -imb
    probs = np.append((1.0 - bf) * w / w.sum(), bf)
    labels = np.random.default_rng([seed, 0]).choice(n_c + 1, size=n_images, p=probs)
    labels = labels.astype(np.int64)
    labels[labels == n_c] = -1

    images = np.empty((hi - lo, dim), dtype=np.float32)
    captions = np.empty((hi - lo, dim), dtype=np.float32)
    concepts32 = concepts.astype(np.float32)
    chunks = list(range(lo // CHUNK_ROWS, (hi - 1) // CHUNK_ROWS + 1))

    def fill(ci: int) -> None:   # chunk ci: its own random stream, its own output rows
        s0, e0 = ci * CHUNK_ROWS, min(n_images, (ci + 1) * CHUNK_ROWS)
        rng = np.random.default_rng([seed, 1, ci])
        a, b = max(s0, lo), min(e0, hi)   # the part of the chunk that is asked for
        if (a, b) == (s0, e0):
            _fill_chunk(sp, rng, labels[s0:e0], concepts32, images[s0 - lo:e0 - lo], captions[s0 - lo:e0 - lo])
            return
        img, cap = np.empty((e0 - s0, dim), np.float32), np.empty((e0 - s0, dim), np.float32)
        _fill_chunk(sp, rng, labels[s0:e0], concepts32, img, cap)
        images[a - lo:b - lo], captions[a - lo:b - lo] = img[a - s0:b - s0], cap[a - s0:b - s0]

    workers = min(len(chunks), (os.cpu_count() or 1) if num_threads is None else num_threads)
    if workers <= 1:
        for ci in chunks:
            fill(ci)
    else:                         # numpy releases the GIL in the random fills and matmuls
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, chunks))
    labels = labels[lo:hi].copy() if rows is not None else labels
    return SyntheticCorpus(images=images, captions=captions, labels=labels, concept_names=names,
                           text_encoder=encoder, params=params, seed=seed, background_fraction=bf)


def _gauss(rng, shape, scale=None):
    g = rng.standard_normal(shape, dtype=np.float32)
    if scale is not None:
        g *= scale.astype(np.float32)
    return g


def _fill_chunk(sp: _Space, rng, y, concepts, out_img, out_cap):
    """Writes one chunk of images and captions (float32, L2-normalised) into the output slices.

    Local coordinates per modality: [2 modality | semantic | nuisance (images) or style
    (captions)], mapped to ``dim`` by that modality's orthonormal columns of the basis."""
    p = sp.params
    m = y.shape[0]
    bg = y < 0
    c = np.empty((m, sp.ds), dtype=np.float32)
    c[~bg] = concepts[y[~bg]]
    if bg.any():
        c[bg] = sp.background_vectors(rng, int(bg.sum()))
    rho = math.sqrt(p.concept_share)
    inst = _gauss(rng, (m, sp.ds), sp.sem_scale)                  # per-pair detail v_i
    s = rho * c + math.sqrt(1.0 - rho * rho) * inst
    offset = p.model == "offset"
    sem = slice(2, 2 + sp.ds)
    for mod, out in (("image", out_img), ("caption", out_cap)):
        image = mod == "image"
        a = p.image_mean if image else p.caption_mean
        v = 1.0 - a * a
        if offset:                    # negative control: both modalities built like images,
            f_s, f_n, f_x = p.image_semantic, 0.0, 0.0   # all modality-specific noise isotropic
        elif image:
            f_s, f_n, f_x = p.image_semantic, p.image_semantic_noise, p.image_nuisance
        else:
            f_s, f_n, f_x = p.caption_semantic, p.caption_semantic_noise, p.caption_style
        f_iso = max(0.0, 1.0 - f_s - f_n - f_x)
        extra_dim, extra_scale = (sp.dn, sp.nuis_scale) if image else (sp.dc, sp.style_scale)
        local = np.zeros((m, 2 + sp.ds + extra_dim), dtype=np.float32)
        if image:
            local[:, 0] = a * p.mean_cosine
            local[:, 1] = a * math.sqrt(max(0.0, 1.0 - p.mean_cosine ** 2))
        else:
            local[:, 0] = a
        jitter = p.image_mean_jitter if image else p.caption_mean_jitter
        if jitter > 0 and not offset:
            local[:, :2] *= 1.0 + jitter * rng.standard_normal((m, 1), dtype=np.float32)
        sm = s
        if not image and p.alignment_spread > 0 and not offset:
            # the caption describes only part of its image; the rest of it is about something
            # else plausible (another thing of the hierarchy, with its own detail)
            u = rng.random((m, 1), dtype=np.float32)
            kap = np.clip(1.0 - 2.0 * p.alignment_spread * u, 0.0, 1.0)
            other = (rho * sp.background_vectors(rng, m).astype(np.float32)
                     + math.sqrt(1.0 - rho * rho) * _gauss(rng, (m, sp.ds), sp.sem_scale))
            sm = kap * s + np.sqrt(1.0 - kap * kap) * other
        noise = _gauss(rng, (m, sp.ds), sp.sem_scale)
        local[:, sem] = math.sqrt(v * f_s) * sm + math.sqrt(v * f_n) * noise
        if f_x > 0:
            local[:, 2 + sp.ds:] = math.sqrt(v * f_x) * _gauss(rng, (m, extra_dim), extra_scale)
        np.matmul(local, sp.image_basis32 if image else sp.caption_basis32, out=out)
        if f_iso > 0:
            iso = rng.standard_normal((m, sp.dim), dtype=np.float32)
            out += math.sqrt(v * f_iso / sp.dim) * iso
        out /= np.linalg.norm(out, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
# cross_modal_statistics() of the real COCO-500 pairs (CLIP ViT-B/16; all 500 pairs): the target
# of the generator fit. A test recomputes them from mudg_fast.datasets.load_coco500().
COCO500_STATISTICS: dict[str, float] = {
    "matched_cosine": 0.3099,
    "matched_cosine_std": 0.0324,
    "random_cosine": 0.1616,
    "random_cosine_std": 0.0483,
    "image_image_cosine": 0.5315,
    "caption_caption_cosine": 0.5152,
    "modality_gap": 0.8514,
    "recall_at_1": 0.506,
    "recall_at_5": 0.764,
    "recall_at_10": 0.862,
    "image_variance_in_caption_pcs": 0.1062,
    "caption_variance_in_image_pcs": 0.1023,
}

def modality_gap(images, captions, *, chunk_rows: int = 65536) -> float:
    """Euclidean distance between the mean image and the mean caption embedding (float64
    accumulation, chunked). ``images`` (n, d) and ``captions`` (m, d) may differ in length."""
    chunk_rows = _check_int(chunk_rows, "chunk_rows", minimum=1)
    images = as_matrix(images, name="images")
    captions = as_matrix(captions, name="captions", dim=images.shape[1])

    def mean(x):
        acc = np.zeros(x.shape[1])
        for s0 in range(0, x.shape[0], chunk_rows):
            acc += x[s0:s0 + chunk_rows].sum(axis=0, dtype=np.float64)
        return acc / x.shape[0]

    return float(np.linalg.norm(mean(images) - mean(captions)))


def _variance_in_top_pcs(x, y, k):
    """Fraction of y's centred variance inside the span of x's top-k principal directions (NaN
    when y has no variance: every row the same)."""
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    total = (yc ** 2).sum()
    if total == 0:
        return float("nan")
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    b = vt[:k]
    return float(((yc @ b.T) ** 2).sum() / total)


def cross_modal_statistics(images, captions, *, sample: int | None = 500, seed: int = 0) -> dict:
    """The statistics the generator is fitted to, measured on paired embeddings.

    ``images``/``captions``: (n, d), row i of each is one pair (L2-normalised). A seeded random
    ``sample`` of pairs (without replacement; all pairs if ``sample`` is None or >= n) is
    measured, so numbers are comparable with COCO-500 (500 pairs):

    - matched_cosine / matched_cosine_std: mean / std of cos(image_i, caption_i);
    - random_cosine / random_cosine_std: the same over all i != j;
    - image_image_cosine / caption_caption_cosine: mean cosine of distinct rows in one modality;
    - modality_gap: || mean image - mean caption || over the sample;
    - recall_at_1/5/10: exact caption->image search among the sampled images; caption i is a
      hit at k if fewer than k images score strictly higher than its own image;
    - image_variance_in_caption_pcs: fraction of the images' centred variance inside the top-10
      principal directions of the captions (low when images carry variance captions do not
      describe), and caption_variance_in_image_pcs the converse (NaN when that modality's rows are
      all equal);
    - n_pairs.

    At most 20 000 pairs (the statistics use an n x n similarity matrix).
    """
    images = as_matrix(images, name="images")
    captions = as_matrix(captions, name="captions", dim=images.shape[1])
    n = images.shape[0]
    if captions.shape[0] != n:
        raise ValueError(f"images and captions must be paired (same number of rows), got {n} and "
                         f"{captions.shape[0]}")
    if n < 2:
        raise ValueError(f"need at least 2 pairs, got {n}")
    seed = _check_seed(seed)
    if sample is not None:
        sample = _check_int(sample, "sample", minimum=2)
    if sample is None or sample >= n:
        idx = np.arange(n)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    if idx.size > 20000:
        raise ValueError(f"{idx.size} pairs would need a {idx.size}^2 similarity matrix; "
                         "pass sample<=20000")
    x = images[idx].astype(np.float64)
    p = captions[idx].astype(np.float64)
    m = idx.size
    sim = p @ x.T                                   # caption rows, image columns
    diag = np.diag(sim).copy()
    off = ~np.eye(m, dtype=bool)
    rank = (sim > diag[:, None]).sum(axis=1)
    xx = x @ x.T
    pp = p @ p.T
    k = min(10, m - 1)
    return {
        "n_pairs": int(m),
        "matched_cosine": float(diag.mean()),
        "matched_cosine_std": float(diag.std()),
        "random_cosine": float(sim[off].mean()),
        "random_cosine_std": float(sim[off].std()),
        "image_image_cosine": float(xx[off].mean()),
        "caption_caption_cosine": float(pp[off].mean()),
        "modality_gap": float(np.linalg.norm(x.mean(0) - p.mean(0))),
        "recall_at_1": float((rank < 1).mean()),
        "recall_at_5": float((rank < 5).mean()),
        "recall_at_10": float((rank < 10).mean()),
        "image_variance_in_caption_pcs": _variance_in_top_pcs(p, x, k),
        "caption_variance_in_image_pcs": _variance_in_top_pcs(x, p, k),
    }

"""
mudg_fast native core (private; use the mudg_fast package)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
import typing_extensions
__all__: list[str] = ['Error', 'IvfIndex', 'all_finite', 'allot_sub_clusters', 'available_simd_levels', 'combine_retrievals', 'default_threads', 'detected_simd_level', 'gather_rows', 'kmeans_assign', 'kmeans_fit', 'knn', 'magnitude_limit', 'max_abs', 'max_dim', 'max_metadata_bytes', 'max_nlist', 'openmp', 'rerank', 'screening_default', 'screening_mode', 'select_by_clustering', 'set_screening', 'set_simd_level', 'simd_emulated', 'simd_level', 'simd_levels', 'similarity_to_prototypes', 'two_level_min_clusters', 'two_level_quantizer_default_cells', 'two_level_quantizer_default_probe', 'two_level_quantizer_min_lists', 'two_level_quantizer_min_nlist']
class Error(ValueError):
    pass
class IvfIndex:
    @staticmethod
    def load(path: str, mmap: bool = True, verify: bool = True, trained_like: IvfIndex | None = None) -> IvfIndex:
        ...
    @staticmethod
    def merge_files(parts: collections.abc.Sequence[str], path: str, metadata: bytes, n_threads: typing.SupportsInt | typing.SupportsIndex = 0, batch_bytes: typing.SupportsInt | typing.SupportsIndex = 67108864) -> None:
        ...
    @staticmethod
    def search_probed_parts(parts: collections.abc.Sequence[IvfIndex], queries: numpy.typing.NDArray[numpy.float32], k: typing.SupportsInt | typing.SupportsIndex, probes: numpy.typing.NDArray[numpy.int64], n_threads: typing.SupportsInt | typing.SupportsIndex = 0, mode: str = 'auto') -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int64]]:
        ...
    def __init__(self, dim: typing.SupportsInt | typing.SupportsIndex, nlist: typing.SupportsInt | typing.SupportsIndex, codec: str) -> None:
        ...
    def add(self, x: numpy.typing.NDArray[numpy.float32], ids: numpy.typing.NDArray[numpy.int64] | None = None, n_threads: typing.SupportsInt | typing.SupportsIndex = 0, progress: typing.Any = None) -> None:
        ...
    def centroids(self) -> numpy.typing.NDArray[numpy.float32]:
        ...
    def codec_params(self) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32]]:
        ...
    def fingerprint(self) -> int:
        ...
    def list_ids(self, list: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int64]:
        ...
    def list_sizes(self) -> numpy.typing.NDArray[numpy.int64]:
        ...
    def memory_bytes(self) -> int:
        ...
    def merge_from(self, other: IvfIndex) -> None:
        ...
    def probe(self, queries: numpy.typing.NDArray[numpy.float32], nprobe: typing.SupportsInt | typing.SupportsIndex, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int64]]:
        ...
    def quantizer_state(self) -> dict:
        ...
    def reconstruct(self, ids: numpy.typing.NDArray[numpy.int64]) -> numpy.typing.NDArray[numpy.float32]:
        ...
    def save(self, path: str) -> None:
        ...
    def search(self, queries: numpy.typing.NDArray[numpy.float32], k: typing.SupportsInt | typing.SupportsIndex, nprobe: typing.SupportsInt | typing.SupportsIndex, n_threads: typing.SupportsInt | typing.SupportsIndex = 0, mode: str = 'auto') -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int64]]:
        ...
    def search_probed(self, queries: numpy.typing.NDArray[numpy.float32], k: typing.SupportsInt | typing.SupportsIndex, probes: numpy.typing.NDArray[numpy.int64], n_threads: typing.SupportsInt | typing.SupportsIndex = 0, mode: str = 'auto') -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int64]]:
        ...
    def set_centroids(self, centroids: numpy.typing.NDArray[numpy.float32]) -> None:
        ...
    def set_codec_params(self, a: numpy.typing.NDArray[numpy.float32], b: numpy.typing.NDArray[numpy.float32]) -> None:
        ...
    def set_flat_quantizer(self) -> None:
        ...
    def set_metadata(self, text: bytes) -> None:
        ...
    def set_quantizer_probe(self, probe: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def set_two_level_quantizer(self, cells: typing.SupportsInt | typing.SupportsIndex, probe: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex = 0, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def train_codec(self, x: numpy.typing.NDArray[numpy.float32], sq4_residual: bool = True, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    @property
    def codec(self) -> str:
        ...
    @property
    def codec_trained(self) -> bool:
        ...
    @property
    def dim(self) -> int:
        ...
    @property
    def has_centroids(self) -> bool:
        ...
    @property
    def is_trained(self) -> bool:
        ...
    @property
    def metadata(self) -> bytes:
        ...
    @property
    def nlist(self) -> int:
        ...
    @property
    def ntotal(self) -> int:
        ...
    @property
    def quantizer(self) -> str:
        ...
    @property
    def sq4_residual(self) -> bool:
        ...
def all_finite(array: typing_extensions.Buffer) -> bool:
    """
    True when the array holds no NaN or inf.
    """
def allot_sub_clusters(sizes: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], k: typing.SupportsInt | typing.SupportsIndex) -> list[int]:
    """
    Two-level k-means: centroids per coarse cluster (proportional to sizes, sum k, >= 1 when non-empty).
    """
def available_simd_levels() -> list[str]:
    """
    Every SIMD level this CPU supports, scalar first (the order of preference).
    """
def combine_retrievals(ids: numpy.typing.NDArray[numpy.int64], scores: numpy.typing.NDArray[numpy.float32] | None, seed: typing.SupportsInt | typing.SupportsIndex, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    Rank voting: (ids, labels, votes, best_score, n_tied) for the unique ids, ascending.
    """
def default_threads() -> int:
    """
    Threads used when num_threads is None.
    """
def detected_simd_level() -> str:
    """
    The best SIMD level this CPU supports.
    """
def gather_rows(x: numpy.typing.NDArray[numpy.float32], ids: numpy.typing.NDArray[numpy.int64], n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.float32]:
    """
    x[ids] for a C-contiguous float32 matrix, copied in parallel.
    """
def kmeans_assign(x: numpy.typing.NDArray[numpy.float32], centroids: numpy.typing.NDArray[numpy.float32], spherical: bool, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    Nearest centroid of every row: (labels int64, inner products float32).
    """
def kmeans_fit(assign: numpy.typing.NDArray[numpy.float32], assign_ids: numpy.typing.NDArray[numpy.int64] | None, update: numpy.typing.NDArray[numpy.float32], n_clusters: typing.SupportsInt | typing.SupportsIndex, max_iter: typing.SupportsInt | typing.SupportsIndex, spherical: bool, init: str, init_centroids: numpy.typing.NDArray[numpy.float32] | None, seed: typing.SupportsInt | typing.SupportsIndex, max_points_per_centroid: typing.SupportsInt | typing.SupportsIndex, n_threads: typing.SupportsInt | typing.SupportsIndex, verbose: bool, method: str = 'flat', n_coarse: typing.SupportsInt | typing.SupportsIndex = 0) -> dict:
    ...
def knn(queries: numpy.typing.NDArray[numpy.float32], database: numpy.typing.NDArray[numpy.float32], k: typing.SupportsInt | typing.SupportsIndex, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    Exact top-k by inner product: (scores[nq, k] float32, ids[nq, k] int64), best first, padded with (-inf, -1).
    """
def magnitude_limit(d: typing.SupportsInt | typing.SupportsIndex) -> float:
    """
    Largest |value| a d-dimensional input may hold (its float32 scores cannot overflow).
    """
def max_abs(array: typing_extensions.Buffer) -> float:
    """
    Largest absolute value of a C-contiguous float array; inf when it holds NaN or inf.
    """
def rerank(queries: numpy.typing.NDArray[numpy.float32], candidates: numpy.typing.NDArray[numpy.int64], k: typing.SupportsInt | typing.SupportsIndex, source: typing.Any, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    Exact re-ranking of each query's candidate ids: (scores[nq, k] float32, ids[nq, k] int64), best first, padded with (-inf, -1). source: list of (float32/float16 array, first id) covering ids 0..n-1, or a callable ids -> rows.
    """
def screening_default() -> bool:
    """
    Whether the active SIMD level screens exact searches with int8 by default.
    """
def screening_mode() -> int:
    ...
def select_by_clustering(embeddings: numpy.typing.NDArray[numpy.float32], labels: numpy.typing.NDArray[numpy.int64], k_per_class: typing.SupportsInt | typing.SupportsIndex, strategy: str, seed: typing.SupportsInt | typing.SupportsIndex, max_iter: typing.SupportsInt | typing.SupportsIndex, spherical: bool, n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.int64]:
    """
    Selected row indices, ascending.
    """
def set_screening(mode: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    int8 screening of exact searches: -1 the SIMD level's default, 0 off, 1 on (tests).
    """
def set_simd_level(level: str) -> None:
    """
    Switch the active SIMD level (tests and benchmarks).
    """
def simd_level() -> str:
    """
    The active SIMD level: 'scalar', 'avx2', 'avx2+vnni', 'avx512', 'avx512+vnni', 'neon' or 'neon+dotprod'.
    """
def simd_levels() -> list[str]:
    """
    Every SIMD level this build knows, whether or not the CPU has it.
    """
def similarity_to_prototypes(embeddings: numpy.typing.NDArray[numpy.float32], labels: numpy.typing.NDArray[numpy.int64], prototypes: numpy.typing.NDArray[numpy.float32], n_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.float32]:
    ...
def two_level_quantizer_default_cells(nlist: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    Default number of cells of a two-level quantizer for nlist lists.
    """
def two_level_quantizer_default_probe(cells: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    Default probe (cells scanned per vector) of a two-level quantizer with this many cells.
    """
__version__: str = '0.1.0'
max_dim: int = 1048576
max_metadata_bytes: int = 1048576
max_nlist: int = 16777216
openmp: bool = True
simd_emulated: bool = False
two_level_min_clusters: int = 4096
two_level_quantizer_min_lists: int = 16384
two_level_quantizer_min_nlist: int = 4

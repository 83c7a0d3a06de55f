"""How many centroids must a cell-structured coarse quantizer score to keep 99 % of the exact top-8
lists? A design study behind the two-level quantizer (benchmarks/RESULTS.md, "Two-level coarse
quantizer"), counted rather than timed, so it runs on a busy machine.

The centroids are those of the benchmark (paired two-level k-means, nlist = 4 x pairs of the
COCO-fitted generated corpus, seed 1); the queries are held-out captions. Cells come from a
spherical k-means of the centroids. "spill m" files every centroid in its m nearest cells (m = 1 is
what TwoLevelQuantizer does; m > 1 is the redundant assignment of SOAR-style spilling, which a
query would have to de-duplicate). For every (cells, spill, probe) the table gives the fraction of
each query's exact top-8 lists found in its probe best cells, and the centroids scored per query
(cell centres + the probed cells' members) against nlist for the flat coarse stage.

    python benchmarks/explore_quantizer_spill.py --nlist 131072 --queries 1000
"""

import argparse
import time

import numpy as np

import mudg_fast
from mudg_fast.synthetic import make_corpus


def centroids_and_queries(nlist, n_queries, threads):
    n = 4 * nlist
    c = make_corpus(n + n_queries, n_concepts=1000, dim=768, seed=1, num_threads=threads)
    pk = mudg_fast.PairedKMeans(nlist, method="two_level", max_iter=10, seed=0, max_points_per_centroid=256,
                                num_threads=threads).fit(c.images[:n], c.captions[:n], pairing="given")
    return pk.cluster_centers_, np.ascontiguousarray(c.captions[n:])


def study(centroids, queries, cells, spills, probes, threads):
    """Rows (cells, spill, probe, kept, scored per query) for one cell structure."""
    nlist = len(centroids)
    _, exact8 = mudg_fast.knn(queries, centroids, 8, num_threads=threads)
    centres = mudg_fast.KMeans(cells, max_iter=20, seed=0, spherical=True, num_threads=threads).fit(
        centroids).cluster_centers_
    _, near_cells = mudg_fast.knn(centroids, centres, max(spills), num_threads=threads)  # [nlist, m]
    _, q_cells = mudg_fast.knn(queries, centres, max(probes), num_threads=threads)        # [nq, probe]
    rows = []
    for m in spills:
        sizes = np.bincount(near_cells[:, :m].ravel(), minlength=cells)
        for p in probes:
            probed = np.zeros((len(queries), cells), bool)
            np.put_along_axis(probed, q_cells[:, :p], True, axis=1)
            # exact list e of query i is found when one of its m cells is probed
            cells_of_exact = near_cells[exact8, :m]                                     # [nq, 8, m]
            found = np.take_along_axis(probed[:, None, :], cells_of_exact, axis=2).any(-1)
            scored = cells + sizes[q_cells[:, :p]].sum(1).mean()
            rows.append((cells, m, p, float(found.mean()), float(scored), nlist / scored))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nlist", type=int, default=131072)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    cent, q = centroids_and_queries(args.nlist, args.queries, args.threads)
    print(f"centroids: paired two-level k-means, nlist {args.nlist:,} ({time.perf_counter() - t0:.0f} s)")
    print("| cells | spill | probe | exact top-8 lists kept | centroids scored / query | fewer than flat |")
    print("|---|---|---|---|---|---|")
    root = int(round(args.nlist ** 0.5))
    for cells in (root, 2 * root):
        for c, m, p, kept, scored, fewer in study(cent, q, cells, (1, 2, 3), (4, 6, 8, 12, 16, 24, 32, 48),
                                                 args.threads):
            print(f"| {c} | {m} | {p} | {kept:.4f} | {scored:,.0f} | {fewer:.1f}x |", flush=True)


if __name__ == "__main__":
    main()

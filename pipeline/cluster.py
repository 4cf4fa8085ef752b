"""Group one user's face embeddings into people.

Every method works on an exact k-nearest-neighbour graph of the faces, never on an
n x n distance matrix, so 100,000 faces of one user fit in memory and time; for small
libraries the graph is complete and the methods are exact.
Faces left alone are reported as unclustered (person_id -1, cluster_size 1): the report
shows them as "other faces" instead of thousands of one-photo people.
Cannot-link: faces of one photo (`groups`) are never one person, since nobody appears
twice in a photo; look-alike relatives photographed together are the common case. The
user's corrections (pipeline.corrections) add cannot-link pairs (`cannot_link`) to the
same rule, and must-link groups (`must_link`): faces that are one person whatever the
photo rule says (the user saw them). A group is made of parts (`parts`: the people the
user joined, as they were then), and a merged person must attract new faces of any of its
parts: so each part starts as a cluster of its own and grows by the normal rule (a new face
is compared with the part it resembles, not with the average of everyone merged), and the
parts of a group, with all they gathered, are one person at the end (union-find).
"""
from __future__ import annotations

import heapq
import inspect
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix


@dataclass(frozen=True)
class ClusterResult:
    """Per-face outcome; all arrays have shape (N,)."""

    person_id: np.ndarray  # int32, -1 = unclustered (a face alone)
    cluster_size: np.ndarray  # int32, 1 for unclustered
    distance_to_centre: np.ndarray  # float32 Euclidean to the cluster's mean embedding, 0 for unclustered


def knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row of x (N,D), self excluded.

    Returns (distances (N,k) float32 ascending, indices (N,k) int64), k clipped to N-1.
    sklearn's brute search reduces in bounded chunks: memory O(N k), never O(N^2).
    """
    from sklearn.neighbors import NearestNeighbors  # workers only: keeps 40 MB out of the launcher

    k = min(k, len(x) - 1)
    if k < 1:
        return np.zeros((len(x), 0), np.float32), np.zeros((len(x), 0), np.int64)
    dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
    # Drop each row's own entry (usually column 0; exact duplicates may move it).
    not_self = idx != np.arange(len(x))[:, None]
    keep = np.where(not_self.all(axis=1)[:, None], np.arange(k + 1) < k, not_self)
    return dist[keep].reshape(len(x), k).astype(np.float32), idx[keep].reshape(len(x), k)


def knn_edges(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected kNN graph of x (N,D) as unique edges (i (E,), j (E,), distance (E,)), i < j."""
    dist, idx = knn(x, k)
    i = np.repeat(np.arange(len(x)), idx.shape[1])
    j = idx.ravel()
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo * len(x) + hi, return_index=True)
    return lo[first], hi[first], dist.ravel()[first]


#: Library size at which `distance_threshold` is the plain cut for two lone faces.
REFERENCE_FACES = 100


class AgglomerativeFaces:
    """Average-linkage agglomerative clustering of embeddings x (N,D), with a size prior.

    Two clusters A, B merge while
        msd(A, B) - size_prior * ln(max(n_A, n_B) / N * REFERENCE_FACES) < distance_threshold**2,
    msd being the mean squared distance over all cross pairs of their faces. The prior
    term is the log prior odds that a face belongs to a cluster holding that share of
    the library (a Chinese-restaurant prior): fragments join big albums readily, two lone
    faces need strong evidence, and the cut tightens as the library grows, since each
    face then has more look-alike strangers. With size_prior 0 this is plain UPGMA on
    squared distances. msd decomposes over cluster means (msq_A + msq_B - 2 mean_A.mean_B),
    so every linkage value is exact at O(D) cost; only clusters joined by an edge of the
    `n_neighbors`-nearest-neighbour graph are candidates (all pairs for
    N <= n_neighbors + 1), keeping memory O(N k).
    fit(x, groups, must_link, cannot_link, parts) sets labels_ (N,) int64, -1 for faces
    left alone; groups (N,) (photo ids) forbid merging two clusters that hold faces of one
    group, and so do the row pairs cannot_link (P,2) (cannot-link); must_link (N,) (group
    number, -1 none) ties each group's faces into one person; parts (N,) (part number, -1
    none; each part inside one group) start as one cluster each. Clusters grow by the rule;
    the rule's checks apply to the people the clusters belong to (a cluster holding a part
    takes on the cannot-link tokens of its whole group), and labels_ are the people.
    """

    def __init__(self, distance_threshold: float = 0.37, size_prior: float = 0.005, n_neighbors: int = 30):
        self.distance_threshold = distance_threshold
        self.size_prior = size_prior
        self.n_neighbors = n_neighbors

    def fit(self, x: np.ndarray, groups: np.ndarray | None = None, must_link: np.ndarray | None = None,
            cannot_link: np.ndarray | None = None, parts: np.ndarray | None = None) -> "AgglomerativeFaces":
        n = len(x)
        limit = self.distance_threshold ** 2 - self.size_prior * np.log(n / REFERENCE_FACES)
        dist, idx = knn(x, self.n_neighbors)
        adjacency: list[set[int] | None] = [set(row) for row in idx.tolist()]
        for a, row in enumerate(idx.tolist()):
            for b in row:
                adjacency[b].add(a)
        # Per cluster: mean embedding and mean squared norm, so that the mean squared
        # distance of two clusters is msq_A + msq_B - 2 mean_A . mean_B.
        mean = x.astype(np.float64)
        msq = np.einsum("nd,nd->n", mean, mean)
        size = np.ones(n)
        version = np.zeros(n, dtype=np.int64)
        parent = np.arange(n)  # clusters
        person = np.arange(n)  # people: clusters, and those a must-link ties together
        # Per person (at its root in `person`): the cannot-link tokens of its faces (photos
        # holding other faces too, user pairs). Sets only grow, so a forbidden pair of
        # clusters stays forbidden and its edge is dropped.
        shared = cannot_link_tokens(n, groups, cannot_link)

        def link(c: int, nb: np.ndarray) -> np.ndarray:
            """Linkage (len(nb),) of cluster c to each nb: mean squared distance less the prior."""
            msd = msq[nb] - 2 * (mean[nb] @ mean[c]) + msq[c]
            return msd - self.size_prior * np.log(np.maximum(size[nb], size[c]))

        def entry(c: int) -> tuple | None:
            """Heap entry of cluster c: (closest link, c, its id, versions, second link)."""
            nb = np.fromiter(adjacency[c], dtype=np.int64, count=len(adjacency[c]))
            if not len(nb):
                return None
            values = link(c, nb)
            i = int(values.argmin())
            if values[i] >= limit:
                return None
            second = float(np.partition(values, 1)[1]) if len(nb) > 1 else np.inf
            return float(values[i]), c, int(nb[i]), int(version[c]), int(version[nb[i]]), second

        def root(c: int) -> int:
            while parent[c] != c:
                c = parent[c]
            return int(c)

        def owner(c: int) -> int:
            """Root of the person of face or cluster c (path halving)."""
            while person[c] != c:
                person[c] = person[person[c]]
                c = person[c]
            return int(c)

        def tie(a: int, b: int) -> None:
            """Make the people of a and b one, with the tokens of both."""
            pa, pb = owner(a), owner(b)
            if pa != pb:
                person[pb] = pa
                shared[pa] |= shared[pb]
                shared[pb] = set()

        def merge(a: int, b: int) -> int:
            """Join clusters a and b (roots); returns the root of the result."""
            if len(adjacency[a]) < len(adjacency[b]):
                a, b = b, a  # keep the larger neighbour set: small-to-large merging
            parent[b] = a
            tie(a, b)
            total = size[a] + size[b]
            mean[a] = (size[a] * mean[a] + size[b] * mean[b]) / total
            msq[a] = (size[a] * msq[a] + size[b] * msq[b]) / total
            size[a] = total
            version[a] += 1
            for k in adjacency[b]:
                adjacency[k].discard(b)
                if k != a:
                    adjacency[k].add(a)
            adjacency[a] |= adjacency[b]
            adjacency[a].discard(a)
            adjacency[b] = None
            return a

        # One entry per cluster: its closest neighbour, plus the second-closest link as a
        # bound on all others. The link of two unchanged clusters stays fixed, and each
        # merged cluster re-enters with its own closest neighbour, so the smallest valid
        # entry is the closest pair. An entry whose partner changed is
        # repaired in O(D) while the partner's new link stays within the bound.
        heap = [(float(d[0]) ** 2, c, int(i[0]), 0, 0, float(d[1]) ** 2 if len(d) > 1 else np.inf)
                for c, (d, i) in enumerate(zip(dist.tolist(), idx.tolist())) if d and d[0] ** 2 < limit]
        # Parts start as one cluster each; singletons' entries above stay valid (a partner
        # that was merged is repaired when popped), merged ones re-enter. Then each group
        # is one person: its clusters stay apart until the rule merges them.
        for members in _members(parts):
            r = int(members[0])
            for b in members[1:].tolist():
                r = merge(r, int(b))
            if fresh := entry(r):
                heap.append(fresh)
        for members in _members(must_link):
            for b in members[1:].tolist():
                tie(int(members[0]), int(b))
        heapq.heapify(heap)
        while heap:
            _, a, b, va, vb, second = heapq.heappop(heap)
            if parent[a] != a or version[a] != va:
                continue  # a was merged: its merged cluster has a fresh entry
            if parent[b] != b or version[b] != vb:
                r = root(b)
                value = float(link(a, np.array([r]))[0])
                if value <= second:
                    if value < limit:
                        heapq.heappush(heap, (value, a, r, va, int(version[r]), second))
                elif second < limit and (fresh := entry(a)):
                    heapq.heappush(heap, fresh)
                continue
            pa, pb = owner(a), owner(b)
            if pa != pb and shared[pa] and shared[pb] and not shared[pa].isdisjoint(shared[pb]):
                adjacency[a].discard(b)  # cannot-link: these two never merge
                adjacency[b].discard(a)
                if fresh := entry(a):
                    heapq.heappush(heap, fresh)
                continue
            if fresh := entry(merge(a, b)):
                heapq.heappush(heap, fresh)
        self.labels_ = _singletons_to_noise(_roots(person))
        return self

    def fit_predict(self, x: np.ndarray, groups: np.ndarray | None = None, must_link: np.ndarray | None = None,
                    cannot_link: np.ndarray | None = None, parts: np.ndarray | None = None) -> np.ndarray:
        return self.fit(x, groups, must_link, cannot_link, parts).labels_


def cannot_link_tokens(n: int, groups: np.ndarray | None = None,
                       cannot_link: np.ndarray | None = None) -> list[set[int]]:
    """Per face of n, its cannot-link tokens: no person may hold one token twice. A face's
    group (groups (N,), its photo) is a token when another face has the same group (faces
    alone in their photo never constrain a merge, so they cost nothing); each row pair of
    cannot_link (P,2) is a token of both its faces."""
    tokens: list[set[int]] = [set() for _ in range(n)]
    base = 0
    if groups is not None:
        _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        for face, g in enumerate(inverse.ravel().tolist()):
            if counts[g] > 1:
                tokens[face].add(g)
        base = len(counts)
    for t, (a, b) in enumerate(np.asarray(cannot_link if cannot_link is not None else [], np.int64)
                               .reshape(-1, 2).tolist()):
        tokens[a].add(base + t)
        tokens[b].add(base + t)
    return tokens


def _members(numbers: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of each group of two faces or more (numbers (N,) group number, -1 none:
    must-link groups, parts), in group order."""
    if numbers is None:
        return []
    numbers = np.asarray(numbers)
    rows = np.flatnonzero(numbers >= 0)
    order = rows[np.argsort(numbers[rows], kind="stable")]
    return [m for m in np.split(order, np.flatnonzero(np.diff(numbers[order])) + 1) if len(m) > 1]


def enforce_constraints(x: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                        must_link: np.ndarray | None = None, cannot_link: np.ndarray | None = None,
                        parts: np.ndarray | None = None) -> np.ndarray:
    """labels (N,) with the constraints enforced afterwards, for methods that cannot take
    them while clustering (HDBSCAN), as AgglomerativeFaces takes them. Each part joins the
    cluster most of its faces are in (a new one when none is in any; a must-linked face in
    no part keeps its cluster, or gets one), and the clusters holding faces of one must-link
    group become one: a merged person keeps what the clustering gathered around each of its
    parts. Then, in each cluster, units (a must-link group, or a face) are kept in order,
    must-link groups first, then nearest the cluster's mean embedding, while none of their
    cannot-link tokens (`cannot_link_tokens`) is taken: a face that conflicts becomes -1, a
    must-link group that conflicts a cluster of its own. Without must-link, this keeps of
    several faces of one photo the one nearest the centre."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    tokens = cannot_link_tokens(len(labels), groups, cannot_link)
    units = [np.array([i]) for i in range(len(labels))]
    for members in _members(parts):
        found = labels[members][labels[members] >= 0]
        labels[members] = np.bincount(found).argmax() if len(found) else labels.max(initial=-1) + 1
    grouped = np.zeros(len(labels), bool)
    for members in _members(must_link):
        for i in members[labels[members] < 0].tolist():
            labels[i] = labels.max(initial=-1) + 1
        united = np.unique(labels[members])
        labels[np.isin(labels, united)] = united[0]
        grouped[members] = True
        units.append(members)
    units = [u for u in units if len(u) > 1 or not grouped[u[0]]]
    ids, means, _ = cluster_means(x, labels)
    key = []
    for u in units:
        label = int(labels[u[0]])
        distance = np.linalg.norm(x[u].mean(axis=0) - means[np.searchsorted(ids, label)]) if label >= 0 else 0.0
        key.append((label, len(u) == 1, float(distance)))
    taken: dict[int, set[int]] = {}
    fresh = labels.max(initial=-1) + 1
    for k in sorted(range(len(units)), key=key.__getitem__):
        u, label = units[k], key[k][0]
        if label < 0:
            continue
        mine = set().union(*(tokens[i] for i in u.tolist()))
        if taken.setdefault(label, set()).isdisjoint(mine):
            taken[label] |= mine
        elif len(u) > 1:
            labels[u], fresh = fresh, fresh + 1
        else:
            labels[u] = -1
    return _singletons_to_noise(labels)


def _roots(parent: np.ndarray) -> np.ndarray:
    """Root (N,) of every node of a union-find forest given by parent (N,)."""
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt


class HDBSCANFaces:
    """HDBSCAN (the `hdbscan` package) on the kNN graph of embeddings x (N,D).

    Density-based: no global distance cut. Core distances and the minimum spanning tree
    come from the exact `n_neighbors` graph (complete for small N), passed to hdbscan
    as a sparse precomputed distance matrix; graph components are chained by edges
    longer than any real one so the tree is connected, which hdbscan then splits.
    fit(x, groups, must_link, cannot_link, parts) sets labels_ (N,) int64, -1 for noise;
    the constraints (as AgglomerativeFaces takes them) are enforced afterwards
    (`enforce_constraints`).
    """

    def __init__(self, min_cluster_size: int = 2, min_samples: int = 2,
                 cluster_selection_method: str = "eom", n_neighbors: int = 30):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.n_neighbors = n_neighbors

    def fit(self, x: np.ndarray, groups: np.ndarray | None = None, must_link: np.ndarray | None = None,
            cannot_link: np.ndarray | None = None, parts: np.ndarray | None = None) -> "HDBSCANFaces":
        import hdbscan
        from scipy.sparse.csgraph import connected_components

        n = len(x)
        if n <= self.min_cluster_size:
            self.labels_ = enforce_constraints(x, np.full(n, -1, dtype=np.int64), groups, must_link, cannot_link,
                                               parts)
            return self
        ei, ej, ed = knn_edges(x, max(self.n_neighbors, self.min_samples))
        # hdbscan drops explicit zeros (identical faces): keep them as a tiny distance.
        ed = np.maximum(ed.astype(np.float64), 1e-9)
        graph = coo_matrix((ed, (ei, ej)), shape=(n, n)).tocsr()
        n_comp, comp = connected_components(graph, directed=False)
        if n_comp > 1:
            first = np.unique(comp, return_index=True)[1]
            far = 10.0 * (ed.max() + 1.0)
            graph = graph + coo_matrix((np.full(n_comp - 1, far), (first[:-1], first[1:])), shape=(n, n)).tocsr()
        graph = graph.maximum(graph.T).tocsr()
        model = hdbscan.HDBSCAN(metric="precomputed", min_cluster_size=self.min_cluster_size,
                                min_samples=self.min_samples,
                                cluster_selection_method=self.cluster_selection_method)
        self.labels_ = enforce_constraints(x, _singletons_to_noise(model.fit_predict(graph)), groups,
                                           must_link, cannot_link, parts)
        return self

    def fit_predict(self, x: np.ndarray, groups: np.ndarray | None = None, must_link: np.ndarray | None = None,
                    cannot_link: np.ndarray | None = None, parts: np.ndarray | None = None) -> np.ndarray:
        return self.fit(x, groups, must_link, cannot_link, parts).labels_


ESTIMATORS = {"agglomerative": AgglomerativeFaces, "hdbscan": HDBSCANFaces}
METHODS = tuple(ESTIMATORS)
DEFAULT_METHOD = "agglomerative"
#: Each method's default parameters (its estimator's keyword defaults), the fallback for
#: embedder versions without their own entry in PARAMS_BY_EMBEDDER.
DEFAULT_PARAMS: dict[str, dict] = {
    name: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    for name, cls in ESTIMATORS.items()}
#: embedder version -> method -> parameters chosen for it by bench/cluster_eval.py (each
#: embedder has its own distance scale); what an entry leaves out comes from DEFAULT_PARAMS.
PARAMS_BY_EMBEDDER: dict[str, dict[str, dict]] = {
    # python bench/cluster_eval.py --embedder NAME --methods agglomerative (grid scaled by
    # the embedder's View-1 DevTrain verification threshold; bench/RESULTS.md, issue 18)
    "20170512-110547-6acdd8fb3a3f/box160pm32+prewhiten+flip":
        {"agglomerative": {"distance_threshold": 1.001, "size_prior": 0.0627}},
    "20180408-102900-704afe26766c/box160pm32":
        {"agglomerative": {"distance_threshold": 1.024, "size_prior": 0.0726}},
    "ensemble(dlib-resnet:dlib-v1-55533b28a958/lm150-v2+flip+bf16/u0.4203,"
    "facenet-msceleb:20170512-110547-6acdd8fb3a3f/box160pm32+prewhiten+bf16/u1.0865)":
        {"agglomerative": {"distance_threshold": 0.513, "size_prior": 0.0087}},
}


def params_for(method: str, embedder_version: str | None = None) -> dict:
    """The parameters `method` runs with on embeddings of `embedder_version`."""
    return {**DEFAULT_PARAMS[method], **PARAMS_BY_EMBEDDER.get(embedder_version or "", {}).get(method, {})}


def _singletons_to_noise(labels: np.ndarray) -> np.ndarray:
    """labels (N,) with every cluster of one face replaced by -1."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    valid = labels >= 0
    counts = np.bincount(labels[valid], minlength=1)
    labels[valid & (counts[np.maximum(labels, 0)] < 2)] = -1
    return labels


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters of labels (N,) 0.. by size desc, ties by smallest face index.

    Makes person ids independent of an algorithm's internal numbering; -1 stays.
    """
    out = np.full(len(labels), -1, dtype=np.int32)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, inverse, counts = np.unique(
        labels[valid], return_index=True, return_inverse=True, return_counts=True)
    first = np.flatnonzero(valid)[first]
    rank = np.empty(len(uniq), dtype=np.int32)
    rank[np.lexsort((first, -counts))] = np.arange(len(uniq), dtype=np.int32)
    out[valid] = rank[inverse]
    return out


def cluster_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (K,) sorted, means (K,D) float64, counts (K,)) of the rows of x (N,D) per
    label of labels (N,) int; rows labelled -1 (unclustered) belong to no group."""
    labels = np.asarray(labels)
    valid = labels >= 0
    ids, inverse, counts = np.unique(labels[valid], return_inverse=True, return_counts=True)
    means = np.zeros((len(ids), np.shape(x)[1]))
    np.add.at(means, inverse, np.asarray(x, dtype=np.float64)[valid])
    return ids, means / np.maximum(counts, 1)[:, None], counts


def cluster_faces(embeddings: np.ndarray, method: str = DEFAULT_METHOD, groups: np.ndarray | None = None,
                  eligible: np.ndarray | None = None, embedder_version: str | None = None,
                  must_link: np.ndarray | None = None, cannot_link: np.ndarray | None = None,
                  parts: np.ndarray | None = None, **params) -> ClusterResult:
    """Cluster embeddings (N,D) into people with `method` (one of METHODS).

    groups (N,): the photo of each face; two faces of one photo are never one person, nor
    are the two faces of each row pair of cannot_link (P,2). must_link (N,): a group
    number per face (-1 none); each group's faces are one person. parts (N,): a part number
    per face (-1 none), each part inside one must-link group (the people the user joined):
    each part starts as a cluster of its own, and a must-linked face in no part starts
    alone; clusters grow by the rule, and a group's end up one person. eligible (N,) bool:
    faces that may start or join a person (the quality gate, core.quality); the others
    stay unclustered and do not count in the library size.
    Parameters are `params_for(method, embedder_version)`, overridden by params
    (e.g. distance_threshold=0.5).
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown --cluster method {method!r}; choose from {', '.join(METHODS)}")
    unknown = set(params) - set(DEFAULT_PARAMS[method])
    if unknown:
        raise ValueError(f"--cluster {method} has no parameter {', '.join(sorted(unknown))}")
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    keep = np.ones(len(x), bool) if eligible is None else np.asarray(eligible, bool)
    if keep.shape != (len(x),) or any(a is not None and np.shape(a) != (len(x),) for a in (groups, must_link, parts)):
        raise ValueError(f"groups, eligible, must_link and parts must have shape ({len(x)},)")
    if parts is not None:
        part, group = np.asarray(parts), np.full(len(x), -1) if must_link is None else np.asarray(must_link)
        inside = part >= 0
        if (group[inside] < 0).any() or len(set(zip(part[inside].tolist(), group[inside].tolist()))) != \
                len(np.unique(part[inside])):
            raise ValueError("each part must lie inside one must-link group")
    # only the eligible faces are clustered: constraints move to their rows
    row = np.cumsum(keep) - 1
    pairs = np.asarray(cannot_link if cannot_link is not None else [], np.int64).reshape(-1, 2)
    pairs = row[pairs[keep[pairs].all(axis=1)]]
    labels = np.full(len(x), -1, dtype=np.int64)
    if keep.sum() > 1:
        estimator = ESTIMATORS[method](**{**params_for(method, embedder_version), **params})
        photo, must, part = (None if a is None else np.asarray(a)[keep] for a in (groups, must_link, parts))
        labels[keep] = estimator.fit_predict(x[keep], photo, must, pairs, part)
    person = canonical_labels(labels)
    valid = person >= 0
    _, centres, sizes = cluster_means(x, person)  # canonical labels are 0..K-1, all used
    cluster_size = np.ones(len(x), dtype=np.int32)
    cluster_size[valid] = sizes[person[valid]]
    distance = np.zeros(len(x), dtype=np.float32)
    distance[valid] = np.linalg.norm(x[valid] - centres[person[valid]], axis=1)
    return ClusterResult(person, cluster_size, distance)

"""Clustering quality measures for face grouping: pairwise, BCubed, NMI.

Predicted label -1 (unclustered) counts as a singleton cluster of its own, so an
algorithm gains nothing by leaving hard faces out. Label arrays have shape (N,).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def singletons_apart(labels: np.ndarray) -> np.ndarray:
    """labels (N,) int with each -1 replaced by a fresh label of its own."""
    labels = np.asarray(labels).astype(np.int64)
    out = labels.copy()
    noise = labels < 0
    out[noise] = labels.max(initial=-1) + 1 + np.arange(noise.sum())
    return out


def _contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, true_of_cell, pred_of_cell): counts (M,) of each non-empty (true, pred) cell
    and their true / pred cluster sizes (M,)."""
    if len(true) != len(pred):
        raise ValueError(f"true and pred differ in length: {len(true)} vs {len(pred)}")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(singletons_apart(pred), return_inverse=True)
    cells, counts = np.unique(np.stack([t, p]), axis=1, return_counts=True)
    true_size, pred_size = np.bincount(t), np.bincount(p)
    return counts.astype(np.float64), true_size[cells[0]].astype(np.float64), pred_size[cells[1]].astype(np.float64)


def _f(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if p + r else 0.0


def pairwise_prf(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F over all unordered pairs of faces put together / truly together.

    With no pair on one side the corresponding ratio is 1 (nothing to get wrong).
    """
    n, ts, ps = _contingency(true, pred)
    both = np.sum(n * (n - 1)) / 2
    pred_pairs = np.sum(n * (ps - 1)) / 2  # sum over predicted clusters of C(size, 2)
    true_pairs = np.sum(n * (ts - 1)) / 2
    p = both / pred_pairs if pred_pairs else 1.0
    r = both / true_pairs if true_pairs else 1.0
    return float(p), float(r), _f(p, r)


def bcubed_prf(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """BCubed precision, recall, F: per-face share of its predicted (true) cluster that
    truly (predicted) shares its identity, averaged over faces."""
    n, ts, ps = _contingency(true, pred)
    total = n.sum()
    if not total:
        return 1.0, 1.0, 1.0
    p = float(np.sum(n * n / ps) / total)
    r = float(np.sum(n * n / ts) / total)
    return p, r, _f(p, r)


@dataclass(frozen=True)
class Scores:
    """All measures of one clustering against the truth."""

    pairwise_p: float
    pairwise_r: float
    pairwise_f: float
    bcubed_p: float
    bcubed_r: float
    bcubed_f: float
    nmi: float
    n_true: int
    n_found: int


def score(true: np.ndarray, pred: np.ndarray) -> Scores:
    """Every measure for true identities (N,) and predicted labels (N,), -1 = singleton."""
    pred = singletons_apart(pred)
    nmi = normalized_mutual_info_score(true, pred) if len(true) else 1.0
    return Scores(*pairwise_prf(true, pred), *bcubed_prf(true, pred), float(nmi),
                  len(np.unique(true)), len(np.unique(pred)))


def mean_scores(scores: list[Scores]) -> Scores:
    """Field-wise average (counts summed) over several libraries."""
    vals = {f: float(np.mean([getattr(s, f) for s in scores])) for f in Scores.__dataclass_fields__}
    vals["n_true"] = sum(s.n_true for s in scores)
    vals["n_found"] = sum(s.n_found for s in scores)
    return Scores(**vals)


@dataclass(frozen=True)
class JunkScores:
    """How unrecognisable ("junk") faces fared, and the clean faces without them."""

    clean_bcubed_f: float  # BCubed F over the clean faces only
    junk: int  # junk faces (found by the detector)
    junk_joined: int  # junk faces put into a person
    junk_wrong: int  # junk faces in a person that is mostly someone else (or made of junk only, not theirs)
    junk_people: int  # people made of junk faces only
    clean: int
    clean_gated: int  # clean faces the quality gate kept out of people


def junk_scores(true: np.ndarray, pred: np.ndarray, junk: np.ndarray, gated: np.ndarray) -> JunkScores:
    """JunkScores for true identities (N,), predicted labels (N,) (-1 alone), junk (N,) bool
    and gated (N,) bool (below the quality gate). A person's identity is the most common
    one among its clean faces (among all its faces when it has none)."""
    true, pred, junk, gated = (np.asarray(a) for a in (true, pred, junk, gated))
    wrong = joined = people = 0
    for person in np.unique(pred[pred >= 0]):
        members = pred == person
        clean = members & ~junk
        names, counts = np.unique(true[clean if clean.any() else members], return_counts=True)
        own = names[np.argmax(counts)]
        people += int(not clean.any())
        joined += int((members & junk).sum())
        wrong += int((members & junk & (true != own)).sum())
    keep = ~junk
    clean_f = bcubed_prf(true[keep], pred[keep])[2] if keep.any() else 1.0
    return JunkScores(clean_f, int(junk.sum()), joined, wrong, people, int(keep.sum()), int((gated & keep).sum()))


def sum_junk(scores: list[JunkScores]) -> JunkScores:
    """Counts summed and clean BCubed F averaged over several libraries."""
    total = {f: sum(getattr(s, f) for s in scores) for f in JunkScores.__dataclass_fields__}
    total["clean_bcubed_f"] = float(np.mean([s.clean_bcubed_f for s in scores]))
    return JunkScores(**total)

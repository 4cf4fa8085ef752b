"""Decision thresholds on embedding distances, per embedder version.

Distances are only comparable within one embedder version (network, weights and
alignment), so every threshold is keyed by `Embedder.version`. All of them are derived
on LFW View-1 only and measured on View-2 by bench/identify_lfw.py; re-run it after any
change to detection, alignment or weights (the version then changes too).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """verify: same person iff Euclidean distance < verify; name/margin: the naming rule
    of pipeline.known_people.name_people (cluster-to-name centroid distance < name, and
    the second-best name at least `margin` further)."""

    verify: float
    name: float
    margin: float


THRESHOLDS: dict[str, Thresholds] = {
    # DERIVATION PENDING (bench/identify_lfw.py)
}


def thresholds_for(embedder_version: str) -> Thresholds:
    """The thresholds of an embedder version; a clear error for versions never measured."""
    if embedder_version not in THRESHOLDS:
        known = ", ".join(sorted(THRESHOLDS)) or "none"
        raise ValueError(f"no thresholds derived for embedder version {embedder_version!r} (known: {known}); "
                         "derive them with bench/identify_lfw.py")
    return THRESHOLDS[embedder_version]

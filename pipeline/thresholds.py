"""Decision thresholds on embedding distances, per embedder version.

Distances are only comparable within one embedder version (network, weights and
alignment), so every threshold is keyed by `Embedder.version`. All of them are derived
on LFW View-1 only and measured on View-2 by bench/identify_lfw.py; re-run it after any
change to detection, alignment or weights (the version then changes too) and, for the
naming rule (it compares cluster centroids), to the default clustering.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """verify: same person iff Euclidean distance < verify; name/margin: the naming rule
    of pipeline.naming.name_people (cluster-to-name centroid distance < name, and
    the second-best name at least `margin` further)."""

    verify: float
    name: float
    margin: float


THRESHOLDS: dict[str, Thresholds] = {
    # python bench/identify_lfw.py (2026-12-01, agglomerative 0.37 / size prior 0.005): verify
    # from 2,200 View-1 DevTrain pairs; on the 6,000 View-2 pairs FAR 0.0073, FRR 0.0083,
    # accuracy 0.9922. Naming chosen on 300 libraries of DevTrain identities (3,261 clusters);
    # on 300 libraries of View-2 identities not in DevTrain (3,219 clusters, 674 of known
    # people): wrong name 0.0022, known person not (correctly) named 0.0534.
    "dlib-v1-55533b28a958/lm150-v2+flip": Thresholds(verify=0.4203, name=0.29, margin=0.01),
    # python bench/identify_lfw.py --embedder facenet-msceleb (2026-12-06, agglomerative 1.001 /
    # size prior 0.0627): View-2 at the DevTrain threshold FAR 0.0017, FRR 0.0107, accuracy
    # 0.9938; naming on View-2 identities not in DevTrain (3,323 clusters, 673 of known
    # people): wrong name 0.0021, known person not (correctly) named 0.0862.
    "20170512-110547-6acdd8fb3a3f/box160pm32+prewhiten+flip": Thresholds(verify=1.0522, name=0.65, margin=0.18),
    # python bench/identify_lfw.py --embedder facenet-casia (2026-12-06, agglomerative 1.024 /
    # size prior 0.0726): View-2 FAR 0.0090, FRR 0.0120, accuracy 0.9895; naming (3,307
    # clusters, 682 of known people): wrong name 0.0033, not (correctly) named 0.1012.
    "20180408-102900-704afe26766c/box160pm32": Thresholds(verify=1.1322, name=0.72, margin=0.18),
    # python bench/identify_lfw.py --embedder ensemble (2026-12-06, members in bfloat16,
    # agglomerative 0.521 / size prior 0.0085): View-2 at the DevTrain threshold FAR 0.0017,
    # FRR 0.0090, accuracy 0.9947; naming on View-2 identities not in DevTrain (3,288
    # clusters, 675 of known people): wrong name 0.0036, known person not (correctly) named 0.0415.
    "ensemble(dlib-resnet:dlib-v1-55533b28a958/lm150-v2+flip+bf16/u0.4203,"
    "facenet-msceleb:20170512-110547-6acdd8fb3a3f/box160pm32+prewhiten+flip+bf16/u1.0522)":
        Thresholds(verify=0.5470, name=0.38, margin=0.11),
}


def thresholds_for(embedder_version: str) -> Thresholds:
    """The thresholds of an embedder version; a clear error for versions never measured."""
    if embedder_version not in THRESHOLDS:
        known = ", ".join(sorted(THRESHOLDS)) or "none"
        raise ValueError(f"no thresholds derived for embedder version {embedder_version!r} (known: {known}); "
                         "derive them with bench/identify_lfw.py")
    return THRESHOLDS[embedder_version]

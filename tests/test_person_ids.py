"""Person ids across runs (pipeline/person_ids.py): kept, joined, merged, split, retired.

Why: a user who names a person, or bookmarks a person page, must find the same person
under the same id after the next run; when clusters change, the outcome must follow the
documented rule, the same way every time.
"""
from __future__ import annotations

import random

import numpy as np

from pipeline.cluster import canonical_labels
from pipeline.person_ids import PreviousPeople, stable_person_ids


def assign(clusters: dict[str, list[str]], previous: dict[str, int], next_id: int = 0,
           alone: tuple[str, ...] = ()) -> tuple[dict[str, int], int]:
    """Person ids by face key for new clusters {name: [face keys]}, numbered the way the
    pipeline numbers them (canonical_labels over faces sorted by key)."""
    label_of = {k: i for i, keys in enumerate(clusters.values()) for k in keys} | {k: -1 for k in alone}
    keys = sorted(label_of)
    labels = canonical_labels(np.array([label_of[k] for k in keys]))
    ids, next_after = stable_person_ids(keys, labels, PreviousPeople(previous, next_id))
    return dict(zip(keys, ids.tolist())), next_after


def test_first_run_numbers_people_largest_first():
    ids, next_id = assign({"a": ["k1", "k2"], "b": ["k3", "k4", "k5"]}, {}, alone=("k6",))
    assert ids == {"k1": 1, "k2": 1, "k3": 0, "k4": 0, "k5": 0, "k6": -1} and next_id == 2


def test_unchanged_people_keep_ids_and_new_faces_join_them():
    previous = {"a1": 7, "a2": 7, "b1": 3, "b2": 3, "b3": 3}
    ids, next_id = assign({"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "new": ["n1", "n2"]},
                          previous, next_id=9)
    assert {ids[k] for k in ("a1", "a2", "a3")} == {7} and {ids[k] for k in ("b1", "b2", "b3")} == {3}
    assert ids["n1"] == ids["n2"] == 9 and next_id == 10  # fresh id above every id ever used


def test_merge_keeps_the_id_of_the_larger_part_and_ties_go_to_the_smaller_id():
    ids, next_id = assign({"AB": ["a1", "a2", "a3", "b1", "b2"]}, {"a1": 5, "a2": 5, "a3": 5, "b1": 2, "b2": 2},
                          next_id=6)
    assert set(ids.values()) == {5} and next_id == 6  # id 2 retires
    ids, _ = assign({"AB": ["a1", "a2", "b1", "b2"]}, {"a1": 5, "a2": 5, "b1": 2, "b2": 2}, next_id=6)
    assert set(ids.values()) == {2}


def test_split_keeps_the_id_on_the_larger_part_and_the_other_part_gets_a_fresh_id():
    previous = {k: 4 for k in ("p1", "p2", "p3", "q1", "q2")}
    ids, next_id = assign({"P": ["p1", "p2", "p3"], "Q": ["q1", "q2"]}, previous, next_id=5)
    assert {ids[k] for k in ("p1", "p2", "p3")} == {4} and {ids["q1"], ids["q2"]} == {5} and next_id == 6
    # equal halves: the part whose smallest face key sorts first keeps the id
    ids, _ = assign({"Q": ["q1", "q2"], "P": ["p1", "p2"]}, {k: 4 for k in ("p1", "p2", "q1", "q2")}, next_id=5)
    assert ids["p1"] == 4 and ids["q1"] == 5


def test_retired_ids_are_never_given_again():
    # person 3 lost all its faces; its id is above the other ones but next_id remembers it
    ids, next_id = assign({"A": ["a1", "a2"], "N": ["n1", "n2"]}, {"a1": 0, "a2": 0}, next_id=4)
    assert ids["n1"] == 4 and next_id == 5
    # without a recorded next_id (older outputs), fresh ids still start above every previous id
    ids, _ = assign({"N": ["n1", "n2"]}, {"x1": 8})
    assert ids["n1"] == 9


def test_faces_leaving_a_cluster_become_unclustered_and_the_rule_ignores_input_order():
    previous = {"a1": 1, "a2": 1, "a3": 1, "b1": 0, "b2": 0, "b3": 0, "b4": 0}
    clusters = {"A": ["a1", "a2"], "B": ["b1", "b2", "b3", "b4", "a3"], "C": ["c1", "c2"]}
    ids, next_id = assign(clusters, previous, next_id=2, alone=("c3",))
    assert ids["a1"] == ids["a2"] == 1 and {ids[k] for k in clusters["B"]} == {0}
    assert ids["c1"] == 2 and ids["c3"] == -1 and next_id == 3
    keys = sorted(ids)
    labels = {k: i for i, ks in enumerate(clusters.values()) for k in ks} | {"c3": -1}
    for seed in range(5):  # same clusters listed in another order: same ids
        order = keys[:]
        random.Random(seed).shuffle(order)
        canon = canonical_labels(np.array([labels[k] for k in keys]))
        position = {k: i for i, k in enumerate(keys)}
        shuffled = np.array([canon[position[k]] for k in order])
        got, _ = stable_person_ids(order, shuffled, PreviousPeople(previous, 2))
        assert dict(zip(order, got.tolist())) == ids

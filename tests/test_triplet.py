"""FaceNet-style fine-tuning: triplet mining and losses checked by hand and by brute force,
the P x K sampler, optimisation on real LFW chips, checkpoints, resume and the CLI."""
from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.dlib_resnet import DlibResNet, load_dlib_resnet
from models.embedders import get_embedder
from models.finetuned import load_finetuned
from models.inception_resnet_v1 import InceptionResnetV1
from models.train import (CentreFaces, Features, LfwCentreFaces, PKSampler, SplitNetwork, TrainConfig,
                          Trainer, View1Evaluator, _faceset, embed_features, load_folder_tree,
                          load_parquet_faces, main, network_stages)
from models.triplet import (CenterLoss, SoftmaxCenterLoss, TripletLoss, batch_hard_triplets,
                            semi_hard_triplets, squared_distances)
from pipeline.run import run
from pipeline.schemas import IMAGES, embedder_lineage, face_key, faces_schema
from pipeline.tables import file_table
from pipeline.users import user_folder

# Identities with >= 4 LFW photos, 4 photos each: a small real training set.
N_IDS, PER_ID = 8, 4


def _unit_circle(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * torch.pi / 180
    return torch.stack([torch.cos(rad), torch.sin(rad)], 1)


def _sq(deg: float) -> float:
    """Squared distance of two unit vectors deg degrees apart: 2 - 2 cos."""
    return 2 - 2 * np.cos(np.radians(deg))


# ----------------------------------------------------------------------- hand computations

def test_semi_hard_loss_by_hand() -> None:
    # label 0 at 0 and 20 degrees, label 1 at 35 and 80 degrees; alpha 0.5.
    emb, labels = _unit_circle([0, 20, 35, 80]), torch.tensor([0, 0, 1, 1])
    out = TripletLoss(alpha=0.5)(emb * 3.0, labels)  # scale: the loss normalises
    # (0,1): d_ap = sq(20); negatives sq(35) in (d_ap, d_ap+.5) -> n=2; sq(80) beyond.
    # (1,0): negatives sq(15) < d_ap (hard), sq(60) = 1.0 > sq(20)+.5: none -> dropped.
    # (2,3): d_ap = sq(45); negatives sq(35), sq(15) are both closer: none -> dropped.
    # (3,2): d_ap = sq(45); sq(60) = 1.0 in (0.586, 1.086) -> n=1; sq(80) beyond.
    expected = ((_sq(20) - _sq(35) + 0.5) + (_sq(45) - _sq(60) + 0.5)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)
    assert out.stats["active"] == pytest.approx(0.5)
    t = semi_hard_triplets(squared_distances(emb), labels, 0.5)
    assert sorted(zip(t.anchors.tolist(), t.positives.tolist(), t.negatives.tolist())) == [
        (0, 1, 2), (3, 2, 1)]


def test_batch_hard_loss_by_hand() -> None:
    emb, labels = _unit_circle([0, 20, 35, 80]), torch.tensor([0, 0, 1, 1])
    out = TripletLoss(alpha=0.5, mining="batch-hard")(emb, labels)
    hinges = [_sq(20) - _sq(35) + 0.5,  # anchor 0: positive 1, closest negative 2
              _sq(20) - _sq(15) + 0.5,  # anchor 1: positive 0, closest negative 2
              _sq(45) - _sq(15) + 0.5,  # anchor 2: positive 3, closest negative 1
              _sq(45) - _sq(60) + 0.5]  # anchor 3: positive 2, closest negative 1
    assert out.loss.item() == pytest.approx(np.mean(np.maximum(hinges, 0)), abs=1e-9)
    assert out.stats["active"] == 1.0


def test_center_loss_by_hand() -> None:
    loss = CenterLoss(n_classes=2, dim=2, rate=0.5)
    loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1])
    # 1/2 * mean(|(0,1)|^2, |(2,0)|^2, |(0,-2)|^2) = 1/2 * (1 + 4 + 4) / 3
    assert loss(x, labels).item() == pytest.approx(1.5)
    loss.update(x, labels)
    # class 0: delta = ((1,0)-(1,1) + (1,0)-(3,0)) / (1+2) = (-2,-1)/3; c -= 0.5 * delta
    # class 1: delta = ((0,1)-(0,-1)) / (1+1) = (0,1); c -= 0.5 * delta
    expected = torch.tensor([[1 + 1 / 3, 1 / 6], [0.0, 0.5]])
    assert torch.allclose(loss.centers, expected)


def test_softmax_center_objective_by_hand() -> None:
    torch.manual_seed(0)
    obj = SoftmaxCenterLoss(n_classes=3, dim=4, center_weight=0.1, scale=16.0).eval()
    obj.center.centers.normal_()
    emb, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    x = F.normalize(emb, dim=1)
    logits = obj.classifier(16.0 * x)
    log_p = logits - torch.logsumexp(logits, 1, keepdim=True)
    ce = -log_p[torch.arange(5), labels].mean()
    center = 0.5 * ((x - obj.center.centers[labels]) ** 2).sum(1).mean()
    before = obj.center.centers.clone()
    assert obj(emb, labels).loss.item() == pytest.approx((ce + 0.1 * center).item(), abs=1e-6)
    assert torch.equal(obj.center.centers, before), "eval mode must not move the centres"


# ----------------------------------------------------------------------- properties

def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings (P*K,16) of P in 2..8 noisy clusters of K in 2..5, and their labels."""
    g = torch.Generator().manual_seed(seed)
    p, k = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
    centres = torch.randn(p, 16, generator=g)
    labels = torch.arange(p).repeat_interleave(k)
    emb = F.normalize(centres[labels] + torch.randn(len(labels), 16, generator=g), dim=1)
    return emb, labels


def _check_semi_hard(emb: torch.Tensor, labels: torch.Tensor, alpha: float) -> int:
    """Brute force over every anchor-positive pair: a pair is mined iff it has a negative with
    d(a,p) < d(a,n) < d(a,p) + alpha, and then with the closest such one. Returns the number
    of mined triplets."""
    dist = squared_distances(F.normalize(emb, dim=1))
    t = semi_hard_triplets(dist, labels, alpha)
    mined = {(a, p): n for a, p, n in zip(t.anchors.tolist(), t.positives.tolist(), t.negatives.tolist())}
    assert len(mined) == len(t.anchors), "an anchor-positive pair mined twice"
    n_pairs = 0
    for a, p in itertools.permutations(range(len(labels)), 2):
        if labels[a] != labels[p]:
            continue
        n_pairs += 1
        d_ap = dist[a, p].item()
        semi = [n for n in range(len(labels)) if labels[n] != labels[a]
                and d_ap < dist[a, n].item() < d_ap + alpha]
        if not semi:
            assert (a, p) not in mined
            continue
        n = mined[(a, p)]
        assert labels[n] != labels[a] and d_ap < dist[a, n].item() < d_ap + alpha
        assert dist[a, n].item() == pytest.approx(min(dist[a, m].item() for m in semi))
    assert t.candidates == n_pairs
    out = TripletLoss(alpha)(emb, labels)
    assert out.stats["active"] == pytest.approx(len(mined) / n_pairs)
    hinge = [dist[a, p].item() - dist[a, n].item() + alpha for (a, p), n in mined.items()]
    assert out.loss.item() == pytest.approx(np.mean(hinge) if hinge else 0.0, abs=1e-6)
    return len(mined)


def test_every_mined_negative_is_semi_hard_and_the_closest() -> None:
    mined = [_check_semi_hard(*_random_batch(seed), alpha=0.2) for seed in range(40)]
    assert sum(mined) > 500 and sum(m > 0 for m in mined) >= 30, mined  # the check saw triplets


@pytest.mark.parametrize("seed", range(20))
def test_batch_hard_picks_the_hardest(seed: int) -> None:
    emb, labels = _random_batch(seed)
    dist = squared_distances(emb).numpy()
    t = batch_hard_triplets(torch.from_numpy(dist), labels)
    lab = labels.numpy()
    assert t.anchors.tolist() == list(range(len(lab)))
    for a, p, n in zip(t.anchors.tolist(), t.positives.tolist(), t.negatives.tolist()):
        pos = [j for j in range(len(lab)) if lab[j] == lab[a] and j != a]
        neg = [j for j in range(len(lab)) if lab[j] != lab[a]]
        assert p in pos and dist[a, p] == max(dist[a, j] for j in pos)
        assert n in neg and dist[a, n] == min(dist[a, j] for j in neg)


def test_distances_and_empty_selection() -> None:
    emb, labels = _random_batch(3)
    ref = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    assert torch.allclose(squared_distances(emb), ref, atol=1e-6)
    far = _unit_circle([0, 1, 180, 181]).float().requires_grad_()
    out = TripletLoss(alpha=0.2)(far, torch.tensor([0, 0, 1, 1]))  # all negatives beyond the margin
    out.loss.backward()
    assert out.loss.item() == 0 and out.stats["active"] == 0 and far.grad is not None


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="--mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="--alpha"):
        TripletLoss(alpha=0)
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(torch.randn(4, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="--trainable"):
        SplitNetwork(DlibResNet(), "most")
    with pytest.raises(ValueError, match="P >= 2"):
        PKSampler(np.array([0, 0, 1, 1]), 1, 2)


def test_pk_sampler_covers_every_face_once() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 400)
    labels[:3] = 99  # one identity with 3 faces
    labels[3] = 100  # a singleton: cannot be an anchor, left out
    sampler = PKSampler(labels, p=8, k=4, seed=1)
    batches = sampler.epoch(0)
    seen = np.concatenate(batches)
    usable = {i for i in range(len(labels)) if (labels == labels[i]).sum() >= 2}
    assert len(set(seen.tolist())) == len(seen), "a face twice in one epoch"
    assert set(seen.tolist()) <= usable and 3 not in seen
    # only a tail of one identity's chunks (no negatives for them) may be left out
    assert len({int(labels[i]) for i in usable - set(seen.tolist())}) <= 1
    assert len(seen) >= 0.95 * len(usable)
    for batch in batches:
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert 2 <= len(ids) <= 8 and counts.min() >= 2 and counts.max() <= 5
    assert all(np.array_equal(a, b) for a, b in zip(batches, sampler.epoch(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, sampler.epoch(1)))


def test_stages_compose_to_the_network() -> None:
    torch.manual_seed(0)
    for net, x in ((load_dlib_resnet(), torch.randn(2, 3, 150, 150)),
                   (InceptionResnetV1().eval(), torch.randn(2, 3, 160, 160))):
        stages, tail, _ = network_stages(net)
        y = x
        with torch.inference_mode():
            for stage in stages:
                y = stage(y)
            assert torch.allclose(tail(y), net(x), atol=1e-5)


# ----------------------------------------------------------------------- real LFW chips

@pytest.fixture(scope="module")
def lfw_faces(lfw: Path):
    """A FaceSet of N_IDS LFW identities x PER_ID photos, centre faces aligned by our MTCNN."""
    torch.set_num_threads(1)
    embedder = get_embedder("dlib-resnet")
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 10)
    names = names[:N_IDS]
    paths = [lfw / n / f"{n}_{i:04d}.jpg" for n in names for i in range(1, PER_ID + 1)]
    chips, detected = CentreFaces(embedder, progress=False).chips(paths)
    assert detected.mean() >= 0.9
    labels = [p.parent.name for p in paths]
    faces = _faceset(chips[detected], [n for n, d in zip(labels, detected) if d],
                     [p.name for p, d in zip(paths, detected) if d], "LFW test subset", [])
    return embedder, faces


def test_mined_negatives_of_real_embeddings_are_semi_hard(lfw_faces) -> None:
    embedder, faces = lfw_faces
    emb, labels = torch.from_numpy(embedder.embed(faces.chips)), torch.from_numpy(faces.labels)
    assert _check_semi_hard(emb, labels, alpha=0.2) > 0
    assert _check_semi_hard(emb, labels, alpha=0.5) > 0


def _all_triplet_hinge(emb: torch.Tensor, labels: torch.Tensor, alpha: float = 0.2) -> float:
    """Mean hinge over every (a,p,n) of the batch: a mining-independent measure of the loss."""
    d = squared_distances(F.normalize(emb, dim=1))
    same = labels[:, None] == labels[None]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    h = F.relu(d[:, :, None] - d[:, None, :] + alpha)  # [a, p, n]
    valid = pos[:, :, None] & ~same[:, None, :]
    return float(h[valid].mean())


@pytest.mark.parametrize("objective,mining", [("triplet", "semi-hard"), ("triplet", "batch-hard"),
                                              ("center", "semi-hard")])
def test_steps_on_real_chips_lower_the_loss(lfw_faces, tmp_path: Path, objective: str,
                                            mining: str) -> None:
    embedder, faces = lfw_faces
    network = load_dlib_resnet()
    config = TrainConfig(trainable="last", objective=objective, mining=mining, flip=False,
                         lr=1e-2, center_weight=0.1)
    embedder.network = network
    trainer = Trainer(embedder, faces, config, tmp_path, torch.device("cpu"))
    idx = np.arange(len(faces.labels))
    labels = torch.from_numpy(faces.labels)

    def loss() -> float:
        emb = torch.from_numpy(embed_features(trainer.split, trainer.features))
        if objective == "triplet":
            return _all_triplet_hinge(emb, labels)
        trainer.objective.eval()
        with torch.no_grad():
            value = trainer.objective(emb, labels).loss.item()
        trainer.objective.train()
        return value

    before = loss()
    for _ in range(15):
        trainer.train_step(idx, np.zeros(len(idx), bool))
    after = loss()
    assert after < 0.7 * before, (before, after)


def test_checkpoint_resume_matches_an_uninterrupted_run(lfw_faces, tmp_path: Path) -> None:
    embedder, faces = lfw_faces
    config = TrainConfig(trainable="last", p=4, k=2, lr=1e-2)

    def trainer(out: Path) -> Trainer:
        embedder.network = load_dlib_resnet()
        return Trainer(embedder, faces, config, out, torch.device("cpu"))

    straight = trainer(tmp_path / "a")
    straight.run(3, progress=False)
    first = trainer(tmp_path / "b")
    first.run(1, progress=False)
    resumed = trainer(tmp_path / "c")
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.epoch == 1 and resumed.step == first.step
    resumed.run(3, progress=False)
    for (name, p), q in zip(straight.split.network.state_dict().items(),
                            resumed.split.network.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    # the checkpoint is a usable embedder network, with its lineage
    network, lineage = load_finetuned(tmp_path / "a" / "last.pt")
    x = torch.from_numpy(straight.features.chips[:4]).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(embedder.config.mean).view(1, 3, 1, 1)) / embedder.config.scale
    with torch.inference_mode():
        expected = embed_features(straight.split, straight.features)[:4]
        mirror_averaged = network(x) + network(x.flip(3))  # as the dlib-resnet embedder does
        assert np.allclose(F.normalize(mirror_averaged, dim=1).numpy(), expected, atol=1e-5)
    assert lineage["base_model"] == "dlib-resnet" and lineage["base_weights"].startswith("dlib-v1-")
    assert lineage["steps"] == straight.step and lineage["epochs"] == 3
    assert lineage["data"]["faces"] == len(faces.labels) and len(lineage["data"]["sha256"]) == 64
    with pytest.raises(ValueError, match="lr="):
        Trainer(embedder, faces, TrainConfig(trainable="last", p=4, k=2, lr=1e-3), tmp_path,
                torch.device("cpu")).resume(tmp_path / "a" / "last.pt")


def _mini_view1(lfw: Path, root: Path, n: int) -> None:
    """An LFW root with View-1 pairs files of the first n matched and n mismatched pairs."""
    from core.lfw import read_pairs

    for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        lines = (lfw / name).read_text().split("\n")
        half = int(lines[0])
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join([str(n)] + lines[1:1 + n] + lines[1 + half:1 + half + n]) + "\n")
        for a, b, _ in read_pairs(root / name, root)[0]:
            for file in (a, b):
                if not file.exists():
                    file.parent.mkdir(exist_ok=True)
                    file.symlink_to(lfw / file.relative_to(root))


def test_view1_evaluation_matches_a_direct_computation(lfw: Path, tmp_path: Path) -> None:
    from core.lfw import best_threshold, read_pairs

    root = tmp_path / "lfw"
    _mini_view1(lfw, root, 10)
    embedder = get_embedder("dlib-resnet")
    split = SplitNetwork(load_dlib_resnet(), "last")
    faces = LfwCentreFaces(embedder, cache_dir=tmp_path / "cache", progress=False)
    result = View1Evaluator(root, split, embedder, torch.device("cpu"), faces).evaluate(split)

    def distances(name: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = read_pairs(root / name, root)[0]
        ea = embedder.embed(faces.chips([a for a, _, _ in pairs])[0])
        eb = embedder.embed(faces.chips([b for _, b, _ in pairs])[0])
        return np.linalg.norm(ea - eb, axis=1), np.array([same for *_, same in pairs])

    d_train, s_train = distances("pairsDevTrain.txt")
    d_test, s_test = distances("pairsDevTest.txt")
    t = best_threshold(d_train, s_train)
    assert result["threshold"] == pytest.approx(t, abs=1e-4)
    assert result["devtest_accuracy"] == pytest.approx(np.mean((d_test < t) == s_test))
    assert result["devtest_accuracy"] >= 0.9 and result["devtest_auc"] >= 0.95


def test_flipped_features_are_the_mirrored_chips(lfw_faces) -> None:
    embedder, faces = lfw_faces
    split = SplitNetwork(load_dlib_resnet(), "last")
    cached = Features(faces.chips[:3], split, embedder, torch.device("cpu"), flip=True)
    mirrored = Features(faces.chips[:3, :, ::-1].copy(), split, embedder, torch.device("cpu"))
    flips = np.array([True, False, True])
    got = cached.batch(np.arange(3), flips)
    assert torch.allclose(got[0], mirrored.batch(np.array([0]))[0])
    assert torch.allclose(got[1], cached.batch(np.array([1]))[0])


def test_aligned_folder_tree_and_cli(lfw_faces, tmp_path: Path) -> None:
    embedder, faces = lfw_faces
    root = tmp_path / "people"
    for i, (chip, label) in enumerate(zip(faces.chips, faces.labels)):
        folder = root / faces.identities[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chip).save(folder / f"{i:03d}.png")
    loaded = load_folder_tree(root, embedder.align)
    assert loaded.identities == faces.identities
    assert np.array_equal(np.sort(loaded.labels), np.sort(faces.labels))
    assert np.array_equal(loaded.chips.sum(axis=(1, 2, 3)).sort(), faces.chips.sum(axis=(1, 2, 3)).sort())
    out = tmp_path / "run"
    assert main(["--data", str(root), "--aligned", "--out", str(out), "--lfw", "none", "--epochs", "1",
                 "-P", "4", "-K", "2", "--threads", "1"]) == 0
    _, lineage = load_finetuned(out / "last.pt")
    assert lineage["epochs"] == 1 and str(root) in lineage["data"]["description"]
    assert main(["--data", str(tmp_path / "missing"), "--aligned", "--out", str(out), "--lfw", "none"]) == 2


def test_cli_on_photos(lfw: Path, tmp_path: Path) -> None:
    """Photos (not chips) per identity: detected, aligned, trained, checkpointed."""
    root = tmp_path / "photos"
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3)[:3]
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(1, 4):
            (root / name / f"{i}.jpg").symlink_to(lfw / name / f"{name}_{i:04d}.jpg")
    (root / names[0] / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--out", str(out), "--lfw", "none", "--epochs", "2",
                 "-P", "3", "-K", "3", "--threads", "1"]) == 0
    network, lineage = load_finetuned(out / "last.pt")
    assert isinstance(network, DlibResNet)
    assert lineage["data"]["faces"] == 9 and lineage["data"]["identities"] == 3
    assert lineage["steps"] == 2 and lineage["objective"].startswith("triplet semi-hard alpha=0.2")
    with pytest.raises(FileNotFoundError):
        load_finetuned(out / "missing.pt")
    with pytest.raises(ValueError, match="not a fine-tuned checkpoint"):
        load_finetuned(root / names[0] / "1.jpg")


def test_parquet_faces_with_labels(lfw_faces, tmp_path: Path) -> None:
    embedder, faces = lfw_faces
    rows, images, keys = [], [], []
    for i, chip in enumerate(faces.chips):
        buf = io.BytesIO()
        Image.fromarray(chip).save(buf, format="JPEG", quality=95)
        key = face_key(f"{i:064x}", 0)
        keys.append(key)
        rows.append({"user_id": "u1", "photo_path": f"{i}.jpg", "photo_sha256": f"{i:064x}",
                     "face_index": 0, "face_key": key, "box": [0.0] * 4, "landmarks": [0.0] * 10,
                     "det_score": 1.0, "embedder": "dlib-resnet", "embedder_version": "v",
                     "embedding": [0.0] * 128})
        images.append({"user_id": "u1", "photo_sha256": f"{i:064x}", "face_index": 0, "jpeg": buf.getvalue()})
    for table, found, schema in (("faces", rows, faces_schema(128)), ("images", images, IMAGES)):
        folder = tmp_path / table / "user_id=u1"
        folder.mkdir(parents=True)
        pq.write_table(file_table(pa.Table.from_pylist(found, schema=schema)), folder / "part-0.parquet")
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["face_key", "label"])
        for key, lab in zip(keys, faces.labels):
            w.writerow([key, faces.identities[lab]])
    loaded = load_parquet_faces(tmp_path / "faces", labels_csv, embedder)
    order = np.argsort(keys)
    assert [faces.identities[i] for i in faces.labels[order]] == [loaded.identities[i] for i in loaded.labels]
    assert np.abs(loaded.chips.astype(int) - faces.chips[order].astype(int)).mean() < 3  # JPEG
    with open(labels_csv, "a") as fh:
        fh.write("deadbeef:0,Nobody\n")
    with pytest.raises(ValueError, match="not in"):
        load_parquet_faces(tmp_path / "faces", labels_csv, embedder)


# ----------------------------------------------------------------------- fine-tuned embedders

@pytest.fixture(scope="module")
def finetuned(lfw_faces, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    """A trainer after 2 epochs on the LFW subset, and its checkpoint."""
    embedder, faces = lfw_faces
    embedder.network = load_dlib_resnet()
    trainer = Trainer(embedder, faces, TrainConfig(trainable="last", p=4, k=2, lr=1e-2),
                      tmp_path_factory.mktemp("ft"), torch.device("cpu"))
    trainer.run(2, progress=False)
    return trainer, trainer.out / "last.pt"


def test_checkpoint_is_an_embedder_with_its_lineage(lfw_faces, finetuned) -> None:
    _, faces = lfw_faces
    trainer, path = finetuned
    base = get_embedder("dlib-resnet")
    tuned = get_embedder("dlib-resnet", "cpu", str(path))
    assert tuned.version.startswith("ft-") and tuned.version != base.version
    assert tuned.align == base.align and tuned.dim == 128 and base.lineage is None
    assert tuned.lineage == load_finetuned(path)[1] and tuned.lineage["steps"] == trainer.step
    emb = tuned.embed(faces.chips[:8])
    assert np.allclose(emb, embed_features(trainer.split, trainer.features)[:8], atol=1e-5)
    assert np.abs(emb - base.embed(faces.chips[:8])).max() > 1e-2, "fine-tuning changed nothing"
    with pytest.raises(ValueError, match="fine-tuned from dlib-resnet, not facenet"):
        get_embedder("facenet", "cpu", str(path))


def test_pipeline_runs_a_finetuned_embedder_and_records_its_lineage(lfw: Path, finetuned,
                                                                    tmp_path: Path) -> None:
    _, path = finetuned
    library = tmp_path / "library" / "alice"
    library.mkdir(parents=True)
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) == 2)[:2]
    for name in names:
        for photo in sorted((lfw / name).glob("*.jpg")):
            shutil.copyfile(photo, library / photo.name)  # links out of the user's folder are not followed
    summary = run(["--input", str(tmp_path / "library"), "--output", str(tmp_path / "out"),
                   "--embedder", "dlib-resnet", "--embedder_weights", str(path), "--runner", "DirectRunner",
                   "--direct_num_workers", "1"])
    tuned = get_embedder("dlib-resnet", "cpu", str(path))
    faces = pq.read_table(tmp_path / "out" / "faces" / user_folder("alice") / "part-0.parquet")
    assert faces.num_rows >= 4
    assert set(faces.column("embedder_version").to_pylist()) == {tuned.version}
    lineage = embedder_lineage(faces.schema)
    assert lineage == json.loads(json.dumps(tuned.lineage))  # as JSON stores it
    assert lineage["base_model"] == "dlib-resnet" and lineage["steps"] > 0
    assert lineage["data"]["description"] == "LFW test subset"
    assert summary.embedder["lineage"]["steps"] == lineage["steps"]
    assert embedder_lineage(faces_schema(128)) is None

"""Build a small demo photo library (3 users) from LFW, laid out as <root>/<user>/<photo>.

Each user gets a seeded mix of people with several photos and people with one photo,
and one person appears in two users' libraries (their faces must never be grouped
together). Photo names hide the LFW identity (it would give the answer away).

    python -m pipeline.demo --lfw ../shared/data/lfw --output demo_library
"""
from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path


def build_demo_library(lfw: Path, output: Path, users: int = 3, seed: int = 0) -> dict[str, dict[str, str]]:
    """Copy LFW photos into `output`/<user>/; returns {user: {photo name: LFW identity}}."""
    if not lfw.is_dir():
        raise FileNotFoundError(f"LFW not found at {lfw}; pass --lfw or give run_local.sh a photo library")
    rng = random.Random(seed)
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    many = [p for p in people if 4 <= len(list(p.glob("*.jpg"))) <= 30]
    single = [p for p in people if len(list(p.glob("*.jpg"))) == 1]
    rng.shuffle(many)
    rng.shuffle(single)
    shared = many.pop()
    truth: dict[str, dict[str, str]] = {}
    for u in range(users):
        user = f"user{u + 1}"
        chosen = [many.pop() for _ in range(6)] + [single.pop() for _ in range(3)]
        if u < 2:
            chosen.append(shared)
        photos = [(photo, person.name) for person in chosen for photo in sorted(person.glob("*.jpg"))[:5]]
        rng.shuffle(photos)
        truth[user] = {}
        (output / user).mkdir(parents=True, exist_ok=True)
        for i, (photo, identity) in enumerate(photos, 1):
            name = f"IMG_{i:04d}.jpg"
            shutil.copyfile(photo, output / user / name)
            truth[user][name] = identity
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, required=True, help="LFW root (folder per identity)")
    parser.add_argument("--output", type=Path, required=True, help="where to create the library")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.output.exists():
        shutil.rmtree(args.output)
    truth = build_demo_library(args.lfw, args.output, seed=args.seed)
    for user, photos in truth.items():
        print(f"demo library: {user}: {len(photos)} photos of {len(set(photos.values()))} LFW people")
    print(f"demo library written to {args.output}")


if __name__ == "__main__":
    main()

"""Reading a folder of class folders into labelled, de-duplicated, group-split images.

Consecutive file numbers come from the same slide, so images are grouped into blocks of
``block`` consecutive numbers within a class folder and whole groups go to one split.
Images are decoded once by ``model.preprocess`` and kept as its uint8 pixels (what the
network sees before ``model.preprocess.scale``, and what the workers' graph takes),
optionally cached in an ``.npz`` outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leukoscreen.imagetypes import has_image_suffix
from model.card import CLASSES
from model.preprocess import TARGET_SIZE, decode, to_pixels

NEGATIVE_FOLDERS = {"benign", "negative", "normal", "hem", "healthy"}
POSITIVE_FOLDERS = {"early", "pre", "pro", "positive", "malignant", "all", "leukemia"}
SPLITS = ("train", "val", "test")
# Class folders that name a B-ALL subtype (the Taleqani set's); other positive folders leave
# the subtype unknown, which a subtype network cannot be trained on.
SUBTYPE_FOLDERS = {"early": "early_pre_b", "pre": "pre_b", "pro": "pro_b"}
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class Record:
    file: str  # path relative to the dataset folder, e.g. "Benign/WBC-Benign-021.jpg"
    label: int  # 1 = leukemia (positive), 0 = negative
    group: str  # "<class folder>/<block index>": images that must stay in one split
    sha256: str
    subtype: str | None = None  # ``model.card.SUBTYPES`` for a subtype folder, else None


@dataclass
class Dataset:
    records: list[Record]
    images: np.ndarray  # uint8, (N, H, W, 3) at the network's input size
    skipped: list[str]  # files that did not decode
    duplicates: list[str]  # files dropped because an identical file came first

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def classes(self) -> np.ndarray:
        """Index into ``model.card.CLASSES`` (0 benign); ValueError if a positive image has
        no subtype folder."""
        missing = [r.file for r in self.records if r.label == 1 and r.subtype is None]
        if missing:
            raise ValueError(
                f"{len(missing)} positive images are not in a subtype folder "
                f"({sorted(SUBTYPE_FOLDERS)}), e.g. {missing[0]}"
            )
        return np.array(
            [CLASSES.index(r.subtype) if r.label == 1 else 0 for r in self.records],
            dtype=np.int64,
        )

    def subset(self, files: set[str]) -> Dataset:
        keep = [i for i, r in enumerate(self.records) if r.file in files]
        return Dataset([self.records[i] for i in keep], self.images[keep], [], [])


def folder_label(name: str) -> int:
    key = name.lower()
    if key in NEGATIVE_FOLDERS:
        return 0
    if key in POSITIVE_FOLDERS:
        return 1
    raise ValueError(
        f"class folder {name!r} is neither negative {sorted(NEGATIVE_FOLDERS)} "
        f"nor positive {sorted(POSITIVE_FOLDERS)}"
    )


def group_of(class_folder: str, stem: str, block: int) -> str:
    """Images numbered n and m share a group when n // block == m // block."""
    match = _NUMBER.search(stem)
    if match is None:
        return f"{class_folder}/{stem}"
    return f"{class_folder}/{int(match.group(1)) // block}"


def list_images(data_dir: Path) -> list[tuple[str, int]]:
    """(relative path, label) for every image file in the class folders, sorted."""
    found = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        label = folder_label(folder.name)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and has_image_suffix(path):
                found.append((path.relative_to(data_dir).as_posix(), label))
    if not found:
        raise FileNotFoundError(f"no images in class folders under {data_dir}")
    return found


def _cache_key(data_dir: Path, files: list[tuple[str, int]], size: tuple[int, int]) -> str:
    digest = hashlib.sha256(f"{data_dir.resolve()}\0{size}".encode())
    for rel, _ in files:
        stat = (data_dir / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(data_dir: Path, files: list[tuple[str, int]], size: tuple[int, int]):
    kept, hashes, arrays, skipped = [], [], [], []
    for rel, label in files:
        data = (data_dir / rel).read_bytes()
        try:
            arrays.append(to_pixels(decode(data, size).image, size))
        except Exception:  # noqa: BLE001 - any undecodable file is skipped and reported
            skipped.append(rel)
            continue
        kept.append((rel, label))
        hashes.append(hashlib.sha256(data).hexdigest())
    images = np.stack(arrays) if arrays else np.zeros((0, size[1], size[0], 3), np.uint8)
    return kept, hashes, images, skipped


def load_dataset(
    data_dir: Path,
    block: int = 20,
    cache_dir: Path | None = None,
    size: tuple[int, int] = TARGET_SIZE,
) -> Dataset:
    """Decode every image at the network's input ``size`` (width, height), skipping broken
    ones, and drop byte-identical duplicates."""
    data_dir = Path(data_dir)
    files = list_images(data_dir)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"decoded-{_cache_key(data_dir, files, size)}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            images = npz["images"]
        kept, hashes, skipped = [tuple(k) for k in meta["kept"]], meta["hashes"], meta["skipped"]
    else:
        kept, hashes, images, skipped = _decode_all(data_dir, files, size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            meta = json.dumps({"kept": kept, "hashes": hashes, "skipped": skipped})
            np.savez(cache, images=images, meta=np.array(meta))
    records, keep, duplicates, seen = [], [], [], set()
    for i, ((rel, label), sha) in enumerate(zip(kept, hashes, strict=True)):
        if sha in seen:
            duplicates.append(rel)
            continue
        seen.add(sha)
        folder, stem = rel.split("/")[0], Path(rel).stem
        subtype = SUBTYPE_FOLDERS.get(folder.lower()) if label else None
        records.append(Record(rel, int(label), group_of(folder, stem, block), sha, subtype))
        keep.append(i)
    return Dataset(records, images[keep], list(skipped), duplicates)


def grouped_split(
    records: list[Record], val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 1337
) -> dict[str, list[Record]]:
    """Deterministic split by groups, stratified by class folder.

    Within each class folder the groups are shuffled with ``seed``; groups are handed to
    test until it holds ``test_frac`` of that folder's images, then to val, then to train.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict[str, list[Record]]] = {}
    for r in records:
        folder = r.group.split("/")[0]
        by_class.setdefault(folder, {}).setdefault(r.group, []).append(r)
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for folder in sorted(by_class):
        groups = by_class[folder]
        names = sorted(groups)
        order = [names[i] for i in rng.permutation(len(names))]
        total = sum(len(g) for g in groups.values())
        taken = 0
        for name in order:
            if taken < test_frac * total:
                out["test"].extend(groups[name])
            elif taken < (test_frac + val_frac) * total:
                out["val"].extend(groups[name])
            else:
                out["train"].extend(groups[name])
            taken += len(groups[name])
    for name in SPLITS:
        out[name].sort(key=lambda r: r.file)
    return out


def split_path(weights: Path) -> Path:
    return weights.with_suffix(".split.json")


def write_split(path: Path, splits: dict[str, list[Record]], dataset: Dataset, info: dict) -> None:
    payload = {
        **info,
        "sizes": {
            name: {
                "n": len(rs),
                "positive": sum(r.label for r in rs),
                "negative": sum(1 - r.label for r in rs),
                "groups": len({r.group for r in rs}),
            }
            for name, rs in splits.items()
        },
        "skipped_undecodable": dataset.skipped,
        "dropped_duplicates": dataset.duplicates,
        "splits": {name: [asdict(r) for r in rs] for name, rs in splits.items()},
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def read_split(path: Path) -> dict:
    return json.loads(Path(path).read_text())

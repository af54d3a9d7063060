"""Near-duplicate groups: a 64-bit perceptual hash per image, pairs within a Hamming distance, star groups.

Hotel sets hold the same photo resized, re-compressed or brightened; one copy in train and another in test inflates
the held-out accuracy the promotion gate trusts. pHash (imagehash) catches those copies within a few bits, not crops
or flips. Pairs are found by multi-index hashing (exact lookups on four 16-bit bands, sub-quadratic); groups are
stars around a centre, never chains (on 8x8 digits a 6-bit chain links 70 different handwritings), with a size cap
whose cuts are reported. The threshold is a property of the taxonomy's images: declared in its taxonomy file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

import imagehash
import numpy as np
import yaml
from PIL import Image

from tasks.model.taxonomy import TAXONOMY_DIR

HASH_BITS = 64
BAND_BITS = 16  # four bands: two hashes within 4r+3 bits share a band within r bits (pigeonhole)
_BANDS = HASH_BITS // BAND_BITS
_CHUNK = 1 << 16  # queries per lookup step: bounds the candidate arrays, whatever the number of images


@dataclass(frozen=True)
class NearDuplicatePolicy:
    """`max_distance`: pHash bits (of 64) within which two images are copies; `max_group_size`: the cap."""

    max_distance: int
    max_group_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.max_distance < HASH_BITS // 2:
            raise ValueError(f"max_distance must be in [0, {HASH_BITS // 2}), got {self.max_distance}")
        if self.max_group_size < 2:
            raise ValueError(f"max_group_size must be at least 2, got {self.max_group_size}")


def taxonomy_policy(taxonomy_name: str) -> NearDuplicatePolicy:
    """The `near_duplicates:` section of include/taxonomies/<name>.yaml (required: there is no safe default)."""
    path = TAXONOMY_DIR / f"{taxonomy_name}.yaml"
    section = yaml.safe_load(path.read_text(encoding="utf-8")).get("near_duplicates") if path.is_file() else None
    if not section:
        raise ValueError(f"taxonomy {taxonomy_name!r} declares no near_duplicates threshold in {path}")
    return NearDuplicatePolicy(int(section["max_distance"]), int(section["max_group_size"]))


def phash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of an image, as an integer (bit order of imagehash's hex string)."""
    return int.from_bytes(np.packbits(imagehash.phash(image).hash.ravel()).tobytes(), "big")


def _flip_masks(radius: int) -> list[int]:
    """Every 16-bit mask with at most `radius` bits set: the band values to look up around a query's band."""
    return [sum(1 << bit for bit in bits) for r in range(radius + 1) for bits in combinations(range(BAND_BITS), r)]


def _band_candidates(hashes: np.ndarray, radius: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(i, j) index pairs, i < j, whose hashes are within `radius` bits on some band; chunks of bounded size."""
    for band in range(_BANDS):
        keys = ((hashes >> np.uint64(band * BAND_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for mask in _flip_masks(radius):
            for start in range(0, len(keys), _CHUNK):
                queries = np.arange(start, min(start + _CHUNK, len(keys)))
                wanted = keys[queries] ^ mask
                lo = np.searchsorted(sorted_keys, wanted, "left")
                counts = np.searchsorted(sorted_keys, wanted, "right") - lo
                total = int(counts.sum())
                if not total:
                    continue
                first = np.repeat(queries, counts)
                offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
                second = order[offsets]
                keep = first < second
                yield first[keep], second[keep]


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes within `max_distance` bits: arrays (i, j, distance) with i < j, sorted by (i, j)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = np.int64(len(hashes))
    found = []
    for first, second in _band_candidates(hashes, max_distance // _BANDS):
        distance = np.bitwise_count(hashes[first] ^ hashes[second])
        close = distance <= max_distance
        found.append(first[close].astype(np.int64) * n + second[close])
    pair_ids = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    first, second = pair_ids // n, pair_ids % n
    return first, second, np.bitwise_count(hashes[first] ^ hashes[second]).astype(np.int64)


@dataclass(frozen=True)
class Grouping:
    """`groups`: each a list of (index, distance to the centre), centre first; singletons are not listed.
    `cut`: (centre, index, distance) for copies the size cap kept out of a centre's group."""

    groups: list[list[tuple[int, int]]]
    cut: list[tuple[int, int, int]]


def star_groups(n: int, first: np.ndarray, second: np.ndarray, distance: np.ndarray, max_size: int) -> Grouping:
    """Greedy star grouping: the image with most copies left becomes a centre and takes its ungrouped neighbours,
    nearest first, up to `max_size`. Every member is within the threshold of its centre, so groups never chain.

    Deterministic for a given index order (ties: lower index first).
    """
    ends = np.concatenate([first, second])
    others = np.concatenate([second, first])
    dists = np.concatenate([distance, distance])
    by_node = np.lexsort((others, dists, ends))
    ends, others, dists = ends[by_node], others[by_node], dists[by_node]
    degree = np.bincount(ends, minlength=n)
    starts = np.concatenate([[0], np.cumsum(degree)])
    grouped = np.zeros(n, dtype=bool)
    groups: list[list[tuple[int, int]]] = []
    cut: list[tuple[int, int, int]] = []
    connected = np.flatnonzero(degree)
    for centre in connected[np.lexsort((connected, -degree[connected]))].tolist():
        if grouped[centre]:
            continue
        span = slice(starts[centre], starts[centre + 1])
        free = [
            (other, d)
            for other, d in zip(others[span].tolist(), dists[span].tolist(), strict=True)
            if not grouped[other]
        ]
        if not free:
            continue
        members = [(centre, 0), *free[: max_size - 1]]
        cut += [(centre, other, d) for other, d in free[max_size - 1 :]]
        grouped[[index for index, _ in members]] = True
        groups.append(members)
    return Grouping(groups, cut)


@dataclass(frozen=True)
class RowGroups:
    """Star groups over curation rows (dicts with `sha256` and a hex `phash`), and the pairs they came from."""

    rows: list[dict[str, str]]  # in sha256 order: the index order the pairs and groups refer to
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    grouping: Grouping

    def groups(self) -> list[list[tuple[dict[str, str], int]]]:
        return [[(self.rows[i], d) for i, d in members] for members in self.grouping.groups]


def group_rows(rows: list[dict[str, str]], policy: NearDuplicatePolicy) -> RowGroups:
    """Group rows by content alone (sha256 order, pHash distance): the same drop renamed groups the same."""
    ordered = sorted(rows, key=lambda row: row["sha256"])
    hashes = np.fromiter((int(row["phash"], 16) for row in ordered), dtype=np.uint64, count=len(ordered))
    pairs = near_pairs(hashes, policy.max_distance)
    return RowGroups(ordered, pairs, star_groups(len(ordered), *pairs, policy.max_group_size))


def leakage_report(near: RowGroups, policy: NearDuplicatePolicy) -> dict:
    """The report section: groups (sizes, members, distances), what the cap cut, and the leakage check on rows
    that carry a `split` (rows rejected after grouping have none)."""
    groups = [[(row, d) for row, d in members if "split" in row] for members in near.groups()]
    groups = [members for members in groups if len(members) > 1]
    across = [members for members in groups if len({row["split"] for row, _ in members}) > 1]
    first, second, _ = near.pairs
    split_of = [row.get("split") for row in near.rows]
    pairs_across = sum(
        1
        for i, j in zip(first.tolist(), second.tolist(), strict=True)
        if split_of[i] and split_of[j] and split_of[i] != split_of[j]
    )
    sizes = Counter(len(members) for members in groups)
    rows = near.rows
    return {
        "policy": {"hash": "phash-64", "max_distance": policy.max_distance, "max_group_size": policy.max_group_size},
        "pairs_within_threshold": len(first),
        "group_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "groups_across_splits": len(across),
        # Pairs whose images ended in different groups (stars do not chain) and different splits.
        "pairs_across_splits": pairs_across,
        "cut_by_size_cap": [
            {"centre": rows[c]["path"], "path": rows[i]["path"], "distance": d} for c, i, d in near.grouping.cut
        ],
        "groups": [
            {
                "split": members[0][0]["split"],
                "label": members[0][0]["label"],
                "members": [{"path": row["path"], "sha256": row["sha256"], "distance": d} for row, d in members],
            }
            for members in groups
        ],
    }

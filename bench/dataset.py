"""The data both tools sync: random bytes (incompressible JPEG stand-ins) named IMG_00001.jpg...

One master copy per dataset under the scratch directory; every run gets a hard-link copy, so both
tools read the very same inodes (and page cache). Neither tool writes into its sender folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRITE_BLOCK = 8 << 20
STAMP = ".dataset.json"


@dataclass(frozen=True)
class Dataset:
    root: Path
    names: tuple[str, ...]
    size: int  # bytes per file

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def total(self) -> int:
        return self.size * self.count

    def link_into(self, target: Path) -> None:
        """A copy of the files in `target` (which must not exist) made of hard links."""
        target.parent.mkdir(parents=True, exist_ok=True)
        # `cp -al` makes 100,000 links in a few seconds; os.link per file in Python is slower.
        subprocess.run(["cp", "-al", "--", str(self.root), str(target)], check=True)
        (target / STAMP).unlink()

    def complete_in(self, folder: Path) -> int:
        """How many of the dataset's names exist in `folder` (final names only: both tools
        write partial files under other names and rename them when complete)."""
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            return 0
        return len(present.intersection(self.names))

    def verify_copy(self, folder: Path, sample: int = 5) -> None:
        """Sizes of every file and the bytes of a few are equal to the master copy's."""
        for name in self.names:
            got = (folder / name).stat().st_size
            if got != self.size:
                raise ValueError(f"{folder / name}: {got} bytes, expected {self.size}")
        step = max(1, self.count // sample)
        for name in self.names[::step][:sample]:
            if (folder / name).read_bytes() != (self.root / name).read_bytes():
                raise ValueError(f"{folder / name}: content differs from the original")


def ensure(scratch: Path, label: str, count: int, size: int) -> Dataset:
    """The dataset `label` with `count` files of `size` random bytes, made once per scratch dir."""
    root = scratch / "data" / label
    width = max(5, len(str(count)))
    names = tuple(f"IMG_{i:0{width}d}.jpg" for i in range(1, count + 1))
    stamp = root / STAMP
    want = {"count": count, "size": size}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return Dataset(root, names, size)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if size >= 4096:
        for name in names:
            _write_random(root / name, size)
    else:
        # Tiny entries: one urandom call for all, sliced, so 100,000 files take seconds.
        blob = os.urandom(size * count)
        for i, name in enumerate(names):
            (root / name).write_bytes(blob[i * size : (i + 1) * size])
    stamp.write_text(json.dumps(want))
    return Dataset(root, names, size)


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            block = min(left, WRITE_BLOCK)
            out.write(os.urandom(block))
            left -= block


def random_file(path: Path, size: int) -> None:
    """A fresh random file, flushed to disk (so the copy that starts a latency clock is cheap)."""
    _write_random(path, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

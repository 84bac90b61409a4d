"""Datasets: the registry of CIR datasets and one way to load any of them.

Two layouts exist (FashionIQ's and CIRR's official folder layouts); each registered dataset is either a real one
whose root the user gives (``--data-root``) or a view of the embedded synthetic world, generated into a cache
directory on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.data.base import CIRSplit, Query
from bench.errors import BenchError
from bench.registry import Registry

__all__ = ["CIRSplit", "DATASETS", "DatasetSpec", "Query", "get_dataset", "list_datasets"]

LAYOUT_SPLITS = {"fashioniq": ("train", "val", "test"), "cirr": ("train", "val", "test1")}
LAYOUT_EVAL_SPLITS = {"fashioniq": ("val", "test"), "cirr": ("val", "test1")}


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: which official layout it uses and whether it is the embedded synthetic world."""

    name: str
    layout: str
    synthetic: bool
    description: str

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names of this dataset's layout."""
        return LAYOUT_SPLITS[self.layout]

    @property
    def subsets(self) -> tuple[str | None, ...]:
        """FashionIQ's categories (each its own queries and gallery), or ``(None,)`` for CIRR."""
        if self.layout == "fashioniq":
            from bench.data.fashioniq import FASHIONIQ_CATEGORIES

            return tuple(FASHIONIQ_CATEGORIES)
        return (None,)

    def root(self, data_root: Path | str | None = None, synth_config=None) -> Path:
        """The folder in this dataset's layout: ``data_root`` for real datasets, the synthetic cache otherwise."""
        if self.synthetic:
            if data_root is not None:
                return Path(data_root) / self.layout
            from bench.data.synth import SynthConfig, ensure_synth_world

            return ensure_synth_world(config=synth_config or SynthConfig()) / self.layout
        if data_root is None:
            raise BenchError(
                f"--data-root: dataset {self.name!r} is real and needs the folder of its {self.layout} layout"
            )
        root = Path(data_root)
        if not root.is_dir():
            raise BenchError(f"--data-root: {root} is not a directory")
        return root

    def load(self, split: str, root: Path) -> list[CIRSplit]:
        """Load ``split`` from ``root`` (from :meth:`root`): one ``CIRSplit`` per subset."""
        if split not in self.splits:
            raise BenchError(f"--split: unknown split {split!r} for {self.name} (valid: {', '.join(self.splits)})")
        if self.layout == "fashioniq":
            from bench.data.fashioniq import load_fashioniq

            return [load_fashioniq(root, split, category) for category in self.subsets]
        from bench.data.cirr import load_cirr

        return [load_cirr(root, split)]


DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec("synth-fiq", "fashioniq", True, "embedded synthetic world in the FashionIQ layout (default)"),
    DatasetSpec("synth-cirr", "cirr", True, "embedded synthetic world in the CIRR layout"),
    DatasetSpec("fashioniq", "fashioniq", False, "FashionIQ (Wu et al., CVPR 2021); images supplied by the user"),
    DatasetSpec("cirr", "cirr", False, "CIRR (Liu et al., ICCV 2021); images supplied by the user"),
):
    DATASETS.add(_spec.name, _spec)


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (one-line error with close matches otherwise)."""
    return DATASETS.get(name, flag="--dataset")


def list_datasets() -> list[str]:
    """Names of all registered datasets."""
    return DATASETS.names()

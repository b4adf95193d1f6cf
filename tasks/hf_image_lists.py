"""Hugging Face datasets whose image column holds a *list* of images (``lmms-lab/SEED-Bench``'s ``image: sequence: image``).

:func:`tokenbench.tasks.hf.hf_rows` casts an image column to one undecoded image, which a
list column cannot take; this module reads such a split from the same three places
(the Hugging Face cache with no path, a snapshot's ``**/SPLIT-*.parquet`` files, a
``save_to_disk`` folder), casts the column to a list of *undecoded* images, and gives
each row's first image as a :class:`~tokenbench.tasks.hf.LazyImage`: nothing is decoded
until the harness asks for that one sample's image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenbench.tasks.files import data_error
from tokenbench.tasks.hf import HfRows, LazyImage, hf_cache_dir

__all__ = ["FirstImageRows", "first_image_rows"]

_SAVED = ("dataset_info.json", "dataset_dict.json", "state.json")


class _FirstImages:
    """``[row][column]`` is the row's first image cell (``None`` for an empty list), as :class:`LazyImage` reads it."""

    def __init__(self, images: Any, column: str) -> None:
        self._images, self._column = images, column

    def __getitem__(self, row: int) -> Mapping[str, Any]:
        cells = self._images[row][self._column] or []
        return {self._column: cells[0] if cells else None}


class FirstImageRows(Sequence[Mapping[str, Any]]):
    """The rows of one split without the image-list column, plus :meth:`image` for each row's first image."""

    def __init__(self, dataset: Any, column: str, where: str) -> None:
        self.where, self.column = where, column
        self.columns: tuple[str, ...] = tuple(dataset.column_names)
        self._rows = HfRows(dataset.remove_columns([column]), (), where)
        self._first = _FirstImages(dataset.select_columns([column]), column)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: Any) -> Any:
        return self._rows[i]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._rows)

    def image(self, row: int) -> LazyImage:
        """``row``'s first image, read and decoded only when called."""
        return LazyImage(self._first, row, self.column, self.where)


def first_image_rows(
    dataset_id: str, path: str | Path | None, *, split: str, schema: Sequence[str], layout: str, column: str = "image", task: str = ""
) -> FirstImageRows:
    """``dataset_id``'s ``split`` checked against ``schema``, its list column ``column`` cast to undecoded images."""
    where = str(path) if path else dataset_id
    try:
        import datasets
    except ImportError:
        raise data_error(where, "the Hugging Face form needs the 'datasets' package (pip install 'tokenbench[hf]')", layout) from None
    datasets.disable_progress_bars()
    if path is None:
        ds = _from_cache(datasets, dataset_id, split, layout, task)
    else:
        ds = _from_folder(datasets, Path(str(path)), dataset_id, split, layout)
    missing = [c for c in schema if c not in ds.column_names]
    if missing:
        raise data_error(where, f"missing column {missing[0]!r} (expected schema of {dataset_id}: {', '.join(schema)})", layout)
    if column not in ds.column_names:
        raise data_error(where, f"missing column {column!r} (the list of images)", layout)
    try:
        ds = ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    except (TypeError, ValueError) as exc:
        raise data_error(where, f"column {column!r} is not a list of images ({type(exc).__name__}: {exc})", layout) from None
    return FirstImageRows(ds, column, where)


def _from_folder(datasets: Any, root: Path, dataset_id: str, split: str, layout: str) -> Any:
    if any((root / f).is_file() for f in _SAVED):
        ds = datasets.load_from_disk(str(root))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise data_error(root, f"no split {split!r} (splits: {', '.join(ds)})", layout)
            ds = ds[split]
        return ds
    files = sorted(f for f in root.glob(f"**/{split}-*.parquet") if ".cache" not in f.relative_to(root).parts)
    if not files:
        raise data_error(root, f"no **/{split}-*.parquet file of {dataset_id}", layout)
    try:
        return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    except Exception as exc:  # a truncated or foreign file: pyarrow's own error, in one line
        raise data_error(files[0], f"cannot read as parquet ({type(exc).__name__}: {exc})", layout) from None


def _from_cache(datasets: Any, dataset_id: str, split: str, layout: str, task: str) -> Any:
    offline = str(os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))).lower() in ("1", "true", "yes", "on")
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:
        state = "and HF_DATASETS_OFFLINE=1 forbids fetching it" if offline else f"and could not be fetched ({type(exc).__name__})"
        local = f" or pass --task {task}:PATH to a local copy" if task else ""
        raise data_error(
            dataset_id,
            f"split {split!r} is not in the Hugging Face cache ({hf_cache_dir(dataset_id)}) {state}; fetch it with "
            f"`hf download {dataset_id} --repo-type dataset` on a machine with internet{local}",
            layout,
        ) from None

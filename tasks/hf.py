"""The Hugging Face copies of the benchmarks (the ``lmms-lab/*`` datasets lmms-eval
reads), loaded through the ``datasets`` library.

A task that has a Hugging Face form calls :func:`hf_rows` with its dataset id, split and
schema. Where the rows come from:

* no path: ``datasets.load_dataset(ID, split=SPLIT)``, which reads the standard cache
  (``~/.cache/huggingface``, or ``HF_HOME``/``HF_DATASETS_CACHE``) and never touches the
  network when ``HF_DATASETS_OFFLINE=1``;
* a folder of parquet files as ``hf download ID --repo-type dataset --local-dir PATH``
  leaves it (``PATH/data/test-00000-of-00004.parquet``, or any ``**/SPLIT-*.parquet``);
* a folder written by ``Dataset.save_to_disk``.

Images are never decoded up front: every image column is cast to
``datasets.Image(decode=False)`` (a column holding a *list* of images, as
``lmms-lab/SEED-Bench``'s ``image``, to a list of them), the metadata is read without the
image columns, and each sample's image is a :class:`LazyImage` that reads and decodes that
one row's bytes when the harness asks for it. A 40-sample run of a 1.4 GB dataset decodes
40 images.

Every failure is one line that names the dataset, the path or column, and the fix.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenbench.tasks.files import data_error

__all__ = ["HfRows", "LazyImage", "hf_cache_dir", "hf_rows", "is_hf_folder"]

_SAVED = ("dataset_info.json", "dataset_dict.json", "state.json")


def hf_cache_dir(dataset_id: str) -> Path:
    """Where ``huggingface_hub`` keeps ``dataset_id``'s snapshot (``.../hub/datasets--ORG--NAME``)."""
    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return hub / f"datasets--{dataset_id.replace('/', '--')}"


def _parquet_files(root: Path, split: str, subdir: str | None, stems: Sequence[str] = ()) -> list[Path]:
    """``split``'s parquet files: under ``root/subdir`` when given and present, else anywhere under ``root``.

    A file counts when its name is ``SPLIT-*.parquet`` or ``SPLIT.parquet``, or the same
    with one of ``stems`` (a repository that names its one file otherwise, as
    ``Lin-Chen/MMStar``'s ``mmstar.parquet``). A ``subdir`` (a configuration) that
    ``root`` lacks means ``root`` is that folder itself, so only its own files count, never
    a sibling configuration's.
    """
    if subdir and (root / subdir).is_dir():
        base, pattern = root / subdir, "**/"
    else:
        base, pattern = root, "" if subdir else "**/"
    files = sorted({f for stem in (split, *stems) for glob in (f"{stem}-*.parquet", f"{stem}.parquet") for f in base.glob(pattern + glob)})
    return [f for f in files if ".cache" not in f.relative_to(base).parts]


def is_hf_folder(root: Path, split: str, subdir: str | None = None) -> bool:
    """True if ``root`` holds ``split`` as parquet files or a ``save_to_disk`` folder."""
    return any((root / f).is_file() for f in _SAVED) or bool(_parquet_files(root, split, subdir))


class LazyImage:
    """One row's image, read and decoded only when called (``Sample.image`` accepts it).

    ``index`` picks one image of a list-of-images cell. Picklable: it holds the
    memory-mapped dataset, not the bytes.
    """

    def __init__(self, images: Any, row: int, column: str, where: str, index: int | None = None) -> None:
        self._images, self._row, self._column, self._where, self._index = images, row, column, where, index

    def __call__(self) -> Any:
        from PIL import Image

        from tokenbench.errors import TaskDataError

        value = self._images[self._row][self._column]
        if self._index is not None:
            if not isinstance(value, Sequence) or len(value) <= self._index:
                count = len(value) if isinstance(value, Sequence) else 0
                raise TaskDataError(f"{self._where} row {self._row}: column {self._column!r} holds {count} image(s), no image {self._index}")
            value = value[self._index]
        data = value.get("bytes") if isinstance(value, Mapping) else value
        try:
            if data is None and isinstance(value, Mapping) and value.get("path"):
                return Image.open(value["path"]).convert("RGB")
            if not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"column {self._column!r} holds {type(value).__name__}, not image bytes")
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            reason = "not a readable image" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)
            raise TaskDataError(f"{self._where} row {self._row}: cannot decode column {self._column!r} as an image ({reason})") from None

    def __repr__(self) -> str:
        at = "" if self._index is None else f"[{self._index}]"
        return f"LazyImage({self._where} row {self._row}, {self._column!r}{at})"


class HfRows(Sequence[Mapping[str, Any]]):
    """The rows of one split without their image columns, plus :meth:`image` for lazy images."""

    def __init__(self, dataset: Any, image_columns: Sequence[str], where: str, image_lists: Sequence[str] = ()) -> None:
        self.where = where
        self.image_columns = tuple(image_columns)
        self.image_lists = frozenset(image_lists)
        self._images = dataset.select_columns(list(self.image_columns)) if self.image_columns else None
        self._meta = dataset.remove_columns(list(self.image_columns)) if self.image_columns else dataset
        self.columns: tuple[str, ...] = tuple(dataset.column_names)

    def __len__(self) -> int:
        return len(self._meta)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._meta[j] for j in range(*i.indices(len(self)))]
        return self._meta[int(i)]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._meta)

    def image(self, row: int, column: str = "image", index: int = 0) -> LazyImage:
        """``row``'s image in ``column`` as a :class:`LazyImage` (of a list-of-images column, image ``index``)."""
        if self._images is None or column not in self.image_columns:
            raise KeyError(f"{self.where}: no image column {column!r} (image columns: {', '.join(self.image_columns) or 'none'})")
        return LazyImage(self._images, row, column, self.where, index if column in self.image_lists else None)


def _import_datasets(where: str, layout: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise data_error(where, "the Hugging Face form needs the 'datasets' package (pip install 'tokenbench[hf]')", layout) from None
    datasets.disable_progress_bars()  # the harness prints its own progress
    return datasets


def hf_rows(
    dataset_id: str,
    path: str | Path | None,
    *,
    split: str,
    schema: Sequence[str],
    layout: str,
    config: str | None = None,
    image_columns: Sequence[str] = ("image",),
    image_lists: Sequence[str] = (),
    file_stems: Sequence[str] = (),
    task: str = "",
) -> HfRows:
    """``dataset_id``'s ``split`` as :class:`HfRows`, checked against ``schema``.

    ``config`` is the dataset's configuration (``lmms-lab/MMBench``'s ``en``), also the
    sub-folder of a local snapshot that holds it. ``image_columns`` present in the data
    are cast to undecoded images, those also in ``image_lists`` to lists of them;
    ``schema`` lists every column a task reads. ``file_stems`` are other names a
    snapshot's parquet files of this split may have (``mmstar`` for ``mmstar.parquet``).
    """
    where = str(path) if path else dataset_id
    datasets = _import_datasets(where, layout)
    if path is None:
        ds = _from_cache(datasets, dataset_id, split, config, layout, task)
    else:
        root = Path(str(path))
        if any((root / f).is_file() for f in _SAVED):
            ds = datasets.load_from_disk(str(root))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise data_error(root, f"no split {split!r} (splits: {', '.join(ds)})", layout)
                ds = ds[split]
        else:
            files = _parquet_files(root, split, config, file_stems)
            if not files:
                folder = f"{config}/" if config else "**/"
                raise data_error(root, f"no {folder}{split}-*.parquet file of {dataset_id}{f' config {config}' if config else ''}", layout)
            try:
                ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
            except Exception as exc:  # a truncated or foreign file: pyarrow's own error, in one line
                raise data_error(files[0], f"cannot read as parquet ({type(exc).__name__}: {exc})", layout) from None
    missing = [c for c in schema if c not in ds.column_names]
    if missing:
        raise data_error(where, f"missing column {missing[0]!r} (expected schema of {dataset_id}: {', '.join(schema)})", layout)
    present = [c for c in image_columns if c in ds.column_names]
    for column in present:
        feature = datasets.List(datasets.Image(decode=False)) if column in image_lists else datasets.Image(decode=False)
        try:
            ds = ds.cast_column(column, feature)
        except (TypeError, ValueError) as exc:
            kind = "a list of images" if column in image_lists else "an image"
            raise data_error(where, f"column {column!r} is not {kind} ({type(exc).__name__}: {exc})", layout) from None
    return HfRows(ds, present, where, [c for c in present if c in image_lists])


def _from_cache(datasets: Any, dataset_id: str, split: str, config: str | None, layout: str, task: str) -> Any:
    offline = str(os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))).lower() in ("1", "true", "yes", "on")
    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:
        cache = hf_cache_dir(dataset_id)
        state = "and HF_DATASETS_OFFLINE=1 forbids fetching it" if offline else f"and could not be fetched ({type(exc).__name__})"
        local = f" or pass --task {task}:PATH to a local copy" if task else ""
        raise data_error(
            dataset_id,
            f"split {split!r} is not in the Hugging Face cache ({cache}) {state}; fetch it with "
            f"`hf download {dataset_id} --repo-type dataset` on a machine with internet{local}",
            layout,
        ) from None

"""Dataset registry, download cache and loading.

Each MovieLens release is a frozen DatasetSpec: where GroupLens publishes it, the archive's
published MD5, the files inside, their format and the rating scale. `csv:PATH` names any local
user,item,rating[,timestamp] file; how to read it can follow the path as a query,
`csv:PATH?sep=;&header=no&scale=1,10&duplicates=keep-last`, so that the one `dataset` value of a
config (an MLflow param, a sweep row) says everything the training needs to read it again.

Cache: `$DEEPREC_DATA_DIR` (default `~/.cache/deeprec/datasets`, or under `$XDG_CACHE_HOME`).
A dataset lives in `<cache>/<name>/` as the extracted files. A folder that already holds them
(e.g. `DEEPREC_DATA_DIR=../shared/data` with `ml-1m/ratings.dat`) is used as it is. Downloads go
to a temporary file in the cache, are checked (length, MD5, zip integrity) and only then renamed
into place, so an interrupted or corrupt download never leaves a cache entry behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from deeprec import features
from deeprec.errors import DataFormatError, DeeprecError, DownloadError
from deeprec.ratings import DUPLICATE_POLICIES, DuplicatePolicy, Ratings, RatingsFormat, read_ratings
from deeprec.splits import CANONICAL_SPLITS, REPORT_SEED, Split, make_split

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20

TITLE_SEPARATORS = {"ml-1m": "::", "ml-100k": "|"}  # movies.dat / u.item: id, title, ...

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to fetch, verify and parse one dataset."""

    name: str
    ratings_file: str
    ratings_format: RatingsFormat
    scale: tuple[float, float] | None  # None: inferred from the data (generic csv files)
    url: str | None = None
    md5: str | None = None  # the archive's published MD5
    md5_url: str | None = None  # published MD5 sidecar, for archives GroupLens re-issues in place
    archive_dir: str | None = None  # top folder inside the zip
    users_file: str | None = None
    items_file: str | None = None
    side_info: str | None = None  # which feature parsers apply: "ml-1m" | "ml-100k"
    local_path: Path | None = None  # csv:PATH datasets: the file itself
    description: str = ""
    duplicates: DuplicatePolicy = "error"  # duplicate (user, item) ratings: refused, or the last one kept

    @property
    def archive_name(self) -> str | None:
        return None if self.url is None else self.url.rsplit("/", 1)[-1]


_DAT = RatingsFormat(sep="::", header=False, integer_ids=True)
_UDATA = RatingsFormat(sep="\t", header=False, integer_ids=True)
_CSV = RatingsFormat(sep=",", header=True, integer_ids=True)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="ml-100k", url=f"{GROUPLENS}/ml-100k.zip", md5="0e33842e24a9c977be4e0107933c0723",
            archive_dir="ml-100k", ratings_file="u.data", ratings_format=_UDATA, scale=(1, 5),
            users_file="u.user", items_file="u.item", side_info="ml-100k",
            description="MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies (1998)",
        ),
        DatasetSpec(
            name="ml-1m", url=f"{GROUPLENS}/ml-1m.zip", md5="c4d9eecfca2ab87c1945afe126590906",
            archive_dir="ml-1m", ratings_file="ratings.dat", ratings_format=_DAT, scale=(1, 5),
            users_file="users.dat", items_file="movies.dat", side_info="ml-1m",
            description="MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,706 rated movies (2003)",
        ),
        DatasetSpec(
            name="ml-10m", url=f"{GROUPLENS}/ml-10m.zip", md5="ce571fd55effeba0271552578f2648bd",
            archive_dir="ml-10M100K", ratings_file="ratings.dat", ratings_format=_DAT, scale=(0.5, 5),
            items_file="movies.dat",
            description="MovieLens 10M: 10,000,054 ratings, 69,878 users, 10,677 movies (2009)",
        ),
        DatasetSpec(
            name="ml-20m", url=f"{GROUPLENS}/ml-20m.zip", md5="cd245b17a1ae2cc31bb14903e1204af3",
            archive_dir="ml-20m", ratings_file="ratings.csv", ratings_format=_CSV, scale=(0.5, 5),
            items_file="movies.csv",
            description="MovieLens 20M: 20,000,263 ratings, 138,493 users, 26,744 movies (2015)",
        ),
        DatasetSpec(
            # GroupLens re-issues ml-latest-small in place, so its checksum is read from the
            # MD5 sidecar it publishes beside the archive rather than pinned here.
            name="ml-latest-small", url=f"{GROUPLENS}/ml-latest-small.zip",
            md5_url=f"{GROUPLENS}/ml-latest-small.zip.md5",
            archive_dir="ml-latest-small", ratings_file="ratings.csv", ratings_format=_CSV, scale=(0.5, 5),
            items_file="movies.csv",
            description="MovieLens latest small: about 100,000 ratings, 610 users, 9,700 movies",
        ),
    )
}


def dataset_names() -> list[str]:
    return sorted(DATASETS) + ["csv:PATH"]


CSV_OPTIONS = ("sep", "header", "scale", "duplicates")
SEPARATOR_NAMES = {"tab": "\t", "space": " "}  # separators that are awkward to type in a query
HEADER_VALUES = {"auto": None, "yes": True, "no": False}


def parse_scale(text: str) -> tuple[float, float]:
    """`MIN,MAX` such as `1,5` or `0.5,5`: two finite numbers, MIN below MAX."""
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise DeeprecError(f"expected MIN,MAX such as 1,5, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DeeprecError(f"MIN and MAX must be finite numbers, got {text!r}")
    if not low < high:
        raise DeeprecError(f"MIN must be below MAX, got {text!r}")
    return low, high


def parse_csv_name(name: str) -> tuple[str, dict[str, str]]:
    """`csv:PATH?key=value&...` -> (PATH, {key: value}). Values are percent-decoded (`sep=%09`);
    `+` stays a plus. A path holding `?` cannot be named this way."""
    path, _, query = name[len("csv:"):].partition("?")
    if not path:
        raise DeeprecError("csv: needs a path, e.g. csv:ratings.csv")
    options: dict[str, str] = {}
    for item in query.split("&") if query else ():
        key, equals, value = item.partition("=")
        if not equals or not value:
            raise DeeprecError(f"{name}: expected key=value after '?', got {item!r} (keys: {', '.join(CSV_OPTIONS)})")
        if key not in CSV_OPTIONS:
            raise DeeprecError(f"{name}: unknown option {key!r}; choose from {', '.join(CSV_OPTIONS)}")
        if key in options:
            raise DeeprecError(f"{name}: option {key!r} is given twice")
        options[key] = urllib.parse.unquote(value)
    return path, options


def get_spec(name: str, sep: str | None = None, header: bool | None = None,
             scale: tuple[float, float] | None = None, duplicates: DuplicatePolicy | None = None) -> DatasetSpec:
    """The spec for a registered name or `csv:PATH[?options]`. `sep`/`header`/`scale` (the data
    commands' flags) apply to csv only and may not repeat an option of the name's query."""
    if duplicates is not None and duplicates not in DUPLICATE_POLICIES:
        raise DeeprecError(f"unknown duplicate policy {duplicates!r}; choose one of {', '.join(DUPLICATE_POLICIES)}")
    if name.startswith("csv:"):
        path_text, options = parse_csv_name(name)
        flags = {"sep": sep, "header": header, "scale": scale, "duplicates": duplicates}
        given_twice = [key for key, value in flags.items() if value is not None and key in options]
        if given_twice:
            raise DeeprecError(f"--{given_twice[0]} repeats the {given_twice[0]}= option of {name}; give it once")
        if "sep" in options:
            sep = SEPARATOR_NAMES.get(options["sep"], options["sep"])
        if sep == "":
            raise DeeprecError("--sep is empty; give the field separator (e.g. --sep ',') or leave it out to detect it")
        if "header" in options:
            if options["header"] not in HEADER_VALUES:
                raise DeeprecError(f"{name}: header must be one of {', '.join(HEADER_VALUES)}, got {options['header']!r}")
            header = HEADER_VALUES[options["header"]]
        if "scale" in options:
            try:
                scale = parse_scale(options["scale"])
            except DeeprecError as exc:
                raise DeeprecError(f"{name}: scale: {exc}") from None
        if "duplicates" in options:
            if options["duplicates"] not in DUPLICATE_POLICIES:
                raise DeeprecError(f"{name}: duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {options['duplicates']!r}")
            duplicates = options["duplicates"]  # type: ignore[assignment]
        path = Path(path_text).expanduser()
        return DatasetSpec(
            name=name, ratings_file=path.name, local_path=path, scale=scale,
            ratings_format=RatingsFormat(sep=sep, header=header, encoding="utf-8"),
            description=f"ratings file {path}", duplicates=duplicates or "error",
        )
    if name not in DATASETS:
        raise DeeprecError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    if sep is not None or header is not None or scale is not None:
        raise DeeprecError(f"--sep, --header and --scale apply to csv:PATH datasets, not to {name}")
    spec = DATASETS[name]
    return spec if duplicates is None else replace(spec, duplicates=duplicates)


def data_root() -> Path:
    """The dataset cache: $DEEPREC_DATA_DIR, else the user's cache dir."""
    if os.environ.get("DEEPREC_DATA_DIR"):
        return Path(os.environ["DEEPREC_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "deeprec" / "datasets"


def find_local(spec: DatasetSpec, root: Path | None = None) -> Path | None:
    """The folder holding the spec's extracted files, if any: <root>/<name> or <root>/<archive dir>."""
    if spec.local_path is not None:
        return spec.local_path.parent if spec.local_path.is_file() else None
    root = root or data_root()
    for folder in dict.fromkeys((spec.name, spec.archive_dir)):
        if folder and (root / folder / spec.ratings_file).is_file():
            return root / folder
    return None


def check_local_file(spec: DatasetSpec) -> None:
    """A `csv:PATH` dataset whose file is missing fails here; the training commands call it before
    they import TensorFlow (8 seconds). Registered datasets are found, or downloaded, when they load."""
    if spec.local_path is not None and spec.local_path.is_dir():
        raise DeeprecError(f"{spec.local_path} is a folder; csv: needs the ratings file itself")
    if spec.local_path is not None and not spec.local_path.is_file():
        if not spec.local_path.is_absolute() and os.environ.get("MLFLOW_RUN_ID"):
            # `mlflow run` starts the entry point in the project's folder, not where it was typed
            raise DeeprecError(f"{spec.local_path}: no such ratings file in {Path.cwd()}, the folder `mlflow run` runs the project in; "
                               "give csv: an absolute path")
        raise DeeprecError(f"{spec.local_path}: no such ratings file")


def ensure_dataset(spec: DatasetSpec, progress: Progress | None = None, root: Path | None = None) -> Path:
    """The folder with the dataset's files, downloading and extracting it first if needed."""
    check_local_file(spec)
    found = find_local(spec, root)
    if found is not None:
        return found
    return download(spec, progress=progress, root=root)


def download(spec: DatasetSpec, progress: Progress | None = None, root: Path | None = None) -> Path:
    """Fetch, verify and extract the spec's archive into <root>/<name>; return that folder."""
    if spec.url is None:
        raise DeeprecError(f"{spec.name} is a local file; there is nothing to download")
    root = root or data_root()
    target = root / spec.name
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeeprecError(f"cannot create the data directory {root}: {exc.strerror}") from exc
    present_before = find_local(spec, root) is not None  # then it is replaced; one that appears meanwhile is kept
    expected_md5 = spec.md5 or _published_md5(spec, root)
    archive = root / spec.archive_name
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{spec.archive_name}.", suffix=".part", dir=root)
    except OSError as exc:
        raise DownloadError(f"cannot write to the data directory {root}: {exc.strerror or exc}") from exc
    os.close(fd)
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".extract", dir=root))
        md5 = _fetch(spec, Path(partial), progress, root)
        if md5 != expected_md5:
            raise DownloadError(f"{spec.url}: checksum mismatch (MD5 {md5}, published {expected_md5}); nothing was cached")
        _extract(spec, Path(partial), staging)
        extracted = staging / (spec.archive_dir or "")
        if not (extracted / spec.ratings_file).is_file():
            raise DownloadError(f"{spec.url}: the archive has no {spec.archive_dir}/{spec.ratings_file}; nothing was cached")
        # Rename, not copy: the cache entry appears whole or not at all. Another process that
        # fetched the same archive at the same time (a parallel sweep's worker) may have put its
        # copy there meanwhile: that one is kept, not deleted under its readers.
        appeared = find_local(spec, root) if not present_before else None
        if appeared is not None:
            log.info("%s: another process cached it meanwhile; using that copy", spec.name)
            return appeared
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(extracted, target)
        except OSError:  # the other process renamed its copy in between: the same files
            appeared = find_local(spec, root)
            if present_before or appeared is None:
                raise
            return appeared
        os.replace(partial, archive)  # kept so that `deeprec data verify` can re-check the MD5
    except OSError as exc:  # a full disk or a folder made read-only while extracting
        raise DownloadError(f"{spec.name}: could not cache it in {root}: {exc.strerror or exc}") from exc
    finally:
        Path(partial).unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: downloaded and verified into %s", spec.name, target)
    return target


def _offline_hint(spec: DatasetSpec, url: str, root: Path, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {url} ({reason}); fetch it by hand and unzip it so that "
        f"{root / spec.name / spec.ratings_file} exists (or set DEEPREC_DATA_DIR to a folder holding {spec.name}/)"
    )


def _open(spec: DatasetSpec, url: str, root: Path):
    try:
        return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)  # noqa: S310 (https/http URLs from the registry)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _offline_hint(spec, url, root, getattr(exc, "reason", exc)) from exc


def _published_md5(spec: DatasetSpec, root: Path) -> str:
    """Read GroupLens's sidecar (`MD5 (ml-latest-small.zip) = <hex>`)."""
    with _open(spec, spec.md5_url, root) as response:
        text = response.read(4096).decode("ascii", errors="replace")
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if match is None:
        raise DownloadError(f"{spec.md5_url}: no MD5 checksum in the published sidecar")
    return match.group(1).lower()


def _fetch(spec: DatasetSpec, destination: Path, progress: Progress | None, root: Path) -> str:
    """Stream the archive to `destination`; return its MD5. A short read is an error."""
    digest = hashlib.md5()  # noqa: S324 (GroupLens publishes MD5; integrity, not security)
    received = 0
    with _open(spec, spec.url, root) as response, destination.open("wb") as out:
        total = int(response.headers["Content-Length"]) if response.headers.get("Content-Length") else None
        try:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, total)
        except (OSError, http.client.HTTPException) as exc:  # reset connection, IncompleteRead
            raise DownloadError(f"{spec.url}: transfer interrupted after {received} bytes ({exc!r}); nothing was cached") from exc
    if total is not None and received != total:
        raise DownloadError(f"{spec.url}: transfer interrupted after {received} of {total} bytes; nothing was cached")
    return digest.hexdigest()


def _extract(spec: DatasetSpec, archive: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{spec.url}: corrupt member {bad} in the archive; nothing was cached")
            for member in zf.namelist():
                # Refuse absolute paths and "..": an archive must not write outside the staging folder.
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DownloadError(f"{spec.url}: unsafe path {member!r} in the archive; nothing was cached")
            zf.extractall(staging)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad directory, damaged deflate stream
        raise DownloadError(f"{spec.url}: not a valid zip archive ({exc}); nothing was cached") from exc


def archive_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its spec, where its files are, and the validated ratings."""

    spec: DatasetSpec
    folder: Path
    ratings: Ratings
    digest: str = field(default="")  # MD5 of the ratings file: identifies the exact data used

    def user_features(self) -> pd.DataFrame:
        """30 one-hot user columns (gender, age group, occupation), indexed by raw user id."""
        parser = {"ml-1m": features.ml1m_users, "ml-100k": features.ml100k_users}.get(self.spec.side_info or "")
        if parser is None or self.spec.users_file is None:
            raise DeeprecError(f"{self.spec.name} has no user side information (ml-1m and ml-100k do)")
        return parser(self.folder / self.spec.users_file)

    def item_titles(self) -> dict[str, str]:
        """{raw item id as text: title} for ML-1M and ML-100K; {} for datasets without titles."""
        sep = TITLE_SEPARATORS.get(self.spec.side_info or "")
        if sep is None or self.spec.items_file is None:
            return {}
        return features.item_titles(self.folder / self.spec.items_file, sep)

    def split(self, name: str, seed: int = REPORT_SEED) -> Split:
        """The named split of these ratings (splits.SPLIT_NAMES); ML-100K's u1..u5 hold out the
        ratings of the u$i.test file shipped beside u.data when it is there."""
        return make_split(name, self.ratings.users, seed, canonical_test=self._shipped_test_rows(name) if name in CANONICAL_SPLITS else None)

    def _shipped_test_rows(self, name: str) -> np.ndarray | None:
        """The rows of u.data that ML-100K's shipped `<name>.test` holds, or None without that file."""
        path = self.folder / f"{name}.test"
        if self.spec.local_path is not None or not path.is_file():
            return None
        shipped = read_ratings(path, self.spec.ratings_format, scale=self.ratings.scale)
        known = pd.MultiIndex.from_arrays([self.ratings.users, self.ratings.items])
        rows = known.get_indexer(pd.MultiIndex.from_arrays([shipped.users, shipped.items]))
        found = rows >= 0
        mismatch = np.flatnonzero(~found | (self.ratings.values[np.where(found, rows, 0)] != shipped.values))
        if len(mismatch):
            at = int(mismatch[0])
            raise DataFormatError(path, at + 1, f"the rating of item {shipped.items[at]} by user {shipped.users[at]} is not the one "
                                                f"in {self.spec.ratings_file}; the file does not belong to this copy of the dataset")
        return rows.astype(np.int64)

    def item_features(self) -> pd.DataFrame:
        """Genre one-hot columns plus release_year, indexed by raw item id."""
        parser = {"ml-1m": features.ml1m_items, "ml-100k": features.ml100k_items}.get(self.spec.side_info or "")
        if parser is None or self.spec.items_file is None:
            raise DeeprecError(f"{self.spec.name} has no item side information parser (ml-1m and ml-100k do)")
        return parser(self.folder / self.spec.items_file)


def load(spec: DatasetSpec, progress: Progress | None = None) -> Dataset:
    """Ensure the dataset is present (downloading if needed), then parse and validate its ratings
    (duplicate pairs as `spec.duplicates` says)."""
    folder = ensure_dataset(spec, progress=progress)
    ratings_path = spec.local_path if spec.local_path is not None else folder / spec.ratings_file
    ratings = read_ratings(ratings_path, spec.ratings_format, scale=spec.scale, duplicates=spec.duplicates)
    return Dataset(spec=spec, folder=folder, ratings=ratings, digest=archive_md5(ratings_path))

"""Download cache tests against a throwaway HTTP server on 127.0.0.1 (never the real GroupLens).

The server serves whatever bytes a test registers under a path and counts requests, so each test
can check both what ends up in the cache and whether the network was touched at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deeprec import cli, datasets
from deeprec.errors import DownloadError

N_RATINGS = 48
ARCHIVE_PATH = "/ml-1m.zip"
SIDECAR_PATH = "/ml-1m.zip.md5"


# --------------------------------------------------------------------------- local HTTP server


@dataclass
class Route:
    body: bytes
    send: int | None = None  # bytes actually written before closing; None: the whole body


@dataclass
class Site:
    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, send: int | None = None) -> str:
        self.routes[path] = Route(body, send)
        return self.url(path)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        site: Site = self.server.site  # type: ignore[attr-defined]
        site.requests.append(self.path)
        route = site.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        # Always the full length, even when fewer bytes follow: that is what a dropped
        # connection looks like to the client.
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        self.wfile.write(route.body if route.send is None else route.body[: route.send])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep the test output clean


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    state = Site(port=server.server_address[1])
    server.site = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A proxy from the environment would send 127.0.0.1 requests elsewhere; urllib reads
    # no_proxy at request time, so this holds even for an opener built by an earlier test.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    # The offline hint and load() read the cache location from the environment.
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path / "cache"))
    # A hung transfer should fail a test quickly, not after a minute.
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 5)


# --------------------------------------------------------------------------- archives


def ratings_text() -> str:
    # Distinct (user, item) pairs on the 1..5 scale, in ML-1M's `user::item::rating::time` form.
    return "".join(f"{1 + i % 6}::{10 + i}::{1 + i % 5}::{978300000 + i}\n" for i in range(N_RATINGS))


USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::M::45::7::02460\n5::M::25::20::55455\n6::F::50::9::55117\n"
MOVIES = "".join(f"{10 + i}::Movie {i} (1995)::Comedy|Drama\n" for i in range(N_RATINGS))


def make_zip(members: dict[str, str | bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def ml1m_members() -> dict[str, str | bytes]:
    return {"ml-1m/ratings.dat": ratings_text(), "ml-1m/users.dat": USERS, "ml-1m/movies.dat": MOVIES}


@pytest.fixture
def archive(tmp_path: Path) -> bytes:
    # Written to disk too, as the brief's "zip in tmp_path", but served from memory.
    data = make_zip(ml1m_members())
    (tmp_path / "ml-1m.zip").write_bytes(data)
    return data


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


def sidecar(data: bytes) -> bytes:
    return f"MD5 (ml-1m.zip) = {md5(data)}\n".encode()


def spec_for(site: Site, md5: str | None, md5_url: str | None = None) -> datasets.DatasetSpec:
    return dataclasses.replace(datasets.DATASETS["ml-1m"], url=site.url(ARCHIVE_PATH), md5=md5, md5_url=md5_url)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def assert_nothing_cached(root: Path) -> None:
    # No ml-1m/, no ml-1m.zip, no .part file, no .extract folder: the cache is as if never tried.
    leftovers = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert leftovers == []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------- failures leave nothing


def test_wrong_published_md5_is_refused_and_nothing_cached(site: Site, archive: bytes, root: Path) -> None:
    site.serve(ARCHIVE_PATH, archive)
    spec = spec_for(site, md5="0" * 32)
    with pytest.raises(DownloadError, match="checksum") as caught:
        datasets.download(spec, root=root)
    assert md5(archive) in str(caught.value)  # the message names the MD5 actually received
    assert site.requests == [ARCHIVE_PATH]
    assert_nothing_cached(root)


def test_truncated_archive_with_matching_sidecar_is_not_a_valid_zip(site: Site, archive: bytes, root: Path) -> None:
    # The transfer is complete and the checksum matches, so only the zip check can catch it.
    truncated = archive[: len(archive) // 2]
    site.serve(ARCHIVE_PATH, truncated)
    spec = spec_for(site, md5=None, md5_url=site.serve(SIDECAR_PATH, sidecar(truncated)))
    with pytest.raises(DownloadError, match="not a valid zip|corrupt"):
        datasets.download(spec, root=root)
    assert site.requests == [SIDECAR_PATH, ARCHIVE_PATH]
    assert_nothing_cached(root)


def test_corrupt_stored_member_is_reported_and_nothing_cached(site: Site, root: Path) -> None:
    # Stored (uncompressed) members: a flipped byte only shows up as a CRC mismatch.
    intact = make_zip(ml1m_members(), compression=zipfile.ZIP_STORED)
    offset = intact.index(b"1::10::1::")
    corrupt = intact[:offset] + b"9" + intact[offset + 1:]
    site.serve(ARCHIVE_PATH, corrupt)
    with pytest.raises(DownloadError, match="corrupt member ml-1m/ratings.dat"):
        datasets.download(spec_for(site, md5=md5(corrupt)), root=root)
    assert_nothing_cached(root)


def test_corrupt_deflate_stream_is_a_download_error(site: Site, root: Path) -> None:
    text = "".join(f"{i * 7919 % 6040}::{i * 104729 % 3952}::{1 + i % 5}::{978300000 + i * 31}\n" for i in range(400))
    intact = make_zip({"ml-1m/ratings.dat": text})
    start = 30 + len("ml-1m/ratings.dat") + 10  # the deflate block's Huffman table, past the local header
    corrupt = intact[:start] + bytes(b ^ 0xFF for b in intact[start:start + 8]) + intact[start + 8:]
    with pytest.raises(zlib.error):  # precondition: this archive really does trip zlib, not the CRC check
        zipfile.ZipFile(io.BytesIO(corrupt)).testzip()
    site.serve(ARCHIVE_PATH, corrupt)
    with pytest.raises(DownloadError):
        datasets.download(spec_for(site, md5=md5(corrupt)), root=root)
    assert_nothing_cached(root)


def test_interrupted_transfer_is_refused_and_nothing_cached(site: Site, archive: bytes, root: Path) -> None:
    site.serve(ARCHIVE_PATH, archive, send=len(archive) // 2)
    with pytest.raises(DownloadError, match="interrupted") as caught:
        datasets.download(spec_for(site, md5=md5(archive)), root=root)
    assert str(len(archive) // 2) in str(caught.value)  # how far it got
    assert_nothing_cached(root)


def test_a_full_disk_while_extracting_is_a_download_error(site: Site, archive: bytes, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError of the cache folder itself (a full disk, a folder made read-only) was a traceback."""
    site.serve(ARCHIVE_PATH, archive)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets, "_extract", disk_full)
    with pytest.raises(DownloadError, match=r"^ml-1m: could not cache it in .*: No space left on device$"):
        datasets.download(spec_for(site, md5=md5(archive)), root=root)
    assert_nothing_cached(root)


def test_http_404_is_a_download_error(site: Site, root: Path) -> None:
    with pytest.raises(DownloadError, match="cannot download"):
        datasets.download(spec_for(site, md5="0" * 32), root=root)
    assert site.requests == [ARCHIVE_PATH]
    assert_nothing_cached(root)


@pytest.mark.parametrize(
    ("sidecar_body", "message"),
    [(b"MD5 (ml-1m.zip) = " + b"0" * 32 + b"\n", "checksum"), (b"not published yet\n", "no MD5 checksum")],
    ids=["mismatch", "no-checksum"],
)
def test_bad_sidecar_is_refused(site: Site, archive: bytes, root: Path, sidecar_body: bytes, message: str) -> None:
    site.serve(ARCHIVE_PATH, archive)
    spec = spec_for(site, md5=None, md5_url=site.serve(SIDECAR_PATH, sidecar_body))
    with pytest.raises(DownloadError, match=message):
        datasets.download(spec, root=root)
    assert_nothing_cached(root)


def test_offline_message_names_url_and_where_to_put_the_files(root: Path) -> None:
    spec = dataclasses.replace(datasets.DATASETS["ml-1m"], url=f"http://127.0.0.1:{free_port()}/ml-1m.zip")
    with pytest.raises(DownloadError) as caught:
        datasets.download(spec, root=root)
    message = str(caught.value)
    assert "\n" not in message  # shown by the CLI as a single line
    assert spec.url in message
    assert str(root / "ml-1m" / "ratings.dat") in message
    assert_nothing_cached(root)


def test_offline_message_uses_the_root_passed_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root: Path) -> None:
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path / "elsewhere"))
    spec = dataclasses.replace(datasets.DATASETS["ml-1m"], url=f"http://127.0.0.1:{free_port()}/ml-1m.zip")
    with pytest.raises(DownloadError) as caught:
        datasets.download(spec, root=root)
    assert str(root / "ml-1m" / "ratings.dat") in str(caught.value)


# --------------------------------------------------------------------------- successful downloads


def test_download_extracts_keeps_archive_and_is_not_repeated(site: Site, archive: bytes, root: Path) -> None:
    site.serve(ARCHIVE_PATH, archive)
    spec = spec_for(site, md5=md5(archive))
    folder = datasets.ensure_dataset(spec, root=root)
    assert folder == root / "ml-1m"
    assert (folder / "ratings.dat").read_text() == ratings_text()
    assert (folder / "users.dat").read_text() == USERS
    assert (folder / "movies.dat").read_text() == MOVIES
    assert (root / "ml-1m.zip").read_bytes() == archive
    assert sorted(p.name for p in root.iterdir()) == ["ml-1m", "ml-1m.zip"]  # no temp files left
    assert site.requests == [ARCHIVE_PATH]

    assert datasets.ensure_dataset(spec, root=root) == folder
    assert site.requests == [ARCHIVE_PATH]  # served from the cache the second time


def test_a_copy_another_process_cached_meanwhile_is_kept(site: Site, archive: bytes, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two processes (a parallel sweep's workers) fetching the same archive at once: the second to
    # finish must use the first one's folder, neither delete it under its readers nor fail.
    site.serve(ARCHIVE_PATH, archive)
    spec = spec_for(site, md5=md5(archive))
    fetch = datasets._fetch

    def fetch_while_another_finishes(*args, **kwargs):
        result = fetch(*args, **kwargs)
        theirs = root / "ml-1m"
        theirs.mkdir()
        (theirs / "ratings.dat").write_text("theirs")
        return result

    monkeypatch.setattr(datasets, "_fetch", fetch_while_another_finishes)
    assert datasets.download(spec, root=root) == root / "ml-1m"
    assert (root / "ml-1m" / "ratings.dat").read_text() == "theirs"
    assert sorted(p.name for p in root.iterdir()) == ["ml-1m"]  # no partial archive or staging folder left


def test_downloaded_dataset_loads(site: Site, archive: bytes, root: Path) -> None:
    # load() finds the cache through DEEPREC_DATA_DIR (set to `root` by the autouse fixture).
    site.serve(ARCHIVE_PATH, archive)
    dataset = datasets.load(spec_for(site, md5=md5(archive)))
    assert dataset.folder == root / "ml-1m"
    assert len(dataset.ratings) == N_RATINGS
    assert dataset.digest == md5(ratings_text().encode())


def test_progress_reports_increasing_counts_up_to_the_total(
    monkeypatch: pytest.MonkeyPatch, site: Site, archive: bytes, root: Path,
) -> None:
    monkeypatch.setattr(datasets, "CHUNK_BYTES", 64)  # several chunks from a small archive
    site.serve(ARCHIVE_PATH, archive)
    calls: list[tuple[int, int | None]] = []
    datasets.download(spec_for(site, md5=md5(archive)), progress=lambda done, total: calls.append((done, total)), root=root)
    done = [d for d, _ in calls]
    assert len(calls) >= len(archive) // 64
    assert all(a < b for a, b in zip(done, done[1:]))
    assert done[-1] == len(archive)
    assert {total for _, total in calls} == {len(archive)}


def test_existing_extracted_folder_is_used_without_a_request(site: Site, root: Path) -> None:
    folder = root / "ml-1m"
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text(ratings_text())
    spec = spec_for(site, md5="0" * 32)  # would fail if it were downloaded and checked
    assert datasets.ensure_dataset(spec, root=root) == folder
    assert site.requests == []
    assert sorted(p.name for p in root.iterdir()) == ["ml-1m"]


def test_md5_from_sidecar_verifies_the_download(site: Site, archive: bytes, root: Path) -> None:
    site.serve(ARCHIVE_PATH, archive)
    spec = spec_for(site, md5=None, md5_url=site.serve(SIDECAR_PATH, sidecar(archive)))
    folder = datasets.ensure_dataset(spec, root=root)
    assert folder == root / "ml-1m"
    assert (folder / "ratings.dat").read_text() == ratings_text()
    assert site.requests == [SIDECAR_PATH, ARCHIVE_PATH]


def test_redownload_replaces_a_stale_extracted_folder(site: Site, archive: bytes, root: Path) -> None:
    # download() itself (unlike ensure_dataset) always fetches and swaps the folder in whole.
    stale = root / "ml-1m"
    stale.mkdir(parents=True)
    (stale / "ratings.dat").write_text("1::1::1::0\n")
    (stale / "leftover.txt").write_text("old")
    site.serve(ARCHIVE_PATH, archive)
    folder = datasets.download(spec_for(site, md5=md5(archive)), root=root)
    assert (folder / "ratings.dat").read_text() == ratings_text()
    assert not (folder / "leftover.txt").exists()


# --------------------------------------------------------------------------- through the CLI


def test_cli_download_reports_a_dataset_already_present(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    data_dir = tmp_path / "shared-data"
    (data_dir / "ml-1m").mkdir(parents=True)
    (data_dir / "ml-1m" / "ratings.dat").write_text(ratings_text())
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(data_dir))
    # Should find_local() ever miss the folder, fail on a dead local port, not on GroupLens.
    dead = dataclasses.replace(datasets.DATASETS["ml-1m"], url=f"http://127.0.0.1:{free_port()}/ml-1m.zip")
    monkeypatch.setitem(datasets.DATASETS, "ml-1m", dead)
    assert cli.main(["data", "download", "--dataset", "ml-1m"]) == 0
    out = capsys.readouterr().out
    assert "already present" in out
    assert str(data_dir / "ml-1m") in out


def test_cli_download_fetches_into_deeprec_data_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], site: Site, archive: bytes, root: Path,
) -> None:
    site.serve(ARCHIVE_PATH, archive)
    monkeypatch.setitem(datasets.DATASETS, "ml-1m", spec_for(site, md5=md5(archive)))
    assert cli.main(["data", "download", "--dataset", "ml-1m"]) == 0
    assert "downloaded and verified" in capsys.readouterr().out
    assert (root / "ml-1m" / "ratings.dat").read_text() == ratings_text()
    assert site.requests == [ARCHIVE_PATH]


def test_cli_download_offline_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/ml-1m.zip"
    monkeypatch.setitem(datasets.DATASETS, "ml-1m", dataclasses.replace(datasets.DATASETS["ml-1m"], url=url))
    assert cli.main(["data", "download", "--dataset", "ml-1m"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("deeprec: error: cannot download " + url)
    assert str(root / "ml-1m" / "ratings.dat") in err_lines[0]
    assert_nothing_cached(root)

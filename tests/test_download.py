"""Tests for fetching pix2pix datasets, against a real HTTP server on 127.0.0.1."""

import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.download import DATASETS, check_aligned_layout, download_dataset
from training.errors import DataError


@dataclass
class Route:
    body: bytes
    status: int = 200
    # Announce this many bytes instead of len(body), to simulate a connection cut mid-body.
    content_length: int | None = None


class MirrorServer(ThreadingHTTPServer):
    """Serves routes from a dict and records every request path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/datasets"

    def serve(self, name: str, route: Route) -> None:
        self.routes[f"/datasets/{name}.tar.gz"] = route


class MirrorHandler(BaseHTTPRequestHandler):
    server: MirrorServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        length = route.content_length if route.content_length is not None else len(route.body)
        self.send_response(route.status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[MirrorServer]:
    server = MirrorServer()
    # A short poll interval keeps shutdown, and so each test, quick.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(width * 1000 + height).integers(
        0, 256, (height, width, 3), dtype=np.uint8
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar_gz(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            member = tarfile.TarInfo(name)
            member.type = tarfile.SYMTYPE
            member.linkname = target
            tar.addfile(member)
    return buffer.getvalue()


def _facades(**extra: bytes) -> dict[str, bytes]:
    files = {
        "facades/train/1.png": _png(32, 16),
        "facades/train/2.png": _png(32, 16),
        "facades/val/1.png": _png(32, 16),
    }
    files.update(extra)
    return files


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/datasets"


def _assert_nothing_left(root: Path) -> None:
    """No dataset folder, archive, partial download or extraction folder remains in root."""
    assert not root.exists() or list(root.iterdir()) == []


def test_download_extracts_checks_and_removes_archive(mirror: MirrorServer, root: Path) -> None:
    mirror.serve("facades", Route(_tar_gz(_facades())))

    result = download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    assert result == root / "facades"
    assert sorted(path.name for path in root.iterdir()) == ["facades"]
    assert check_aligned_layout(result) == {"train": 2, "val": 1}
    with Image.open(result / "train" / "1.png") as image:
        assert image.size == (32, 16)


def test_second_call_skips_download_unless_forced(mirror: MirrorServer, root: Path) -> None:
    mirror.serve("facades", Route(_tar_gz(_facades())))

    download_dataset("facades", root, base_url=mirror.base_url, progress=False)
    download_dataset("facades", root, base_url=mirror.base_url, progress=False)
    assert len(mirror.requests) == 1

    download_dataset("facades", root, base_url=mirror.base_url, progress=False, force=True)
    assert len(mirror.requests) == 2
    assert sorted(path.name for path in root.iterdir()) == ["facades"]


def test_mirror_comes_from_environment_variable(
    mirror: MirrorServer, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror.serve("facades", Route(_tar_gz(_facades())))
    monkeypatch.setenv("PIX2PIX_DATASET_MIRROR", mirror.base_url + "/")

    # The default shows progress bars; they must not get in the way.
    download_dataset("facades", root)

    assert mirror.requests == ["/datasets/facades.tar.gz"]


def test_http_error_names_url_and_status(mirror: MirrorServer, root: Path) -> None:
    with pytest.raises(DataError) as caught:
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    message = str(caught.value)
    assert f"{mirror.base_url}/facades.tar.gz" in message
    assert "404" in message
    assert "PIX2PIX_DATASET_MIRROR" in message
    _assert_nothing_left(root)


def test_unreachable_host_suggests_offline(root: Path) -> None:
    url = _closed_port_url()

    with pytest.raises(DataError) as caught:
        download_dataset("facades", root, base_url=url, progress=False)

    message = str(caught.value)
    assert f"{url}/facades.tar.gz" in message
    assert "unreachable" in message
    assert "offline" in message
    assert "by hand" in message
    _assert_nothing_left(root)


def test_malformed_mirror_url_is_reported(root: Path) -> None:
    with pytest.raises(DataError, match="not a URL"):
        download_dataset("facades", root, base_url="no-scheme/datasets", progress=False)

    _assert_nothing_left(root)


def test_short_body_is_an_incomplete_download(mirror: MirrorServer, root: Path) -> None:
    body = _tar_gz(_facades())
    mirror.serve("facades", Route(body, content_length=len(body) + 1000))

    with pytest.raises(DataError, match="incomplete"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    _assert_nothing_left(root)


def test_corrupt_gzip_is_reported_and_cleaned_up(mirror: MirrorServer, root: Path) -> None:
    body = _tar_gz(_facades(**{f"facades/train/{index}.png": _png(64, 32) for index in range(8)}))
    mirror.serve("facades", Route(body[: len(body) // 2]))

    with pytest.raises(DataError, match="corrupt"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    _assert_nothing_left(root)


def test_not_gzip_at_all_is_reported(mirror: MirrorServer, root: Path) -> None:
    mirror.serve("facades", Route(b"<html>a captive portal page</html>"))

    with pytest.raises(DataError, match="corrupt"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    _assert_nothing_left(root)


@pytest.mark.parametrize(
    ("files", "symlinks"),
    [
        ({"../evil.txt": b"escaped"}, {}),
        ({"facades/../../evil.txt": b"escaped"}, {}),
        ({"ABSOLUTE": b"escaped"}, {}),
        ({}, {"facades/train/link": "../../../evil.txt"}),
        ({}, {"facades/train/link": "/etc/passwd"}),
    ],
    ids=["parent", "nested-parent", "absolute", "relative-symlink", "absolute-symlink"],
)
def test_unsafe_archive_members_are_refused(
    mirror: MirrorServer,
    root: Path,
    tmp_path: Path,
    files: dict[str, bytes],
    symlinks: dict[str, str],
) -> None:
    if "ABSOLUTE" in files:
        files = {str(tmp_path / "evil.txt"): files["ABSOLUTE"]}
    mirror.serve("facades", Route(_tar_gz(_facades(**files), symlinks)))

    with pytest.raises(DataError, match="unsafe"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    assert sorted(tmp_path.rglob("*evil*")) == []
    assert [path.name for path in tmp_path.iterdir()] == ["data"]
    _assert_nothing_left(root)


@pytest.mark.parametrize(("width", "height"), [(33, 16), (32, 32)])
def test_bad_layout_names_the_file(
    mirror: MirrorServer, root: Path, width: int, height: int
) -> None:
    bad = {"facades/val/not_aligned.png": _png(width, height)}
    mirror.serve("facades", Route(_tar_gz(_facades(**bad))))

    with pytest.raises(DataError) as caught:
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    message = str(caught.value)
    assert "not_aligned.png" in message
    assert f"{width}x{height}" in message
    assert "1.png" not in message
    _assert_nothing_left(root)


def test_archive_without_train_folder_is_rejected(mirror: MirrorServer, root: Path) -> None:
    mirror.serve("facades", Route(_tar_gz({"facades/val/1.png": _png(32, 16)})))

    with pytest.raises(DataError, match="train/"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    _assert_nothing_left(root)


def test_unknown_name_lists_known_datasets(root: Path) -> None:
    with pytest.raises(DataError) as caught:
        download_dataset("horse2zebra", root, progress=False)

    message = str(caught.value)
    assert "horse2zebra" in message
    for name in DATASETS:
        assert name in message
    _assert_nothing_left(root)


def test_archive_placed_by_hand_is_used_without_network(root: Path) -> None:
    root.mkdir()
    (root / "facades.tar.gz").write_bytes(_tar_gz(_facades()))

    result = download_dataset("facades", root, base_url=_closed_port_url(), progress=False)

    assert check_aligned_layout(result) == {"train": 2, "val": 1}
    assert sorted(path.name for path in root.iterdir()) == ["facades"]


def test_failed_forced_download_keeps_existing_dataset(mirror: MirrorServer, root: Path) -> None:
    mirror.serve("facades", Route(_tar_gz(_facades())))
    download_dataset("facades", root, base_url=mirror.base_url, progress=False)
    mirror.routes.clear()

    with pytest.raises(DataError, match="404"):
        download_dataset("facades", root, base_url=mirror.base_url, progress=False, force=True)

    assert check_aligned_layout(root / "facades") == {"train": 2, "val": 1}
    assert sorted(path.name for path in root.iterdir()) == ["facades"]


def test_existing_dataset_failing_the_check_is_replaced(mirror: MirrorServer, root: Path) -> None:
    broken = root / "facades" / "train"
    broken.mkdir(parents=True)
    (broken / "odd.png").write_bytes(_png(33, 16))
    mirror.serve("facades", Route(_tar_gz(_facades())))

    result = download_dataset("facades", root, base_url=mirror.base_url, progress=False)

    assert check_aligned_layout(result) == {"train": 2, "val": 1}
    assert not (result / "train" / "odd.png").exists()
    assert sorted(path.name for path in root.iterdir()) == ["facades"]

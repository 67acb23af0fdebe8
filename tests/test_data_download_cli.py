"""`qbench data download` end to end against an archive served on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading

import pytest
from conftest import QBENCH
from qbench.testing import run_python


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _download(root, url):
    arguments = (
        "data",
        "download",
        "imagenette",
        "--root",
        str(root),
        "--url",
        url,
        "--no-progress",
    )
    return run_python(QBENCH, *arguments)


def test_download_and_extract_through_the_cli(server, tmp_path):
    served, base = server
    (served / "imagenette2-320.tgz").write_bytes(
        _tar(
            {
                "imagenette2-320/val/n01440764/a.JPEG": b"not really a jpeg",
                "imagenette2-320/noisy_imagenette.csv": b"x",
            }
        )
    )
    root = tmp_path / "data"
    result = _download(root, f"{base}/imagenette2-320.tgz")
    assert result.returncode == 0, result.stderr
    assert (
        root / "imagenette2-320" / "val" / "n01440764" / "a.JPEG"
    ).read_bytes() == b"not really a jpeg"
    assert "ready at" in result.stdout
    assert not (root / "imagenette2-320.tgz").exists()


def test_malicious_archive_is_refused_with_one_line(server, tmp_path):
    served, base = server
    (served / "evil.tgz").write_bytes(_tar({"../evil.txt": b"gotcha", "ok/file.txt": b"fine"}))
    (served / "link.tgz").write_bytes(
        _tar({"ok/file.txt": b"fine"}, links={"ok/escape": "/etc/passwd"})
    )
    root = tmp_path / "data"
    for archive in ("evil.tgz", "link.tgz"):
        result = _download(root, f"{base}/{archive}")
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("qbench: error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "ok").exists()


def test_dataset_without_download_is_a_user_error(tmp_path):
    result = run_python(QBENCH, "data", "download", "digits", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "cannot be downloaded" in result.stderr and "imagenette" in result.stderr

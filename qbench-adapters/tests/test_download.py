"""Downloads from a local HTTP server: resume, checksums, safe and atomic extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from adapters_image_files import write_image
from qbench.errors import QBenchError
from qbench_adapters.download import (
    DownloadError,
    Source,
    UnsafeArchiveError,
    download_file,
    extract_archive,
    fetch_dataset,
)
from qbench_adapters.folders import ImagenetteDataset

TENCH, CHURCH = "n01440764", "n03028079"


def make_tgz(tmp_path: Path, top: str = "imagenette2-320") -> bytes:
    """A real .tgz of an Imagenette-shaped tree (a few KB of solid-colour JPEGs)."""
    src = tmp_path / "src"
    for wnid, value in ((TENCH, 10), (CHURCH, 30)):
        for i in range(3):
            write_image(src / top / "val" / wnid / f"{i}.JPEG", value, size=(64, 64))
    (src / top / "noise.bin").write_bytes(os.urandom(50_000))  # makes the archive ~50 KB
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src / top, arcname=top)
    return buffer.getvalue()


def source_for(url: str, data: bytes | None) -> Source:
    md5 = hashlib.md5(data).hexdigest() if data is not None else None
    return Source("imagenette", url, md5, "imagenette2-320")


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_download_and_extract_with_checksum(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/imagenette2-320.tgz"] = data
    root = tmp_path / "data"
    out = fetch_dataset(source_for(f"{base}/imagenette2-320.tgz", data), root, progress=False)
    assert out == root / "imagenette2-320"
    assert sorted(p.name for p in (out / "val").iterdir()) == [TENCH, CHURCH]
    assert sorted(os.listdir(root)) == ["imagenette2-320"]  # archive, .part and staging gone
    assert state.requests[0]["range"] is None
    # a second call finds the dataset and does not download again
    assert (
        fetch_dataset(source_for(f"{base}/imagenette2-320.tgz", data), root, progress=False) == out
    )
    assert len(state.requests) == 1


def test_interrupted_download_resumes_with_a_range_request(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    state.interrupt_first = 20_000
    dest = tmp_path / "a.tgz"
    with pytest.raises(DownloadError, match=r"interrupted after 20000 bytes.*run the same command"):
        download_file(
            f"{base}/a.tgz", dest, md5=hashlib.md5(data).hexdigest(), progress=False, retries=0
        )
    part = tmp_path / "a.tgz.part"
    assert part.stat().st_size == 20_000 and not dest.exists()
    download_file(
        f"{base}/a.tgz", dest, md5=hashlib.md5(data).hexdigest(), progress=False, retries=0
    )
    assert dest.read_bytes() == data and not part.exists()
    assert state.requests[-1]["range"] == "bytes=20000-"


def test_interruption_is_retried_within_one_call(tmp_path, http_server, capsys):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    state.interrupt_first = 7_000
    dest = download_file(f"{base}/a.tgz", tmp_path / "a.tgz", progress=True, retries=2)
    assert dest.read_bytes() == data
    assert [r["range"] for r in state.requests] == [None, "bytes=7000-"]
    assert "a.tgz" in capsys.readouterr().err  # the progress line


def test_server_ignoring_range_restarts_from_zero(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    state.honour_range = False
    part = tmp_path / "a.tgz.part"
    part.write_bytes(b"garbage from an older, different file")
    dest = download_file(f"{base}/a.tgz", tmp_path / "a.tgz", progress=False)
    assert dest.read_bytes() == data


def test_complete_part_file_answered_416_is_accepted(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    (tmp_path / "a.tgz.part").write_bytes(data)
    dest = download_file(
        f"{base}/a.tgz", tmp_path / "a.tgz", md5=hashlib.md5(data).hexdigest(), progress=False
    )
    assert dest.read_bytes() == data
    assert state.requests[0]["range"] == f"bytes={len(data)}-"


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/imagenette2-320.tgz"] = data
    root = tmp_path / "data"
    wrong = Source("imagenette", f"{base}/imagenette2-320.tgz", "0" * 32, "imagenette2-320")
    with pytest.raises(DownloadError, match=r"checksum mismatch .* expected 0{32}"):
        fetch_dataset(wrong, root, progress=False)
    assert os.listdir(root) == []


def test_http_error_is_one_line(tmp_path, http_server):
    base, _ = http_server
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download_file(f"{base}/missing.tgz", tmp_path / "m.tgz", progress=False)


def test_dataset_download_method_with_url_override(tmp_path, http_server, imagenet_bundle):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/mirror/imagenette2-320.tgz"] = data
    out = ImagenetteDataset().download(
        tmp_path / "d", url=f"{base}/mirror/imagenette2-320.tgz", progress=False
    )
    assert out == tmp_path / "d" / "imagenette2-320"
    batches = ImagenetteDataset().build({"root": str(out)}, bundle=imagenet_bundle)
    assert sorted(set(y for _, ys in batches for y in ys.tolist())) == [0, 497]


def test_truncated_archive_leaves_no_half_extracted_tree(tmp_path):
    data = make_tgz(tmp_path)
    archive = tmp_path / "cut.tgz"
    archive.write_bytes(data[: len(data) // 2])
    root = tmp_path / "data"
    with pytest.raises(QBenchError):
        extract_archive(archive, root)
    assert os.listdir(root) == []


def test_existing_target_is_not_overwritten(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tgz(tmp_path))
    root = tmp_path / "data"
    (root / "imagenette2-320").mkdir(parents=True)
    with pytest.raises(QBenchError, match="already exists"):
        extract_archive(archive, root)
    assert os.listdir(root / "imagenette2-320") == []


# -- malicious archives ---------------------------------------------------------------------


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def file_member(name: str, payload: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def link_member(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([file_member("ok/fine.txt"), file_member("../evil")], "contains '..'"),
        ([file_member("ok/../../evil")], "contains '..'"),
        ([file_member("{abs}")], "absolute path"),
        ([link_member("ok/link", "../../outside")], "points outside"),
        ([link_member("ok/link", "{abs_dir}")], "absolute path"),
        ([link_member("ok/hard", "../evil", tarfile.LNKTYPE)], "points outside"),
        ([link_member("ok/fifo", "", tarfile.FIFOTYPE)], "device or FIFO"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-out",
        "symlink-absolute",
        "hardlink-out",
        "fifo",
    ],
)
def test_malicious_tar_is_refused_and_nothing_is_written(tmp_path, members, reason):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil_abs = str(outside / "abs_evil")
    members = [
        (
            _rename(
                info, info.name.format(abs=evil_abs), info.linkname.format(abs_dir=str(outside))
            ),
            payload,
        )
        for info, payload in members
    ]
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_with(members))
    root = tmp_path / "work" / "root"
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_archive(archive, root)
    after = snapshot(tmp_path)
    assert after - before <= {"work", "work/root"}  # at most the (empty) root itself
    assert not (tmp_path / "work" / "evil").exists() and not (tmp_path / "evil").exists()
    assert os.listdir(outside) == []
    assert os.listdir(root) == []


def _rename(info: tarfile.TarInfo, name: str, linkname: str) -> tarfile.TarInfo:
    info.name = name
    info.linkname = linkname
    return info


def test_symlink_inside_the_tree_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(
        tar_with([file_member("top/a.txt", b"A"), link_member("top/b.txt", "a.txt")])
    )
    created = extract_archive(archive, tmp_path / "root")
    assert created == [tmp_path / "root" / "top"]
    assert (tmp_path / "root" / "top" / "b.txt").read_bytes() == b"A"


@pytest.mark.parametrize("name", ["../evil", "/tmp/qbench-abs-evil", "a/../../evil"])
def test_malicious_zip_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("top/ok.txt", "fine")
        handle.writestr(zipfile.ZipInfo(name), "pwned")
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, root)
    assert os.listdir(root) == [] and not (tmp_path / "evil").exists()
    assert not Path("/tmp/qbench-abs-evil").exists()


def test_zip_symlink_out_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    info = zipfile.ZipInfo("top/link")
    info.external_attr = 0o120777 << 16  # S_IFLNK | 0777, as zip -y stores links
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract_archive(archive, tmp_path / "root")
    assert os.listdir(tmp_path / "root") == []


def test_zip_download_like_tiny_imagenet(tmp_path, http_server):
    base, state = http_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        handle.writestr("tiny-imagenet-200/wnids.txt", f"{TENCH}\n")
        handle.writestr("tiny-imagenet-200/val/val_annotations.txt", "")
    state.files["/tiny-imagenet-200.zip"] = buffer.getvalue()
    source = Source("tiny-imagenet", f"{base}/tiny-imagenet-200.zip", None, "tiny-imagenet-200")
    out = fetch_dataset(source, tmp_path / "data", progress=False)
    assert (out / "wnids.txt").read_text() == f"{TENCH}\n"


def test_cli_data_download_uses_this_package(tmp_path, http_server, capsys):
    from qbench.cli import main

    base, state = http_server
    state.files["/imagenette2-320.tgz"] = make_tgz(tmp_path)
    root = tmp_path / "cli-data"
    try:
        main(
            [
                "data",
                "download",
                "imagenette",
                "--root",
                str(root),
                "--url",
                f"{base}/imagenette2-320.tgz",
                "--no-progress",
            ]
        )
    except SystemExit as exit:  # click may exit 0 after a command
        assert exit.code in (0, None)
    assert "ready at" in capsys.readouterr().out
    assert (root / "imagenette2-320" / "val" / TENCH).is_dir()


def _cli_download_exit_code(*arguments: str) -> int | None:
    """Runs ``qbench data download *arguments`` in-process; its exit status."""
    from qbench.cli import main

    try:
        main(["data", "download", *arguments])
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.mark.parametrize(
    "members",
    [
        [file_member("../evil.txt", b"gotcha"), file_member("ok/file.txt", b"fine")],
        [file_member("ok/file.txt", b"fine"), link_member("ok/escape", "/etc/passwd")],
    ],
    ids=["dotdot", "symlink-out"],
)
def test_cli_refuses_a_malicious_archive_in_one_line(tmp_path, http_server, capsys, members):
    base, state = http_server
    state.files["/evil.tgz"] = gzip.compress(tar_with(members))
    root = tmp_path / "data"
    code = _cli_download_exit_code(
        "imagenette", "--root", str(root), "--url", f"{base}/evil.tgz", "--no-progress"
    )
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "evil.txt").exists() and not (root / "ok").exists()


def test_cli_download_of_a_dataset_without_one_is_a_user_error(tmp_path, capsys):
    code = _cli_download_exit_code("digits", "--root", str(tmp_path))
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "cannot be downloaded" in stderr and "imagenette" in stderr


# -- incomplete downloads are never kept as archives ------------------------------------------


def test_body_cut_without_content_length_is_downloaded_again(tmp_path, http_server, capsys):
    # No Content-Length and no checksum (a mirror): the cut body ends like a complete one.
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    state.send_length = False
    state.interrupt_first = 20_000
    dest = download_file(f"{base}/a.tgz", tmp_path / "a.tgz", progress=False, retries=0)
    assert dest.read_bytes() == data
    assert [r["range"] for r in state.requests] == [None, None]
    corrupt = tmp_path / "a.tgz.corrupt"
    assert corrupt.read_bytes() == data[:20_000]  # moved aside, not deleted, not kept as done
    assert str(corrupt) in capsys.readouterr().err
    assert not (tmp_path / "a.tgz.part").exists()


def test_body_always_cut_without_content_length_is_one_line_error(tmp_path, http_server):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/imagenette2-320.tgz"] = data
    state.send_length = False
    state.interrupt_every = 20_000
    root = tmp_path / "data"
    source = source_for(f"{base}/imagenette2-320.tgz", None)
    with pytest.raises(DownloadError, match=r"incomplete or damaged archive twice") as info:
        fetch_dataset(source, root, progress=False, retries=0)
    assert str(root / "imagenette2-320.tgz.corrupt") in str(info.value)
    assert "\n" not in str(info.value)
    assert os.listdir(root) == ["imagenette2-320.tgz.corrupt"]  # no archive taken for done


def test_archive_kept_by_an_older_run_is_checked_and_fetched_again(tmp_path, http_server):
    # What earlier versions left behind: a truncated archive under the final name, which every
    # later run took for a finished download (EOFError forever).
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/imagenette2-320.tgz"] = data
    root = tmp_path / "data"
    root.mkdir()
    (root / "imagenette2-320.tgz").write_bytes(data[: len(data) // 2])
    source = source_for(f"{base}/imagenette2-320.tgz", None)
    out = fetch_dataset(source, root, progress=False)
    assert sorted(p.name for p in (out / "val").iterdir()) == [TENCH, CHURCH]
    assert sorted(os.listdir(root)) == ["imagenette2-320", "imagenette2-320.tgz.corrupt"]
    assert len(state.requests) == 1


@pytest.mark.parametrize("answer", ["no-total", "total"])
@pytest.mark.parametrize("checksum", [False, True], ids=["no-md5", "md5"])
def test_resume_answered_416_is_not_taken_for_complete(tmp_path, http_server, answer, checksum):
    base, state = http_server
    data = make_tgz(tmp_path)
    state.files["/a.tgz"] = data
    state.refuse_range = answer
    (tmp_path / "a.tgz.part").write_bytes(data[:20_000])
    md5 = hashlib.md5(data).hexdigest() if checksum else None
    dest = download_file(f"{base}/a.tgz", tmp_path / "a.tgz", md5=md5, progress=False)
    assert dest.read_bytes() == data
    assert [r["range"] for r in state.requests] == ["bytes=20000-", None]
    assert not (tmp_path / "a.tgz.part").exists()


def test_verify_archive_catches_a_tar_cut_between_members(tmp_path):
    from qbench_adapters.download import CorruptArchiveError, verify_archive

    data = tar_with([file_member("top/a.txt", b"A" * 512), file_member("top/b.txt", b"B")])
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    verify_archive(whole)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 2 * 512])  # header + data of a.txt, then nothing
    with pytest.raises(CorruptArchiveError, match="end-of-archive marker"):
        verify_archive(cut)
    page = tmp_path / "page.tgz"
    page.write_text("<html>not found</html>")
    with pytest.raises(CorruptArchiveError, match="not a tar or zip"):
        verify_archive(page)

"""Where a run's reports go, and how they get there whole.

A run's reports are a *set* (``report.json``, ``comparison_report.txt``, ``report.html``, …)
in ``<output>/<model>/<config name>/``. Readers see the previous complete set or the new
complete set, never a mix:

- :func:`check_location` runs before the first batch: the folder must be creatable and
  writable and its names within the filesystem's limits, so a bad ``output.dir`` costs
  seconds, not a finished run. It also refuses to replace a report of another run (other
  model or other data) unless asked to (``overwrite``).
- :func:`write_report_set` has every reporter write into a staging folder beside the
  destination (same filesystem, so renames are atomic: POSIX rename(2)), then swaps the
  staging folder into place. A reporter that raises does not stop the others; the ones that
  wrote form the set, and the failure is raised after it is in place, naming the plugin.
  Stray staging folders left by a killed run are removed.
- If the set still cannot be written (a disk that filled after the check), ``report.json``
  goes to a fallback folder that the error names: computed results are never lost.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QBenchError

#: Prefix of the staging and retired folders beside a report folder (``.<name>.staging-…``).
_STAGING, _RETIRED = ".staging-", ".retired-"
#: Environment variable naming the fallback root (default: the system temporary folder).
FALLBACK_ENV = "QBENCH_FALLBACK_DIR"


def safe_part(part: str) -> str:
    """A folder name made of letters, digits and ``_.+-`` from a model or config name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", part).strip("._") or "unnamed"


def run_key(model_options: Mapping[str, Any], dataset_options: Mapping[str, Any]) -> str:
    """What makes two reports comparable: the same model and the same data (limit included).
    The quantization is not part of it: rerunning a config after changing its format is the
    everyday loop, and the report records what it measured."""
    text = json.dumps(
        {"model": model_options, "dataset": dataset_options}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Location:
    """A checked destination: ``out_dir`` is ``root/model/name``."""

    out_dir: Path

    @property
    def parent(self) -> Path:
        return self.out_dir.parent


def check_location(
    root: str | os.PathLike[str],
    model: str,
    name: str,
    key: str,
    *,
    overwrite: bool = False,
    create: bool = True,
) -> Location:
    """Refuse, with one line, a destination the reports could not be written to, or one that
    holds another run's report. Creates the folders up to ``root/model`` (not the report
    folder itself, which appears whole at the end) and writes a probe file there; with
    ``create=False`` (``qbench validate``) it writes nothing and asks the nearest existing
    folder for write permission instead."""
    out_dir = Path(root) / safe_part(model) / safe_part(name)
    where = f"output.dir {_short(str(root))!r}"
    for part in out_dir.parts:
        if len(os.fsencode(part)) > 200:  # staging names add ~30 bytes to 255-byte NAME_MAX
            raise QBenchError(
                f"{where}: the folder name {part[:40]!r}... is {len(os.fsencode(part))} bytes; "
                "names of at most 200 bytes are allowed (shorten output.dir or the config name)"
            )
    for ancestor in [out_dir, *out_dir.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise QBenchError(
                f"{where}: {ancestor} is a file, not a folder; choose another output.dir "
                "(or --output)"
            )
    try:
        if create:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=out_dir.parent, prefix=".qbench-probe-").close()
        else:
            existing = next(p for p in [out_dir, *out_dir.parents] if p.exists())
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "permission denied", str(existing))
    except OSError as exc:
        raise QBenchError(
            f"{where}: cannot write reports under {out_dir.parent}: "
            f"{exc.strerror or exc}; allowed: a folder that exists or can be created, writable"
        ) from None
    previous = out_dir / "report.json"
    if previous.is_file() and not overwrite:
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        old_key = old.get("run_key") if isinstance(old, dict) else None
        if old_key is not None and old_key != key:
            images = (old.get("dataset") or {}).get("images")
            raise QBenchError(
                f"{where}: {out_dir} holds the report of another run "
                f"({images} images, other model or data options); pass --overwrite to "
                "replace it, or give this run another name or output.dir"
            )
    return Location(out_dir)


def _short(text: str, keep: int = 60) -> str:
    """``text`` for a one-line message: a long one keeps its start and end."""
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]}"


def write_report_set(
    location: Location,
    report: Mapping[str, Any],
    reporters: Iterable[tuple[str, Any, str]],
) -> list[Path]:
    """Write the set: each ``(name, reporter, plugin label)`` writes into a staging folder,
    which then replaces ``location.out_dir`` whole. Returns the final paths. A reporter that
    raises is skipped (the others write); its failure is raised as a one-line
    :class:`QBenchError` once the rest of the set is in place."""
    out_dir = location.out_dir
    _remove_strays(out_dir)
    failures: list[str] = []
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_STAGING}", dir=out_dir.parent))
        _honour_umask(staging, 0o777)
        written: list[Path] = []
        for name, reporter, plugin in reporters:
            try:
                written.extend(Path(p) for p in reporter.write(report, staging))
            except OSError:
                raise
            except Exception as exc:  # a broken reporter plugin: name it, keep the others
                first = (str(exc).strip().splitlines() or [""])[0]
                failures.append(
                    f"reporter {name!r} ({plugin}) failed: {type(exc).__name__}: {first}"
                )
        _install(staging, out_dir)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        saved = save_fallback(report, out_dir)
        raise QBenchError(
            f"output: cannot write the reports to {out_dir}: {exc.strerror or exc}; "
            f"the results were saved to {saved}"
        ) from None
    final = [out_dir / p.relative_to(staging) for p in written]
    if failures:
        raise QBenchError("; ".join(failures) + f"; the other reports were written to {out_dir}")
    return final


def _install(staging: Path, out_dir: Path) -> None:
    """Swap ``staging`` into ``out_dir``: the old set is renamed aside, the new one renamed in,
    the old one removed. A crash between the two renames leaves no report folder (and the
    old set in a retired folder that the next write removes), never a mix."""
    retired = None
    if out_dir.exists() or out_dir.is_symlink():
        retired = out_dir.parent / f".{out_dir.name}{_RETIRED}{os.getpid()}-{time.time_ns()}"
        os.rename(out_dir, retired)
    os.rename(staging, out_dir)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _remove_strays(out_dir: Path) -> None:
    """Staging and retired folders of ``out_dir`` left by a killed run, and temporary files
    of older QBench versions inside it (``.report.json.*.tmp``)."""
    for prefix in (_STAGING, _RETIRED):
        for stray in out_dir.parent.glob(f".{out_dir.name}{prefix}*"):
            shutil.rmtree(stray, ignore_errors=True)
    if out_dir.is_dir():
        for stray in out_dir.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stray.unlink()


def save_fallback(report: Mapping[str, Any], out_dir: Path) -> Path:
    """``report.json`` in a fresh folder under ``$QBENCH_FALLBACK_DIR`` (else the system
    temporary folder), for a report that could not go where it was asked to."""
    root = Path(os.environ.get(FALLBACK_ENV) or tempfile.gettempdir()) / "qbench-unsaved"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{out_dir.parent.name}-{out_dir.name}-", dir=root))
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _honour_umask(path: Path, mode: int) -> None:
    """mkdtemp and mkstemp create 0700/0600: give ``path`` what a plain open would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)

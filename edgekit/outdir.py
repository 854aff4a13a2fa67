"""The output folder (``--out``): what an export may write, replace and remove.

An export owns only what it creates. It writes into a folder that does not exist, an
empty folder, or a folder that holds exactly one previous edgekit artifact: an
``artifact.json`` with edgekit's schema whose every stage has a sha256 that still matches
its file, and nothing the manifest does not list. Replacing that previous artifact needs
``force`` (``--force``); even then only the files its manifest lists are deleted. Anything
else is refused before any work starts, and nothing is touched.

The new artifact is built in ``.NAME.partial-PID-XXXX`` beside ``--out`` and renamed into
place when complete; the artifact it replaces is moved to ``.NAME.old-PID-XXXX`` for the
instant between the two renames. The process id in those names lets the next export into
the same ``--out`` remove what a killed process (SIGKILL, power loss) left behind, and
restore a previous artifact caught between the renames. Processes that are alive, or on
another machine sharing the folder, are never touched: a live PID is left alone.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from . import signals
from .artifact import MANIFEST, SCHEMA, sha256_path
from .errors import UsageError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old|probe)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_NOT_OURS = "edgekit writes only into a new folder, an empty one, or a previous edgekit artifact"


class _Quiet:
    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass


def out_error(action: str, path: Path, exc: OSError) -> UsageError:
    """An OS error on the output folder, as the OS says it, with the path it concerns."""
    where = path  # exc.filename may be edgekit's temporary name beside it: say the user's path
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        hint = f"{path} looks like a mount point or another file system: choose a folder inside it as --out"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose an --out folder you can write to"
    elif exc.errno == errno.ENOSPC:
        hint = "free some space or choose an --out on another disk"
    else:
        hint = "choose another --out"
    return UsageError(f"cannot {action} {where}: {reason}", hint=hint)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process on this machine; unsure means alive."""
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's process
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def artifact_files(dest: Path) -> set[str]:
    """The entries (relative paths, files and folders) of the previous artifact in ``dest``.

    Raises UsageError unless ``dest`` holds exactly a previous edgekit artifact (see module doc).
    """
    manifest = dest / MANIFEST
    problem = f"output folder {dest} is not a previous edgekit artifact"
    try:
        d = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{problem}: {MANIFEST} is not readable JSON ({type(exc).__name__})", hint=_NOT_OURS) from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise UsageError(f"{problem}: {MANIFEST} does not have edgekit's schema ({SCHEMA})", hint=_NOT_OURS)
    stages = d.get("stages")
    if not isinstance(stages, list):  # empty is fine: a dry run of a torch-fed target
        raise UsageError(f"{problem}: {MANIFEST} has no list of stages", hint=_NOT_OURS)
    root = dest.resolve()
    owned = {MANIFEST}
    for s in stages:
        rel, sha = (s.get("path"), s.get("sha256")) if isinstance(s, dict) else (None, None)
        if not isinstance(rel, str) or not rel or not isinstance(sha, str) or not sha:
            raise UsageError(f"{problem}: a stage in {MANIFEST} has no path or no sha256", hint=_NOT_OURS)
        raw = root / rel
        p = raw.resolve()
        if Path(rel).is_absolute() or not p.is_relative_to(root) or p == root:
            raise UsageError(f"{problem}: stage path {rel!r} is outside the folder", hint=_NOT_OURS)
        if raw.is_symlink() or not p.exists():
            continue  # a missing stage file: nothing of it to delete (a link is not ours: listed below)
        if sha256_path(p) != sha:
            raise UsageError(f"{problem}: {rel} changed since edgekit wrote it (sha256 mismatch)",
                             hint="edgekit will not delete a file you modified: move it, or choose another --out")
        rel = p.relative_to(root)
        owned.update(str(q) for q in (rel, *rel.parents) if str(q) != ".")
        if p.is_dir():
            for sub in p.rglob("*"):
                if not sub.is_symlink():
                    owned.add(str(sub.relative_to(root)))
    extra = sorted(str(e.relative_to(root)) for e in _entries(root) if str(e.relative_to(root)) not in owned)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UsageError(f"output folder {dest} holds {extra[0]}{more}, which its {MANIFEST} does not list",
                         hint=f"edgekit never deletes files its manifest does not list: move {extra[0]} "
                              "elsewhere, or choose another --out")
    return owned


def _entries(root: Path) -> Iterator[Path]:
    """Every file, folder and link under ``root`` (links are not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            yield Path(dirpath) / n


def claim(dest: Path, force: bool, log: Any = None) -> Path:
    """Check that an export may write ``dest``, before any work; returns it made absolute.

    Also removes what dead exports into the same ``dest`` left beside it (see module doc).
    """
    log = log or _Quiet()
    try:
        dest = Path(dest).expanduser().resolve()
        clean_leftovers(dest, log)
        previous = dest.exists() and _check_existing(dest)
    except OSError as exc:
        raise out_error("use", dest, exc) from None
    if previous and not force:
        raise UsageError(f"{dest} already holds an edgekit artifact", hint="pass --force to replace it")
    _probe(dest)
    return dest


def _check_existing(dest: Path) -> bool:
    """True if ``dest`` holds a previous artifact, False if it is an empty folder; else UsageError."""
    if not dest.is_dir():
        raise UsageError(f"output path {dest} exists and is not a folder", hint="choose another --out")
    if not any(dest.iterdir()):
        return False
    if not (dest / MANIFEST).is_file():
        raise UsageError(f"output folder {dest} is not empty and was not written by edgekit",
                         hint=f"choose another --out: {_NOT_OURS}")
    artifact_files(dest)
    return True


def _probe(dest: Path) -> None:
    """Fail now, not after the work, if the folder that will hold ``dest`` cannot be written:
    make and remove an empty folder in its nearest existing ancestor."""
    at = dest.parent
    while not at.exists() and at != at.parent:
        at = at.parent
    try:
        if not at.is_dir():
            raise UsageError(f"cannot write {dest}: {at} is not a folder", hint="choose another --out")
        with signals.deferred():  # a Ctrl-C between the two calls would leave the probe behind
            os.rmdir(tempfile.mkdtemp(prefix=f".{dest.name}.probe-{os.getpid()}-", dir=at))
    except OSError as exc:
        raise out_error("write", dest, exc) from None


def clean_leftovers(dest: Path, log: Any) -> None:
    """Remove ``.NAME.partial-PID-*`` folders of dead processes beside ``dest``; put back a
    previous artifact left in ``.NAME.old-PID-*`` if ``dest`` is gone, else remove it."""
    try:
        siblings = list(dest.parent.iterdir()) if dest.parent.is_dir() else []
    except OSError:
        return  # an unreadable parent: the export itself will say so
    for p in sorted(siblings):
        m = _LEFTOVER.match(p.name)
        if not m or m["name"] != dest.name or p.is_symlink() or not p.is_dir() or _alive(int(m["pid"])):
            continue
        try:
            if m["kind"] in ("partial", "probe"):
                with signals.deferred():
                    shutil.rmtree(p)
                log.info(f"removed {p}: an unfinished export left it (process {m['pid']} is gone)")
            elif not dest.exists():
                os.replace(p, dest)
                log.warn(f"restored {dest} from {p.name}: an export replacing it was killed between two renames")
            else:
                remove_artifact(p, log)
        except OSError as exc:
            log.warn(f"could not remove {p}: {exc.strerror or exc}")


def remove_artifact(folder: Path, log: Any) -> None:
    """Delete exactly the files a previous artifact's manifest lists, then its emptied
    folders; anything else is kept (and said)."""
    try:
        owned = artifact_files(folder)
    except UsageError as exc:
        log.warn(f"kept {folder}: {exc.message}")
        return
    with signals.deferred():
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            here = Path(dirpath)
            for n in filenames:
                if str((here / n).relative_to(folder)) in owned:
                    (here / n).unlink()
            for n in dirnames:
                if str((here / n).relative_to(folder)) in owned:
                    with contextlib.suppress(OSError):
                        (here / n).rmdir()
        try:
            folder.rmdir()
        except OSError:
            left = sorted(str(e.relative_to(folder)) for e in _entries(folder))
            log.warn(f"kept {folder}: it holds {', '.join(left[:3])}, which the old manifest does not list")


@contextlib.contextmanager
def atomic_dir(dest: Path, overwrite: bool = True, log: Any = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success rename it to ``dest``.

    ``dest`` must be claimable (:func:`claim`; ``overwrite`` is ``--force``). On any
    exception (KeyboardInterrupt and SIGTERM included) the temporary folder is removed and
    ``dest`` is left as it was. A previous artifact is replaced by two renames; then its
    listed files are deleted, and nothing else.
    """
    log = log or _Quiet()
    dest = claim(dest, overwrite, log)
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # parents we create
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-", dir=dest.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the artifact is an ordinary folder
    except OSError as exc:
        _remove_empty(made)
        raise out_error("write", dest, exc) from None
    try:
        yield tmp
        signals.check()  # an interrupt some library swallowed still stops the export
        with signals.deferred():
            _commit(tmp, dest, overwrite, log)
            signals.output_complete(dest)
    except BaseException:
        with signals.deferred():
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the parent folders this export created, innermost first, if still empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _commit(tmp: Path, dest: Path, overwrite: bool, log: Any) -> None:
    # the folder may have changed during the export (a file added to it): check again
    claim(dest, overwrite, log)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.replace(dest, old)
        except OSError as exc:
            raise out_error("replace", dest, exc) from None
    try:
        os.replace(tmp, dest)
    except OSError as exc:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, dest)
        raise out_error("create", dest, exc) from None
    if old is not None:
        if any(old.iterdir()):
            remove_artifact(old, log)
        else:
            old.rmdir()

"""Fetching an archive with an MD5 check and extracting it without path traversal.

Nothing half-done is ever left where a loader would find it: the download streams
into a temporary file that is renamed into place only once its MD5 matches, and the
archive is extracted into a temporary folder from which its files are moved into
place one by one. The data folder is claimed through
:class:`~robustode.outputs.OutputFolder`: robustode replaces only files it wrote
there (a partly filled folder keeps a user's files; one that differs from the
archive's is refused by name), and two downloads never run into one folder at once.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import FolderError
from ..outputs import OutputFolder
from .dataset import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: Path, md5: str, *, what: str, folder: OutputFolder) -> Path:
    """Download ``url`` to ``dest`` (inside the claimed ``folder``) unless a file with the
    right MD5 is already there; a file of another MD5 there is replaced only if robustode
    wrote it.

    ``what`` names, for the error message, the folder the user can provide instead
    when there is no network.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    try:
        folder.prepare_write(dest)
    except FolderError as exc:
        raise DataError(f"{exc} (it is not the archive {url} names: its MD5 differs)") from None
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None)
                with bar:
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"cannot download {url} ({reason}); {what}") from None
        if digest.hexdigest() != md5:
            raise DataError(
                f"{url}: MD5 {digest.hexdigest()} does not match the expected {md5}; "
                "the download was corrupt or is not the official file, and was removed"
            )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything that could land outside the extraction folder or is not plain data."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing the unsafe path '{member.name}' in the archive")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refusing '{member.name}' (links and special files are not extracted)"
        )


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and file_md5(a) == file_md5(b)


def extract_folder(archive: Path, name: str, dest: Path, *, folder: OutputFolder) -> Path:
    """Extract ``archive`` (a tar, possibly compressed) and move the files of its folder
    ``name`` into ``dest/name`` (inside the claimed ``folder``).

    Every member is checked first; one unsafe member refuses the whole archive. Files
    already there are kept: equal ones as they are, a user's different one refused by
    name, robustode's own replaced; files the archive does not hold are never touched.
    """
    archive, dest = Path(archive), Path(dest)
    target = dest / name
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
                # our own check above is the guarantee; the "data" filter (Python ≥ 3.11.4)
                # is a second line of defence where it exists
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kwargs)
                extracted = Path(tmp) / name
                if not extracted.is_dir():
                    raise DataError(f"{archive} holds no folder '{name}'")
                files = sorted(p for p in extracted.rglob("*") if p.is_file())
                conflicts = [
                    target / f.relative_to(extracted)
                    for f in files
                    if (target / f.relative_to(extracted)).exists()
                    and not folder.owns(target / f.relative_to(extracted))
                    and not _same_bytes(f, target / f.relative_to(extracted))
                ]
                if conflicts:
                    raise DataError(
                        f"{conflicts[0]} differs from the file of {archive.name} and robustode "
                        "did not write it, so it is not replaced; move it away (or delete it) "
                        "and download again"
                    )
                for f in files:
                    place = target / f.relative_to(extracted)
                    if place.exists() and not folder.owns(place):
                        continue  # the user's copy, equal to the archive's
                    f.replace(folder.prepare_write(place))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from None
    return target

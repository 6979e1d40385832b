"""Fetching an archive with an MD5 check and extracting it without path traversal.

Nothing half-done is ever left where a loader would find it: the download streams
into a temporary file that is renamed into place only once its MD5 matches, and the
archive is extracted into a temporary folder from which only the expected folder is
renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .dataset import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: Path, md5: str, *, what: str) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right MD5 is already there.

    ``what`` names, for the error message, the folder the user can provide instead
    when there is no network.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
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


def extract_folder(archive: Path, folder: str, dest: Path) -> Path:
    """Extract ``archive`` (a tar, possibly compressed) and move its ``folder`` to ``dest/folder``.

    Every member is checked first; one unsafe member refuses the whole archive.
    """
    archive, dest = Path(archive), Path(dest)
    target = dest / folder
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
                extracted = Path(tmp) / folder
                if not extracted.is_dir():
                    raise DataError(f"{archive} holds no folder '{folder}'")
                if target.exists():
                    shutil.rmtree(target)
                extracted.replace(target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from None
    return target

"""Packages: folders and files turned into content-addressed zips, and back.

A package's URI is ``gcs://_ember_pkg_<sha1 of the zip>.zip`` (``.whl`` for
wheels): the same content gives the same URI, so a folder is stored in the
cluster once however many jobs and tasks use it. Zips are built
deterministically (sorted entries, fixed timestamps) so that the hash depends
on the files' names, contents and modes only.

``zip_directory`` honours ``excludes`` (gitignore-style patterns relative to
the folder) and every ``.gitignore`` / ``.rayignore`` inside it (each applies
to its own subtree). ``unpack`` refuses entries that would land outside the
target folder (``../``, absolute paths, links pointing outside).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

#: The scheme of packages stored in the cluster (Ray's too).
CLUSTER_SCHEME = "gcs"
_PREFIX = f"{CLUSTER_SCHEME}://_ember_pkg_"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
IGNORE_FILES = (".gitignore", ".rayignore")


class PackageError(Exception):
    """A package could not be built or unpacked (the callers turn it into the user-facing error)."""


def is_cluster_uri(uri: str) -> bool:
    return uri.startswith(f"{CLUSTER_SCHEME}://")


def package_uri(data: bytes, suffix: str = ".zip") -> str:
    return f"{_PREFIX}{hashlib.sha1(data).hexdigest()}{suffix}"


def package_name(uri: str) -> str:
    """A file-system-safe name for ``uri`` (its local folder's name)."""
    if is_cluster_uri(uri):
        return uri.split("://", 1)[1].rsplit(".", 1)[0]
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    base = os.path.basename(uri.rstrip("/")).rsplit(".", 1)[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]
    return f"_uri_{safe}_{digest}"


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MiB"


# ============================================================ building
class _Ignorer:
    """gitignore-style patterns, each set anchored at a folder."""

    def __init__(self, root: str, excludes: list[str]) -> None:
        self._specs: list[tuple[str, Any]] = []
        if excludes:
            self._specs.append((root, self._compile(excludes)))

    @staticmethod
    def _compile(lines: list[str]) -> Any:
        import pathspec

        return pathspec.GitIgnoreSpec.from_lines(lines)

    def add_ignore_files(self, folder: str) -> None:
        for name in IGNORE_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, errors="replace") as f:
                    self._specs.append((folder, self._compile(f.read().splitlines())))

    def ignored(self, path: str, is_dir: bool) -> bool:
        for base, spec in self._specs:
            rel = os.path.relpath(path, base)
            if rel.startswith(".."):
                continue
            if is_dir:
                rel += "/"
            if spec.match_file(rel):
                return True
        return False


def _walk(root: str, excludes: list[str]) -> Iterator[tuple[str, str]]:
    """(absolute path, path inside the package) of every file to include, sorted."""
    ignorer = _Ignorer(root, excludes)
    seen_dirs: set[str] = set()

    def visit(folder: str, rel: str) -> Iterator[tuple[str, str]]:
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a link back up the tree
            return
        seen_dirs.add(real)
        ignorer.add_ignore_files(folder)
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise PackageError(f"cannot read the folder {folder}: {exc.strerror}") from None
        for name in names:
            path = os.path.join(folder, name)
            inner = f"{rel}{name}"
            if os.path.isdir(path):
                if not ignorer.ignored(path, True):
                    yield from visit(path, inner + "/")
            elif os.path.isfile(path) and not ignorer.ignored(path, False):
                yield path, inner

    yield from visit(root, "")


def zip_directory(path: str, excludes: list[str] | None = None, *, include_folder_name: bool = False, max_bytes: int = 0) -> bytes:
    """The folder as a deterministic zip (its contents at the top, or inside its own name).

    Raises:
        PackageError: the zip would be larger than ``max_bytes`` (when > 0), or a file is unreadable.
    """
    root = os.path.abspath(path)
    prefix = os.path.basename(root) + "/" if include_folder_name else ""
    buffer = io.BytesIO()
    largest: list[tuple[int, str]] = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for full, inner in _walk(root, list(excludes or [])):
            try:
                st = os.stat(full)
                with open(full, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise PackageError(f"cannot read {full}: {exc.strerror}") from None
            info = zipfile.ZipInfo(prefix + inner, _FIXED_TIME)
            info.external_attr = (stat.S_IFREG | (st.st_mode & 0o755) | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            largest.append((len(data), inner))
            if max_bytes and buffer.tell() > max_bytes:
                largest.sort(reverse=True)
                top = ", ".join(f"{name} ({_mib(size)})" for size, name in largest[:5])
                raise PackageError(
                    f"the package of {root} is larger than the limit of {_mib(max_bytes)} "
                    f"(largest files so far: {top}). Exclude large files with 'excludes' in the "
                    "runtime_env or a .gitignore, or upload a zip somewhere and give its URI "
                    "(the limit is the config field runtime_env_max_package_bytes)."
                )
    return buffer.getvalue()


# ============================================================ unpacking
def check_entries(zf: zipfile.ZipFile) -> None:
    """Refuse a zip with an entry that would escape its folder (zip-slip) or a link pointing outside.

    Raises:
        PackageError: naming the entry.
    """
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise PackageError(f"the zip entry {name!r} is an absolute path; refusing to unpack it")
        parts = name.replace("\\", "/").split("/")
        if ".." in parts:
            raise PackageError(f"the zip entry {name!r} escapes its folder ('..'); refusing to unpack it")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            root = "/__package__"
            resolved = os.path.normpath(os.path.join(root, os.path.dirname(name), target))
            if target.startswith("/") or not (resolved + "/").startswith(root + "/"):
                raise PackageError(f"the zip entry {name!r} is a link to {target!r}, outside its folder; refusing to unpack it")


def _single_top_folder(zf: zipfile.ZipFile) -> str | None:
    tops = {info.filename.split("/", 1)[0] for info in zf.infolist() if info.filename.strip("/")}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    if any(info.filename == top for info in zf.infolist()):  # a file, not a folder
        return None
    return top


def unpack(data_or_path: bytes | str, dest: str, *, strip_top_folder: bool = False) -> None:
    """Unpack a zip into the new folder ``dest`` (written aside, then renamed into place).

    ``strip_top_folder``: if every entry lies in one top-level folder, its contents become
    ``dest`` (how Ray treats zips given by URI).
    """
    source: Any = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack_", dir=parent)
    try:
        try:
            zf = zipfile.ZipFile(source)
        except zipfile.BadZipFile as exc:
            raise PackageError(f"not a valid zip file: {exc}") from None
        with zf:
            check_entries(zf)
            top = _single_top_folder(zf) if strip_top_folder else None
            for info in zf.infolist():
                name = info.filename
                if top is not None:
                    name = name[len(top) + 1:]
                    if not name:
                        continue
                target = os.path.join(tmp, name)
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    os.symlink(zf.read(info).decode(), target)
                    continue
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                if mode & 0o111:
                    os.chmod(target, 0o755)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_zip_file(path: str) -> None:
    """Refuse a local zip before it is uploaded (the same checks nodes make before unpacking)."""
    try:
        with zipfile.ZipFile(path) as zf:
            check_entries(zf)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{path} is not a valid zip file: {exc}") from None

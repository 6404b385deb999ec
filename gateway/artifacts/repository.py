"""The model repository on disk: `<repo>/<name>/<version>/{model.onnx, manifest.json}`.

Version directories are immutable; `serving.json` names the live version. Every write is
atomic (temp file or directory, fsync, rename) so a crash never leaves half an artifact.
Names and versions are checked against strict patterns before they touch a path, so a
request can never walk out of the repository.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import msgspec

from gateway.artifacts.manifest import Manifest, decode_manifest, encode_manifest
from gateway.artifacts.onnx_refs import ExternalDataError, check_external_data
from gateway.errors import clip

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SERVING_FILE = "serving.json"
# A version being written: a dot-directory at the root, never a model name, so a convert
# killed mid-write leaves nothing that any server reads (nor that blocks another convert).
STAGING_PREFIX = ".publish-"
STALE_STAGING_S = 3600.0  # a staging directory this old is a killed convert's: removed
# What a repository file may weigh: a model that protobuf can hold, manifests with their
# reference statistics, serving.json's two versions. Larger is refused before it is read.
MAX_MODEL_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 16 * 1024**2
MAX_SERVING_BYTES = 64 * 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_INT_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?")


class RepositoryError(Exception):
    """A repository operation was refused; the message says why and what to do."""


class IntegrityError(RepositoryError):
    """An artifact's bytes do not match the sha256 its manifest records."""


class Canary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A candidate served beside the live version to `weight` % of requests."""

    version: str
    weight: float


# omit_defaults: a file without a canary is written as before, so an older gateway reads it.
class ServingState(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    live: str
    previous: str | None = None
    canary: Canary | None = None  # absent in files written before canaries existed
    shadow: str | None = None  # a version mirrored live traffic, off the hot path


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and ".." not in name


def is_valid_version(version: str) -> bool:
    return _INT_VERSION.fullmatch(version) is not None or _SEMVER.fullmatch(version) is not None


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if not is_valid_version(version):
        raise RepositoryError(f"invalid version {version!r}: use a positive integer (3) or semver (1.2.0)")
    return version


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """Order integers numerically and semver by precedence (pre-releases first)."""
    if _INT_VERSION.fullmatch(version):
        return (int(version), 0, 0, 1, "")
    match = _SEMVER.fullmatch(version)
    if match is None:
        raise RepositoryError(f"invalid version {version!r}")
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """A repository file's bytes, refused unless it is a regular file (not a symlink, FIFO
    or device: `/dev/zero` would never end, a FIFO would block forever) of at most `limit`
    bytes. `what` names it in messages, which never carry absolute paths."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"{what} is missing") from None
        if exc.errno == errno.ELOOP:
            raise RepositoryError(f"{what} is a symbolic link; repository files must be regular") from None
        raise RepositoryError(f"{what} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RepositoryError(f"{what} is not a regular file")
        if info.st_size > limit:
            raise RepositoryError(f"{what} is {info.st_size} bytes; the limit is {limit}")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise RepositoryError(f"{what} grew beyond {limit} bytes while it was read")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dir(path: Path) -> bool:
    """Create `path`; whether this call made it (so that a failure may remove it)."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def _remove_stale_staging(root: Path) -> None:
    """What killed converts left: ignored by servers, but disk. A younger one may be a
    convert still writing, so it stays."""
    cutoff = time.time() - STALE_STAGING_S
    for path in root.glob(STAGING_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Repository:
    """A local model repository. Cheap to construct; every call reads the disk afresh."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def refresh(self) -> None:
        """Bring the local view up to date; a local repository always is."""

    def models(self) -> list[str]:
        """The names with at least one complete version. A directory without one (what a
        failed copy or an older gateway's interrupted convert leaves) is no model: serving
        it would make every server unready until a person deletes it."""
        if not self.root.is_dir():
            return []
        names = (p.name for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name))
        return sorted(name for name in names if self.versions(name))

    def versions(self, name: str) -> list[str]:
        """The versions of `name` with a manifest: publish writes it with the model in one
        rename, a remote mirror writes it last."""
        base = self.root / check_name(name)
        if not base.is_dir():
            return []
        found = [
            p.name
            for p in base.iterdir()
            if p.is_dir() and is_valid_version(p.name) and (p / MANIFEST_FILE).is_file() and self._inside(p)
        ]
        return sorted(found, key=version_key)

    def _inside(self, path: Path) -> bool:
        """Whether `path`, symbolic links resolved, still lies inside the repository."""
        return path.resolve().is_relative_to(self.root.resolve())

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / check_version(version)

    def _checked_dir(self, name: str, version: str) -> Path:
        """The version directory, refused if a symbolic link leads it out of the repository."""
        path = self.version_dir(name, version)
        if path.exists() and not self._inside(path):
            raise RepositoryError(f"{name}:{version} leads outside the repository; refusing it")
        return path

    def manifest(self, name: str, version: str) -> Manifest:
        path = self._checked_dir(name, version) / MANIFEST_FILE
        what = f"{name}/{version}/{MANIFEST_FILE}"
        try:
            manifest = decode_manifest(read_regular(path, MAX_MANIFEST_BYTES, what))
        except FileNotFoundError:
            raise RepositoryError(f"model {name!r} has no version {version!r}") from None
        except (msgspec.DecodeError, ValueError) as exc:
            raise RepositoryError(f"{what}: unreadable manifest: {exc}") from exc
        if manifest.name != name or manifest.version != version:
            raise RepositoryError(
                f"{what} describes {clip(manifest.name)!r} version {clip(manifest.version)!r}, "
                "not the directory it is in; refusing it"
            )
        return manifest

    def load_verified(self, name: str, version: str) -> tuple[Manifest, bytes]:
        """Read the artifact and refuse it unless its sha256 matches the manifest and it
        reads no file outside itself."""
        manifest = self.manifest(name, version)
        directory = self._checked_dir(name, version)
        try:
            data = read_regular(directory / MODEL_FILE, MAX_MODEL_BYTES, f"{name}:{version}: {MODEL_FILE}")
        except FileNotFoundError:
            raise IntegrityError(f"{name}:{version}: {MODEL_FILE} is missing") from None
        actual = sha256_bytes(data)
        if actual != manifest.onnx.sha256:
            raise IntegrityError(
                f"{name}:{version}: {MODEL_FILE} sha256 {actual[:12]}… does not match the "
                f"manifest's {manifest.onnx.sha256[:12]}…; refusing to load it"
            )
        try:
            # The manifest lists no external data files yet, so nothing external is vouched for.
            check_external_data(data, directory, {})
        except ExternalDataError as exc:
            raise IntegrityError(f"{name}:{version}: {exc}") from None
        return manifest, data

    def serving(self, name: str) -> ServingState | None:
        path = self.root / check_name(name) / SERVING_FILE
        what = f"{name}/{SERVING_FILE}"
        try:
            return msgspec.json.decode(read_regular(path, MAX_SERVING_BYTES, what), type=ServingState)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, ValueError) as exc:
            raise RepositoryError(f"{what}: unreadable: {exc}") from exc

    def live_version(self, name: str) -> str:
        """The version `serving.json` names, or the newest one when there is none."""
        state = self.serving(name)
        if state is not None:
            return state.live
        versions = self.versions(name)
        if not versions:
            raise RepositoryError(f"model {name!r} has no versions in the repository")
        return versions[-1]

    def set_live(self, name: str, version: str) -> ServingState:
        """Make `version` live, remembering the one it replaces for rollback. A promote
        ends any canary: the experiment is decided."""
        if version not in self.versions(name):
            raise RepositoryError(f"model {name!r} has no version {version!r}")
        current = self.serving(name)
        previous = current.live if current is not None else None
        if previous == version:
            previous = current.previous if current is not None else None
        shadow = current.shadow if current is not None and current.shadow != version else None
        state = ServingState(live=version, previous=previous, shadow=shadow)
        self._write_serving(name, state)
        return state

    def set_shadow(self, name: str, version: str | None) -> ServingState:
        """Mirror `name`'s live requests to `version`; None ends the shadow."""
        current = self.serving(name)
        live = current.live if current is not None else self.live_version(name)
        if version is not None:
            if version not in self.versions(name):
                raise RepositoryError(f"model {name!r} has no version {version!r}")
            if version == live:
                raise RepositoryError(f"{name}:{version} is already live; a shadow needs another version")
        if current is None:
            current = ServingState(live)
        state = msgspec.structs.replace(current, shadow=version)
        self._write_serving(name, state)
        return state

    def set_canary(self, name: str, version: str | None, weight: float) -> ServingState:
        """Send `weight` % of `name`'s requests to `version` beside the live one; weight 0
        (or no version) ends the canary."""
        if not 0 <= weight <= 100:  # NaN fails this too
            raise RepositoryError(f"canary weight must be a percentage from 0 to 100, not {weight}")
        current = self.serving(name)
        live = current.live if current is not None else self.live_version(name)
        canary = None
        if weight > 0 and version is not None:
            if version not in self.versions(name):
                raise RepositoryError(f"model {name!r} has no version {version!r}")
            if version == live:
                raise RepositoryError(f"{name}:{version} is already live; a canary needs another version")
            canary = Canary(version, weight)
        state = ServingState(
            live, current.previous if current is not None else None, canary,
            current.shadow if current is not None else None,
        )  # fmt: skip
        self._write_serving(name, state)
        return state

    def rollback(self, name: str) -> ServingState:
        """End the canary when there is one (the live version stays); otherwise make the
        previous version live again."""
        current = self.serving(name)
        if current is not None and current.canary is not None:
            state = msgspec.structs.replace(current, canary=None)
            self._write_serving(name, state)
            return state
        if current is None or current.previous is None:
            raise RepositoryError(f"model {name!r} has no previous version to roll back to")
        shadow = current.shadow if current.shadow != current.previous else None
        state = ServingState(live=current.previous, previous=current.live, shadow=shadow)
        self._write_serving(name, state)
        return state

    def _write_serving(self, name: str, state: ServingState) -> None:
        atomic_write(self.root / name / SERVING_FILE, msgspec.json.encode(state) + b"\n")

    def publish(self, manifest: Manifest, model: bytes) -> Path:
        """Write a new immutable version; it appears whole or not at all, and a failure
        (a full disk, a kill) leaves nothing a server would read: the files are staged in a
        dot-directory at the repository's root, which no server treats as a model, and the
        model's own directory, when this call made it, goes again unless the version lands."""
        target = self.version_dir(manifest.name, manifest.version)
        if target.exists():
            raise RepositoryError(
                f"{manifest.name}:{manifest.version} already exists in {self.root}; versions "
                "are immutable, choose a new --version"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(self.root)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX))
        made_parent = False
        try:
            for file_name, data in ((MODEL_FILE, model), (MANIFEST_FILE, encode_manifest(manifest))):
                with (staging / file_name).open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            made_parent = _make_dir(target.parent)
            # rename() onto an existing directory fails, so a concurrent publish of the
            # same version cannot overwrite this one.
            os.rename(staging, target)
            _fsync_dir(target.parent)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if made_parent:
                with contextlib.suppress(OSError):  # another publish may have landed in it
                    target.parent.rmdir()
            raise
        return target

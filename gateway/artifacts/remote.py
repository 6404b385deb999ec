"""Remote model repositories (s3://, gs://, any fsspec URL), mirrored to a local cache.

The mirror holds manifests and serving.json; model files live once per content in
`<cache>/blobs/<sha256>.onnx`, downloaded only when missing and kept only when their
sha256 matches the manifest. Everything downstream reads the mirror as a local repository,
so verification, loading and watching work the same for local and remote repositories.
Writes (serving.json, new versions) go to the remote first; a version's manifest is
uploaded last, so readers never see a version whose model is not there yet.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec

from gateway.artifacts.manifest import Manifest, decode_manifest
from gateway.artifacts.repository import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MAX_MODEL_BYTES,
    MAX_SERVING_BYTES,
    MODEL_FILE,
    SERVING_FILE,
    Repository,
    RepositoryError,
    ServingState,
    atomic_write,
    is_valid_name,
    is_valid_version,
    sha256_bytes,
)

log = logging.getLogger("gateway.remote")


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RepositoryError(
            f"{url}: remote repositories need fsspec: pip install 'onnx-gateway[remote]'"
        ) from None
    try:
        return url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as exc:
        raise RepositoryError(f"{url}: {exc}") from exc


class RemoteRepository(Repository):
    def __init__(self, url: str, cache_dir: Path | str) -> None:
        self.url = url.rstrip("/")
        self.cache = Path(cache_dir)
        self.blobs = self.cache / "blobs"
        mirror = self.cache / "mirror" / sha256_bytes(self.url.encode())[:16]
        super().__init__(mirror)
        self._fs, self._base = _filesystem(self.url)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def _remote(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def _cat(self, path: str, limit: int) -> bytes:
        """A remote file, refused (before it is fetched, when the store says its size)
        beyond `limit` bytes: a remote repository is bounded like a local one."""
        size = self._fs.size(path)
        if size is not None and size > limit:
            raise RepositoryError(f"{path.rsplit('/', 3)[-3:]}: {size} bytes; the limit is {limit}")
        data: bytes = self._fs.cat_file(path)
        if len(data) > limit:
            raise RepositoryError(f"{path.rsplit('/', 3)[-3:]}: over the {limit}-byte limit")
        return data

    def _names(self, path: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    def refresh(self) -> None:
        """Bring the mirror up to date with the remote: serving.json, manifests, models."""
        self._fs.invalidate_cache()
        for name in filter(is_valid_name, self._names(self._base)):
            local = self.root / name
            local.mkdir(exist_ok=True)
            try:
                serving = self._cat(self._remote(name, SERVING_FILE), MAX_SERVING_BYTES)
                atomic_write(local / SERVING_FILE, serving)
            except FileNotFoundError:
                (local / SERVING_FILE).unlink(missing_ok=True)
            except RepositoryError as exc:  # the mirror keeps what it had; the others refresh
                log.error("remote serving.json refused", extra={"event": "remote_error", "model": name,
                                                                "error": str(exc)})  # fmt: skip
            for version in filter(is_valid_version, self._names(self._remote(name))):
                if not (local / version / MANIFEST_FILE).exists():
                    self._mirror_version(name, version)

    def _mirror_version(self, name: str, version: str) -> None:
        try:
            data = self._cat(self._remote(name, version, MANIFEST_FILE), MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return  # an upload in progress: the manifest comes last
        except RepositoryError as exc:
            log.error("remote manifest refused", extra={"event": "remote_error", "model": name,
                                                        "version": version, "error": str(exc)})  # fmt: skip
            return
        try:
            manifest = decode_manifest(data)
        except (msgspec.DecodeError, ValueError) as exc:
            log.error(
                "unreadable remote manifest",
                extra={"event": "remote_error", "model": name, "version": version, "error": str(exc)},
            )
            return
        target = self.root / name / version
        target.mkdir(parents=True, exist_ok=True)
        blob = self._fetch_blob(name, version, manifest)
        if blob is not None:
            model_path = target / MODEL_FILE
            model_path.unlink(missing_ok=True)
            os.link(blob, model_path)
        atomic_write(target / MANIFEST_FILE, data)  # last: the version now exists locally

    def _blob(self, sha256: str) -> Path:
        return self.blobs / f"{sha256}.onnx"

    def _fetch_blob(self, name: str, version: str, manifest: Manifest) -> Path | None:
        blob = self._blob(manifest.onnx.sha256)
        if blob.exists():
            return blob
        try:
            data = self._cat(self._remote(name, version, MODEL_FILE), MAX_MODEL_BYTES)
        except RepositoryError as exc:
            log.error("remote artifact too large", extra={"event": "integrity_error", "model": name,
                                                          "version": version, "error": str(exc)})  # fmt: skip
            return None
        actual = sha256_bytes(data)
        if actual != manifest.onnx.sha256:
            # Not cached: loading this version will fail its own sha256 check, loudly.
            log.error("remote artifact does not match its manifest", extra={
                "event": "integrity_error", "model": name, "version": version,
                "expected": manifest.onnx.sha256, "actual": actual,
            })  # fmt: skip
            return None
        atomic_write(blob, data)
        return blob

    def _write_serving(self, name: str, state: ServingState) -> None:
        data = msgspec.json.encode(state) + b"\n"
        self._fs.pipe_file(self._remote(name, SERVING_FILE), data)
        atomic_write(self.root / name / SERVING_FILE, data)

    def publish(self, manifest: Manifest, model: bytes) -> Path:
        name, version = manifest.name, manifest.version
        if self._fs.exists(self._remote(name, version, MANIFEST_FILE)):
            raise RepositoryError(f"{name}:{version} already exists in {self.url}; versions are immutable")
        local = super().publish(manifest, model)
        self._fs.pipe_file(self._remote(name, version, MODEL_FILE), model)
        self._fs.pipe_file(self._remote(name, version, MANIFEST_FILE), (local / MANIFEST_FILE).read_bytes())
        shutil.copyfile(local / MODEL_FILE, self._blob(manifest.onnx.sha256))
        return local


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx-gateway"


def open_repository(
    location: str | Path, cache_dir: str | Path | None = None, refresh: bool = True
) -> Repository:
    """A local directory (or file:// URL) as it is; any other URL through fsspec, mirrored
    now unless `refresh` is off (the server mirrors when it loads, off the event loop)."""
    text = str(location)
    if "://" not in text:
        return Repository(text)
    if text.startswith("file://"):
        return Repository(text.removeprefix("file://"))
    repository = RemoteRepository(text, cache_dir or default_cache_dir())
    if refresh:
        repository.refresh()
    return repository

"""Files shipped inside the package (Swagger UI's scripts and styles), served from memory.

Litestar's static files router reads through a file system object; its local one stats and
reads every file in anyio's worker threads, and this service runs no thread pool. These files
are few, small and never change while the process runs, so they are read once when the app is
built and served from memory by the same router.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types.file_types import FileInfo

__all__ = ["SWAGGER_UI_DIR", "InMemoryFiles", "packaged_files_router"]

#: Swagger UI from the npm package swagger-ui-dist (its README.txt says which version).
SWAGGER_UI_DIR = Path(__file__).resolve().parent / "static" / "swagger"


class _OpenFile:
    """What Litestar's file response reads from: an async context manager with `read`."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    async def __aenter__(self) -> _OpenFile:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._buffer.close()

    async def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


class InMemoryFiles:
    """A read-only file system of the files directly in `directory`, read once (Litestar's FileSystemProtocol)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        # path -> (content, modification time: the Last-Modified and ETag of the answers)
        self._files: Mapping[str, tuple[bytes, float]] = {
            str(path): (path.read_bytes(), path.stat().st_mtime)
            for path in sorted(self.directory.iterdir())
            if path.is_file()
        }

    async def info(self, path: str, **kwargs: Any) -> FileInfo:
        if (found := self._files.get(str(path))) is None:
            raise FileNotFoundError(path)
        data, mtime = found
        return FileInfo(
            created=mtime, gid=0, ino=0, islink=False, mode=0o100444, mtime=mtime,
            name=str(path), nlink=1, size=len(data), type="file", uid=0,
        )

    async def open(self, file: str, mode: str = "rb", buffering: int = -1) -> _OpenFile:
        if (found := self._files.get(str(file))) is None:
            raise FileNotFoundError(file)
        return _OpenFile(found[0])


def packaged_files_router(path: str, directory: Path, *, cache_control: CacheControlHeader | None = None) -> Router:
    """A router serving the files of `directory` under `path`, from memory; cacheable for a day
    unless `cache_control` says otherwise."""
    return create_static_files_router(
        path=path,
        directories=[directory],
        file_system=InMemoryFiles(directory),
        name=f"static:{path}",
        cache_control=cache_control or CacheControlHeader(max_age=86_400, public=True),
        include_in_schema=False,
    )

"""A local HTTP server that answers like the Hugging Face Hub for a few model repositories.

It serves the subset of the Hub API that `huggingface_hub` (2.x) calls for `model_info`,
`snapshot_download`, `hf_hub_download` and `parse_safetensors_file_metadata`, with the headers
the client checks (read from huggingface_hub's source: file_download.py, hf_api.py, utils/_http.py):

    GET  /api/models/<org>/<name>[/revision/<rev>]   model info: sha, siblings, gated, private
    GET  /api/models/<org>/<name>/tree/<rev>[/<path>]?recursive=...   the file listing
    HEAD /<org>/<name>/resolve/<rev>/<path>          X-Repo-Commit, ETag, Content-Length
    GET  /<org>/<name>/resolve/<rev>/<path>          the bytes, with Range support (206)

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo)
and `X-Error-Message`, which huggingface_hub turns into its typed exceptions: an unknown repository
answers 401 RepoNotFound without a token and 404 with one (as the Hub does, so that private
repositories do not leak); a private repository answers 401 RepoNotFound without a token and
401 "Invalid credentials in Authorization header" with a wrong one; a gated repository's files
answer 401 GatedRepo without a token and 403 GatedRepo with a token that was not granted access.

Every request is recorded (`requests`), so tests can assert what was and was not downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores in LFS (the listing then carries an "lfs" object, like the real one).
_LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth", ".pt", ".onnx")


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes | Path]
    commit: str
    # Branch and tag names -> commit; the commit hash itself always resolves too.
    refs: dict[str, str] = field(default_factory=dict)
    # private: every request needs this token; gated: the listing is public, files need it.
    token: str | None = None
    gated: bool = False
    _etags: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def size(self, path: str) -> int:
        content = self.files[path]
        return content.stat().st_size if isinstance(content, Path) else len(content)

    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end] inclusive."""
        content = self.files[path]
        if isinstance(content, bytes):
            return content[start : end + 1]
        with content.open("rb") as f:
            f.seek(start)
            return f.read(end - start + 1)

    def etag(self, path: str) -> str:
        """The sha256 of the content, as the Hub's ETag of an LFS file (computed once per file)."""
        if path in self._etags:
            return self._etags[path]
        content = self.files[path]
        digest = hashlib.sha256()
        if isinstance(content, bytes):
            digest.update(content)
        else:
            with content.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        self._etags[path] = digest.hexdigest()
        return self._etags[path]

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit:
            return self.commit
        return self.refs.get(revision)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        token: str | None = None,
        gated: bool = False,
        tags: tuple[str, ...] = (),
    ) -> Repo:
        commit = hashlib.sha1(repo_id.encode() + json.dumps(sorted(files)).encode()).hexdigest()  # noqa: S324
        repo = Repo(
            repo_id, dict(files), commit, {"main": commit, **dict.fromkeys(tags, commit)}, token, gated
        )
        self.repos[repo_id] = repo
        return repo

    def add_dir(self, repo_id: str, directory: Path, **kwargs: Any) -> Repo:
        files: dict[str, bytes | Path] = {
            p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()
        }
        return self.add_repo(repo_id, files, **kwargs)

    def downloads(self, repo_id: str, since: int = 0) -> list[str]:
        """Paths of the files fetched whole (GET without Range) from repo_id, from request `since` on."""
        prefix = f"/{repo_id}/resolve/"
        out = []
        for r in self.requests[since:]:
            if r.method == "GET" and r.path.startswith(prefix) and r.range is None:
                out.append(unquote(r.path[len(prefix) :].split("/", 1)[1]))
        return out

    @contextmanager
    def running(self) -> Iterator[HubServer]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="hub-server", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
            self._server = None


def _tree_entry(repo: Repo, path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "file",
        "oid": hashlib.sha1(path.encode()).hexdigest(),  # noqa: S324 (an id, not security)
        "size": repo.size(path),
        "path": path,
    }
    if path.endswith(_LFS_SUFFIXES):
        entry["lfs"] = {"oid": repo.etag(path), "size": repo.size(path), "pointerSize": 134}
    return entry


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # the test output stays quiet
            return

        # --- responses ---------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, value: Any) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _error(
            self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None
        ) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        # --- auth ----------------------------------------------------------------------------
        def _token(self) -> str | None:
            value = self.headers.get("Authorization") or ""
            return value[len("Bearer ") :] if value.startswith("Bearer ") else None

        def _repo(self, repo_id: str, *, file_access: bool) -> Repo | None:
            """The repository if this request may see it; otherwise the error is sent."""
            token = self._token()
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.token and not repo.gated and token is None):
                if token is None:
                    self._error(401, "RepoNotFound", "Invalid username or password.")
                else:
                    self._error(404, "RepoNotFound", "Repository not found")
                return None
            if repo.token and token != repo.token:
                if repo.gated and not file_access:
                    return repo  # a gated repository's metadata and listing are public
                if repo.gated:
                    status = 401 if token is None else 403
                    self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
                else:
                    self._error(401, None, "Invalid credentials in Authorization header")
                return None
            return repo

        def _commit(self, repo: Repo, revision: str) -> str | None:
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        # --- routes --------------------------------------------------------------------------
        def _route(self) -> None:
            hub.requests.append(
                Request(self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization"))
            )
            url = urlsplit(self.path)
            path = url.path
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                self._model_info(m.group(1), unquote(m.group(2) or "main"))
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                self._tree(m.group(1), unquote(m.group(2)), unquote(m.group(3) or "/")[1:], recursive)
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
            else:
                self._error(404, None, f"no route {path}")

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

        def _model_info(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id, file_access=False)
            if repo is None:
                return
            commit = self._commit(repo, revision)
            if commit is None:
                return
            self._json(
                {
                    "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],  # noqa: S324
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/", maxsplit=1)[0],
                    "sha": commit,
                    "private": bool(repo.token) and not repo.gated,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "tags": ["transformers"],
                    "library_name": "transformers",
                    "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                }
            )

        def _tree(self, repo_id: str, revision: str, under: str, recursive: bool) -> None:
            repo = self._repo(repo_id, file_access=False)
            if repo is None or self._commit(repo, revision) is None:
                return
            prefix = f"{under.rstrip('/')}/" if under else ""
            entries: list[dict[str, Any]] = []
            folders: set[str] = set()
            for path in sorted(repo.files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :]
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    folder = prefix + "/".join(parts[:depth])
                    if (recursive or depth == 1) and folder not in folders:
                        folders.add(folder)
                        entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
                if recursive or len(parts) == 1:
                    entries.append(_tree_entry(repo, path))
            self._json(entries)

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id, file_access=True)
            if repo is None:
                return
            commit = self._commit(repo, revision)
            if commit is None:
                return
            if path not in repo.files:
                self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit})
                return
            size = repo.size(path)
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": f'"{repo.etag(path)}"',
                "X-Repo-Commit": commit,
            }
            start, end, status = 0, size - 1, 200
            wanted = self.headers.get("Range")
            if wanted and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())):
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                if start >= size:
                    self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(end - start + 1)
            body = b"" if self.command == "HEAD" else repo.read(path, start, end)
            self._send(status, body, headers)

    return Handler

"""A local Hub-compatible HTTP server: the subset of the Hugging Face Hub API that ``huggingface_hub`` and
``transformers`` use to push and pull model repos, for trying ``bt2 push`` and ``from_pretrained`` without a network
(``bt2 hub-serve``) and for the tests, which push and pull through it for real.

Nothing else in the library imports it. Repos live in memory as git-like snapshots
(commit sha → {path: bytes}) with branches, so pushes to several revisions and pulls by branch or commit sha behave
as on the Hub. Every file is uploaded inline ("regular" upload mode, base64 in the NDJSON commit), and no response
carries ``X-Xet-Hash``, so the real client talks plain HTTP even with ``hf_xet`` installed.

Routes (models only):

- ``GET  /api/whoami-v2``
- ``POST /api/repos/create`` (409 when the repo exists)
- ``POST /api/validate-yaml`` (checks the card YAML as the Hub does for the keys bt2_hf writes: ``base_model`` and
  ``datasets`` entries must be repo ids, ``base_model_relation`` one of the Hub's values; 400 with ``errors``)
- ``POST /api/models/{ns}/{name}/preupload/{rev}``
- ``POST /api/models/{ns}/{name}/commit/{rev}``
- ``POST /api/models/{ns}/{name}/branch/{branch}`` (409 when the branch exists)
- ``GET  /api/models/{ns}/{name}[/revision/{rev}]`` (model info with ``sha`` and ``siblings``)
- ``GET  /api/models/{ns}/{name}/refs``
- ``GET  /api/models/{ns}/{name}/tree/{rev}[/{path}]`` (``upload_folder(delete_patterns=...)`` lists the repo)
- ``HEAD|GET /{ns}/{name}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``; 404 with
  ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``)

Private repos answer only requests that carry one of the server's tokens, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

DEFAULT_TOKEN = "hf_bt2_test_token"
USER = "bt2-tester"
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


# Hub repo ids: "name" or "namespace/name", letters, digits, "-", "_", "." (no "--" or "..", no leading/trailing "-."),
# at most 96 characters; the rules of huggingface_hub's validate_repo_id, which the Hub applies to card metadata.
_REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")
_BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}


def _is_repo_id(value: object) -> bool:
    if not isinstance(value, str) or not _REPO_ID.match(value) or len(value) > 96:
        return False
    return (
        "--" not in value and ".." not in value and not value.startswith(("-", ".")) and not value.endswith(("-", "."))
    )


def card_yaml_errors(content: str) -> list[str]:
    """What the Hub refuses in a README's YAML metadata (the subset bt2_hf cards touch)."""
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return []
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        return [f"Invalid YAML: {error}"]
    if not isinstance(metadata, dict):
        return ["The metadata must be a mapping."]
    errors = []
    for key in ("base_model", "datasets"):
        values = metadata.get(key)
        values = [values] if isinstance(values, str) or values is None else values
        for value in values:
            if value is not None and not _is_repo_id(value):
                errors.append(f'"{key}" must be a Hub repo id (namespace/name), got {value!r}')
    relation = metadata.get("base_model_relation")
    if relation is not None:
        if relation not in _BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of {sorted(_BASE_MODEL_RELATIONS)}, got {relation!r}')
        if not metadata.get("base_model"):
            errors.append('"base_model_relation" needs a "base_model"')
    return errors


@dataclass
class _Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    last_modified: str = ""

    def resolve(self, revision: str) -> str | None:
        """A branch name or a full commit sha → the commit sha, or ``None``."""
        if revision in self.branches:
            return self.branches[revision]
        if _SHA1.match(revision) and revision in self.commits:
            return revision
        return None


class FakeHub:
    """The in-memory state of the server: repos, commits and a request log.

    Args:
        tokens (`set[str]`, *optional*): tokens accepted for writes and for private repos.
    """

    def __init__(self, tokens: set[str] | None = None):
        self.tokens = set(tokens or {DEFAULT_TOKEN})
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._counter = 0

    def new_commit(self, repo: _Repo, parent: str | None, files: dict[str, bytes], message: str) -> str:
        self._counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}|{parent}|{message}|{self._counter}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
        sha = digest.hexdigest()
        repo.commits[sha] = files
        repo.last_modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return sha


class _Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass  # keep pytest output clean; the request log is FakeHub.requests

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header.removeprefix("Bearer ").strip() or None

    def _authorized(self) -> bool:
        return self._token() in self.hub.tokens

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, payload: object = None, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        content_type = "application/json" if payload is not None else "application/octet-stream"
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _repo(self, repo_id: str) -> _Repo | None:
        """The repo if it exists and the caller may see it; otherwise answers 404 / 401 and returns ``None``."""
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            # The Hub answers 401 + RepoNotFound for private repos without access, so a wrong token looks the same.
            status = 401 if repo is not None else 404
            self._error(status, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        return repo

    def _record(self) -> None:
        with self.hub.lock:
            self.hub.requests.append((self.command, urlsplit(self.path).path))

    # ------------------------------------------------------------------------------------------------ dispatch

    def do_HEAD(self) -> None:
        self._record()
        self._dispatch_get()

    def do_GET(self) -> None:
        self._record()
        self._dispatch_get()

    def do_POST(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        body = self._body()
        if path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml":
            errors = card_yaml_errors(json.loads(body or b"{}").get("content", ""))
            return self._send(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
        match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$", path)
        if not match:
            return self._error(404, None, f"Unknown route POST {path}")
        repo_id, action, revision = match.group(1), match.group(2), unquote(match.group(3))
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        with self.hub.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if action == "preupload":
                files = json.loads(body).get("files", [])
                return self._send(
                    200,
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                )
            if action == "branch":
                return self._create_branch(repo, revision, json.loads(body or b"{}"))
            return self._commit(repo, revision, body)

    def _dispatch_get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/whoami-v2":
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            return self._send(
                200,
                {
                    "type": "user",
                    "name": USER,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        match = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if match:
            recursive = "recursive=true" in urlsplit(self.path).query.lower()
            return self._tree(match.group(1), unquote(match.group(2)), unquote(match.group(3) or ""), recursive)
        match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
        if match:
            return self._model_info(match.group(1), unquote(match.group(2) or "main"))
        match = re.match(r"^/api/models/([^/]+/[^/]+)/refs$", path)
        if match:
            return self._refs(match.group(1))
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match:
            return self._resolve(match.group(1), unquote(match.group(2)), unquote(match.group(3)))
        self._error(404, None, f"Unknown route {self.command} {path}")

    # ------------------------------------------------------------------------------------------------ routes

    def _create_repo(self, payload: dict) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        if payload.get("type", "model") != "model":
            return self._error(400, None, "This test server only hosts model repos.")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                # Like the Hub, the 409 body still carries the URL: `create_repo(exist_ok=True)` reads it.
                message = "You already created this model repo"
                return self._send(409, {"error": message, "url": url}, {"X-Error-Message": message})
            repo = _Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            first = self.hub.new_commit(repo, None, {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial")
            repo.branches["main"] = first
            self.hub.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _create_branch(self, repo: _Repo, branch: str, payload: dict) -> None:
        if branch in repo.branches:
            return self._error(409, None, f"Reference refs/heads/{branch} already exists")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {payload.get('startingPoint')}")
        repo.branches[branch] = start
        self._send(200, {})

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> None:
        if revision not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision} (commit to a branch)")
        parent = repo.branches[revision]
        files = dict(repo.commits[parent])
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                expected_parent = value.get("parentCommit")
                if expected_parent and expected_parent != parent:
                    return self._error(412, None, "A commit has happened since; parentCommit is outdated")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    return self._error(400, None, f"Unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/") + "/"
                for path in [
                    p for p in files if p == value["path"] or (key == "deletedFolder" and p.startswith(prefix))
                ]:
                    del files[path]
            else:
                return self._error(400, None, f"This test server does not support {key!r} operations")
        sha = self.hub.new_commit(repo, parent, files, message)
        repo.branches[revision] = sha
        self._send(
            200,
            {"commitOid": sha, "commitUrl": f"{self.server.url}/{repo.repo_id}/commit/{sha}", "pullRequestUrl": None},
        )

    def _model_info(self, repo_id: str, revision: str) -> None:
        with self.hub.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = repo.resolve(revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[sha]
            info = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "lastModified": repo.last_modified,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "library_name": "bt2_hf",
                "siblings": [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())],
            }
        self._send(200, info)

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
        with self.hub.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = repo.resolve(revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[sha]
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{folder} does not exist at revision {revision}")
        self._send(200, entries)

    def _refs(self, repo_id: str) -> None:
        with self.hub.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()]
        self._send(200, {"branches": branches, "converts": [], "tags": []})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = repo.resolve(revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            data = repo.commits[sha].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at revision {revision}")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        self._send(200, headers=headers, body=data)


class HubServer(ThreadingHTTPServer):
    """A :class:`FakeHub` served on ``127.0.0.1`` (a free port) in a daemon thread.

    Use as a context manager, or call :meth:`start` / :meth:`stop`::

        with HubServer() as server:
            HfApi(endpoint=server.url, token=DEFAULT_TOKEN).create_repo("bt2-tester/demo")
    """

    daemon_threads = True

    def __init__(self, hub: FakeHub | None = None, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.hub = hub or FakeHub()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_interrupted(port: int = 0, host: str = "127.0.0.1", ready=print) -> None:
    """Serve a fresh in-memory Hub until Ctrl-C (``bt2 hub-serve``); ``ready`` gets the line that names its URL."""
    # Ctrl-C may land anywhere from the moment the URL is printed (a client that read it may stop us at once), so
    # the whole block is covered, the server's shutdown included.
    try:
        with HubServer(host=host, port=port) as server:
            ready(
                f"Local Hub at {server.url} (in memory, user {USER}, token {DEFAULT_TOKEN}); Ctrl-C to stop.\n"
                f"In another shell: export HF_ENDPOINT={server.url} HF_TOKEN={DEFAULT_TOKEN} HF_HUB_OFFLINE=0"
            )
            threading.Event().wait()
    except KeyboardInterrupt:
        pass

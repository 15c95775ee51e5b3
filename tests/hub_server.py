"""A Hugging Face Hub stand-in on 127.0.0.1 for the tests: enough of the Hub protocol for
the real ``huggingface_hub`` client to create repos, commit, tag, list refs, read
revision info and trees, and download files by revision.

Endpoints (model repos only, in-memory, one lock):

- ``POST /api/repos/create``                             create a repo (409 if it exists)
- ``POST /api/validate-yaml``                            check a card's front matter parses
- ``POST /api/models/{repo}/preupload/{rev}``             upload mode per file: ``lfs`` for
  weights (``*.safetensors``, ``*.bin``, ...) as ``.gitattributes`` says, ``regular`` else
- ``POST /{repo}.git/info/lfs/objects/batch``             legacy LFS batch API (basic transfer)
- ``PUT  /lfs-upload/{oid}``                              LFS object upload (sha256 checked)
- ``POST /api/models/{repo}/commit/{rev}``                NDJSON commit: header, ``file``
  (inline base64), ``lfsFile`` (uploaded object), ``deletedFile``
- ``POST /api/models/{repo}/tag/{rev}``                   create a tag (409 if it exists)
- ``GET  /api/models/{repo}/refs``                        branches and tags
- ``GET  /api/models/{repo}[/revision/{rev}]``            repo info at a revision (sha, siblings)
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``         file listing with LFS info
- ``GET|HEAD /{repo}/resolve/{rev}/{path}``               file content; headers
  ``X-Repo-Commit``, ``ETag`` (git blob sha, or the sha256 for LFS files),
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, ``Content-Length``

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
as the Hub does, so the client raises its own error classes. The server does not speak
the Xet protocol: tests disable Xet in the client (``HF_HUB_DISABLE_XET``). Every request
is logged in ``HubServer.requests`` as ``(method, path)``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npz")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob sha: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_sha(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Repo:
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 **extra: str):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


class HubState:
    """The repos and LFS objects, and the operations on them (thread-safe)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._counter = 0

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, StoredFile], summary: str) -> str:
        self._counter += 1
        listing = json.dumps(sorted((p, f.oid) for p, f in files.items()))
        sha = hashlib.sha1(f"{parent}\n{listing}\n{summary}\n{self._counter}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def commit_sha(self, repo_id: str, revision: str) -> str:
        sha = self.repo(repo_id).resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha


class HubServer:
    """Start with ``start()`` (or as a context manager); ``url`` is the endpoint."""

    def __init__(self) -> None:
        self.state = HubState()
        self.requests: list[tuple[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stopped server leaves no live keep-alive socket
    protocol_version = "HTTP/1.0"
    hub: HubServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: object, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        try:
            with self.hub.state.lock:
                self._route(parts)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _route(self, parts: list[str]) -> None:
        m = self.command
        if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and m == "POST":
            return self._create_repo()
        if parts == ["api", "validate-yaml"] and m == "POST":
            return self._validate_yaml()
        if parts[0] == "lfs-upload" and len(parts) == 2 and m == "PUT":
            return self._lfs_put(parts[1])
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", [unquote(p) for p in parts[4:]]
            if not rest and m == "GET":
                return self._info(repo_id, "main")
            action = rest[0]
            if action == "revision" and len(rest) == 2 and m == "GET":
                return self._info(repo_id, rest[1])
            if action == "refs" and len(rest) == 1 and m == "GET":
                return self._refs(repo_id)
            if action == "tree" and len(rest) >= 2 and m == "GET":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if action == "preupload" and len(rest) == 2 and m == "POST":
                return self._preupload(repo_id, rest[1])
            if action == "commit" and len(rest) == 2 and m == "POST":
                return self._commit(repo_id, rest[1])
            if action == "tag" and len(rest) == 2 and m == "POST":
                return self._tag(repo_id, rest[1])
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])))
        raise HubError(404, f"no route for {m} /{'/'.join(parts)}")

    # --- endpoints ---------------------------------------------------------------------------
    def _create_repo(self) -> None:
        payload = json.loads(self._body())
        if payload.get("type", "model") != "model":
            raise HubError(400, "this test Hub only hosts model repos")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.hub.url}/{repo_id}"
        state = self.hub.state
        if repo_id in state.repos:
            raise HubError(409, "You already created this model repo", url=url)  # the Hub sends the url too
        repo = Repo()
        repo.branches["main"] = state.new_commit(repo, None, {".gitattributes": StoredFile(GITATTRIBUTES, False)},
                                                 "initial commit")
        state.repos[repo_id] = repo
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as err:
                return self._json({"errors": [{"message": str(err)}], "warnings": []}, 400)
        self._json({"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str) -> None:
        state = self.hub.state
        files = state.repo(repo_id).commits[state.commit_sha(repo_id, revision)]
        out = []
        for f in json.loads(self._body())["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES)
            existing = files.get(f["path"])
            remote_oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": remote_oid})
        self._json({"files": out})

    def _lfs_batch(self, repo_id: str) -> None:
        self.hub.state.repo(repo_id)
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.state.lfs_objects:  # no "actions": already uploaded
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match sha256 {oid}")
        self.hub.state.lfs_objects[oid] = data
        self._send(200)

    def _commit(self, repo_id: str, branch: str) -> None:
        state = self.hub.state
        repo = state.repo(repo_id)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        parent = repo.branches[branch]
        files = dict(repo.commits[parent])
        summary = ""
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") not in (None, parent):
                    raise HubError(412, "parent commit is not the head of the branch")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "inline file content must be base64")
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in state.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = StoredFile(state.lfs_objects[value["oid"]], True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        sha = state.new_commit(repo, parent, files, summary)
        repo.branches[branch] = sha
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                    "pullRequestUrl": None})

    def _tag(self, repo_id: str, revision: str) -> None:
        state = self.hub.state
        sha = state.commit_sha(repo_id, revision)
        tag = json.loads(self._body())["tag"]
        repo = state.repo(repo_id)
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = sha
        self._json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": sha})

    def _refs(self, repo_id: str) -> None:
        repo = self.hub.state.repo(repo_id)

        def refs(kind: str, items: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(items.items())]

        self._json({"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags), "converts": []})

    def _info(self, repo_id: str, revision: str) -> None:
        sha = self.hub.state.commit_sha(repo_id, revision)
        files = self.hub.state.repo(repo_id).commits[sha]
        siblings = [{"rfilename": p} for p in sorted(files)]
        self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "tags": [],
                    "siblings": siblings})

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        sha = self.hub.state.commit_sha(repo_id, revision)
        files = self.hub.state.repo(repo_id).commits[sha]
        prefix = prefix.strip("/")
        entries = [f.tree_entry(p) for p, f in sorted(files.items()) if not prefix or p.startswith(prefix + "/")]
        self._json(entries)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        state = self.hub.state
        sha = state.commit_sha(repo_id, revision)
        stored = state.repo(repo_id).commits[sha].get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{stored.etag}"', "Accept-Ranges": "none"}
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(len(stored.data))
        self._send(200, stored.data, headers, content_type="application/octet-stream")

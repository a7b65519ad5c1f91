"""The dashboard's FastAPI application: JSON under ``/api``, the static front-end at ``/``.

Every route is a thin wrapper over the tables API, the run-folder readers and the packers
in this package; no edit logic lives here.

Example:
    >>> from fastapi.testclient import TestClient
    >>> app = create_app(Project.open("/tmp/p"))          # doctest: +SKIP
    >>> TestClient(app).get("/api/tables").json()          # doctest: +SKIP
    []
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from dataloupe import __version__
from dataloupe._netsafety import BodyLimit, host_of, host_refusal, is_loopback, token_matches
from dataloupe.loop import apply_answers, review_queue
from dataloupe.project import DataloupeError, Project
from dataloupe.runs import existing_run_dir, list_run_names, metrics_path, read_history
from dataloupe.tables import (StaleRevisionError, annotate, check_table_name, diff_revisions, has_table, list_tables,
                              notes_of, open_table, revert_table, tag_counts)
from dataloupe.ui import _actions, _images, _loops, _match, _runs, _samples
from dataloupe.ui._cache import LRU
from dataloupe.ui._points import build_points

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # Host header names, see host_of
MUTATION_HEADER = "x-dataloupe"  # custom header: cross-site forms cannot send it


MAX_ID = 2**63 - 1  # ids are int64
MAX_BODY_BYTES = 64 * 1024 * 1024  # request bodies (an action on 5,000,000 ids is ~40 MB of JSON)
SampleId = Annotated[int, FPath(ge=0, le=MAX_ID)]
Revision = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
# strict: JSON true or "1" is not the id 1
StrictId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str
    ids: list[StrictId] = Field(max_length=_actions.MAX_IDS)
    label: str | None = None
    run: str | None = None
    message: str | None = Field(default=None, max_length=1000)
    expected_revision: Revision | None = None


class ReviewAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    label: str | None = None  # a class, null = undefined, or EXCLUDE


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    strategy: str = Field(default="margin", max_length=40)
    answers: list[ReviewAnswer] = Field(max_length=100_000)
    expected_revision: int | None = None
    message: str | None = Field(default=None, max_length=1000)


class NotesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(min_length=1, max_length=_actions.MAX_IDS)
    add_tags: list[str] = Field(default=[], max_length=20)
    remove_tags: list[str] = Field(default=[], max_length=20)
    comment: str | None = Field(default=None, max_length=2000)
    clear_comment: bool = False
    expected_revision: int | None = None
    message: str | None = Field(default=None, max_length=1000)


class RevertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: Revision
    message: str | None = Field(default=None, max_length=1000)


class NotFound(DataloupeError):
    pass


def create_app(project: Project, *, token: str | None = None,
               allowed_hosts: tuple[str, ...] | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the dashboard app for ``project``.

    Args:
        project: the project store to show and edit.
        token: when set, every ``/api`` request must carry it (``Authorization: Bearer``,
            ``X-Dataloupe-Token`` header, or ``?token=`` for image URLs).
        allowed_hosts: when set, requests whose ``Host`` header names another host are
            refused (defends a token-less local server against DNS rebinding).
        max_body_bytes: larger request bodies get 413 before they are read into memory.

    ``app.state.prewarm()`` packs the newest run's columns (``dataloupe ui`` runs it in a
    background thread at start-up so the first page load finds them ready).
    """
    app = FastAPI(title="dataloupe", version=__version__, docs_url=None, redoc_url=None)
    points_cache = LRU(3)
    paths = _images.PathIndex(project)
    samples = _samples.SampleReader(project)

    # A loopback-only list admits every loopback name (127.0.0.2 too), as the server does.
    loopback_only = allowed_hosts is not None and all(is_loopback(h) for h in allowed_hosts)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if allowed_hosts is not None:
            host = host_of(request.headers.get("host"))
            if host not in allowed_hosts and not (loopback_only and is_loopback(host)):
                status, body = host_refusal(host)
                return JSONResponse(body, status_code=status)
        if request.url.path.startswith("/api/"):
            if token is not None:
                given = request.headers.get("x-dataloupe-token") or request.query_params.get("token")
                if not token_matches(token, request.headers.get("authorization"), given):
                    return _error(401, "missing or wrong token (pass --token's value as ?token= or a Bearer header)")
            if request.method not in ("GET", "HEAD") and request.headers.get(MUTATION_HEADER) != "1":
                return _error(403, f"mutating requests need the header '{MUTATION_HEADER}: 1'")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(DataloupeError)
    async def on_dataloupe_error(request: Request, e: DataloupeError):
        status = 400
        if isinstance(e, (NotFound, _images.SampleNotFound)):
            status = 404
        elif isinstance(e, _images.ForbiddenPath):
            status = 403
        elif isinstance(e, (_actions.ConflictError, StaleRevisionError)):
            status = 409
        elif isinstance(e, _images.UnreadableImage):
            status = 422
        return _error(status, str(e))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    def table_name_ok(name: str) -> bool:
        try:
            return check_table_name(name) == name
        except DataloupeError:
            return False

    def table_or_404(name: str):
        if not table_name_ok(name) or not has_table(project, name):
            known = ", ".join(t["name"] for t in list_tables(project)) or "none"
            raise NotFound(f"unknown table {name!r} (known tables: {known})")
        return open_table(project, name)

    def run_or_404(run: str) -> dict:
        try:
            return _runs.run_info(project, run)
        except DataloupeError as e:
            raise NotFound(str(e)) from None

    # ---- project and tables -------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "version": __version__, "token_required": token is not None}

    @app.get("/api/project")
    def project_info() -> dict:
        return {"root": project.uri, "version": __version__,
                "tables": len(list_tables(project)), "runs": len(list_run_names(project))}

    @app.get("/api/tables")
    def tables() -> list[dict]:
        return [t | {"latest_revision": t["revision"]} for t in list_tables(project)]

    @app.get("/api/tables/{name}")
    def table(name: str, revision: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> dict:
        t = table_or_404(name)
        if revision is not None:
            t = t.at(revision)
        return t.summary() | {"classes_order": t.classes, "log": t.log(),
                              "filter_columns": _match.filter_columns(t.schema().names)}

    @app.get("/api/tables/{name}/log")
    def table_log(name: str) -> list[dict]:
        return table_or_404(name).log()

    @app.get("/api/tables/{name}/diff")
    def table_diff(name: str, a: Annotated[int, Query(ge=1, le=MAX_ID)],
                   b: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None, limit: int = Query(200, ge=0, le=100_000)) -> dict:
        t = table_or_404(name)
        return diff_revisions(project, name, a, b if b is not None else t.latest_revision).to_dict(limit=limit)

    @app.post("/api/tables/{name}/revert")
    def table_revert(name: str, body: RevertBody) -> dict:
        before = table_or_404(name).latest_revision
        t = revert_table(project, name, body.revision, message=body.message or None)
        return {"revision": t.revision, "previous_revision": before, "message": t.entry["message"]}

    @app.post("/api/tables/{name}/actions")
    def table_action(name: str, body: ActionBody) -> dict:
        table_or_404(name)
        if body.run is not None:
            run_or_404(body.run)
        req = _actions.ActionRequest(**body.model_dump())
        return _actions.apply_action(project, name, req)

    @app.post("/api/tables/{name}/notes")
    def table_notes(name: str, body: NotesBody) -> dict:
        before = table_or_404(name).latest_revision
        what = [f"tag {', '.join(body.add_tags)}" if body.add_tags else "", f"untag {', '.join(body.remove_tags)}" if body.remove_tags else "",
                "comment" if body.comment is not None or body.clear_comment else ""]
        n = len(set(body.ids))
        message = (body.message or "").strip() or f"ui: {' + '.join(w for w in what if w) or 'notes'} on {n} sample{'s' if n != 1 else ''}"
        try:
            t, changed = annotate(project, name, body.ids, add_tags=body.add_tags, remove_tags=body.remove_tags,
                                  comment=body.comment, clear_comment=body.clear_comment, message=message,
                                  expected_revision=body.expected_revision)
        except DataloupeError as e:
            if "reload" in str(e):
                raise _actions.ConflictError(str(e)) from None
            raise
        return {"committed": changed > 0, "revision": t.revision, "previous_revision": before, "changed": changed,
                "message": message if changed else "nothing changed; no revision made"}

    @app.get("/api/tables/{name}/tags")
    def table_tags(name: str, tag: str | None = None) -> dict:
        t = table_or_404(name)
        out = {"tags": tag_counts(t)}
        if tag is not None:
            rows = t.to_arrow()
            ids = rows["id"].to_pylist()
            vals = rows["tags"].to_pylist() if "tags" in rows.column_names else [None] * len(ids)
            out["ids"] = [i for i, v in zip(ids, vals) if v and tag in v.split(",")]
        return out

    @app.get("/api/tables/{name}/match")
    def table_match(name: str, path: str | None = Query(None, max_length=500),
                    column: str | None = Query(None, max_length=200), value: str | None = Query(None, max_length=500),
                    revision: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> dict:
        """Ids whose path contains ``path`` and whose ``column`` matches ``value`` (the path and
        metadata filters; syntax in ``ui/_match.py``)."""
        t = table_or_404(name)
        if revision is not None:
            t = t.at(revision)
        names = t.schema().names
        if column and value and column not in _match.filter_columns(names):
            raise DataloupeError(f"unknown column {column!r}; columns: {', '.join(_match.filter_columns(names))}")
        rows = t.to_arrow(columns=["id", "path"] + ([column] if column and value else []))
        ids = _match.match_ids(rows, path=path, column=column, value=value)
        return {"ids": ids.tolist(), "count": int(len(ids)), "rows": rows.num_rows}

    @app.get("/api/tables/{name}/samples/{sample_id}/notes")
    def sample_notes(name: str, sample_id: int) -> dict:
        return notes_of(table_or_404(name), sample_id)

    @app.get("/api/tables/{name}/samples/{sample_id}/image")
    def sample_image(name: str, sample_id: SampleId):
        table_or_404(name)
        root, rel = paths.lookup(name, sample_id)
        full = _images.safe_image_path(root, rel)
        return FileResponse(full, media_type=_images.IMAGE_TYPES[full.suffix.lower()],
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/tables/{name}/samples/{sample_id}/thumb")
    def sample_thumb(name: str, sample_id: SampleId, size: int = 96):
        table_or_404(name)
        root, rel = paths.lookup(name, sample_id)
        out = _images.thumbnail(project, name, root, rel, sample_id, size)
        return FileResponse(out, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/tables/{name}/samples/{sample_id}/history")
    def sample_history(name: str, sample_id: SampleId) -> dict:
        t = table_or_404(name)
        return {"id": sample_id, "table": name, "revisions": samples.label_history(t, sample_id)}

    # ---- runs ---------------------------------------------------------------------
    @app.get("/api/runs")
    def runs() -> list[dict]:
        return _runs.run_infos(project)

    @app.get("/api/runs/{run}")
    def run(run: str) -> dict:
        info = run_or_404(run)
        analysis = _runs.read_analysis(project, run)
        ax = _runs.analysis_index(project, run, info.get("train_table"))
        counts = {k: int(v.size) for k, v in ax.findings.items()}
        return info | {"history": read_history(existing_run_dir(project, run)), "finding_counts": counts,
                       "taxonomy": analysis.get("taxonomy"), "clusters": analysis.get("clusters"),
                       "trust": _runs.run_trust(project, info)}

    @app.get("/api/runs/{run}/points")
    def run_points(run: str, table: str, revision: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> Response:
        run_or_404(run)
        t = table_or_404(table)
        rev = t.at(revision).revision if revision is not None else t.latest_revision
        mpath = metrics_path(project, run, table, must_exist=True)
        apath = project.runs_dir / run / "analysis.json"
        # the header names the latest revision: a blob packed before a newer edit must not be reused
        key = (run, table, rev, t.latest_revision, _mtime(mpath), _mtime(apath))
        blob = points_cache.get_or_make(key, lambda: build_points(project, run, table, rev))
        threading.Thread(target=paths.warm, args=(table,), daemon=True).start()  # thumbnails next
        return Response(blob, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/runs/{run}/pairs")
    def run_pairs(run: str, limit: int = Query(500, ge=1, le=100_000)) -> list[dict]:
        return _runs.finding_pairs(project, run_or_404(run), limit)

    @app.get("/api/runs/{run}/review")
    def run_review(run: str, table: str, strategy: str = "margin", limit: int = Query(500, ge=1, le=100_000),
                   recheck: int = Query(0, ge=0, le=100_000)) -> dict:
        run_or_404(run)
        table_or_404(table)
        return review_queue(project, table, run, strategy=strategy, limit=limit, recheck=recheck)

    @app.post("/api/tables/{name}/review")
    def table_review(name: str, body: ReviewBody) -> dict:
        table_or_404(name)
        run_or_404(body.run)
        answers = {a.id: a.label for a in body.answers}
        if not answers:
            raise DataloupeError("no answers to write")
        n = len(answers)
        message = (body.message or "").strip() or f"ui: review {body.strategy}: {n} answer{'s' if n != 1 else ''} (run {body.run})"
        try:
            res = apply_answers(project, name, answers, message=message, expected_revision=body.expected_revision)
        except DataloupeError as e:
            if "reload" in str(e):
                raise _actions.ConflictError(str(e)) from None
            raise
        return res | {"message": message}

    @app.get("/api/runs/{run}/samples/{sample_id}")
    def run_sample(run: str, sample_id: SampleId, table: str, k: int = Query(12, ge=0, le=100)) -> dict:
        info = run_or_404(run)
        table_or_404(table)
        return samples.detail(info, table, sample_id, k)

    # ---- loops ----------------------------------------------------------------------
    @app.get("/api/loops")
    def loops() -> list[dict]:
        return _loops.list_loops(project)

    @app.get("/api/loops/{name}")
    def loop(name: str) -> dict:
        try:
            return _loops.read_loop(project, name)
        except DataloupeError as e:
            raise NotFound(str(e)) from None

    # ---- front-end ----------------------------------------------------------------
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def prewarm_points() -> None:
        """Pack the newest run's points once at start-up, so the first page load is fast."""
        try:
            runs_ = [r for r in _runs.run_infos(project) if r.get("metrics_tables")]
            if not runs_:
                return
            r = runs_[-1]
            table_ = r.get("train_table") if r.get("train_table") in r["metrics_tables"] else r["metrics_tables"][0]
            run_points(r["run"], table_)
        except Exception:  # noqa: BLE001 - only a cache warm-up; the request path reports errors
            pass

    app.state.prewarm = prewarm_points
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, error=lambda msg: _error(413, msg))
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mtime(path: Path) -> float:
    try:
        return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.glob("_versions/*"))])
    except OSError:
        return 0.0

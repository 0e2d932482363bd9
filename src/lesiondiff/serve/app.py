"""The web app of ``lesiondiff serve``: one static page over a plain JSON API, made by :func:`create_app`.

Why FastAPI and a static page: the page is three files of this package (``static/``) with no asset from outside
the machine (no CDN, no web fonts), so it works offline and images never leave the machine; the JSON API is
what the page, the browser test and scripts drive alike (``curl -F file=@case.png HOST/api/jobs``); and the
dependencies are small (FastAPI, Starlette, uvicorn, python-multipart: a few MB). Gradio would fetch fonts and
JavaScript from outside unless reconfigured, and weighs hundreds of MB. FastAPI's /docs and /redoc pages load
Swagger and ReDoc from a CDN, so they are off; /openapi.json describes the API.

Endpoints:
    GET  /                              the page (static/index.html; /static/app.js, /static/style.css)
    GET  /api/models                    the models offered, each with its run's sampling settings; the default
    POST /api/jobs                      multipart: file, and optional model, samples, steps, seed -> 202 job
    GET  /api/jobs/{id}                 status (queued, running, done, error), progress, error, file links
    GET  /api/jobs/{id}/files/{kind}    mask, overlay, maps, samples (PNG) or probs (npz), byte for byte
Refusals answer with ``{"detail": message}``: an upload 413 (too many bytes, counted as the body arrives, or
too many pixels, read from the header before decoding), 415 (not an image type), 422 (a setting out of range, or
more steps than the model's run can take), 429 (the job queue is full) or 400 (corrupt, missing, or another
model); any request 403 when its Host is not a name this server answers or its Origin is another site
(``hosts.py``); a file 403 when it is not inside its job's folder. A failed job's ``error`` names no server path
and shows no exception text (``jobs.run_job``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from ..config import range_of
from ..errors import LesiondiffError
from .catalog import Model
from .hosts import HostCheck
from .jobs import OUTPUTS, Job, JobQueue, QueueFull, UnsafePath, job_path
from .uploads import (
    MAX_PIXELS,
    MAX_UPLOAD,
    UploadError,
    check_image,
    redact,
    save_upload,
    too_large,
    upload_name,
)

LIMITS = {"samples": "sample.samples", "steps": "sample.steps", "seed": "sample.seed"}  # what a job may ask for:
# each within its config key's declared range (config.range_of), then the chosen model's own checks
FORM_OVERHEAD = 64 * 2**10  # bytes of a multipart body beyond the file: boundaries and the other fields
MAX_QUEUE = 8  # jobs queued or running

router = APIRouter()


@dataclass
class Server:
    models: dict[str, Model]
    default: str
    jobs: JobQueue
    max_upload: int  # bytes
    max_pixels: int  # decoded pixels of an upload


def static_dir() -> Path:
    return Path(str(resources.files("lesiondiff.serve") / "static"))


def create_app(models: dict[str, Model], default: str | None = None, device: str | None = None,
               root: Path | None = None, max_upload: int = MAX_UPLOAD, max_pixels: int = MAX_PIXELS,
               max_queue: int = MAX_QUEUE, allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The app serving ``models`` (name -> Model; ``default`` preselected, else the first). Job folders go under
    ``root``, by default a temporary folder the app owns and removes at shutdown. Uploads are refused past
    ``max_upload`` bytes or ``max_pixels`` decoded pixels, and jobs past ``max_queue`` queued or running. Requests
    are answered for the Host names ``allowed_hosts`` and this machine's own (``hosts.HostCheck``)."""
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="lesiondiff-serve-")) if owned else Path(root)
    server = Server(models, default or next(iter(models)), JobQueue(root, device, limit=max_queue), max_upload,
                    max_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.jobs.close()
        if owned:
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="lesiondiff", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.include_router(router)
    app.add_middleware(HostCheck, allowed=allowed_hosts)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def server_of(request: Request) -> Server:
    return request.app.state.server


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html")


@router.get("/api/models")
def list_models(request: Request) -> dict:
    s = server_of(request)
    return {"models": [m.describe() for m in s.models.values()], "default": s.default,
            "max_upload_bytes": s.max_upload, "max_pixels": s.max_pixels, "limits": limits()}


@router.post("/api/jobs", status_code=202)
async def create_job(request: Request) -> dict:
    """Save and check the upload, queue its job and answer with the job's status."""
    s = server_of(request)
    try:
        if s.jobs.full():  # refused before the upload is read
            raise UploadError(str(s.jobs.busy()), 429)
        most = s.max_upload + FORM_OVERHEAD
        if int(request.headers.get("content-length") or 0) > most:  # refused before the body is read
            raise too_large(s.max_upload)
        request = Request(request.scope, receive=limited(request.receive, most, s.max_upload))
        async with request.form(max_files=1, max_fields=8) as form:
            job = await accept(s, form)
    except UploadError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    try:
        s.jobs.submit(job)
    except QueueFull as exc:
        shutil.rmtree(job.folder, ignore_errors=True)
        raise HTTPException(429, str(exc)) from None
    return view(s, job)


def limited(receive: Receive, most: int, max_upload: int) -> Receive:
    """``receive`` counting the body as it arrives and refusing it (413) past ``most`` bytes: a body with no
    Content-Length (chunked) would otherwise be spooled to disk in full by the form parser before the saved
    file's size is checked."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > most:
                raise too_large(max_upload)
        return message

    return receive_limited


async def accept(s: Server, form) -> Job:
    """The job of a submitted form: the model and settings checked, the file saved to a new job folder and
    decoded; a refusal removes the folder."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise UploadError("choose an image file to upload (form field 'file')")
    model = pick_model(s, form.get("model"))
    settings = job_settings(form, model.defaults())
    await run_in_threadpool(check_settings, model, settings)
    image_id, suffix = upload_name(upload.filename)
    shown = upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
    job_id, folder = s.jobs.new_folder()
    try:
        path = job_path(folder, "input", f"{image_id}{suffix}")
        await save_upload(upload, path, s.max_upload)
        await run_in_threadpool(check_image, path, shown, s.max_pixels)
    except UploadError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except UnsafePath as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadError(str(exc)) from None
    return Job(job_id, folder, path, image_id, shown, model, **settings)


def pick_model(s: Server, name) -> Model:
    name = name or s.default
    if name not in s.models:
        raise UploadError(f"unknown model {name!r}; this server offers: {', '.join(s.models)}")
    return s.models[name]


def limits() -> dict[str, tuple[int, int | None]]:
    """Each setting's (lowest, highest) a job may ask for, from its config key's declaration (:data:`LIMITS`;
    whole numbers, so an open bound is the next whole number in)."""
    out = {}
    for name, key in LIMITS.items():
        lo, hi, lo_open, hi_open = range_of(key)
        out[name] = (None if lo is None else int(lo) + lo_open, None if hi is None else int(hi) - hi_open)
    return out


def job_settings(form, defaults: dict) -> dict[str, int]:
    """samples, steps and seed from the form (whole numbers within :func:`limits`), else the run's own."""
    settings = {}
    for key, (lo, hi) in limits().items():
        raw = form.get(key)
        try:
            value = defaults[key] if raw in (None, "") else int(raw)
        except ValueError:
            raise UploadError(f"{key} must be a whole number, got {raw!r}", 422) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            raise UploadError(f"{key} must be {bound}, got {value}", 422)
        settings[key] = value
    return settings


def check_settings(model: Model, settings: dict[str, int]) -> None:
    """Refuse (422) settings the model's run cannot sample with, e.g. more steps than its trained timesteps, before
    a job is made: :data:`LIMITS` bounds every model alike. Reads the run's config.yaml, no weights."""
    from ..engine.predict import check_sampling

    try:
        check_sampling(model.run, [f"sample.{key}={value}" for key, value in settings.items()])
    except LesiondiffError as exc:  # worded for the CLI's --steps; the page's field is "steps"
        message = redact(str(exc), {model.run: model.name})
        raise UploadError(message.replace("--steps", "steps"), 422) from None


def view(s: Server, job: Job) -> dict:
    """What a client sees of its job."""
    files = {kind: f"/api/jobs/{job.id}/files/{kind}" for kind in OUTPUTS} if job.status == "done" else {}
    return {"id": job.id, "status": job.status, "stage": job.stage, "image": job.shown, "image_id": job.image_id,
            "model": job.model.name, "samples": job.samples, "steps": job.steps, "seed": job.seed,
            "progress": job.progress(), "ahead": s.jobs.ahead(job) if job.status == "queued" else 0,
            "error": job.error, "files": files, "trust": job.trust if job.status == "done" else {}}


def find_job(request: Request, job_id: str) -> Job:
    jobs = server_of(request).jobs
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no such job (the server keeps its newest {jobs.keep} finished jobs while it runs)")
    return job


@router.get("/api/jobs/{job_id}")
def job_status(request: Request, job_id: str) -> dict:
    return view(server_of(request), find_job(request, job_id))


@router.get("/api/jobs/{job_id}/files/{kind}")
def job_file(request: Request, job_id: str, kind: str) -> FileResponse:
    """One output file of a done job, as predict wrote it (inline, named ``<id>_<kind>.<ext>``)."""
    job = find_job(request, job_id)
    if kind not in OUTPUTS:
        raise HTTPException(404, f"no file {kind!r}; known: {', '.join(OUTPUTS)}")
    try:
        path = job.file(kind)
    except UnsafePath as exc:
        raise HTTPException(403, str(exc)) from None
    if path is None:
        raise HTTPException(409, f"the job is {job.status}; its files come when it is done")
    media = "application/octet-stream" if path.suffix == ".npz" else "image/png"
    return FileResponse(path, media_type=media, filename=path.name, content_disposition_type="inline")

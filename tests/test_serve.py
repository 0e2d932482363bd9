"""``lesiondiff serve``'s JSON API through starlette's TestClient on a tiny trained run: a job's files are those
``lesiondiff predict`` writes for the same image, settings and seed; progress counts network evaluations; bad,
oversized and unsupported uploads are refused with a clear message and the server goes on; jobs keep apart."""

import asyncio
import io
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesiondiff.cli import build_parser, main
from lesiondiff.engine.checkpoint import run_checkpoint
from lesiondiff.errors import LesiondiffError
from lesiondiff.render.maps import sample_masks
from lesiondiff.serve import app as app_module
from lesiondiff.serve import jobs as jobs_module
from lesiondiff.serve import uploads as uploads_module
from lesiondiff.serve.app import FORM_OVERHEAD, create_app
from lesiondiff.serve.catalog import Model, catalog
from lesiondiff.serve.uploads import upload_name

SETTINGS = {"samples": "3", "steps": "2", "seed": "7"}
LIMIT = 200_000  # bytes: the upload limit of the test app
STATIC = Path(__file__).resolve().parents[1] / "src/lesiondiff/serve/static"
BASE = "http://127.0.0.1:8000"  # the Host the test clients send: a name the server answers to


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("serve") / "run", 2, "sample.samples=2")


@pytest.fixture(scope="module")
def short_run(train_tiny_run, tmp_path_factory):
    """A run trained with 50 timesteps: it can take at most 50 sampling steps."""
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("serve") / "short", 2, "sample.samples=2",
                          "diffusion.num_train_timesteps=50", "sample.start_t=25")


@pytest.fixture(scope="module")
def client(run, tmp_path_factory):
    app = create_app(catalog({}, run), root=tmp_path_factory.mktemp("jobs"), max_upload=LIMIT)
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture
def image(phantom_dir) -> Path:
    return phantom_dir / "images" / "phantom_0003.png"


def upload(client, path: Path, name: str | None = None, content: bytes | None = None, headers=None, **fields):
    data = path.read_bytes() if content is None else content
    return client.post("/api/jobs", files={"file": (name or path.name, data, "image/png")},
                       data={**SETTINGS, **fields}, headers=headers)


def wait(client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def predict_cli(run: Path, image: Path, out: Path) -> int:
    return main(["predict", "--run", str(run), str(image), "--out", str(out), "--samples", SETTINGS["samples"],
                 "--steps", SETTINGS["steps"], "--seed", SETTINGS["seed"]])


def test_a_job_writes_what_predict_writes(client, run, image, tmp_path):
    r = upload(client, image)
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    job = wait(client, r.json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["progress"] == {"done": 6, "total": 6}  # DDIM: steps x S network evaluations
    assert predict_cli(run, image, tmp_path / "pred") == 0
    for kind in ("mask", "overlay", "maps"):
        got = client.get(job["files"][kind])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content == (tmp_path / "pred" / f"phantom_0003_{kind}.png").read_bytes(), kind
    served = np.load(io.BytesIO(client.get(job["files"]["probs"]).content))
    written = np.load(tmp_path / "pred" / "phantom_0003_probs.npz")
    assert all(np.array_equal(served[k], written[k]) for k in written.files)
    grid = client.get(job["files"]["samples"])
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).size[0] > 3 * 128


def test_progress_counts_the_evaluations_done(client, image):
    job = wait(client, upload(client, image, samples="2", steps="3").json()["id"])
    assert job["progress"] == {"done": 6, "total": 6} and (job["samples"], job["steps"]) == (2, 3)


def test_a_corrupt_or_unsupported_file_is_refused_and_the_server_goes_on(client, image):
    r = upload(client, image, name="broken.png", content=b"this is not a PNG")
    assert r.status_code == 400
    assert r.json()["detail"] == "broken.png: unsupported or unrecognised image format"
    r = upload(client, image, name="notes.txt", content=b"hello")
    assert r.status_code == 415 and r.json()["detail"].startswith("notes.txt: unsupported file type")
    r = upload(client, image, content=image.read_bytes()[:200])  # truncated
    assert r.status_code == 400 and r.json()["detail"].startswith("phantom_0003.png: ")
    assert wait(client, upload(client, image).json()["id"])["status"] == "done"


def test_a_chunked_upload_is_refused_as_it_streams(run, tmp_path):
    """With no Content-Length the body is counted as it arrives: refused just past the limit, not spooled whole
    first (httpx's ASGI transport hands the app one chunk per receive, as a server does)."""
    sent, chunk, boundary = 0, b"\0" * 2**16, "lesiondiff-test"

    async def body():
        nonlocal sent
        for part in (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode(), *[chunk] * 320, f"\r\n--{boundary}--\r\n".encode()):
            sent += len(part)  # 20 MB in all
            yield part

    async def post(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as c:
            return await c.post("/api/jobs", content=body(),
                                headers={"content-type": f"multipart/form-data; boundary={boundary}"})

    r = asyncio.run(post(create_app(catalog({}, run), root=tmp_path, max_upload=2**20)))
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and r.json()["detail"] == "the file is too large: uploads are limited to 1 MB"
    assert 2**20 + FORM_OVERHEAD < sent <= 2**20 + FORM_OVERHEAD + len(chunk)
    assert list(tmp_path.iterdir()) == []  # no job folder


@pytest.mark.parametrize("size", [LIMIT + 30_000, 5 * LIMIT])  # counted while saved; refused by Content-Length
def test_an_oversized_upload_is_refused(client, image, size):
    r = upload(client, image, content=b"\0" * size)
    assert r.status_code == 413 and r.json()["detail"] == "the file is too large: uploads are limited to 0.191 MB"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's note on opening it
def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded(client, run, image, tmp_path, monkeypatch):
    """A 12000 x 12000 PNG is a few kB (under the byte limit and Pillow's bomb limit) but 144 megapixels: its
    header is read, the pixels never decoded."""
    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)
    assert huge.stat().st_size < LIMIT
    decoded, read_image = [], uploads_module.read_image
    monkeypatch.setattr(uploads_module, "read_image", lambda path: decoded.append(Path(path).name) or read_image(path))
    r = upload(client, huge)
    assert r.status_code == 413 and r.json()["detail"] == ("huge.png: the image is 12000 x 12000 pixels (144 "
                                                           "megapixels); this server takes at most 40 megapixels")
    assert decoded == []
    assert wait(client, upload(client, image).json()["id"])["status"] == "done"  # a normal image still works
    assert decoded == ["phantom_0003.png"]
    with TestClient(create_app(catalog({}, run), root=tmp_path / "jobs", max_pixels=4000), base_url=BASE) as c:
        r = upload(c, image)  # the option: the 64 x 64 phantom is 96 pixels too many
    assert r.status_code == 413 and r.json()["detail"] == ("phantom_0003.png: the image is 64 x 64 pixels (0.0041 "
                                                           "megapixels); this server takes at most 0.004 megapixels")


def test_settings_and_models_are_checked(client, image):
    r = upload(client, image, samples="0")
    assert r.status_code == 422 and r.json()["detail"] == "samples must be from 1 to 1024, got 0"
    assert upload(client, image, steps="many").json()["detail"] == "steps must be a whole number, got 'many'"
    r = upload(client, image, model="nope")
    assert r.status_code == 400 and r.json()["detail"].startswith("unknown model 'nope'; this server offers: run")
    assert client.post("/api/jobs", data=SETTINGS).status_code == 400  # no file


def test_steps_are_checked_against_the_models_timesteps(short_run, image, tmp_path):
    with TestClient(create_app(catalog({}, short_run), root=tmp_path), base_url=BASE) as c:
        r = upload(c, image, steps="60")
        assert r.status_code == 422 and r.json()["detail"] == ("steps 60: the run was trained with 50 timesteps "
                                                               "(diffusion.num_train_timesteps), so it can take at "
                                                               "most 50 sampling steps")
        assert list(tmp_path.iterdir()) == []  # refused before a job was made
        job = wait(c, upload(c, image, steps="50", samples="1").json()["id"])
    assert (job["status"], job["steps"], job["progress"]) == ("done", 50, {"done": 50, "total": 50})


def test_upload_names_keep_unicode_letters_and_make_no_path(monkeypatch):
    monkeypatch.setattr(uploads_module.sys, "getfilesystemencoding", lambda: "utf-8")
    assert upload_name("ünï cødé.png") == ("ünï_cødé", ".png")
    assert upload_name("u\u0308ber 日本語の画像.JPG") == ("über_日本語の画像", ".jpg")  # NFC: one ü
    assert upload_name("../../x.png") == upload_name("..\\..\\x.png") == upload_name("C:\\x.png") == ("x", ".png")
    assert upload_name("\x00.png") == ("image", ".png") and upload_name("..") == upload_name("") == ("image", "")
    assert upload_name("a\tb\u202ec\u200bd\x7f.tif") == ("a_b_c_d", ".tif")  # controls, bidi, zero width
    assert upload_name("CON.png") == ("CON_", ".png") and upload_name("lpt1.x.png") == ("lpt1_.x", ".png")
    stem, _ = upload_name("é" * 300 + ".png")
    assert stem == "é" * 75  # 150 bytes of UTF-8: room for the output endings within a file name's 255
    for name in ("../../x.png", "..\\..\\x.png", "\x00.png", ".", "..", "...", ". .png", "._.png", "a/../..",
                 "\u2024\u2024.png", "\uff0e\uff0e\uff0fx.png", "x:y.png", "~/x.png", "$HOME.png", "a\nb.png"):
        stem, suffix = upload_name(name)
        assert stem and stem not in (".", "..") and not stem.startswith("."), name
        assert re.fullmatch(r"[\w.-]+", stem) and Path(stem + suffix).name == stem + suffix, name


def test_a_name_the_file_system_cannot_store_becomes_underscores(monkeypatch):
    monkeypatch.setattr(uploads_module.sys, "getfilesystemencoding", lambda: "utf-8")
    assert uploads_module.upload_name("ünï cødé.png") == ("ünï_cødé", ".png")
    monkeypatch.setattr(uploads_module.sys, "getfilesystemencoding", lambda: "ascii")  # LC_ALL=C with PYTHONUTF8=0
    assert uploads_module.upload_name("ünï cødé.png") == ("n__c_d", ".png")
    assert uploads_module.upload_name("ü.png") == ("image", ".png")


@pytest.mark.skipif(not uploads_module.storable("ü", sys.getfilesystemencoding()), reason="the file system's encoding "
                    "cannot store the name (the test above covers that case)")
def test_a_unicode_name_round_trips_through_the_api(client, image):
    r = upload(client, image, name="ünï cødé.png")
    assert (r.json()["image"], r.json()["image_id"]) == ("ünï cødé.png", "ünï_cødé")
    job = wait(client, r.json()["id"])
    assert job["status"] == "done", job["error"]
    mask = client.get(job["files"]["mask"])
    assert mask.status_code == 200 and mask.headers["content-disposition"] == (
        f"inline; filename*=utf-8''{quote('ünï_cødé_mask.png')}")
    assert {p.name for p in client.app.state.server.jobs.get(job["id"]).out.glob("*_mask.png")} == {
        "ünï_cødé_mask.png"}


def test_a_job_path_is_a_plain_name_inside_the_job_folder_once_resolved(run, tmp_path):
    job_path, unsafe = jobs_module.job_path, jobs_module.UnsafePath
    folder = tmp_path / "job"
    (folder / "out").mkdir(parents=True)
    assert job_path(folder, "out", "x_mask.png") == folder / "out" / "x_mask.png"
    for names in (("out", "../../x.png"), ("..", "x.png"), ("out", "a/b.png"), ("out", "a\\b.png"), ("out", ""),
                  ("out", "."), ("/etc", "passwd"), ("out", "x\0.png")):
        with pytest.raises(unsafe, match="not a plain file name"):
            job_path(folder, *names)
    (folder / "out" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(unsafe, match="^out/link.png: leads outside the job's folder$"):
        job_path(folder, "out", "link.png")
    job = jobs_module.Job("0" * 32, folder, folder / "input" / "x.png", "../../evil", "x.png",
                          Model("run", run, "run"), 1, 1, 0, status="done")
    with pytest.raises(unsafe, match="^'../../evil_mask.png': not a plain file name$"):
        job.file("mask")


def test_serve_writes_and_serves_no_path_outside_a_job_folder(client, image, tmp_path, monkeypatch):
    """A done job's output replaced by a symbolic link out of its folder is not served; an upload name that got
    past upload_name is refused before anything is written."""
    job = wait(client, upload(client, image).json()["id"])
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    mask = client.app.state.server.jobs.get(job["id"]).out / "phantom_0003_mask.png"
    mask.unlink()
    mask.symlink_to(secret)
    r = client.get(job["files"]["mask"])
    assert r.status_code == 403 and r.json()["detail"] == "out/phantom_0003_mask.png: leads outside the job's folder"
    root = client.app.state.server.jobs.root
    before = set(root.iterdir())
    monkeypatch.setattr(app_module, "upload_name", lambda name: ("../../escaped", ".png"))
    r = upload(client, image)
    assert r.status_code == 400 and r.json()["detail"] == "'../../escaped.png': not a plain file name"
    assert set(root.iterdir()) == before and not (root / "escaped.png").exists()


def test_two_jobs_have_their_own_ids_and_files(client, phantom_dir):
    a, b = (upload(client, phantom_dir / "images" / name).json() for name in ("phantom_0001.png", "phantom_0002.png"))
    assert a["id"] != b["id"] and all(len(j["id"]) == 32 for j in (a, b))
    a, b = wait(client, a["id"]), wait(client, b["id"])
    assert all(f"/api/jobs/{j['id']}/" in url for j in (a, b) for url in j["files"].values())
    jobs = client.app.state.server.jobs
    folders = [jobs.get(j["id"]).out for j in (a, b)]
    assert folders[0] != folders[1]
    assert {p.name.split("_")[1] for p in folders[0].glob("phantom_*")} == {"0001"}
    assert client.get(a["files"]["overlay"]).content != client.get(b["files"]["overlay"]).content
    assert client.get(f"/api/jobs/{'0' * 32}").status_code == 404
    assert client.get(f"/api/jobs/{a['id']}/files/config").status_code == 404


def test_a_queued_job_says_so_and_an_error_inside_a_job_is_shown(run, image, tmp_path, monkeypatch):
    """One worker: while a job runs the next is queued behind it; a job that fails reports why."""
    release = threading.Event()

    def blocked(job, device):
        release.wait(30)
        raise jobs_module.LesiondiffError(f"{job.image}: the checkpoint is unreadable")

    monkeypatch.setattr(jobs_module, "predict", blocked)
    with TestClient(create_app(catalog({}, run), root=tmp_path), base_url=BASE) as c:
        first, second = upload(c, image).json(), upload(c, image).json()
        assert (second["status"], second["ahead"]) == ("queued", 1)
        release.set()
        failed = wait(c, first["id"])
    assert failed["status"] == "error" and failed["error"] == "phantom_0003.png: the checkpoint is unreadable"


def test_a_full_queue_answers_429_and_keeps_nothing(run, image, tmp_path, monkeypatch):
    """At most max_queue jobs queued or running: one more is refused before its upload is read, or when the queue
    fills while it is read, and leaves no folder; once a job has finished the next is taken."""
    release = threading.Event()
    monkeypatch.setattr(jobs_module, "predict", lambda job, device: release.wait(30))
    busy = "the server is busy: 2 jobs are queued or running, the most it takes; try again when one has finished"
    with TestClient(create_app(catalog({}, run), root=tmp_path, max_queue=2), base_url=BASE) as c:
        first, second = upload(c, image), upload(c, image)
        assert (first.status_code, second.status_code) == (202, 202)
        r = upload(c, image)
        assert r.status_code == 429 and r.json()["detail"] == busy
        with monkeypatch.context() as m:
            m.setattr(jobs_module.JobQueue, "full", lambda self: False)  # the queue filled while the upload was read
            r = upload(c, image)
        assert r.status_code == 429 and r.json()["detail"] == busy
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.json()["id"], second.json()["id"]])
        release.set()
        assert [wait(c, j.json()["id"])["status"] for j in (first, second)] == ["done", "done"]
        assert upload(c, image).status_code == 202


def test_requests_for_another_host_or_from_another_site_are_refused(client, run, image, tmp_path):
    """DNS rebinding sends another Host, a cross-site form or fetch another Origin: 403 before anything is read.
    The Host's port is not checked (a tunnel changes it); an Origin must be the Host's own http origin."""
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        r = client.get("/api/models", headers={"host": host})
        assert r.status_code == 403 and r.json()["detail"] == (
            f"this server answers requests for 127.0.0.1, localhost or ::1, not {host!r} (lesiondiff serve "
            "--allow-host NAME adds a name)"), host
    for host in ("localhost:8000", "LOCALHOST:9999", "127.0.0.1", "[::1]:8000"):
        assert client.get("/", headers={"host": host}).status_code == 200, host
    for origin in ("http://evil.example", "null", "https://127.0.0.1:8000", "http://127.0.0.1:9000",
                   "http://localhost:8000"):
        r = upload(client, image, headers={"origin": origin})
        assert r.status_code == 403 and r.json()["detail"] == f"cross-site request refused (Origin {origin!r})", origin
    assert client.get("/api/models", headers={"origin": "http://evil.example"}).status_code == 403
    r = upload(client, image, headers={"origin": BASE})
    assert r.status_code == 202
    wait(client, r.json()["id"])
    assert client.get("/", headers={"host": "lab-pc:8000", "origin": "http://lab-pc:8000"}).status_code == 403
    with TestClient(create_app(catalog({}, run), root=tmp_path, allowed_hosts=["Lab-PC"]), base_url=BASE) as c:
        assert c.get("/", headers={"host": "lab-pc:8000", "origin": "http://lab-pc:8000"}).status_code == 200
        assert c.get("/", headers={"host": "evil.example"}).status_code == 403


def test_a_failed_job_shows_no_internals(client, image, monkeypatch, capfd):
    """An internal error: a short message for the client, the exception and traceback in the server's log only."""
    def broken(self, items, out, **kw):
        raise ValueError("num_inference_steps secret /tmp/x/y")

    monkeypatch.setattr("lesiondiff.engine.predict.Predictor.run", broken)
    job = wait(client, upload(client, image).json()["id"])
    assert job["status"] == "error" and job["error"] == ("the job failed because of an error inside the server "
                                                         f"(its log has the details, under job {job['id']})")
    assert not any(word in job["error"] for word in ("ValueError", "secret", "/tmp"))
    log = capfd.readouterr().err
    assert f"job {job['id']} failed" in log and "ValueError: num_inference_steps secret /tmp/x/y" in log


def test_a_job_error_names_no_server_path(client, image, monkeypatch):
    """A LesiondiffError keeps its message with each server path replaced by the name a user knows: the upload
    by its own name, the model's run folder by the model's name, the job folder as "job", any other by its file
    name."""
    def broken(self, items, out, **kw):
        raise LesiondiffError(f"{items[0][1]}: unreadable; {out}/{items[0][0]}_mask.png: cannot write; "
                              f"{self.source['run']}/checkpoints/best.safetensors: stale; /srv/private/notes.csv: "
                              f"missing; {Path(out).parents[1]}/other: gone; 3/4 done")

    monkeypatch.setattr("lesiondiff.engine.predict.Predictor.run", broken)
    job = wait(client, upload(client, image).json()["id"])
    assert job["error"] == ("phantom_0003.png: unreadable; job/out/phantom_0003_mask.png: cannot write; "
                            "run/checkpoints/best.safetensors: stale; notes.csv: missing; jobs/other: gone; 3/4 done")


def test_the_models_list_the_run_and_every_shipped_model(run):
    models = catalog({"busi": run, "run": run}, run)
    assert list(models) == ["run (run)", "busi", "run"] and models["run (run)"].source == "run"
    with TestClient(create_app(models, default="busi"), base_url=BASE) as c:
        listed = c.get("/api/models").json()
        root = c.app.state.server.jobs.root
        assert root.is_dir()
    assert listed["default"] == "busi" and listed["models"][0]["defaults"]["samples"] == 2
    assert not root.exists()  # the app's own job folder goes at shutdown


def test_the_page_loads_nothing_from_outside(client):
    assert "<title>lesiondiff</title>" in client.get("/").text
    for name in ("index.html", "app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert text and "http:" not in text and "https:" not in text and "//cdn" not in text, name
    assert client.get("/docs").status_code == 404  # FastAPI's docs page loads Swagger from a CDN


def test_sample_masks_draws_each_sample_at_the_threshold():
    samples = np.stack([np.full((4, 4), 0.7), np.full((4, 4), 0.3)])
    grid = sample_masks(samples, threshold=0.5, cell=8)
    assert grid.shape == (14 + 8, 8 + 4 + 8, 3)
    assert (grid[14:, :8] == 255).all() and (grid[14:, 12:] == 0).all()


def test_serve_binds_to_this_machine_by_default_and_needs_a_model(monkeypatch, capsys):
    args = build_parser().parse_args(["serve", "--run", "somewhere"])
    assert (args.host, args.port, args.allow_host) == ("127.0.0.1", 8000, [])
    assert (args.max_upload_mb, args.max_megapixels, args.max_queue) == (25, 40, 8)
    monkeypatch.setattr("lesiondiff.shipped.model_names", lambda: [])
    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err


def test_a_broken_run_stops_serve_at_start_with_one_line(run, tmp_path, monkeypatch, capsys):
    """The chosen run is loaded once before the port is bound: a truncated checkpoint is an error at start, not
    in every job."""
    broken = shutil.copytree(run, tmp_path / "broken")
    checkpoint = run_checkpoint(broken, "best")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: pytest.fail("serve started with a broken run"))
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert main(["serve", "--run", str(broken), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {checkpoint}: not a readable safetensors checkpoint")
    assert err.count("\n") == 1


def test_a_port_in_use_is_a_one_line_error(run, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_passes_its_limits_and_hosts_and_notes_an_open_host(run, monkeypatch, capsys):
    made = {}
    monkeypatch.setattr("lesiondiff.serve.app.create_app", lambda models, default, device, **kw: made.update(kw))
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: made.update(ran=(host, port)))
    monkeypatch.setattr("lesiondiff.cli.serve.check_port", lambda host, port: None)
    monkeypatch.setattr("lesiondiff.shipped.model_names", lambda: [])
    assert main(["serve", "--run", str(run), "--host", "0.0.0.0", "--port", "8123", "--allow-host", "Lab-PC",
                 "--allow-host", "10.0.0.5", "--max-megapixels", "12.5", "--max-queue", "3"]) == 0
    assert made == {"max_upload": 25 * 2**20, "max_pixels": 12_500_000, "max_queue": 3,
                    "allowed_hosts": ["0.0.0.0", "Lab-PC", "10.0.0.5"], "ran": ("0.0.0.0", 8123)}
    assert capsys.readouterr().out == (
        "note: --host 0.0.0.0 opens the page, which has no login, to the network; it answers only requests "
        "addressed to 127.0.0.1, localhost, ::1, 0.0.0.0, lab-pc, 10.0.0.5: give --allow-host NAME for each name "
        "or address others reach it by\nlesiondiff serve: http://0.0.0.0:8123/ with run (Ctrl+C stops it)\n")


def test_a_job_shows_the_scores_and_the_calibrated_mark(run, image, tmp_path_factory):
    """The page shows how far to trust the mask: the draws' scores, and accept / review with the calibration's
    promise when the run was calibrated for the job's settings (RUN/selective.json), the same mark predict gives."""
    import json
    import shutil

    calibrated = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(run, calibrated)
    settings = {"sample.samples": int(SETTINGS["samples"]), "sample.sampler": "ddim",
                "sample.steps": int(SETTINGS["steps"]), "sample.tta": "none", "sample.mc_dropout": False,
                "sample.threshold": 0.5, "sample.maps": "probabilities", "fusion.method": "mean", "fusion.crf": False,
                "postprocess": None}
    (calibrated / "selective.json").write_text(json.dumps({
        "score": "agreement", "threshold": -1.0, "settings": settings, "target_dice": 0.8, "delta": 0.1,
        "split": "val", "manifest": "m.csv"}))  # a threshold every image passes
    app = create_app(catalog({}, calibrated), root=tmp_path_factory.mktemp("jobs"), max_upload=LIMIT)
    with TestClient(app, base_url=BASE) as c:
        job = wait(c, upload(c, image).json()["id"])
    trust = job["trust"]
    assert job["status"] == "done" and trust["review"] == "accept" and trust["target_dice"] == 0.8
    assert 0 <= trust["scores"]["agreement"] <= 1 and set(trust["scores"]) >= {"entropy", "band_entropy"}

"""``lesiondiff serve`` in a real browser: headless Chromium through Selenium drives the page of a server started
as ``lesiondiff serve --run RUN --port PORT``: it uploads a phantom through the file input, runs it, sees the
overlay, mask, maps and sample masks load, downloads the mask (byte for byte what ``lesiondiff predict`` writes
for the same image, settings and seed), and reads the message a corrupt file gets. Screenshots go to
$LESIONDIFF_SCREENSHOTS (default: the test's tmp_path). The browser and driver are found on PATH, or named by
$LESIONDIFF_CHROMIUM and $LESIONDIFF_CHROMEDRIVER."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import lesiondiff
from lesiondiff.cli import main
from lesiondiff.shipped import model_card, model_names

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = os.environ.get("LESIONDIFF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("LESIONDIFF_CHROMEDRIVER") or shutil.which("chromedriver")
MISSING = ("selenium is not installed (pip install -e '.[dev]')" if webdriver is None else
           "no chromium or chromedriver found (Debian: apt-get install chromium chromium-driver)"
           if not (CHROMIUM and CHROMEDRIVER) else None)
if MISSING and os.environ.get("CI") == "true":  # .ci/run installs them: in CI the browser test must run
    pytest.fail(f"the browser test cannot run in CI: {MISSING}", pytrace=False)
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

pytestmark = pytest.mark.slow
SETTINGS = {"samples": "3", "steps": "2", "seed": "5"}
IMAGES = ("overlay", "mask", "maps", "sample-masks")


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("browser") / "run", 2, "sample.samples=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"lesiondiff serve exited with status {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/models", timeout=5).read()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"lesiondiff serve did not answer at {url} in {timeout} s")


@contextlib.contextmanager
def serving(*source: str):
    """``lesiondiff serve SOURCE --port FREE`` in a subprocess, its output in a log file (a pipe nobody reads
    could fill and stall it); yields its URL, and on failure the log's end is in the error."""
    port = free_port()
    package = str(Path(lesiondiff.__file__).resolve().parents[1])  # the package under test, installed or not
    env = {**os.environ, "PYTHONIOENCODING": "utf-8",
           "PYTHONPATH": os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "lesiondiff.cli", "serve", *source, "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, process)
            yield url
        except BaseException:
            log.seek(0)
            print(log.read().decode("utf-8", "replace")[-4000:])  # shown by pytest with the failure
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(run):
    with serving("--run", str(run)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LESIONDIFF_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str, settings: dict = SETTINGS) -> None:
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.getElementById('model').value"))
    for key, value in settings.items():
        field = browser.find_element(By.ID, key)
        field.clear()
        field.send_keys(value)


def submit(browser, path: Path) -> None:
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "run").click()


def images_loaded(browser) -> bool:
    return browser.execute_script("return arguments[0].every(id => { const i = document.getElementById(id); "
                                  "return i.complete && i.naturalWidth > 0; })", list(IMAGES))


def test_the_page_shows_what_predict_writes(browser, server, run, phantom_dir, tmp_path, shots):
    image = phantom_dir / "images" / "phantom_0004.png"
    open_page(browser, server)
    submit(browser, image)
    WebDriverWait(browser, 300).until(lambda d: d.find_element(By.ID, "results").is_displayed())
    WebDriverWait(browser, 30).until(images_loaded)
    progress = browser.find_element(By.ID, "progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "6"  # S x steps evaluations
    browser.save_screenshot(str(shots / "serve_result.png"))
    assert main(["predict", "--run", str(run), str(image), "--out", str(tmp_path / "pred"),
                 *(f"--{k}={v}" for k, v in SETTINGS.items())]) == 0
    href = browser.find_element(By.ID, "download-mask").get_attribute("href")
    assert href.startswith(server)
    assert urllib.request.urlopen(href).read() == (tmp_path / "pred" / "phantom_0004_mask.png").read_bytes()


def test_a_corrupt_file_gets_a_clear_message(browser, server, phantom_dir, tmp_path, shots):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    open_page(browser, server)
    submit(browser, broken)
    message = browser.find_element(By.ID, "message")
    WebDriverWait(browser, 60).until(lambda d: message.is_displayed())
    assert message.text == "broken.png: unsupported or unrecognised image format"
    assert not browser.find_element(By.ID, "results").is_displayed()
    browser.save_screenshot(str(shots / "serve_corrupt.png"))
    submit(browser, phantom_dir / "images" / "phantom_0005.png")  # the server goes on
    WebDriverWait(browser, 300).until(lambda d: d.find_element(By.ID, "results").is_displayed())
    assert not message.is_displayed()


@pytest.mark.parametrize("name", model_names()[:1])
def test_a_shipped_model_on_a_real_image(browser, name, shared_data, tmp_path, shots):
    """The first shipped model, served with --model and its own sampling settings, on its card's first check
    image: the page's mask is what ``lesiondiff predict --model`` writes."""
    row = model_card(name)["check_rows"][0]
    image = shared_data / row["image"]
    if not image.is_file():
        pytest.skip(f"{image} not found")
    with serving("--model", name) as url:
        open_page(browser, url, {})
        submit(browser, image)
        WebDriverWait(browser, 600).until(lambda d: d.find_element(By.ID, "results").is_displayed())
        WebDriverWait(browser, 30).until(images_loaded)
        browser.set_window_size(1280, browser.execute_script("return document.body.scrollHeight") + 40)
        browser.save_screenshot(str(shots / "serve_shipped.png"))  # the whole page (the README's screenshot)
        href = browser.find_element(By.ID, "download-mask").get_attribute("href")
        served = urllib.request.urlopen(href).read()
    assert main(["predict", "--model", name, str(image), "--out", str(tmp_path / "pred")]) == 0
    assert served == next((tmp_path / "pred").glob("*_mask.png")).read_bytes()

"""The notebooks in a real browser: JupyterLab and headless Chromium, as a user sees them.

JupyterLab serves copies of the notebooks from a temporary folder (127.0.0.1, a free port, a
token); Playwright drives the Debian ``chromium`` (Playwright's own browser download is not
used). ``01_inference`` runs on a tiny model trained here, and its threshold slider must
redraw the picture; ``03_train`` runs a short training whose live monitor must update in
place, below the first cell's set-up block. No widget may stay at "Loading widget..." and no cell
may show an error. Screenshots
land in the test's tmp_path, and in ``$D2NB_SCREENSHOTS`` when that is set.

Skipped only in the inner run of tests/test_fresh_install.py (``D2NB_INNER_RUN=1``), as
recursion protection; a missing browser is installed (root) or fails the test.
"""

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOKS

pytestmark = pytest.mark.skipif(os.environ.get("D2NB_INNER_RUN") == "1",
                                reason="inner run of test_fresh_install (recursion protection)")

SERVER_START_TIMEOUT = 120
RUN_TIMEOUT = 240  # seconds for one notebook's Run All on a loaded 2-core machine
TRAIN_PARAMETERS = {"gpus": 0, "max_iter": 20, "ims_per_batch": 2,
                    # no evaluation after training: 50 val images take ~30 s on 2 busy cores
                    "opts": ["DATASETS.TEST", "()"]}


# ----------------------------------------------------------------------------- the browser

def chromium_executable() -> str:
    """Debian's chromium (the real binary behind the /usr/bin/chromium launcher script);
    installed with apt-get when it is missing and this is root, else a clear failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if completed.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
        found = shutil.which("chromium")
    if not found:
        pytest.fail("no chromium browser: install Debian's package (sudo apt-get install chromium), "
                    "then run the browser test again")
    # Debian's /usr/bin/chromium is a launcher shell script; Playwright starts the browser itself
    binary = Path("/usr/lib/chromium/chromium")
    return str(binary) if binary.is_file() else found


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    executable = chromium_executable()
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses its sandbox as root (CI runs as root)
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


# ----------------------------------------------------------------------------- JupyterLab

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving ``root``, with settings kept in ``home``."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, free_port(), secrets.token_hex(16)
        settings = home / "settings"
        # every cell in the page (no virtual scrolling), so the test sees all prompts and outputs
        (settings / "@jupyterlab/notebook-extension").mkdir(parents=True)
        (settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
        (settings / "@jupyterlab/apputils-extension").mkdir(parents=True)
        (settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PYTHONUNBUFFERED": "1"}
        self.log = open(home / "jupyterlab.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", "--LabApp.news_url=None"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = home / "jupyterlab.log"
        self._wait_until_up()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def _wait_until_up(self):
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"JupyterLab did not answer in {SERVER_START_TIMEOUT} s:\n{self.log_path.read_text()[-3000:]}")

    def shut_down_kernels(self):
        """Stop the kernels a test started, so that the next one has the CPU to itself."""
        with urllib.request.urlopen(self.url("api/kernels"), timeout=10) as response:
            kernels = json.load(response)
        for kernel in kernels:
            request = urllib.request.Request(self.url(f"api/kernels/{kernel['id']}"), method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def notebook_with_parameters(name: str, folder: Path, parameters: dict) -> Path:
    """A copy of notebooks/<name> with ``parameters`` injected after its parameters cell, as
    papermill injects them (so the cell the user sees stays the committed one)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / name)), parameters)
    path = folder / name
    nbformat.write(notebook, path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-iteration training run: a model folder 01_inference can open without any download.
    Its untrained scores (about 0.2) all fall between the floor 0.05 and the default 0.5."""
    from d2nb.train import TrainSettings, train

    output_dir = tmp_path_factory.mktemp("browser_tiny_run") / "run"
    train(TrainSettings(gpus=0, output_dir=str(output_dir), max_iter=3, ims_per_batch=1, monitor=False,
                        opts=["DATASETS.TEST", "()"]))
    assert (output_dir / "model_final.pth").is_file()
    return output_dir


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("browser_notebooks")
    outputs = tmp_path_factory.mktemp("browser_outputs")
    notebook_with_parameters("01_inference.ipynb", root, {
        "config": str(tiny_run), "inputs": "samples", "output": str(outputs / "inference"), "device": "cpu"})
    notebook_with_parameters("03_train.ipynb", root, {**TRAIN_PARAMETERS, "output_dir": str(outputs / "train")})
    server = JupyterLab(root, tmp_path_factory.mktemp("browser_jupyter_home"))
    yield server
    server.stop()


# ----------------------------------------------------------------------------- the page

PROMPTS_JS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
ERRORS_JS = """() => {
  const found = [];
  for (const e of document.querySelectorAll('.jp-OutputArea-output')) {
    const mime = e.getAttribute('data-mime-type') || '';
    const text = e.textContent || '';
    // JupyterLab renders an exception's traceback as stderr text; a warning has no Traceback
    if ((mime === 'application/vnd.jupyter.stderr' && text.includes('Traceback'))
        || text.includes('Error displaying widget'))
      found.push(text.slice(0, 3000));
  }
  return found;
}"""


class Screenshots:
    def __init__(self, folder: Path):
        self.folder = folder

    def take(self, page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path))
        extra = os.environ.get("D2NB_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path


@pytest.fixture
def screenshots(tmp_path):
    return Screenshots(tmp_path)


@pytest.fixture
def page(browser, jupyter):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
    jupyter.shut_down_kernels()


def open_notebook(page, jupyter, name: str):
    """Open ``name`` alone in a fresh workspace and wait until all its cells are in the page
    and its kernel is idle (a click before that would run the still-empty notebook)."""
    cells = len(nbformat.read(jupyter.root / name, as_version=4).cells)
    page.goto(jupyter.url(f"lab/workspaces/{Path(name).stem}/tree/{name}") + "&reset")
    page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length === {cells}",
                           timeout=120_000)
    # the status bar says "Python 3 (ipykernel) | Idle" once the kernel is connected
    page.wait_for_function("() => /\\| Idle/.test(document.body.innerText)", timeout=120_000)
    assert page.locator(".jp-NotebookPanel").count() == 1, "more than this notebook is open"


def run_all_cells(page):
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")


def assert_no_errors(page):
    errors = page.evaluate(ERRORS_JS)
    assert not errors, "error output in the notebook:\n" + "\n---\n".join(errors)


def wait_for_all_cells(page, timeout: float = RUN_TIMEOUT, while_waiting=None):
    """Wait until every code cell has run ([n] prompts); fail at once on an error output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert_no_errors(page)
        if while_waiting:
            while_waiting()
        prompts = page.evaluate(PROMPTS_JS)
        if prompts and all(p.strip("[]: ").isdigit() for p in prompts):
            return
        time.sleep(0.2)
    pytest.fail(f"the notebook did not finish in {timeout} s; prompts: {page.evaluate(PROMPTS_JS)}")


def assert_widgets_rendered(page):
    deadline = time.monotonic() + 30
    while "Loading widget..." in page.inner_text("body") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "Loading widget..." not in page.inner_text("body"), "a widget never rendered"


IMAGE_BYTES_JS = """async (img) => {
  const blob = await (await fetch(img.src)).blob();
  return await new Promise(done => { const r = new FileReader(); r.onload = () => done(r.result); r.readAsDataURL(blob); });
}"""


def image_digest(image) -> tuple:
    """(src, sha256 of the picture's bytes) of an ipywidgets Image (a blob: or data: URL)."""
    data_url = image.evaluate(IMAGE_BYTES_JS)
    return image.get_attribute("src"), hashlib.sha256(base64.b64decode(data_url.split(",", 1)[1])).hexdigest()


# ----------------------------------------------------------------------------- the tests

def test_inference_notebook_threshold_slider_redraws_the_picture(page, jupyter, screenshots):
    open_notebook(page, jupyter, "01_inference.ipynb")
    run_all_cells(page)
    wait_for_all_cells(page)
    assert_widgets_rendered(page)
    page.locator(".widget-select").first.scroll_into_view_if_needed()  # the model picker
    screenshots.take(page, "01_inference_model_picker")
    picture = page.locator("img.widget-image").first
    picture.scroll_into_view_if_needed()
    picture.wait_for(state="visible")
    before = image_digest(picture)
    screenshots.take(page, "01_inference_threshold_0.50")

    # keyboard on the slider's handle: Home moves it to the score floor (0.05), where the tiny
    # model's detections (scores about 0.2) appear
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("Home")
    readout = page.locator(".widget-slider .widget-readout").first
    deadline = time.monotonic() + 60
    after = before
    while after[1] == before[1] and time.monotonic() < deadline:
        time.sleep(0.3)
        after = image_digest(picture)
    assert readout.inner_text().strip() == "0.05"
    assert after[0] != before[0] and after[1] != before[1], "the picture was not redrawn after the threshold moved"
    picture.scroll_into_view_if_needed()
    screenshots.take(page, "01_inference_threshold_0.05")
    assert_widgets_rendered(page)
    assert_no_errors(page)


STATUS_LINES_JS = ("() => [...document.querySelectorAll('.jp-OutputArea-output pre')]"
                   ".map(e => e.textContent).filter(t => /^iter \\d+\\/\\d+/.test(t))")
# every text the status line takes, recorded in the page as it changes (polling could miss some)
RECORD_STATUS_JS = """() => {
  window.d2nbStatuses = [];
  const record = () => {
    for (const e of document.querySelectorAll('.jp-OutputArea-output pre')) {
      const text = e.textContent;
      if (/^iter \\d+\\/\\d+/.test(text) && window.d2nbStatuses.at(-1) !== text) window.d2nbStatuses.push(text);
    }
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_train_notebook_live_monitor_updates_in_place(page, jupyter, screenshots):
    open_notebook(page, jupyter, "03_train.ipynb")
    page.evaluate(RECORD_STATUS_JS)
    run_all_cells(page)
    shown = []

    def check_status_line():
        lines = page.evaluate(STATUS_LINES_JS)
        assert len(lines) <= 1, f"the status line was printed again instead of updated in place: {lines}"
        if lines and lines not in shown:
            shown.append(lines)
            if len(shown) == 2:  # training, and its monitor already redrawn once
                page.locator(".jp-OutputArea-output pre", has_text="iter ").first.scroll_into_view_if_needed()
                screenshots.take(page, "03_train_live_monitor")

    wait_for_all_cells(page, while_waiting=check_status_line)
    statuses = page.evaluate("() => window.d2nbStatuses")
    print(f"{len(statuses)} status lines, first {statuses[:1]}, last {statuses[-1:]}")
    max_iter = TRAIN_PARAMETERS["max_iter"]
    assert len(statuses) >= 3, f"the live status line changed fewer than twice: {statuses}"
    assert statuses[-1].startswith(f"iter {max_iter}/{max_iter}"), statuses[-1]
    assert page.evaluate(STATUS_LINES_JS) == [statuses[-1]]
    plots = page.locator(".jp-OutputArea-output img")
    assert plots.count() >= 1, "the monitor's plot is not shown"
    plots.first.scroll_into_view_if_needed()
    screenshots.take(page, "03_train_finished")
    assert_status_block_shown(page, screenshots)
    assert_widgets_rendered(page)
    assert_no_errors(page)


def assert_status_block_shown(page, screenshots):
    """The first cell's set-up block (``d2nb.install``'s ``SetupStatus``), as the page shows it."""
    block = page.locator(".jp-OutputArea-output pre", has_text="d2nb set-up in").first
    block.scroll_into_view_if_needed()
    block.wait_for(state="visible")
    lines = block.inner_text().splitlines()
    assert lines[0].startswith("d2nb set-up in ") and lines[1].startswith("  detectron2  "), lines
    assert ", already installed (" in lines[1] and lines[2].startswith("  GPU         "), lines
    assert lines[3] == "  Drive       not mounted (not Colab)", lines
    box = block.bounding_box()
    viewport = page.viewport_size
    assert box and box["height"] > 0 and 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], \
        f"the status block is not in the screenshot: {box}"
    screenshots.take(page, "03_train_set_up")

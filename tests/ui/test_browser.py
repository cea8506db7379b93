"""The upgrade page in a real browser: `bt2 ui` (or the Space's `app.py`) serves it on a loopback port, headless
Chromium (Debian's, driven by Selenium) uploads an image or types a caption, clicks Search, and the three lists show
what the library computes.

Chromium resolves no host but 127.0.0.1 here, so a page that needed anything from the network would not load. Each
test saves a screenshot (``BT2_UI_SCREENSHOT_DIR``, default the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.ui import prepare_upgrade

from .expected import brute_force, library_search, score_of

pytestmark = pytest.mark.slow  # two servers and a browser: about 40 s on 2 busy cores

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
K = 5  # the page's default number of results per list


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,1400", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class Server:
    """The page in a process of its own, on a free loopback port: ``bt2 ui --config ui.json``, or the Space's
    ``app.py`` configured by environment variables (``space=True``)."""

    def __init__(self, config: Path, log: Path, space: bool = False):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        if space:
            env.update(BT2_UI_CONFIG=str(config), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port))
            command = [sys.executable, str(ROOT / "app.py")]
        else:
            command = [
                sys.executable,
                "-m",
                "bt2_hf.cli.main",
                "ui",
                "--config",
                str(config),
                "--port",
                str(self.port),
            ]
        self.log = log
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bt2 ui exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"bt2 ui did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _search_and_read(driver, url: str, query: dict) -> dict[str, list[dict]]:
    """Open the page, give the query, click Search, and read each list's rows (id, label, score, backfilled)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bt2-search"))
    if "image" in query:
        driver.find_element(By.CSS_SELECTOR, "#bt2-query-image input[type=file]").send_keys(str(query["image"]))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bt2-query-image img"))  # uploaded and previewed
    else:
        driver.find_element(By.CSS_SELECTOR, "#bt2-query-text textarea").send_keys(query["text"])
    driver.find_element(By.CSS_SELECTOR, "#bt2-search").click()
    keys = ("old", "new-on-old", "new-on-backfilled")
    wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, f"#bt2-results-{key} tr.bt2-hit") for key in keys))
    lists = {}
    for key in keys:
        rows = driver.find_elements(By.CSS_SELECTOR, f"#bt2-results-{key} tr.bt2-hit")
        lists[key] = [{"id": row.get_attribute("data-id"), "label": row.get_attribute("data-label"),
                       "score": float(row.get_attribute("data-score")),
                       "backfilled": row.get_attribute("data-backfilled") == "true"} for row in rows]  # fmt: skip
    return lists


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("BT2_UI_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    return path


def _assert_list(shown: list[dict], ids: list[str], scores, all_scores=None, gallery=None) -> None:
    """The shown list is the expected one: same scores rank by rank, and each shown item has that score (so two
    items whose scores tie to float precision may trade places, nothing else)."""
    assert len(shown) == len(ids)
    np.testing.assert_allclose([hit["score"] for hit in shown], scores, atol=1e-4)
    if all_scores is None:
        assert [hit["id"] for hit in shown] == ids
    else:
        for hit, score in zip(shown, scores):
            assert abs(score_of(gallery, all_scores, hit["id"]) - score) < 1e-4, (hit, ids)


def test_image_query_in_a_browser(image_upgrade, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from bt2_hf.galleries import FaissGallery, open_source

    settings = prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], tmp_path / "w",
                               data=image_upgrade["data"], split="test", fraction=0.5, allow_unmeasured=True,
                               show_progress=False)  # fmt: skip
    query = open_source(str(image_upgrade["data"]), split="test").take([7])[0].numpy()[0]  # (28, 28) uint8
    Image.fromarray(query).save(tmp_path / "query.png")
    old, new = BT2Model.from_pretrained(image_upgrade["old"]), BT2Model.from_pretrained(image_upgrade["new"])
    new_query = new.encode(images=[query]).numpy()
    # the half-backfilled copy's list, before the page backfills the rest
    mixed_ids, mixed_scores = library_search(settings.backfilled_gallery, new, new_query, K)
    server = Server(tmp_path / "w" / "ui.json", tmp_path / "server.log", space=True)  # app.py, as a Space runs it
    try:
        server.wait()
        shown = _search_and_read(browser, server.url, {"image": tmp_path / "query.png"})
        # the verdicts and the progress, as the page shows them
        progress = browser.find_element("css selector", "#bt2-progress .bt2-progress")
        assert (progress.get_attribute("data-done"), progress.get_attribute("data-count")) == ("15", "30")
        new_box = browser.find_element("css selector", "#bt2-verdicts .bt2-verdict[data-role='new']")
        assert "declared, not measured" in new_box.text and "override" in new_box.text
        _screenshot(browser, tmp_path, "ui_image_query.png")
        # Backfill the rest from the page, then search again: every hit of the third list is re-embedded.
        fraction = browser.find_element("css selector", "#bt2-backfill-fraction input[type=number]")
        fraction.clear()
        fraction.send_keys("1", Keys.TAB)
        browser.find_element("css selector", "#bt2-backfill").click()
        WebDriverWait(browser, 60).until(
            lambda d: d.find_elements("css selector", "#bt2-progress .bt2-progress[data-done='30']")
        )
        browser.find_element("css selector", "#bt2-search").click()
        WebDriverWait(browser, 60).until(
            lambda d: (
                len(d.find_elements("css selector", "#bt2-results-new-on-backfilled tr[data-backfilled='true']")) == K
            )
        )
    finally:
        server.stop()

    old_ids, old_scores, old_all = brute_force(settings.old_gallery, old.encode(images=[query]).numpy(), 8, K)
    new_ids, new_scores, new_all = brute_force(settings.old_gallery, new_query, 8, K)
    _assert_list(shown["old"], old_ids, old_scores, old_all, settings.old_gallery)
    _assert_list(shown["new-on-old"], new_ids, new_scores, new_all, settings.old_gallery)
    _assert_list(shown["new-on-backfilled"], mixed_ids, mixed_scores)
    # labels are the class names of the gallery's manifest; only the backfilled copy has re-embedded items
    gallery = FaissGallery.open(settings.old_gallery)
    ids = [str(i) for i in gallery.ids_of(np.arange(len(gallery)))]
    names = gallery.labels_of(np.arange(len(gallery)))
    for hit in shown["old"] + shown["new-on-old"]:
        assert hit["label"] == names[ids.index(hit["id"])] and not hit["backfilled"]
    assert shown["old"][0]["id"] == "7"  # the query is gallery item 7: the old model finds it first
    assert any(hit["backfilled"] for hit in shown["new-on-backfilled"])
    assert FaissGallery.open(settings.backfilled_gallery).backfill_state["done"] == 30  # the page's button did it
    assert FaissGallery.open(image_upgrade["gallery"]).backfill_state is None


def test_text_query_in_a_browser(text_upgrade, browser, tmp_path):
    from bt2_hf.galleries import FaissGallery

    settings = prepare_upgrade(text_upgrade["old"], text_upgrade["new"], text_upgrade["gallery"], tmp_path / "w",
                               data=text_upgrade["data"], fraction=1.0, allow_unmeasured=True, show_progress=False)  # fmt: skip
    caption = "a photo of item 3 in black"
    server = Server(tmp_path / "w" / "ui.json", tmp_path / "server.log")
    try:
        server.wait()
        shown = _search_and_read(browser, server.url, {"text": caption})
        assert not [e for e in browser.find_elements("css selector", "#bt2-query-image") if e.is_displayed()]
        _screenshot(browser, tmp_path, "ui_text_query.png")
    finally:
        server.stop()

    old, new = BT2Model.from_pretrained(text_upgrade["old"]), BT2Model.from_pretrained(text_upgrade["new"])
    old_ids, old_scores, old_all = brute_force(settings.old_gallery, old.encode(texts=[caption]).numpy(), 8, K)
    new_query = new.encode(texts=[caption]).numpy()
    new_ids, new_scores, new_all = brute_force(settings.old_gallery, new_query, 8, K)
    _assert_list(shown["old"], old_ids, old_scores, old_all, settings.old_gallery)
    _assert_list(shown["new-on-old"], new_ids, new_scores, new_all, settings.old_gallery)
    # Fully backfilled (not finalised): every position is re-embedded and the order is new/new's, brute force over
    # the new model's vectors of the copy.
    copy = FaissGallery.open(settings.backfilled_gallery)
    new_new = copy.backfill_vectors(np.arange(len(copy))) @ (new_query[0] / np.linalg.norm(new_query[0]))
    order = np.lexsort((np.arange(len(copy)), -new_new))[:K]
    assert all(hit["backfilled"] for hit in shown["new-on-backfilled"])
    shown_ids = [hit["id"] for hit in shown["new-on-backfilled"]]
    all_ids = [str(i) for i in copy.ids_of(np.arange(len(copy)))]
    np.testing.assert_allclose([new_new[all_ids.index(i)] for i in shown_ids], new_new[order], atol=1e-5)
    assert shown_ids == library_search(settings.backfilled_gallery, new, new_query, K)[0]
    assert old_ids[0] == "t3"  # the caption is gallery item t3, word for word

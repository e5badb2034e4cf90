"""The page in a real browser: ``cxrdet serve`` on 127.0.0.1 (subprocess) driven by Debian's
headless chromium through selenium (the system chromedriver; nothing is downloaded). Uploads a
synthetic DICOM through the file input, waits for the result, checks the boxes and labels drawn,
the probability tables, the slider, a class toggle and the classifier's heatmap overlay; saves a screenshot to tmp_path (and, with
CXRDET_UPDATE_DOCS_IMG=1, over docs/img/serve.png, the README's picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from serve_fixtures import make_artifact, make_classifier, make_gate, start_server, stop_server, write_dicoms

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img" / "serve.png"


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _drawn(driver) -> tuple[int, int]:
    canvas = driver.find_element(By.ID, "view")
    return int(canvas.get_attribute("data-boxes-drawn")), int(canvas.get_attribute("data-labels-drawn"))


def test_page_uploads_a_dicom_and_draws_the_servers_boxes(tmp_path, browser):
    model, gate = make_artifact(tmp_path / "export"), make_gate(tmp_path / "gate", classifier=True)
    classifier = make_classifier(tmp_path / "classifier")
    dicom = write_dicoms(tmp_path / "dicoms", 1)[0]
    proc, url = start_server(["--model", model, "--gate", gate, "--classifier", classifier, "--vis-conf", "0.1",
                              "--device", "cpu", "--workers", "1"], env={**os.environ, "CXRDET_TOKEN": ""})
    try:
        # what the page must show: the API's own answer for this file (same server, same weights)
        expected = httpx.post(f"{url}/v1/predict", files={"file": (dicom.name, dicom.read_bytes())},
                              timeout=120).json()
        items = expected["display"]["items"]
        shown = [i for i in items if i["score"] >= 0.1]
        assert 0 < len(shown) < len(items)  # the slider start hides some: the test can tell

        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "min-score").get_attribute("value") == "0.1")
        browser.find_element(By.ID, "file").send_keys(str(dicom))
        WebDriverWait(browser, 120).until(
            lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in {"done", "error"})
        status = browser.find_element(By.ID, "status")
        assert status.get_attribute("data-state") == "done", status.text

        boxes, labels = _drawn(browser)
        assert boxes == len(shown)
        assert labels == sum(1 for i in shown if i["label"])
        rows = browser.find_elements(By.CSS_SELECTOR, "#probs tbody tr")
        assert len(rows) == 14
        cells = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
        assert cells == [f"{c['p']:.3f}" for c in expected["image_level"]["classes"]]
        assert browser.find_element(By.ID, "prediction-string").text == expected["prediction_string"]
        assert "p(abnormal) = " in browser.find_element(By.ID, "gate").text
        assert browser.find_element(By.ID, "classifier").get_attribute("hidden") is None
        clf_rows = browser.find_elements(By.CSS_SELECTOR, "#clf-probs tbody tr")
        best = max(expected["classifier"]["classes"], key=lambda k: k["probability"])
        assert len(clf_rows) == 15 and clf_rows[0].find_elements(By.TAG_NAME, "td")[0].text == best["class_name"]
        options = browser.find_elements(By.CSS_SELECTOR, "#heatmap-class option")
        assert [o.get_attribute("value") for o in options] == [str(h["class_index"]) for h in expected["classifier"]["heatmaps"]]
        canvas = browser.find_element(By.ID, "view")
        plain = browser.execute_script("return document.getElementById('view').toDataURL()")
        browser.find_element(By.ID, "heatmap-toggle").click()
        assert canvas.get_attribute("data-heatmap") == options[0].get_attribute("value")
        assert browser.execute_script("return document.getElementById('view').toDataURL()") != plain
        assert browser.find_element(By.ID, "download-sr").get_attribute("hidden") is None  # a DICOM: its SR is offered

        screenshot = tmp_path / "serve.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        if os.environ.get("CXRDET_UPDATE_DOCS_IMG") == "1":  # refresh the README's picture of the page
            DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, DOCS_IMG)

        browser.find_element(By.ID, "heatmap-toggle").click()  # back to the plain image
        assert canvas.get_attribute("data-heatmap") == ""
        # one class toggled off hides exactly its boxes
        first = browser.find_element(By.CSS_SELECTOR, "#classes input")
        hidden_class = int(first.get_attribute("data-class-id"))
        first.click()
        assert _drawn(browser)[0] == sum(1 for i in shown if i["class_id"] != hidden_class)
        first.click()
        # the slider at 0 shows every box the server laid out
        browser.execute_script("const s = document.getElementById('min-score'); s.value = '0';"
                               "s.dispatchEvent(new Event('input'));")
        assert _drawn(browser)[0] == len(items)
    finally:
        log = stop_server(proc)
    assert "Traceback" not in log, log

"""The webcam page in headless Chromium, with a fake camera playing a photo of a person."""

import shutil

import cv2
import numpy as np
import pytest

from .service_helpers import PHOTOS, SMALL_BODY_LIMIT, shared_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)

OVERLAY_PIXELS = """
const canvas = document.getElementById("overlay");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
return painted;
"""


def write_y4m(path, image_path, width=640, height=480, frames=5):
    """A short 4:2:0 Y4M clip of one photo, which Chromium's fake camera plays in a loop."""
    bgr = cv2.resize(cv2.imread(str(image_path)), (width, height))
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + np.ascontiguousarray(i420).tobytes())
    return path


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    clip = write_y4m(tmp_path / "camera.y4m", PHOTOS / "grace_hopper.jpg")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--window-size=1100,1000",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--metrics-recording-only",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # loopback only
        f"--user-data-dir={tmp_path / 'profile'}",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_streams_the_camera_and_draws_a_box_on_the_person(person_checkpoint, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT)
    browser.get(f"{server.url}/")
    WebDriverWait(browser, 20).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "start").click()
    try:
        WebDriverWait(browser, 60).until(
            lambda d: (
                d.execute_script("return window.ssdlite.frames") >= 5
                and d.find_element(By.ID, "overlay").get_attribute("data-boxes") not in ("0", None)
            )
        )
    finally:
        browser.save_screenshot(str(tmp_path / "page.png"))
    state = browser.execute_script("return window.ssdlite")
    overlay = browser.find_element(By.ID, "overlay")
    assert state["errors"] == 0 and state["connected"]
    assert "person" in overlay.get_attribute("data-labels").split(",")
    assert state["detections"][0]["label"] == "person" and state["detections"][0]["score"] >= 0.5
    assert browser.execute_script(OVERLAY_PIXELS) > 500, "no box was painted on the overlay canvas"
    assert float(browser.find_element(By.ID, "fps").text) > 0
    assert float(browser.find_element(By.ID, "latency").text) > 0
    assert int(browser.find_element(By.ID, "count").text) >= 1

    # The upload form: one image, detections drawn on their own canvas.
    browser.find_element(By.ID, "file").send_keys(str(PHOTOS / "astronaut.jpg"))
    browser.find_element(By.CSS_SELECTOR, "#upload-form button").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "upload-canvas").get_attribute("data-boxes") not in ("0", None)
    )
    assert "person" in browser.find_element(By.ID, "upload-canvas").get_attribute("data-labels")
    assert "detections in" in browser.find_element(By.ID, "upload-status").text
    browser.save_screenshot(str(tmp_path / "upload.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_page_asks_for_the_api_key_and_streams_with_it(person_checkpoint, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT, api_keys="page-key-1")
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
    assert browser.find_element(By.ID, "model").text == "API key required"
    assert "missing API key" in browser.find_element(By.ID, "key-status").text

    def enter_key(key):
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()

    enter_key("wrong-key")
    wait.until(lambda d: "refused" in d.find_element(By.ID, "key-status").text)
    assert browser.find_element(By.ID, "key-form").is_displayed()
    enter_key("page-key-1")
    wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "key-form").is_displayed()

    browser.find_element(By.ID, "start").click()  # the WebSocket carries the key as a subprotocol
    try:
        WebDriverWait(browser, 60).until(lambda d: d.execute_script("return window.ssdlite.frames") >= 3)
    finally:
        browser.save_screenshot(str(tmp_path / "page-with-key.png"))
    state = browser.execute_script("return window.ssdlite")
    assert state["errors"] == 0 and state["connected"] and not state["needsKey"]
    assert state["detections"][0]["label"] == "person"
    browser.find_element(By.ID, "file").send_keys(str(PHOTOS / "astronaut.jpg"))  # and the upload its header
    browser.find_element(By.CSS_SELECTOR, "#upload-form button").click()
    WebDriverWait(browser, 30).until(lambda d: "detections in" in d.find_element(By.ID, "upload-status").text)
    assert "page-key-1" not in server.output

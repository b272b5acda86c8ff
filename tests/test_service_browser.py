"""The webcam page in headless Chromium, with a fake camera playing a photo of a person."""

import contextlib
import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from bench.service import free_port
from service import Settings, create_app

from .service_helpers import PHOTOS, SMALL_BODY_LIMIT, scripted_detector, shared_service

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


@contextlib.contextmanager
def served_in_thread(detector, **settings):
    """The app serving ``detector`` (a scripted one) with uvicorn on a thread; yields its URL."""
    import uvicorn

    port = free_port()
    app = create_app(Settings(**settings), detector=detector)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


PAGE_SNAPSHOT = """
const text = (selector) => { const e = document.querySelector(selector); return e ? e.innerText : null; };
return {
  state: window.ssdlite,
  overlayTrackIds: document.getElementById("overlay").dataset.trackIds,
  tracks: text("#tracks"),
  status: text("#status"),
  line: text('#counts .count-row[data-kind="line"]'),
  zone: text('#counts .count-row[data-kind="zone"]'),
  events: text("#counts .events"),
};
"""


def text_of(browser, selector):
    """An element's text read in one script call (the counts panel is redrawn with every reply)."""
    return browser.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText", selector)


def set_regions(browser, text):
    """Types over the lines-and-zones box and clicks Apply (one reconnection, as a person would)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.ID, "regions")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE, text)
    browser.find_element(By.ID, "apply-regions").click()


def test_page_tracks_and_counts_a_person_walking_down_across_a_line(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    pytest.importorskip("trackers", reason="tracking needs the trackers package")
    # One person walking down the picture, 0.005 of its height per inference (at most ~30 a second):
    # across the line at y = 0.5 (drawn left to right, so moving down is "in"), then into the zone
    # below y = 0.6, and still in view for seconds after that.
    detector = scripted_detector((0.35, 0.0, 0.65, 0.3), delay=0.03, step=(0.0, 0.005))
    with served_in_thread(detector, max_batch_size=1) as url:  # warm-up: one inference
        browser.get(f"{url}/")
        WebDriverWait(browser, 20).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "tracking-options").is_displayed()
        browser.find_element(By.ID, "track").click()
        assert browser.find_element(By.ID, "tracking-options").is_displayed()
        assert Select(browser.find_element(By.ID, "tracker")).first_selected_option.get_attribute("value") == "ocsort"
        set_regions(browser, "line 0,0.5,1,0.5\nzone 0,0.6,1,0.6,1,1,0,1")
        browser.find_element(By.ID, "start").click()

        def counted(d):
            counts = d.execute_script("return window.ssdlite.counts")
            return counts and counts["lines"][0]["in"] >= 1 and counts["zones"][0]["entered"] >= 1

        try:
            WebDriverWait(browser, 60).until(counted)
        finally:
            browser.save_screenshot(str(tmp_path / "tracking.png"))
        page = browser.execute_script(PAGE_SNAPSHOT)  # one script: all of it from the same reply
        state, reply = page["state"], page["state"]["lastReply"]
        assert state["tracking"] and state["tracker"] == "ocsort" and state["errors"] == 0
        assert reply["detections"] and all(isinstance(d["track_id"], int) for d in reply["detections"])
        ids = [d["track_id"] for d in reply["detections"]]
        assert page["overlayTrackIds"] == ",".join(map(str, ids))
        assert page["tracks"] == " ".join(f"#{i}" for i in ids)
        assert "tracking (ocsort)" in page["status"]
        # The counts panel: the line's in/out and the zone's inside/entered/exited, as the server counted.
        assert "Line 1" in page["line"] and "in 1 · out 0 (person: in 1, out 0)" in page["line"]
        assert "Zone 1" in page["zone"] and "entered 1" in page["zone"]
        assert f"#{ids[0]} person crossed in line 1" in page["events"]
        assert state["counts"]["lines"][0]["in"] == 1 and state["counts"]["lines"][0]["out"] == 0
        assert browser.execute_script(OVERLAY_PIXELS) > 2000, "no lines, zones or boxes were painted"

        # Tracking off: a plain detection stream again, without IDs or counts.
        frames = state["frames"]
        browser.find_element(By.ID, "track").click()
        WebDriverWait(browser, 30).until(
            lambda d: (
                d.execute_script("return window.ssdlite.frames") >= frames + 3
                and not d.execute_script("return window.ssdlite.tracking")
            )
        )
        assert not browser.find_element(By.ID, "counts").is_displayed()
        assert not browser.find_element(By.ID, "tracks-stat").is_displayed()
        assert browser.find_element(By.ID, "status").text == "streaming"
        detections = browser.execute_script("return window.ssdlite.detections")
        assert all("track_id" not in d for d in detections)
    assert (tmp_path / "tracking.png").stat().st_size > 10_000


def test_page_shows_the_servers_error_for_a_bad_line_and_recovers(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pytest.importorskip("trackers", reason="tracking needs the trackers package")
    detector = scripted_detector((0.3, 0.3, 0.6, 0.9))
    with served_in_thread(detector, max_batch_size=1) as url:
        browser.get(f"{url}/")
        WebDriverWait(browser, 20).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "track").click()
        set_regions(browser, "line 0.5,0.5,0.5,0.5")
        browser.find_element(By.ID, "start").click()
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 30).until(lambda d: "its two points are equal" in status.text)
        assert "line '0.5,0.5,0.5,0.5'" in status.text and "error" in status.get_attribute("class")
        time.sleep(1.5)  # the refusal is final: no reconnecting over the message
        assert "its two points are equal" in status.text
        state = browser.execute_script("return window.ssdlite")
        assert not state["connected"] and state["frames"] == 0 and "equal" in state["refused"]
        browser.save_screenshot(str(tmp_path / "bad-line.png"))

        # A row that is not a line or zone is caught by the page; a good line streams again.
        set_regions(browser, "ray 0,0,1,1")
        WebDriverWait(browser, 10).until(lambda d: 'start it with "line" or "zone"' in status.text)
        # A zone outside the frame (pixels) is refused at the first frame, and stays refused.
        set_regions(browser, "zone 0,0,5000,0,5000,5000")
        WebDriverWait(browser, 30).until(lambda d: "lies outside the 640x480 frame" in status.text)
        assert status.text.startswith("frame 1: zone '0,0,5000,0,5000,5000'")
        time.sleep(1.5)
        assert "lies outside" in status.text and not browser.execute_script("return window.ssdlite.connected")
        set_regions(browser, "line 0,0.5,1,0.5")
        WebDriverWait(browser, 30).until(lambda d: text_of(d, '#counts .count-row[data-kind="line"]'))
        assert "in 0 · out 0" in text_of(browser, '#counts .count-row[data-kind="line"]')
        assert "tracking" in status.text and "error" not in status.get_attribute("class")
        assert browser.execute_script("return window.ssdlite.lastReply.detections[0].track_id") == 1

"""The operator console at `/` in a real headless browser (Debian's chromium + chromedriver,
driven by selenium) against the real server: decisions, score bars against thresholds,
highlighted evidence, explanations, threshold sliders; and no external assets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from api_support import ServerThread

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver; installs Debian's packages when they are missing
    and this runs as root with apt-get, else skips with the reason."""
    def found() -> tuple[str | None, str | None]:
        return next(filter(None, map(shutil.which, CHROMIUM)), None), shutil.which(DRIVER)

    browser, driver = found()
    if (browser is None or driver is None) and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
                       capture_output=True, timeout=900, check=False)
        browser, driver = found()
    if browser is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver), not installed and not installable here")
    return browser, driver


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = _browser()
    options = Options()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def _moderate(browser, text: str) -> None:  # noqa: ANN001
    """Type `text`, press Moderate, wait for a new answer (each names a new request id)."""
    box = browser.find_element(By.ID, "texts")
    box.clear()
    box.send_keys(text)
    before = browser.find_element(By.ID, "results").text
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.ID, "results").text != before
        or b.find_element(By.ID, "error").text
    )


def _set_slider(browser, category: str, kind: str, value: float) -> None:  # noqa: ANN001
    slider = browser.find_element(
        By.CSS_SELECTOR, f'tr[data-category="{category}"] input[data-kind="{kind}"]'
    )
    browser.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input'));", slider, str(value)
    )


def test_console_shows_decisions(browser, wacht_server: ServerThread, tmp_path: Path) -> None:  # noqa: ANN001
    browser.get(wacht_server.http_url + "/")
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    )
    assert browser.find_element(By.ID, "error").text == ""
    policies = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#policy option")]
    assert {"default", "strict", "lenient"} <= set(policies)
    rows = browser.find_elements(By.CSS_SELECTOR, "#thresholds tr")
    assert [r.get_attribute("data-category") for r in rows] == [
        "toxicity", "hate", "insult", "profanity"
    ]

    _moderate(browser, "You are a complete idiot and a moron.")
    (card,) = browser.find_elements(By.CSS_SELECTOR, ".result")
    decision = card.find_element(By.CSS_SELECTOR, ".decision").text
    assert decision in ("REVIEW", "BLOCK")
    marks = card.find_elements(By.TAG_NAME, "mark")
    assert marks, "no evidence span highlighted"
    assert any(word in " ".join(m.text for m in marks).lower() for word in ("idiot", "moron"))
    tracks = card.find_elements(By.CSS_SELECTOR, ".track")
    assert len(tracks) == 4
    insult = card.find_element(By.CSS_SELECTOR, '.track[data-category="insult"] .fill')
    assert float(insult.value_of_css_property("width").removesuffix("px")) > 0
    assert card.find_elements(By.CSS_SELECTOR, '.track[data-category="insult"] .tick.review')
    assert "Explanation" in card.find_element(By.CSS_SELECTOR, ".explanation").text
    shot = Path(os.environ.get("WACHT_CONSOLE_SCREENSHOT") or tmp_path / "console.png")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # A harmless text is allowed; dropping toxicity's review threshold to 0 sends it to review.
    _moderate(browser, "Thanks, that was really helpful.")
    card = browser.find_element(By.CSS_SELECTOR, ".result")
    assert card.find_element(By.CSS_SELECTOR, ".decision").text == "ALLOW"
    _set_slider(browser, "toxicity", "review", 0.0)
    _moderate(browser, "Thanks, that was really helpful.")
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.CSS_SELECTOR, ".result .decision").text == "REVIEW"
    )

    # A bad override (review above block) shows the server's field violation.
    _set_slider(browser, "hate", "review", 0.95)
    _set_slider(browser, "hate", "block", 0.10)
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "error").text)
    assert "threshold_overrides[hate].review" in browser.find_element(By.ID, "error").text

    # Air-gapped: every resource the page loaded came from this server.
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
    )
    assert set(origins) <= {wacht_server.http_url}
    assert "https://" not in browser.page_source and "http://" not in browser.page_source

"""Drives kiln serve's dashboard in a real browser (Debian's chromium and
chromium-driver, through selenium): sign in with the link `kiln dashboard`
prints, watch a canary advance by live updates alone, check that a request
without the CSRF value is refused, click Abort, and see traffic back on
stable. Prints one JSON line of figures; exits non-zero on any failure.

usage: dashboard.py LINK SERVICE STABLE_RELEASE CANARY_RELEASE SCREENSHOT_DIR
"""

import json
import os
import re
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

link, service, stable, canary, shots = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)

opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500"]:
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 60, poll_frequency=0.05)


def attr(css, name):
    # Read in the page in one go: the page re-renders on every event, so an
    # element found a moment ago may be gone.
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;", css, name)


def step():
    return int(attr(f"#rollout-{service}", "data-step") or 0)


try:
    driver.get(link)
    # The sign-in link redirects to / and leaves the token out of the address bar.
    wait.until(ec.presence_of_element_located((By.ID, f"split-{service}")))
    assert "token=" not in driver.current_url, driver.current_url
    paint = driver.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null;"
    )
    first_render = driver.execute_script("return window.kiln.firstRender;")
    cookie_js = driver.execute_script("return document.cookie;")
    assert "kiln_session" not in cookie_js, "the session cookie is HttpOnly"

    # The canary is in progress; note its step, then wait for the page to
    # show a later one with no reload.
    wait.until(lambda d: attr(f"#rollout-{service}", "data-release") == canary)
    first_step = step()
    driver.save_screenshot(os.path.join(shots, "1-canary-started.png"))
    marker = driver.execute_script("window.__same_page = 1; return 1;")
    wait.until(lambda d: step() > first_step)
    assert driver.execute_script("return window.__same_page;") == marker, "the page was not reloaded"
    advanced_to = step()
    split = attr(f"#split-{service}", "data-split")
    assert canary in split and stable in split, split
    # The analysis charts have points from the event stream.
    wait.until(lambda d: int(attr(f"section[data-service='{service}'] svg[data-points]", "data-points") or 0) >= 2)
    # The charts have a time axis (clock times) and fill their column.
    axis = driver.execute_script(
        "const s = document.querySelector(`section[data-service='${arguments[0]}'] svg[data-points]`);"
        "if (!s) return null; const p = s.querySelector('path'); const r = s.getBoundingClientRect();"
        "return {ticks: [...s.querySelectorAll('text.t-axis')].map(t => t.textContent),"
        " svg: r.width, col: s.parentElement.getBoundingClientRect().width, path: p ? p.getBoundingClientRect().width : 0};",
        service,
    )
    assert axis and len(axis["ticks"]) == 3, axis
    assert all(re.fullmatch(r"\d{1,2}:\d{2}:\d{2}", t) for t in axis["ticks"]), axis
    assert axis["svg"] >= 0.95 * axis["col"] and axis["path"] >= 0.8 * axis["svg"], f"the chart fills its column: {axis}"
    driver.save_screenshot(os.path.join(shots, "2-canary-advanced.png"))

    # A changing request without the CSRF value is refused, even with the cookie.
    # (WebDriver waits for a returned promise.)
    status = driver.execute_script(
        "return fetch('/v1/abort', {method: 'POST', credentials: 'same-origin',"
        " headers: {'Content-Type': 'application/json'}, body: JSON.stringify({service: arguments[0]})})"
        ".then(r => r.status, e => String(e));",
        service,
    )
    assert status == 403, f"without X-Kiln-CSRF: {status}"
    assert attr(f"#rollout-{service}", "data-release") == canary, "the refused request changed nothing"

    # A real click; the page may re-render between finding the button and
    # clicking it (every event re-renders), so find it again if so.
    for attempt in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, f"button[data-action='abort'][data-service='{service}']").click()
            break
        except StaleElementReferenceException:
            time.sleep(0.05)
    else:
        raise AssertionError("the Abort button never held still long enough to be clicked")
    WebDriverWait(driver, 5).until(ec.alert_is_present())
    driver.switch_to.alert.accept()
    clicked = time.time()
    wait.until(lambda d: attr(f"#split-{service}", "data-split") == f"{stable}:100")
    back_ms = (time.time() - clicked) * 1000
    wait.until(lambda d: attr(f"#rollout-{service}", "data-step") == "0")
    # The history shows the abort (the timeline follows the stream too).
    wait.until(lambda d: "aborted by dashboard" in d.find_element(By.ID, "timeline").text)
    driver.save_screenshot(os.path.join(shots, "3-aborted.png"))
    # What the page shows, read as a person would.
    timeline = driver.find_element(By.ID, "timeline").text
    assert "[object Object]" not in timeline and "undefined" not in timeline, timeline
    assert f"started" in timeline and "aborted by dashboard" in timeline, timeline
    # Every verdict's inequality is true as printed.
    judged = 0
    for m in re.finditer(r"(\w+_(?:rate|latency_ms)) ([\d.]+) (≤|>) ([\d.]+)", timeline):
        a, op, b = float(m[2]), m[3], float(m[4])
        assert (a <= b) == (op == "≤"), f"a false inequality: {m[0]}"
        judged += 1
    # Each instance's share of the traffic, summed over the service, is 100.
    def shares():
        return driver.execute_script(
            "return [...document.querySelectorAll(`section[data-service='${arguments[0]}'] tr[data-instance]`)]"
            ".map(r => r.lastElementChild.textContent);",
            service,
        )
    wait.until(lambda d: abs(sum(float(s.rstrip("%")) for s in shares() if s.endswith("%")) - 100) < 1.5)
    # With no release in progress there is nothing to abort.
    wait.until(lambda d: attr(f"button[data-action='abort'][data-service='{service}']", "disabled") is not None)
    latencies = driver.execute_script("return window.kiln.latencies;")
    print(json.dumps({
        "first_contentful_paint_ms": paint,
        "first_render_ms": first_render,
        "event_to_screen_ms": latencies,
        "first_step": first_step,
        "advanced_to": advanced_to,
        "abort_to_stable_ms": back_ms,
        "verdict_inequalities_checked": judged,
        "shares": shares(),
    }))
except Exception:
    driver.save_screenshot(os.path.join(shots, "failure.png"))
    with open(os.path.join(shots, "failure.html"), "w") as f:
        f.write(driver.page_source)
    raise
finally:
    driver.quit()

"""Drives a fleet controller's dashboard in a real browser (Debian's
chromium and chromium-driver, through selenium): sign in with the link
`kiln dashboard --controller` prints, see both hosts and every slot
serving, watch a canary advance with no reload, check that a change
without the CSRF value is refused, click Abort, and see the canary gone,
the abort in the history and every slot serving stable. Prints one JSON
line of figures; exits non-zero on any failure.

usage: fleet_dashboard.py LINK SERVICE STABLE CANARY SCREENSHOT_DIR
(STABLE and CANARY: the images' 12-digit short digests)
"""

import json
import os
import sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from fleet_page import Page, start

link, service, stable, canary, shots = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)
driver, wait = start()
page = Page(driver)
js, attr, text, slot_states = page.js, page.attr, page.text, page.slot_states


try:
    driver.get(link)
    wait.until(ec.presence_of_element_located((By.ID, f"svc-{service}")))
    assert "token=" not in driver.current_url, driver.current_url
    assert "kiln_session" not in js("return document.cookie;"), "the session cookie is HttpOnly"

    # Both hosts, with their leases; every slot of the service listed.
    wait.until(lambda d: attr("#hosts", "data-count") == "2")
    hosts = js("return [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.host);")
    assert sorted(hosts) == ["h1", "h2"], hosts
    assert "s of 2 s" in text("#hosts tbody"), text("#hosts tbody")

    # The canary, as the whole fleet has it: its weight in the split and a
    # step that advances with no reload.
    wait.until(lambda d: attr(f"#svc-{service}", "data-canary") == canary and int(attr(f"#svc-{service}", "data-step") or 0) >= 1)
    assert attr(f"#svc-{service}", "data-image") == stable
    # The step and the refreshes counted so far, read in one go.
    first_step, renders_before = js(
        "return [Number(document.querySelector(arguments[0]).dataset.step), window.kiln.renders];", f"#svc-{service}"
    )
    split = text(f"#split-{service}")
    assert f"{canary} " in split and f"{stable} " in split, split
    wait.until(lambda d: any(s.startswith(f"{service}-canary") and st == "serving" for s, st in slot_states()))
    driver.save_screenshot(os.path.join(shots, "1-canary.png"))
    wait.until(lambda d: int(attr(f"#svc-{service}", "data-step") or 0) > first_step)
    advanced_to = int(attr(f"#svc-{service}", "data-step"))
    weight = int(attr(f"#svc-{service}", "data-weight"))
    assert js("return window.kiln.renders;") > renders_before
    assert "step " in text("#timeline"), text("#timeline")
    driver.save_screenshot(os.path.join(shots, "2-advanced.png"))

    # A change from the session without the CSRF value is refused.
    refused = js(
        "return fetch('/v1/fleet', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({abort: {service: arguments[0]}})}).then(r => r.status);",
        service,
    )
    assert refused == 403, refused
    assert attr(f"#svc-{service}", "data-canary") == canary, "the refused abort changed nothing"

    # Abort with a click (and the confirmation).
    # The page re-renders what changed every second: a button found just
    # before a change is gone; find it again.
    page.click(f'#svc-{service} button[data-action="abort"]')
    wait.until(ec.alert_is_present())
    driver.switch_to.alert.accept()
    wait.until(lambda d: "aborted" in text("#message"))
    wait.until(lambda d: attr(f"#svc-{service}", "data-canary") == "")
    wait.until(lambda d: "aborted by dashboard" in text("#timeline"))
    # Every slot left serving runs stable: the canary's are gone.
    wait.until(lambda d: (lambda s: len(s) == 2 and all(st == "serving" and not sl.startswith(f"{service}-canary") for sl, st in s))(slot_states()))
    driver.save_screenshot(os.path.join(shots, "3-aborted.png"))
    print(json.dumps({
        "hosts": len(hosts),
        "first_step": first_step,
        "advanced_to": advanced_to,
        "weight_seen": weight,
        "first_render_ms": js("return window.kiln.firstRender;"),
        "poll_failures": js("return window.kiln.failures;"),
    }))
finally:
    driver.quit()

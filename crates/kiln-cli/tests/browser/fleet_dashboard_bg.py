"""Drives a fleet controller's dashboard through a blue-green release
kept warm (Debian's chromium and chromium-driver, through selenium): the
service shows its new image stable and the previous set warm, the slots
table shows that set on standby and the new one serving; a click on
"Roll back" (and the confirmation) switches back to the warm set, which
the page then shows stable with no blue-green release left. Exits
non-zero on any failure.

usage: fleet_dashboard_bg.py LINK SERVICE OLD NEW SCREENSHOT_DIR
(OLD and NEW: the images' 12-digit short digests)
"""

import os
import sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from fleet_page import Page, start

link, service, old, new, shots = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)
driver, wait = start()
page = Page(driver)
attr, text = page.attr, page.text


def slot_states():
    return dict(page.slot_states())


try:
    driver.get(link)
    wait.until(ec.presence_of_element_located((By.ID, f"svc-{service}")))
    # The new image stable, the previous set warm, named by its digest.
    wait.until(lambda d: attr(f"#bg-{service}", "data-phase") == "kept")
    assert attr(f"#svc-{service}", "data-image") == new, attr(f"#svc-{service}", "data-image")
    bg = " ".join(text(f"#bg-{service}").split())
    assert "kept warm until" in bg and old in bg, bg
    assert f"{new} 100 %" in text(f"#split-{service}"), text(f"#split-{service}")
    # Which set serves and which waits, slot by slot.
    want = {f"{service}-0": "standby", f"{service}-1": "standby",
            f"{service}-green-0": "serving", f"{service}-green-1": "serving"}
    wait.until(lambda d: slot_states() == want)
    driver.save_screenshot(os.path.join(shots, "4-blue-green-kept.png"))

    page.click(f'#svc-{service} button[data-action="rollback"]')
    wait.until(ec.alert_is_present())
    driver.switch_to.alert.accept()
    wait.until(lambda d: "switched back" in text("#message"))
    wait.until(lambda d: attr(f"#svc-{service}", "data-image") == old)
    wait.until(lambda d: attr(f"#bg-{service}", "data-phase") is None)
    # The warm set serves again at once; the one left goes.
    wait.until(lambda d: slot_states() == {f"{service}-0": "serving", f"{service}-1": "serving"})
    wait.until(lambda d: "started rollback" in text("#timeline"))
    driver.save_screenshot(os.path.join(shots, "5-switched-back.png"))
finally:
    driver.quit()

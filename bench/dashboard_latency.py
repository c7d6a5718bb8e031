"""bench/observe.sh's browser side: opens kiln serve's dashboard in
headless chromium (selenium), reports first paint and first render, then
how long each change took to show (the controller recording an event to
the page having re-rendered it), until COUNT changes were seen.

usage: dashboard_latency.py LINK COUNT
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

link, count = sys.argv[1], int(sys.argv[2])
opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500"]:
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    t = time.time()
    driver.get(link)
    while driver.execute_script("return window.kiln && window.kiln.firstRender") is None:
        time.sleep(0.02)
    nav = driver.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return {fcp: p ? p.startTime : null, render: window.kiln.firstRender};"
    )
    print(json.dumps({"ready": True, **nav}), flush=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        lat = driver.execute_script("return window.kiln.latencies;")
        if len(lat) >= count:
            break
        time.sleep(0.1)
    print(json.dumps({"latencies_ms": lat}), flush=True)
finally:
    driver.quit()

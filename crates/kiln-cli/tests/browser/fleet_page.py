"""What the fleet dashboard's browser tests share: a headless chromium
(Debian's chromium and chromium-driver, through selenium) and readers of
the page that take what they read in one go (it re-renders every second,
so an element found a moment ago may be gone)."""

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def start():
    """The browser, and a wait of up to 60 s polling every 50 ms."""
    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"]:
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    return driver, WebDriverWait(driver, 60, poll_frequency=0.05)


class Page:
    def __init__(self, driver):
        self.driver = driver

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def attr(self, css, name):
        return self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;", css, name
        )

    def text(self, css):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css)

    def slot_states(self):
        return self.js("return [...document.querySelectorAll('#slots tbody tr')].map(r => [r.dataset.slot, r.dataset.state]);")

    def click(self, css):
        """Clicks `css`, found again if a re-render replaced it."""
        for attempt in range(20):
            try:
                self.driver.find_element(By.CSS_SELECTOR, css).click()
                return
            except StaleElementReferenceException:
                if attempt == 19:
                    raise

"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium: the web page's tests and
the README screenshot start it the same way."""

from __future__ import annotations

from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def headless_chromium(profile: Path | str, window: tuple[int, int] = (1200, 900)):
    """A fresh headless Chromium with its own profile folder, no network of its own and no first-run noise."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-quic",
                     "--hide-scrollbars", f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)

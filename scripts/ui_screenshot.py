"""Screenshot the upgrade page after one image query (how docs/images/ui.png is made).

    python scripts/ui_screenshot.py --url http://127.0.0.1:7860/ --query query.png --output docs/images/ui.png

Start the page first (`bt2 ui --demo_output bt2_demo_output --gate`). Drives Debian's headless
chromium through Selenium (`apt-get install chromium chromium-driver`); nothing is downloaded, and the browser
resolves no host but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--query", required=True, help="an image file to upload as the query")
    parser.add_argument("--output", default="docs/images/ui.png")
    parser.add_argument("--width", type=int, default=1500)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={args.width},1400", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    try:
        driver.get(args.url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bt2-search"))
        driver.find_element(By.CSS_SELECTOR, "#bt2-query-image input[type=file]").send_keys(args.query)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bt2-query-image img"))
        driver.find_element(By.CSS_SELECTOR, "#bt2-search").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bt2-results-old tr.bt2-hit"))
        time.sleep(1.0)  # let the three lists settle before measuring the page
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, height + 40)
        time.sleep(0.5)
        driver.save_screenshot(args.output)
    finally:
        driver.quit()
    print(args.output)


if __name__ == "__main__":
    main()

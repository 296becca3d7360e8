"""A real headless browser (Debian's chromium + chromium-driver, driven by selenium) for the /training page tests.

``.ci/run`` installs the browser; where it cannot, it writes the reason to
``.ci/browser-unavailable`` and the browser tests skip with that reason. In
CI without that file a missing browser is a failure, not a skip.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASON_FILE = ROOT / ".ci" / "browser-unavailable"

# JS: the columns of the page's Bokeh data source named "metrics", as plain arrays (NaN → null)
METRICS_JS = """
if (!window.Bokeh || !Bokeh.documents.length) return null;
const s = Bokeh.documents[0].get_model_by_name('metrics');
if (s === null) return null;
const out = {};
for (const [k, v] of Object.entries(s.data)) out[k] = Array.from(v, x => Number.isFinite(x) ? x : null);
return out;
"""

# JS: non-background pixels drawn on every canvas of the page (Bokeh draws in shadow DOMs)
DRAWN_PIXELS_JS = """
const canvases = [];
const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
        if (el.tagName === 'CANVAS') canvases.push(el);
        if (el.shadowRoot) walk(el.shadowRoot);
    }
};
walk(document);
let drawn = 0, figures = 0;
for (const c of canvases) {
    if (!c.width || !c.height) continue;
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && (px[i] < 240 || px[i + 1] < 240 || px[i + 2] < 240)) n++;
    if (n > 0) figures++;
    drawn += n;
}
return {canvases: canvases.length, figures: figures, drawn: drawn};
"""


def unavailable() -> str | None:
    """Return why no browser can be driven here, or None."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'admm-dask[test]')")
    if not missing:
        return None
    reason = f"no real browser: {', '.join(missing)} not installed"
    if REASON_FILE.exists():
        reason += f" ({REASON_FILE.read_text().strip()})"
    return reason


def must_skip() -> bool:
    """True where a missing browser is a skip: outside CI, or in CI when .ci/run recorded why it could not install one."""
    return not os.environ.get("CI") or REASON_FILE.exists()


def chrome(width: int = 1400, height: int = 1800):
    """Return a headless chromium WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_for(driver, script: str, timeout: float = 60.0, poll: float = 0.2):
    """Return the first truthy value of a JS snippet, waiting up to ``timeout`` seconds (selenium's wait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=poll).until(lambda d: d.execute_script(script))

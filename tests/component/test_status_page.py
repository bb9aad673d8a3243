"""`GET /`, the status page, in a real browser (Debian's `chromium`, headless): the served HTML has
no script (so it reads the same without JavaScript; headless Chromium cannot render with scripts
off) and no external asset, and reloads itself; the page Chromium renders shows each model with its
state and SLO attainment; the screenshot is a real picture of it. With
CHIROND_UPDATE_SCREENSHOT=1 the test writes that screenshot to docs/status-page.png."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from matplotlib import image

from chirond.daemon import Daemon
from tests.support.daemon import client
from tests.support.paths import ROOT

MODEL = "llama-8b"


async def _chromium(*args: str) -> tuple[int, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: apt-get install chromium (scripts/test.sh does)"
    proc = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "HOME": "/tmp"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def test_the_status_page_renders_in_chromium_without_javascript(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    for _ in range(3):
        await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    url = f"http://127.0.0.1:{d.port}/"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
    assert '<meta http-equiv="refresh" content="10">' in page
    for external in ("<script", "src=", "<link", "@import", "url("):
        assert external not in page, external

    rc, dom = await _chromium("--dump-dom", url)
    assert rc == 0 and f"<b>{MODEL}</b>" in dom, dom[-3000:]
    row = dom.split(f"<b>{MODEL}</b>", 1)[1].split("</tr>", 1)[0]
    assert ">live<" in row and "100.0 %" in row  # the state, and the three requests met their SLO

    shot = tmp_path / "status-page.png"
    rc, _ = await _chromium(f"--screenshot={shot}", "--window-size=1500,420", url)
    assert rc == 0 and shot.is_file()
    pixels = image.imread(str(shot))
    assert pixels.shape[0] == 420 and pixels.shape[1] == 1500
    assert float(np.std(pixels[..., :3])) > 0.05  # not a blank page
    if os.environ.get("CHIROND_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "status-page.png")

"""The HTML reports as a person sees them: the shared small run's page, every stage report, its profile and the page of
all runs, opened as file:// URLs in one headless Chromium. Nothing on a page may log a console error, show a broken
image or link, or show a plot without its caption; our own pages load nothing from other hosts and link to none."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("screenshots", ROOT / "docs" / "screenshots.py")
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)  # start_chromium: one home for how the reports are opened (also the README's screenshots)

LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}

# Run in the page after its load event: waits for every image, then reports images, links, ids and remote resources.
PAGE_JS = r"""
const done = arguments[arguments.length - 1];
const loaded = document.readyState === 'complete' ? Promise.resolve()
  : new Promise(r => window.addEventListener('load', r, {once: true}));
const settle = img => img.complete ? null : new Promise(r => {
  img.addEventListener('load', r, {once: true}); img.addEventListener('error', r, {once: true}); setTimeout(r, 5000); });
const caption = img => {
  const fig = img.closest('figure');  // <figure><img><figcaption> (the index pages)
  if (fig) { const c = fig.querySelector('figcaption'); return c ? c.textContent.trim() : ''; }
  // report.show_figure in a stage report: the image output, then a markdown output "*Figure: <caption>*"
  const out = img.closest('.jp-OutputArea-child'), next = out && out.nextElementSibling;
  const md = next && next.querySelector('.jp-RenderedMarkdown');
  const text = md ? md.textContent.trim() : '';
  return text.startsWith('Figure:') ? text.slice('Figure:'.length).trim() : '';
};
const where = img => {  // the nearest heading before the image, to name it in a message
  const hs = [...document.querySelectorAll('h1,h2,h3,h4')].filter(
    h => h.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING);
  return hs.length ? hs[hs.length - 1].textContent.replace('¶', '').trim() : '(top of page)';
};
loaded.then(() => {
  const imgs = [...document.images];
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  return Promise.all(imgs.map(settle)).then(() => done({
    images: imgs.map((i, n) => ({n: n + 1, src: (i.getAttribute('src') || '').slice(0, 80),
                                 ok: i.complete && i.naturalWidth > 0, caption: caption(i), where: where(i)})),
    links: [...document.querySelectorAll('a[href]')].map(a => ({raw: a.getAttribute('href'), url: a.href})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat(
      [...document.querySelectorAll('a[name]')].map(a => a.getAttribute('name'))),
    remote: [...document.querySelectorAll('script[src],link[href],img[src],iframe[src],source[src],embed[src],object[data]')]
      .map(e => e.src || e.href || e.data).filter(u => /^https?:/i.test(u)),
  }));
});
"""


def _ensure_chromium() -> None:
    "Install Debian's chromium and chromium-driver when missing (a fresh CI machine); skip only when there is no apt"
    missing = [str(p) for p in (screenshots.CHROMIUM, screenshots.CHROMEDRIVER) if not p.is_file()]
    if not missing: return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{' and '.join(missing)} missing, and no apt-get to install Debian's chromium and chromium-driver: "
                    "the reports were NOT checked in a browser")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    missing = [str(p) for p in (screenshots.CHROMIUM, screenshots.CHROMEDRIVER) if not p.is_file()]
    assert not missing, f"apt-get installed chromium and chromium-driver, yet {missing} is missing"


@pytest.fixture(scope="module")
def browser():
    "One headless Chromium for the module, from the system's binaries; Selenium Manager must not be asked for anything"
    from selenium.webdriver.common.selenium_manager import SeleniumManager
    _ensure_chromium()
    def no_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager was asked for a driver or browser: it would try to download one")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SeleniumManager, "binary_paths", no_manager)
        mp.setenv("SE_OFFLINE", "true")
        start = time.monotonic()
        driver = screenshots.start_chromium(console=True)
        print(f"\nheadless Chromium started in {time.monotonic() - start:.1f}s")
        try: yield driver
        finally: driver.quit()


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids.update(v for k, v in a.items() if k == "id" or (tag == "a" and k == "name"))


@lru_cache
def _file_ids(path: Path) -> frozenset:
    "The element ids (and <a name>s) of an HTML file on disk"
    p = _Ids()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(p.ids)


def _link_problems(page: Path, links: list, ids: set) -> tuple:
    "(broken, remote): relative links to missing files or ids; absolute links to hosts other than this machine"
    broken, remote = [], {}
    for link in links:
        raw, url = link["raw"].strip(), urlsplit(link["url"])
        if url.scheme in ("http", "https"):
            if url.hostname not in LOOPBACK: remote[url.hostname] = remote.get(url.hostname, 0) + 1
            continue
        if url.scheme != "file": continue  # mailto:, data:, javascript: lead to no file
        target = Path(url2pathname(unquote(url.path)))
        if not target.exists(): broken.append(f"link {raw!r} leads to {target}, which does not exist")
        elif url.fragment:
            found = ids if target.resolve() == page.resolve() else (_file_ids(target) if target.suffix in (".html", ".htm") else None)
            if found is not None and unquote(url.fragment) not in found:
                broken.append(f"link {raw!r}: no element with id {unquote(url.fragment)!r} in {target.name}")
    return broken, [f"links {n} time(s) to https://{h}/..." for h, n in sorted(remote.items())]


def _check(driver, page: Path, ours: bool, captions: bool) -> tuple:
    "(problems, remote): what is wrong with `page` in the browser; what it loads from, or links to, other hosts"
    if not page.is_file(): return [f"missing: {page} does not exist"], []
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(page.as_uri())
    seen = driver.execute_async_script(PAGE_JS)
    problems, loads, failed = [], {}, {}
    for u in dict.fromkeys(seen["remote"]):
        if (host := urlsplit(u).hostname) not in LOOPBACK:
            loads.setdefault(host, []).append(urlsplit(u).path.rsplit("/", 1)[-1])
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE": continue
        if (u := next((u for u in seen["remote"] if u in entry["message"]), None)):  # a remote resource that did not load
            failed[urlsplit(u).hostname] = failed.get(urlsplit(u).hostname, 0) + 1
        else: problems.append(f"console error: {entry['message'][:300]}")
    remote = [f"loads {', '.join(files)} from https://{host}/" for host, files in loads.items()]
    remote += [f"{n} console error(s): what it loads from https://{host}/ failed (no network)" for host, n in failed.items()]
    problems += [f"image {i['n']} (under {i['where']!r}, src {i['src']!r}) did not load" for i in seen["images"] if not i["ok"]]
    if captions:
        problems += [f"image {i['n']} (under {i['where']!r}) has no caption: not in a <figure> with a <figcaption>, nor "
                     "followed by report.show_figure's 'Figure: ...'" for i in seen["images"] if not i["caption"]]
    if ours:
        broken, links = _link_problems(page, seen["links"], set(seen["ids"]))
        problems += broken
        remote += links
    return problems, remote


@pytest.fixture(scope="module")
def findings(project, good_run, browser):  # the shared run first: the browser does not idle through it
    "{'problems': [(page, problem)], 'remote': [(page, what)]} over every page of the shared run and the page of all runs"
    start, reports = time.monotonic(), project.path / "reports"
    pages = [(good_run.dir / "index.html", True, True), (reports / "index.html", True, True)]
    problems, remote, stage_reports = [], [], 0
    for s in good_run.record["stages"]:
        if s.get("html"):
            pages.append((project.path / s["html"], True, True))
            stage_reports += 1
        elif s.get("status") == "ok": problems.append((s["stage"], "the stage ran but the run record names no HTML report"))
    pages.append((good_run.dir / "profile.html", False, False))  # ydata's page: its console and images only
    if (reports / "monitoring" / "index.html").is_file():  # only after `mlflow-template monitor` (another test module may run it)
        pages.append((reports / "monitoring" / "index.html", True, True))
    for page, ours, captions in pages:
        p, r = _check(browser, page, ours, captions)
        name = page.relative_to(reports).as_posix() if page.is_relative_to(reports) else str(page)
        problems += [(name, x) for x in p]
        remote += [(name, x) for x in r]
    print(f"browser checks: {len(pages)} pages in {time.monotonic() - start:.1f}s")
    return {"problems": problems, "remote": remote, "stage_reports": stage_reports}


def _listing(items: list) -> str:
    return "\n".join(f"  {page}: {what}" for page, what in items)


def test_reports_show_without_errors(findings):
    "No console error, no image that fails to load, no broken relative link or #fragment, no plot without its caption"
    assert findings["stage_reports"], "the run record names no stage report to check"
    assert not findings["problems"], f"{len(findings['problems'])} problem(s) in the reports:\n" + _listing(findings["problems"])


# References to other hosts known today, each to be fixed where it is made; remove an entry once its fix is in.
def test_our_pages_stand_alone(findings):
    "Our own pages load nothing from, and link to nothing on, another host: they read the same offline and leak nothing"
    assert not findings["remote"], f"{len(findings['remote'])} reference(s) to other hosts:\n" + _listing(findings["remote"])


_DOT = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_the_checks_find_each_kind_of_defect(browser, tmp_path):
    "A page with one defect of each kind is reported for each, and its sound parts are not: the checks are not vacuous"
    (tmp_path / "other.html").write_text('<!doctype html><html><body><h1 id="there">there</h1></body></html>')
    page = tmp_path / "bad.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>bad</title>
<script src="https://example.invalid/lib.js"></script></head><body><h1 id="top">Bad</h1>
<figure><img src="{_DOT}"><figcaption>a sound figure</figcaption></figure>
<div class="jp-OutputArea-child"><div class="jp-RenderedImage"><img src="{_DOT}"></div></div>
<div class="jp-OutputArea-child"><div class="jp-RenderedMarkdown"><p><em>Figure: a sound report figure</em></p></div></div>
<h2>Broken</h2><figure><img src="missing.png"><figcaption>an image that is not there</figcaption></figure>
<div class="jp-OutputArea-child"><div class="jp-RenderedImage"><img src="{_DOT}"></div></div>
<a href="other.html#there">fine</a> <a href="#top">fine</a> <a href="nowhere.html">gone</a> <a href="#nosuch">gone</a>
<a href="other.html#nosuch">gone</a> <a href="https://example.org/doc">away</a> <a href="http://127.0.0.1:3000/">local</a>
<script>throw new Error("boom in the page");</script></body></html>""")
    problems, remote = _check(browser, page, ours=True, captions=True)
    expected = ["missing.png - Failed to load resource", "Uncaught Error: boom in the page",
                "image 3 (under 'Broken', src 'missing.png') did not load", "image 4 (under 'Broken') has no caption",
                "link 'nowhere.html' leads to", "link '#nosuch': no element with id 'nosuch' in bad.html",
                "link 'other.html#nosuch': no element with id 'nosuch' in other.html"]
    assert len(problems) == len(expected) and all(any(e in p for p in problems) for e in expected), "\n".join(problems)
    assert remote == ["loads lib.js from https://example.invalid/",
                      "1 console error(s): what it loads from https://example.invalid/ failed (no network)",
                      "links 1 time(s) to https://example.org/..."], remote

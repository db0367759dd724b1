"""Drives Multiverse's web UI in a real headless Chromium (Debian's chromium + chromium-driver,
through selenium) against a running control plane, proxy and mocks.

Run by tests/tests/web_ui.rs, which starts those processes and passes one JSON argument:
{control, proxy, key, extra_backend_url, dead_url, chat_backend, instance, flaky_id, flaky_pid,
screenshots, work_dir}. Every browser is a normal one (same-origin rules on): the playground
reaches the proxy through its CORS (`[cors] allowed_origins` lists the control plane's origin).

Checks (each failure names the page and the check):
  * every page loads at 1280 px and 390 px with zero console errors, is screenshotted into
    `screenshots`, and does not scroll horizontally at 390 px;
  * read-only pages work without a key; a wrong admin key is refused with the API's reason;
  * registering a backend through the form (validation as you type, an API error next to the
    field it names, "Test connection" first: a dead URL's reason, then the models found, and
    nothing stored) makes it appear on an open dashboard without a reload, and turn healthy;
    that dashboard has its periodic reloads disabled, so only backend events can move it;
  * editing it highlights the changed fields, shows the diff, saves, and the API has the values;
  * deleting it removes it from the open dashboard live (again only by events);
  * the playground finds the proxy from GET /ui/config, streams a reply (the reply element
    changes at least 3 times before the end) and shows the endpoint and usage; embeddings show
    dimensions and norm;
  * an instance's log viewer shows a line written after the page opened;
  * an instance page shows its GPU from GET /instances/{name}/gpu-stats (name, memory used/total,
    utilisation, temperature, its own VRAM); a backend page shows its probes and their
    statistics per kind, and the dashboard each backend's probe success rate and average time.
"""

import json
import os
import shutil
import sys
import time
import traceback
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CFG = json.loads(sys.argv[1])
BASE = CFG["control"]
KEY = CFG["key"]
SHOTS = Path(CFG["screenshots"])
WAIT = 20
WIDE, NARROW = (1280, 900), (390, 844)

RESULTS = []  # (page, check, ok)


def log(msg):
    print(msg, flush=True)


def check(page, what, cond, detail=""):
    RESULTS.append((page, what, bool(cond)))
    if not cond:
        raise AssertionError(f"{page}: {what} {detail}".strip())
    log(f"ok  {page}: {what}")


def browser(tag, extra_args=()):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        "--disable-crash-reporter",
        "--disable-breakpad",
        f"--user-data-dir={Path(CFG['work_dir']) / tag}",
        f"--window-size={WIDE[0]},{WIDE[1]}",
        *extra_args,
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_page_load_timeout(30)
    return d


def api(method, path, body=None):
    req = urllib.request.Request(
        BASE + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": "Bearer " + KEY, "accept": "application/json",
                 "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
        return json.loads(text) if text else None


def wait(d, cond, what, timeout=WAIT):
    try:
        # A live page re-renders under the test: an element gone stale means "not yet".
        return WebDriverWait(d, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: cond(d))
    except TimeoutException:
        raise AssertionError(f"timed out ({timeout} s) waiting for {what}; url {d.current_url}") from None


def js(d, script, *args):
    return d.execute_script(script, *args)


def console_errors(d, allowed=()):
    """SEVERE console entries since the last call, minus those containing an allowed text."""
    return [e["message"] for e in d.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def settled(d):
    """The page fragment is in, Alpine has run, and nothing visible says it is loading."""
    return js(d, """
        const main = document.querySelector('main');
        if (!main || !main.querySelector('[data-page]') || !window.Alpine) return false;
        if (main.hasAttribute('aria-busy')) return false;
        const busy = [...document.querySelectorAll('[aria-busy="true"]')].filter(e => e.offsetParent !== null);
        return busy.length === 0;
    """)


def viewport(d, size):
    w, h = size
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": w < 600})


def overflow(d):
    """How far the page scrolls horizontally, and the widest offenders."""
    return js(d, """
        const vw = document.documentElement.clientWidth;
        const over = document.documentElement.scrollWidth - vw;
        const culprits = over <= 0 ? [] : [...document.querySelectorAll('body *')]
          .filter(e => e.getBoundingClientRect().right > vw + 1 && e.offsetParent !== null)
          .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ').join('.') : '')
             + ' right=' + Math.round(e.getBoundingClientRect().right));
        return [over, culprits];
    """)


def open_page(d, path, name, ready=None, allowed=()):
    """Loads a page, waits until it is settled (and `ready` holds), checks the console."""
    d.get(BASE + path)
    wait(d, settled, f"{name} to settle")
    if ready:
        wait(d, ready, f"{name} to show its data")
    errs = console_errors(d, allowed)
    check(name, "loads with zero console errors", not errs, str(errs))


def shot(d, name):
    """A screenshot without transient toasts."""
    js(d, "document.querySelectorAll('.toast .close').forEach(b => b.click())")
    WebDriverWait(d, 5, poll_frequency=0.05).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".toast"))
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def screenshots(d, path, name, ready=None):
    """Both widths: screenshot, and no horizontal scroll at 390 px."""
    for size, tag in ((WIDE, "1280"), (NARROW, "390")):
        viewport(d, size)
        d.get(BASE + path)
        wait(d, settled, f"{name} to settle at {tag} px")
        if ready:
            wait(d, ready, f"{name} to show its data at {tag} px")
        js(d, "window.scrollTo(0, 0)")
        shot(d, f"{name}-{tag}")
        if tag == "390":
            over, culprits = overflow(d)
            check(name, "no horizontal scroll at 390 px", over <= 0, f"scrolls {over} px: {culprits}")
        errs = console_errors(d)
        check(name, f"zero console errors at {tag} px", not errs, str(errs))
    viewport(d, WIDE)


def prompt_open(d):
    return d.find_element(By.ID, "key-dialog").get_attribute("open") is not None


def sign_in(d, key):
    if not prompt_open(d):
        d.find_element(By.CSS_SELECTOR, "[data-testid=auth-status]").click()
    wait(d, lambda d: d.find_element(By.ID, "key-dialog").get_attribute("open") is not None, "the key prompt")
    field = d.find_element(By.NAME, "admin-key")
    field.clear()
    field.send_keys(key, Keys.ENTER)


# ---------------------------------------------------------------------------------------------
def test_without_key(d):
    for path, name in (("/", "dashboard"), ("/models", "models"), ("/gpus", "gpus"),
                       ("/proxies", "proxies"), ("/playground", "playground"), ("/docs", "docs")):
        open_page(d, path, f"{name} (read-only)")
    # Admin pages prompt for the key instead of failing.
    d.get(BASE + "/instances")
    wait(d, lambda d: d.find_element(By.ID, "key-dialog").get_attribute("open") is not None, "the key prompt")
    reason = d.find_element(By.CSS_SELECTOR, "[data-testid=key-reason]").text
    check("instances (read-only)", "prompts for the key, saying why", "needs the admin key" in reason, reason)
    check("instances (read-only)", "no console errors before a key is given", not console_errors(d))


def test_wrong_key(d):
    d.get(BASE + "/")
    wait(d, settled, "dashboard")
    sign_in(d, "not-the-key")
    wait(d, lambda d: "not valid" in d.find_element(By.CSS_SELECTOR, "[data-testid=key-reason]").text,
         "the reason for refusing the key")
    check("key prompt", "wrong key: the prompt stays open with the API's reason",
          d.find_element(By.ID, "key-dialog").get_attribute("open") is not None)
    console_errors(d, ("403",))
    # A stored key that stops working (rotated) sends the user back to the prompt too.
    js(d, "sessionStorage.setItem('multiverse-admin-key', 'rotated-away')")
    d.get(BASE + "/instances")
    wait(d, lambda d: "not valid" in d.find_element(By.CSS_SELECTOR, "[data-testid=key-reason]").text,
         "the prompt after a 403")
    check("key prompt", "a 403 on a page call: back to the prompt with the reason", True)
    check("key prompt", "the rejected key is forgotten",
          js(d, "return sessionStorage.getItem('multiverse-admin-key')") is None)
    console_errors(d, ("403",))
    sign_in(d, KEY)
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=auth-status]").text.startswith("Admin"),
         "signed in")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % CFG["instance"]), "instances after sign-in")
    check("key prompt", "right key: signed in, the page loads its data", not console_errors(d, ("403",)))


def test_every_page(d):
    backend = next(b for b in api("GET", "/admin/backends")["backends"] if b["name"] == CFG["chat_backend"])
    inst = CFG["instance"]
    pages = [
        ("/", "dashboard", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % CFG["chat_backend"])),
        ("/register", "register", None),
        ("/backends/" + backend["id"], "backend",
         lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=health-chart] canvas")),
        ("/backends/" + backend["id"] + "/edit", "edit",
         lambda d: d.find_element(By.NAME, "name").get_attribute("value") == CFG["chat_backend"]),
        ("/models", "models", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-model=demo]")),
        ("/instances", "instances", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % inst)),
        ("/instances/" + inst, "instance", lambda d: js(d, "return document.querySelectorAll('[data-testid=logs] div').length") > 0),
        ("/gpus", "gpus", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=nvml-unavailable], [data-gpu]")),
        ("/proxies", "proxies", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-row]")),
        # The proxy from GET /ui/config, its models through CORS (this browser enforces it).
        ("/playground", "playground", lambda d: "demo" in [
            o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "[data-testid=model] option")]),
        ("/docs", "docs", lambda d: js(d, "return !!document.querySelector('#api-docs .opblock')")),
        ("/no/such/page", "not-found", lambda d: "Page not found" in d.find_element(By.TAG_NAME, "h1").text),
    ]
    for path, name, ready in pages:
        allowed = ()
        if name == "not-found":
            allowed = ("the server responded with a status of 404",)  # the page itself is a 404
        open_page(d, path, name, ready, allowed)
        if name == "playground":
            source = d.find_element(By.CSS_SELECTOR, "[data-testid=proxy-source]").text
            check(name, "the proxy URL comes from GET /ui/config ([ui] proxy_url)",
                  "[ui] proxy_url" in source and d.find_element(By.CSS_SELECTOR, "[data-testid=proxy-url]")
                  .get_attribute("value") == CFG["proxy"], source)
            check(name, "models from the proxy through CORS, in a normal browser", True)
        if name in ("playground", "not-found"):
            continue  # the playground is screenshotted where it can reach the proxy
        screenshots(d, path, name, ready)
    # Page-specific facts.
    d.get(BASE + "/gpus")
    wait(d, settled, "gpus")
    if d.find_elements(By.CSS_SELECTOR, "[data-testid=nvml-unavailable]"):
        check("gpus", "says 'NVML unavailable' plainly",
              "NVML unavailable" in d.find_element(By.CSS_SELECTOR, "[data-testid=nvml-unavailable]").text)
    d.get(BASE + "/proxies")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-row=proxy-ui]"), "the proxy row")
    row = d.find_element(By.CSS_SELECTOR, "[data-row=proxy-ui]").text
    check("proxies", "shows the proxy, connected, with its ACKed version", "connected" in row and "(current)" in row, row)
    d.get(BASE + "/models")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-model='BAAI/bge-small-en-v1.5']"), "the instance's model")
    d.find_element(By.CSS_SELECTOR, "[data-testid=models-search]").send_keys("bge")
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-model=demo]"), "search to filter")
    check("models", "search filters the list", True)


def test_gpu_and_probes(d):
    inst = CFG["instance"]
    gs = api("GET", "/instances/" + inst + "/gpu-stats")
    d.get(BASE + "/instances/" + inst)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=gpu-name]"), "the instance's GPU")
    text = lambda sel: d.find_element(By.CSS_SELECTOR, f"[data-testid={sel}]").text
    check("instance", "GPU id and name (simulated)", text("gpu-name") == f"GPU {gs['gpu']['id']} — Sim UI (simulated)",
          text("gpu-name"))
    wait(d, lambda d: "700.0 MiB" in text("gpu-process-memory"), "the process's own VRAM", 30)
    check("instance", "the instance's own VRAM (NVML per-process, by its process group)",
          f"pid {gs['pid']}" in text("gpu-process-memory"), text("gpu-process-memory"))
    check("instance", "GPU memory used / total with a bar", "/ 16.0 GiB used" in text("gpu-memory")
          and d.find_elements(By.CSS_SELECTOR, "[data-testid=gpu-memory] progress"), text("gpu-memory"))
    g = gs["gpu"]
    want = ("—" if g["utilization_percent"] is None else f"{g['utilization_percent']}%",
            "—" if g["temperature_c"] is None else f"{g['temperature_c']} °C")
    check("instance", "utilisation and temperature as the API reports them (— when unknown)",
          (text("gpu-util"), text("gpu-temp")) == want, f"{text('gpu-util')} {text('gpu-temp')} vs {want}")
    shot(d, "instance-gpu-1280")
    check("instance", "no console errors (GPU section)", not console_errors(d))

    chat = next(b for b in api("GET", "/admin/backends")["backends"] if b["name"] == CFG["chat_backend"])
    d.get(BASE + "/backends/" + chat["id"])
    row = "[data-testid=probe-stats] tr[data-kind=readiness]"
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the readiness probe's statistics")
    cells = [c.text for c in d.find_elements(By.CSS_SELECTOR, row + " td")]
    check("backend", "probe statistics per kind: checks, passed, failed, average, p99",
          cells[0] == "readiness" and int(cells[1]) >= 1 and int(cells[2]) >= 1 and cells[5].endswith("ms")
          and cells[6].endswith("ms"), str(cells))
    check("backend", "the probe as configured", "readiness: GET /mock/ready (/ready = true)"
          in d.find_element(By.CSS_SELECTOR, "[data-testid=probe-stats]").find_element(By.XPATH, "../preceding-sibling::p[1]").text)
    check("backend", "success rate and average in the summary", "passed" in text("probe-summary"), text("probe-summary"))
    js(d, "document.querySelector('[data-testid=probe-stats]').scrollIntoView()")
    shot(d, "backend-probes-1280")
    d.get(BASE + "/")
    sel = "[data-row='%s'] [data-testid=probe-rate]" % CFG["chat_backend"]
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, sel) and "%" in d.find_element(By.CSS_SELECTOR, sel).text,
         "the backend's probe rate on the dashboard")
    check("dashboard", "each backend's probe success rate and average time",
          d.find_element(By.CSS_SELECTOR, sel).text.endswith(" ms"), d.find_element(By.CSS_SELECTOR, sel).text)
    check("backend", "no console errors (probes)", not console_errors(d))


def field_error(d, field):
    els = d.find_elements(By.CSS_SELECTOR, f"[data-error={field}]")
    return els[0].text if els and els[0].is_displayed() else ""


def test_register_edit_delete(dash, d):
    # The dashboard stays open in its own window; a marker shows it never reloads.
    dash.get(BASE + "/")
    wait(dash, settled, "dashboard")
    wait(dash, lambda x: x.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % CFG["chat_backend"]), "dashboard rows")
    js(dash, "window.__noReload = 42")

    d.get(BASE + "/register")
    wait(d, settled, "register")
    name = d.find_element(By.NAME, "name")
    url = d.find_element(By.NAME, "url")
    url.send_keys("ftp://example")
    wait(d, lambda d: "http://" in field_error(d, "url"), "the URL rule as you type")
    check("register", "validation as you type (URL scheme)", True)
    name.send_keys("bad name!")
    wait(d, lambda d: field_error(d, "name"), "the name rule as you type")
    check("register", "validation as you type (name rules)", True)
    weight = d.find_element(By.NAME, "weight")
    weight.clear()
    weight.send_keys("0")
    wait(d, lambda d: field_error(d, "weight"), "the weight rule")
    check("register", "validation as you type (weight)", True)
    shot(d, "register-errors-1280")

    # An API error lands next to the field it names: the name is taken.
    name.clear()
    name.send_keys(CFG["chat_backend"])
    url.clear()
    url.send_keys(CFG["extra_backend_url"])
    weight.clear()
    weight.send_keys("2")
    d.find_element(By.NAME, "owner").send_keys("team-ui")
    d.find_element(By.NAME, "tags").send_keys("env=test")
    d.find_element(By.CSS_SELECTOR, "[data-testid=register-submit]").click()
    wait(d, lambda d: "already exists" in field_error(d, "name"), "the API's BACKEND_EXISTS next to the name")
    check("register", "API error shown next to the field it names", True)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".toast.error"), "an error toast")
    check("register", "toast on failure", True)
    console_errors(d, ("409",))

    # Test connection first: a dead URL's reason, then the models found; nothing stored.
    name.clear()
    name.send_keys("ui-reg")
    url.clear()
    url.send_keys(CFG["dead_url"])
    d.find_element(By.CSS_SELECTOR, "[data-testid=test-connection]").click()
    wait(d, lambda d: "failed" in field_error(d, "url"), "the connection test's reason under the URL")
    check("register", "Test connection: a dead URL shows the probe's reason next to the URL",
          "connection" in field_error(d, "url"), field_error(d, "url"))
    console_errors(d, ("503",))
    url.clear()
    url.send_keys(CFG["extra_backend_url"])
    d.find_element(By.CSS_SELECTOR, "[data-testid=test-connection]").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=tested]"), "the connection test's result")
    tested = d.find_element(By.CSS_SELECTOR, "[data-testid=tested]").text
    check("register", "Test connection: latency and the discovered models", "extra-model" in tested and " ms" in tested, tested)
    shot(d, "register-tested-1280")
    check("register", "Test connection stores nothing",
          all(b["name"] != "ui-reg" for b in api("GET", "/admin/backends")["backends"]))
    check("register", "Test connection: the failed test's reason is gone", not field_error(d, "url"))
    d.find_element(By.CSS_SELECTOR, "[data-testid=register-submit]").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=created-id]"), "the registered id")
    bid = d.find_element(By.CSS_SELECTOR, "[data-testid=created-id]").text
    check("register", "success shows the id with a copy button", bid.startswith("bk-")
          and any(b.text == "Copy id" for b in d.find_elements(By.TAG_NAME, "button")), bid)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".toast.ok"), "a success toast")
    check("register", "toast on success", True)
    check("register", "no console errors after success", not console_errors(d))

    row = "[data-row='ui-reg']"
    wait(dash, lambda x: x.find_elements(By.CSS_SELECTOR, row), "the new backend on the open dashboard", 15)
    check("dashboard", "a registered backend appears without a reload (backend events)",
          js(dash, "return window.__noReload") == 42 and js(dash, "return window.__intervals") > 0)
    wait(dash, lambda x: x.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "healthy",
         "its health to turn green", 20)
    colour = js(dash, "return getComputedStyle(document.querySelector(arguments[0] + ' .pill')).color", row)
    check("dashboard", "its health turns green", colour == "rgb(26, 127, 55)", colour)
    card = lambda x: x.find_element(By.CSS_SELECTOR, "[data-testid=card-models] .n").text
    wait(dash, lambda x: card(x) == str(len(api("GET", "/snapshot")["models"])) and "extra-model" in
         [m["name"] for m in api("GET", "/snapshot")["models"]], "the cards to follow the new snapshot", 10)
    check("dashboard", "the summary cards follow the new route snapshot (after the event)", True)
    shot(dash, "dashboard-live-1280")

    # Filters and sorting, client-side.
    sel = dash.find_element(By.CSS_SELECTOR, "[data-testid=filter-owner]")
    sel.send_keys("team-ui")
    wait(dash, lambda x: not x.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % CFG["chat_backend"]), "the owner filter")
    check("dashboard", "filter by owner", dash.find_elements(By.CSS_SELECTOR, row))
    js(dash, "const s = document.querySelector('[data-testid=filter-owner]'); s.value = ''; s.dispatchEvent(new Event('change'))")
    dash.find_element(By.CSS_SELECTOR, "[data-testid=filter-tag]").send_keys("env=test")
    wait(dash, lambda x: not x.find_elements(By.CSS_SELECTOR, "[data-row='%s']" % CFG["instance"]), "the tag filter")
    check("dashboard", "filter by tag", dash.find_elements(By.CSS_SELECTOR, row))
    dash.find_element(By.CSS_SELECTOR, "[data-testid=filter-tag]").clear()
    js(dash, "document.querySelector('[data-testid=filter-tag]').dispatchEvent(new Event('input'))")
    wait(dash, lambda x: len(x.find_elements(By.CSS_SELECTOR, "tbody tr[data-row]")) >= 3, "all rows back")
    names = lambda: [e.get_attribute("data-row") for e in dash.find_elements(By.CSS_SELECTOR, "tbody tr[data-row]")]
    dash.find_element(By.XPATH, "//th/button[text()='Name']").click()
    wait(dash, lambda x: names() == sorted(names(), key=str.lower, reverse=True), "descending names")
    check("dashboard", "sort by name (both ways)", True)

    # Edit: changed fields highlighted, diff confirmed, saved, and the API has it.
    d.get(BASE + f"/backends/{bid}/edit")
    wait(d, settled, "edit")
    wait(d, lambda d: d.find_element(By.NAME, "owner").get_attribute("value") == "team-ui", "the form pre-filled")
    check("edit", "pre-filled from the API", d.find_element(By.NAME, "url").get_attribute("value") == CFG["extra_backend_url"])
    owner = d.find_element(By.NAME, "owner")
    owner.clear()
    owner.send_keys("team-ui-2")
    w = d.find_element(By.NAME, "weight")
    w.clear()
    w.send_keys("3")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "label.changed")) == 2, "two highlighted fields")
    check("edit", "changed fields highlighted", True)
    d.find_element(By.CSS_SELECTOR, "[data-testid=edit-review]").click()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=diff-dialog]").get_attribute("open") is not None, "the diff")
    diff = {r.get_attribute("data-field"): r.text for r in d.find_elements(By.CSS_SELECTOR, "[data-testid=diff-dialog] tr[data-field]")}
    check("edit", "the diff shows exactly the changes", set(diff) == {"owner", "weight"}
          and "team-ui-2" in diff["owner"] and "3" in diff["weight"], str(diff))
    shot(d, "edit-diff-1280")
    # Keyboard: Escape closes the dialog without saving; Review opens it again.
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=diff-dialog]").get_attribute("open") is None, "Escape to close the diff")
    check("edit", "keyboard: Escape closes the confirm dialog, nothing saved", api("GET", f"/admin/backends/{bid}")["owner"] == "team-ui")
    d.find_element(By.CSS_SELECTOR, "[data-testid=edit-review]").click()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=diff-dialog]").get_attribute("open") is not None, "the diff again")
    d.find_element(By.CSS_SELECTOR, "[data-testid=confirm-save]").click()
    wait(d, lambda d: f"/backends/{bid}" in d.current_url and "/edit" not in d.current_url, "back on the detail page")
    stored = api("GET", f"/admin/backends/{bid}")
    check("edit", "saved: the API returns the new values", stored["owner"] == "team-ui-2" and stored["weight"] == 3
          and stored["tags"] == {"env": "test"} and stored["models"] == ["extra-model"], str(stored))
    check("edit", "no console errors", not console_errors(d))

    # Detail actions: Check now.
    wait(d, settled, "backend detail")
    d.find_element(By.XPATH, "//button[text()='Check now']").click()
    wait(d, lambda d: any("Check passed" in t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast.ok")), "the check toast")
    check("backend", "Check now runs a check, with a toast", True)

    # Delete (confirmed) → gone from the open dashboard, live.
    d.find_element(By.XPATH, "//button[text()='Delete']").click()
    d.find_element(By.CSS_SELECTOR, "[data-testid=confirm-delete]").click()
    wait(dash, lambda x: not x.find_elements(By.CSS_SELECTOR, row), "the deleted backend to leave the dashboard", 15)
    check("dashboard", "a deleted backend disappears without a reload (backend events)",
          js(dash, "return window.__noReload") == 42)
    check("backend", "delete: the API no longer has it",
          all(b["id"] != bid for b in api("GET", "/admin/backends")["backends"]))
    check("dashboard", "no console errors while live", not console_errors(dash))


def test_playground(p):
    """A fresh, normal browser: the proxy from GET /ui/config, reached through its CORS."""
    p.get(BASE + "/")
    wait(p, settled, "dashboard")
    js(p, "sessionStorage.setItem('multiverse-admin-key', arguments[0])", KEY)
    p.get(BASE + "/playground")
    wait(p, settled, "playground")
    wait(p, lambda p: "demo" in [o.get_attribute("value") for o in p.find_elements(By.CSS_SELECTOR, "[data-testid=model] option")],
         "the model list from the proxy's /v1/models")
    check("playground", "model dropdown from the proxy's /v1/models", True)
    js(p, """
        const el = document.querySelector('[data-testid=reply]');
        window.__changes = 0; window.__changesAtEnd = null;
        new MutationObserver(() => window.__changes++).observe(el, {childList: true, characterData: true, subtree: true});
        new MutationObserver(() => { if (window.__changesAtEnd === null && document.querySelector('[data-testid=total]').textContent !== '—') window.__changesAtEnd = window.__changes; })
          .observe(document.querySelector('[data-testid=total]'), {childList: true, characterData: true, subtree: true});
    """)
    p.find_element(By.CSS_SELECTOR, "[data-testid=send]").click()
    wait(p, lambda p: js(p, "return window.__changesAtEnd") is not None, "the stream to end", 30)
    changes = js(p, "return window.__changesAtEnd")
    check("playground", "the reply streams (≥ 3 changes before the end)", changes >= 3, f"{changes} changes")
    endpoint = p.find_element(By.CSS_SELECTOR, "[data-testid=endpoint]").text
    check("playground", "shows the endpoint (x-multiverse-endpoint)", endpoint == CFG["chat_backend"], endpoint)
    tokens = p.find_element(By.CSS_SELECTOR, "[data-testid=tokens]").text
    check("playground", "shows tokens from usage", tokens.startswith("12"), tokens)
    tps = p.find_element(By.CSS_SELECTOR, "[data-testid=tps]").text
    ttft = p.find_element(By.CSS_SELECTOR, "[data-testid=ttft]").text
    check("playground", "shows TTFT and tokens/s", ttft.endswith("ms") and float(tps) > 0, f"{ttft} {tps}")
    check("playground", "the reply text is there", len(p.find_element(By.CSS_SELECTOR, "[data-testid=reply]").text) > 10)
    check("playground", "no console errors (chat)", not console_errors(p))
    for size, tag in ((WIDE, "1280"), (NARROW, "390")):
        viewport(p, size)
        js(p, "window.scrollTo(0, 0)")
        shot(p, f"playground-{tag}")
        if tag == "390":
            over, culprits = overflow(p)
            check("playground", "no horizontal scroll at 390 px", over <= 0, f"scrolls {over} px: {culprits}")
    viewport(p, WIDE)

    # Embeddings through the proxy to the mock-tei instance.
    p.find_element(By.CSS_SELECTOR, "[data-testid=tab-embed]").click()
    p.find_element(By.CSS_SELECTOR, "[data-testid=embed-form] button[type=submit]").click()
    wait(p, lambda p: p.find_elements(By.CSS_SELECTOR, "[data-testid=dims]"), "the embedding")
    dims = int(p.find_element(By.CSS_SELECTOR, "[data-testid=dims]").text)
    norm = float(p.find_element(By.CSS_SELECTOR, "[data-testid=norm]").text)
    first = p.find_element(By.CSS_SELECTOR, "[data-testid=first]").text.split(", ")
    check("playground", "embeddings: dimensions, norm, first values", dims > 0 and norm > 0 and len(first) == min(8, dims),
          f"{dims} {norm} {first}")
    shot(p, "playground-embeddings-1280")
    check("playground", "no console errors (embeddings)", not console_errors(p))


def test_instance_logs(d):
    inst = CFG["instance"]
    d.get(BASE + "/instances/" + inst)
    wait(d, settled, "instance")
    wait(d, lambda d: "following" in d.find_element(By.CSS_SELECTOR, "[data-testid=follow-state]").text, "following")
    count = lambda: js(d, "return [...document.querySelectorAll('[data-testid=logs] div')].filter(e => e.textContent.includes('[multiverse] started pid')).length")
    before = count()
    pid_before = api("GET", "/instances/" + inst)["pid"]
    d.find_element(By.CSS_SELECTOR, "[data-testid=restart]").click()
    wait(d, lambda d: count() > before, "a line written after the page opened", 30)
    lines = js(d, "return [...document.querySelectorAll('[data-testid=logs] div')].map(e => e.textContent)")
    new = [l for l in lines if "[multiverse] started pid" in l and f"pid {pid_before}:" not in l]
    check("instance", "the log viewer follows: shows a line written after the page opened", new, str(lines[-5:]))
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=status]").text == "ready", "ready again", 30)
    check("instance", "status follows instance events live", True)
    d.find_element(By.NAME, "start").clear()
    d.find_element(By.NAME, "start").send_keys("-3", Keys.ENTER)
    wait(d, lambda d: "of" in d.find_element(By.CSS_SELECTOR, "[data-testid=follow-state]").text, "the slice")
    n = js(d, "return document.querySelectorAll('[data-testid=logs] div').length")
    check("instance", "slices with start=-3", n == 3, f"{n} lines")
    check("instance", "no console errors", not console_errors(d))


def row_status(d, name):
    # One script, so a row that the live list removes between finding and reading it cannot
    # raise a stale-element error.
    return js(d, "const r = document.querySelector(`tr[data-row='${arguments[0]}']`);"
                 " return r ? r.getAttribute('data-status') : null;", name)


def test_instance_actions(d):
    d.get(BASE + "/instances")
    wait(d, settled, "instances")
    name = d.find_element(By.CSS_SELECTOR, "[data-testid=create-form] [name=name]")
    name.send_keys("Bad Name")
    wait(d, lambda d: any(e.is_displayed() and "lowercase" in e.text
                          for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=create-form] .field-error")),
         "the instance name rule")
    check("instances", "create form: name rules as you type", True)
    name.clear()
    name.send_keys("emb-ui", Keys.ENTER)
    wait(d, lambda d: row_status(d, "emb-ui") is not None, "the created instance in the list")
    check("instances", "create from a template through the form", api("GET", "/instances/emb-ui")["spec"]["template"] == "small")
    wait(d, lambda d: row_status(d, "emb-ui") == "ready", "emb-ui ready (live, from events)", 30)
    check("instances", "status turns ready live", True)
    row = lambda: d.find_element(By.CSS_SELECTOR, "tr[data-row='emb-ui']")
    row().find_element(By.XPATH, ".//button[text()='Stop']").click()
    wait(d, lambda d: row_status(d, "emb-ui") == "stopped", "emb-ui stopped", 30)
    check("instances", "Stop", api("GET", "/instances/emb-ui")["desired"] == "stopped")
    row().find_element(By.XPATH, ".//button[text()='Start']").click()
    wait(d, lambda d: row_status(d, "emb-ui") == "ready", "emb-ui ready again", 30)
    check("instances", "Start", True)
    row().find_element(By.XPATH, ".//button[text()='Delete']").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "dialog[open]"), "the delete confirmation")
    d.find_element(By.XPATH, "//dialog[@open]//button[text()='Delete']").click()
    wait(d, lambda d: row_status(d, "emb-ui") is None, "emb-ui gone", 30)
    check("instances", "Delete (confirmed): gone from the list and the API",
          all(i["name"] != "emb-ui" for i in api("GET", "/instances")["instances"]))
    check("instances", "no console errors", not console_errors(d))


def test_restore(d):
    """A backend that stops answering is deregistered softly; Restore brings it back."""
    os.kill(CFG["flaky_pid"], 9)
    bid = CFG["flaky_id"]
    d.get(BASE + "/backends/" + bid)
    wait(d, settled, "the flaky backend")
    # The page reloads itself every 10 s; health checks deregister after 4 failures (~1.2 s).
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=health]").text == "deregistered",
         "the backend to be deregistered", 30)
    check("backend", "a failing backend shows deregistered, failures in the chart",
          "failed" in d.find_element(By.CSS_SELECTOR, "[data-testid=health-chart]").get_attribute("aria-label"))
    shot(d, "backend-deregistered-1280")
    d.find_element(By.XPATH, "//button[text()='Restore']").click()
    wait(d, lambda d: any("Restored" in t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast.ok")), "the Restore toast")
    check("backend", "Restore undoes the soft deregistration (toast from the API's answer)", True)
    console_errors(d)


def test_keyboard(d):
    d.get(BASE + "/")
    wait(d, settled, "dashboard")
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    first = js(d, "return document.activeElement.className")
    check("dashboard", "keyboard: the first Tab reaches the skip link", "skip" in first, first)
    # Tab to the Register link in the nav and follow it with Enter.
    for _ in range(30):
        active = d.switch_to.active_element
        if active.tag_name == "a" and active.get_attribute("href", ) and active.get_attribute("href").endswith("/register"):
            break
        active.send_keys(Keys.TAB)
    d.switch_to.active_element.send_keys(Keys.ENTER)
    wait(d, lambda d: d.current_url.endswith("/register"), "Enter on a nav link")
    check("register", "keyboard: nav links reachable and followed with Tab and Enter", True)
    # Narrow screens fold the links behind a Menu button.
    viewport(d, NARROW)
    d.get(BASE + "/")
    wait(d, settled, "dashboard at 390 px")
    links = d.find_element(By.ID, "nav-links")
    check("dashboard", "390 px: the links fold behind Menu", not links.is_displayed())
    d.find_element(By.CSS_SELECTOR, ".menu-toggle").click()
    wait(d, lambda d: links.is_displayed(), "the menu to open")
    check("dashboard", "390 px: Menu opens the links", True)
    shot(d, "nav-menu-390")
    viewport(d, WIDE)


def main():
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    failed = None
    d = browser("main")
    dash = p = None
    try:
        test_without_key(d)
        test_wrong_key(d)
        test_every_page(d)
        test_gpu_and_probes(d)
        test_keyboard(d)
        dash = browser("dashboard")
        # No periodic reloads in this window: whatever moves its rows is a backend event.
        dash.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source":
            "window.__intervals = 0; window.setInterval = () => ++window.__intervals;"})
        dash.get(BASE + "/")
        js(dash, "sessionStorage.setItem('multiverse-admin-key', arguments[0])", KEY)
        test_register_edit_delete(dash, d)
        test_instance_logs(d)
        test_instance_actions(d)
        test_restore(d)
        p = browser("playground")
        test_playground(p)
    except Exception as e:  # report every check so far, then fail
        failed = e
        traceback.print_exc()
        for drv, tag in ((d, "main"), (dash, "dashboard"), (p, "playground")):
            if drv:
                try:
                    drv.save_screenshot(str(SHOTS / f"FAILED-{tag}.png"))
                    print(f"--- {tag} console: {drv.get_log('browser')}", file=sys.stderr)
                except Exception:
                    pass
    finally:
        for drv in (d, dash, p):
            if drv:
                drv.quit()
        # Chromium profiles are tens of MB each and worth nothing afterwards.
        shutil.rmtree(CFG["work_dir"], ignore_errors=True)
    pages = {}
    for page, what, ok in RESULTS:
        pages.setdefault(page.split(" ")[0], []).append(what)
    log("\npages x checks:")
    for page, whats in pages.items():
        log(f"  {page}: {len(whats)} checks")
    passed = sum(1 for r in RESULTS if r[2])
    log(f"screenshots in {SHOTS}")
    log(f"{passed} passed, {1 if failed else 0} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Looks at the built docs site in a real browser (`make docs-check`).

Serves SITE (default site/, built by `make docs`) on 127.0.0.1, opens the home, drop-in,
results, demo (its figures and GIFs) and mutation pages in headless Chromium (Debian's `chromium` package, or $CHROMIUM), and saves a
full-page screenshot of each under SITE/_checks/. Fails (exit 1) on any console error, uncaught
exception, failed request or HTTP error, and on any <img> that did not load.

Standard library only: Chromium's DevTools protocol is spoken over --remote-debugging-pipe
(JSON messages separated by NUL bytes on file descriptors 3 and 4), so no websocket client or
browser-automation package is needed.
"""
import argparse
import base64
import fcntl
import functools
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

PAGES = {"home": "", "dropin": "dropin/", "results": "benchmarks/", "demo": "demo/", "mutation": "mutation/"}
IMAGES_JS = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
             ".map(i => i.currentSrc || i.src)")


class Handler(http.server.SimpleHTTPRequestHandler):
    errors = []

    def log_message(self, fmt, *args):  # quiet; HTTP errors are collected instead
        pass

    def send_error(self, code, message=None, explain=None):
        Handler.errors.append(f"HTTP {code} for {self.path}")
        super().send_error(code, message, explain)


class Browser:
    """One headless Chromium, driven over the DevTools pipe."""

    def __init__(self, binary):
        self.profile = tempfile.mkdtemp(prefix="gfcore-docs-check-")
        # Chromium reads commands on fd 3 and writes replies on fd 4: the pipes' child ends are
        # moved above fd 10 here and onto 3 and 4 by the shell (bash: dash refuses fds above 9) that execs chromium, so that no
        # descriptor of this process (the HTTP server's socket) is touched.
        def high(fd):
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return moved
        to_browser_r, to_browser_w = map(high, os.pipe())
        from_browser_r, from_browser_w = map(high, os.pipe())
        self.to_browser, self.from_browser = to_browser_w, from_browser_r
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"]
        shell = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", shell, binary] + flags, pass_fds=(to_browser_r, from_browser_w),
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.profile, "chromium.log"), "w"))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def _read_message(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe (did it start? see `chromium --version`)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=60):
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(max(0.1, deadline - time.monotonic()))
            self.events.append(event)
            if event.get("method") == method:
                return self.events.pop()

    def drain(self, seconds):
        """Collects the events that arrive within `seconds` (late console errors)."""
        import select
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            while b"\0" in self.buffer:
                self.events.append(self._read_message(1))
            ready, _, _ = select.select([self.from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    break
                self.buffer += chunk
        while b"\0" in self.buffer:
            self.events.append(self._read_message(1))

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if os.environ.get("DOCS_CHECK_KEEP_PROFILE"): print("chromium profile and log:", self.profile)
        else: shutil.rmtree(self.profile, ignore_errors=True)


def problems_in(events):
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            found.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"uncaught exception: {details.get('exception', {}).get('description', details.get('text'))}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"console error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default="site")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    site = pathlib.Path(args.site).resolve()
    if not (site / "index.html").is_file():
        sys.exit(f"{site}/index.html not found: build the site first (make docs)")
    binary = shutil.which(args.chromium)
    if binary is None:
        sys.exit(f"{args.chromium} not found: apt-get install chromium (Debian), or set CHROMIUM=/path/to/it")
    out = site / "_checks"
    out.mkdir(exist_ok=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"

    browser = Browser(binary)
    failures = []
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": args.width, "height": args.height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
        for name, path in PAGES.items():
            browser.events.clear()
            Handler.errors.clear()
            url = base + path
            nav = browser.send("Page.navigate", {"url": url}, session=session)
            if nav.get("errorText"):
                failures.append(f"{name}: navigation failed: {nav['errorText']}")
                continue
            browser.wait_for("Page.loadEventFired")
            browser.drain(1.5)
            title = browser.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                                 session=session)["result"].get("value")
            broken = browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                  session=session)["result"].get("value", [])
            images = browser.send("Runtime.evaluate", {"expression": "document.images.length", "returnByValue": True},
                                  session=session)["result"].get("value")
            shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                session=session)
            file = out / f"{name}.png"
            file.write_bytes(base64.b64decode(shot["data"]))
            page_problems = problems_in(browser.events) + list(Handler.errors) + [f"image not loaded: {s}" for s in broken]
            status = "ok" if not page_problems else f"{len(page_problems)} problem(s)"
            print(f"{name:8s} {url}  title={title!r}  images={images}  screenshot={file}  {status}")
            failures += [f"{name}: {p}" for p in page_problems]
    finally:
        browser.close()
        server.shutdown()
    if failures:
        print("\n".join(["docs-check FAILED:"] + failures))
        return 1
    print(f"docs-check passed: {len(PAGES)} pages, no console errors, no missing images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

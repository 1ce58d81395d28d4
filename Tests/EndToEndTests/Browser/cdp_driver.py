#!/usr/bin/env python3
"""A headless Chromium for the status-page test, driven over the DevTools protocol (--remote-debugging-pipe).

Usage: cdp_driver.py CHROMIUM USER_DATA_DIR
Then one JSON command per line on stdin, one JSON reply per line on stdout:
  {"navigate": URL}            -> {"ok": true} once the page has loaded
  {"eval": JS}                 -> {"value": <the expression's value, awaited if a promise>} or {"error": text}
  {"screenshot": PATH, "width": W, "height": H}  -> {"ok": true}
  {"quit": true}               -> closes the browser and exits
The browser may only reach 127.0.0.1: every other host name resolves to nothing, and every other connection goes
to a proxy on a closed loopback port. Background networking (updates, safe browsing, metrics) is off.
"""
import base64, fcntl, json, os, subprocess, sys


class Browser:
    def __init__(self, binary, profile):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
                "--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only", "--mute-audio",
                "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--hide-scrollbars", "--force-device-scale-factor=1", "about:blank"]

        def child_fds():
            # Out of the way first (either may be 3 or 4 already), then onto 3 and 4; dup2 makes them inheritable,
            # and every other descriptor of this process is not (PEP 446), so only these two reach Chromium.
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     close_fds=False, preexec_fn=child_fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.out = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.inp = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def read_message(self):
        while b"\0" not in self.buffer:
            chunk = self.inp.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=False):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.out.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, name):
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                del self.events[i]
                return e
        while True:
            e = self.read_message()
            if e.get("method") == name:
                return e
            self.events.append(e)

    def navigate(self, url):
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            return {"error": r["exceptionDetails"].get("exception", {}).get("description") or r["exceptionDetails"].get("text")}
        return {"value": r.get("result", {}).get("value")}

    def screenshot(self, path, width, height):
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=True)
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def quit(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    browser = Browser(sys.argv[1], sys.argv[2])
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if "navigate" in command:
                    browser.navigate(command["navigate"])
                    reply = {"ok": True}
                elif "eval" in command:
                    reply = browser.evaluate(command["eval"])
                elif "screenshot" in command:
                    browser.screenshot(command["screenshot"], command.get("width", 1280), command.get("height", 900))
                    reply = {"ok": True}
                elif "quit" in command:
                    break
                else:
                    reply = {"error": f"unknown command {command}"}
            except Exception as e:  # reported to the test, which fails with it
                reply = {"error": str(e)}
            print(json.dumps(reply), flush=True)
    finally:
        browser.quit()


if __name__ == "__main__":
    main()

"""A running `vpnsplit watch` in a test namespace: started, its --json lines and stderr read, stopped."""

import json
import queue
import signal
import subprocess
import threading
import time

from tests.kernel.nslab import VPNSPLIT


class Watcher:
    """`vpnsplit watch --json` inside *ns*; `converges()` are its JSON lines so far, `log()` its stderr."""

    def __init__(self, ns, *args, apps=None):
        """*apps* (applab.Apps): run it where cgroup2 is visible (`ip netns exec` hides it)."""
        env = [f"{k}={v}" for k, v in ns.env().items()]
        argv = ["/usr/bin/env", "-i", *env, *VPNSPLIT, "watch", "--json", *args]
        if apps is None:
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
        else:
            self.proc = apps.spawn(argv, stderr=subprocess.PIPE)
        self.lines, self._err, self._q = [], [], queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self._q), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, None), daemon=True).start()
        assert self.next(timeout=15) is not None, f"the watcher did not converge at start: {self.log()}"

    def _read(self, stream, into):
        for line in stream:
            if into is None:
                self._err.append(line)
            else:
                into.put(json.loads(line))

    def next(self, timeout=5):
        """The next JSON line, or None if none came within *timeout* seconds."""
        try:
            doc = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        self.lines.append(doc)
        return doc

    def settle(self, quiet=1.0):
        """Every JSON line until none came for *quiet* seconds."""
        while self.next(timeout=quiet) is not None:
            pass
        return [d for d in self.lines if "converge" in d]

    def log(self):
        return "".join(self._err)

    def signal(self, sig=signal.SIGTERM, timeout=5):
        """Send *sig*; for SIGTERM/SIGINT wait for the exit and return (exit code, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        if sig == signal.SIGHUP:
            return None
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def until(predicate, timeout=5.0, step=0.05):
    """Poll *predicate* until it is true (returns True) or *timeout* seconds passed (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()

"""Ctrl-C during `send` and `sync` (issue 27): said at once, on a line of its own, with what becomes of the file in
flight and what the next sync does; a second Ctrl-C abandons at once. Run as a partner would (a subprocess that
gets a real SIGINT), with a fault proxy holding the request in flight until the test has looked."""

import queue
import signal
import subprocess
import sys
import threading

import pytest

from shared.cli import EXIT_OK
from tests.cli_runner import REPO, as_json, exports_client

pytestmark = pytest.mark.stack
INTERRUPTED = 130


class Running:
    """The CLI as a subprocess whose stderr is read line by line as it comes (lines end at "\\n" only, so a
    progress bar's "\\r" stays in the line a message would be glued to)."""

    def __init__(self, env_file, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "shared", "--env-file", str(env_file), *args],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.process.stderr:
            self.lines.put(raw.decode())

    def line_with(self, text, timeout=60):
        """The first stderr line holding `text` (it has to come: waits at most `timeout`, a safety net)."""
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if text in line:
                return line

    def interrupt(self):
        self.process.send_signal(signal.SIGINT)

    def wait_for(self, fault):
        """Until the proxy holds the request that `fault` matches: the command is then waiting for it (or it ended
        first: then the assertion says what it printed)."""
        fault.wait_fired(self.process)
        assert fault.fired, "the request never reached the proxy: " + "".join(self.seen)


def env_file_with(cli, tmp_path, **overrides):
    path = tmp_path / "interrupt.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in {**cli.base, **overrides}.items()))
    return path


def test_ctrl_c_during_sync_says_at_once_that_the_delivery_in_flight_is_finished_then_a_second_abandons_it(
        cli, stack, tmp_path, backend):
    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    exports_client(cli).get_blob_client("held.csv").upload_blob(b"held\n")
    proxies = proxies_for(stack)
    try:
        held = proxies["BANENOR_STORAGE_URL"].add(Fault("stall", when=match(method="PUT", path=r"/held\.csv$"),
                                                        stall=120, times=None))
        proxied = proxied_settings(stack, proxies)
        run = Running(env_file_with(cli, tmp_path, BANENOR_STORAGE_URL=proxied["BANENOR_STORAGE_URL"]), "sync")
        run.wait_for(held)
        run.interrupt()
        notice = run.line_with("interrupted")
        # Said while the delivery is still held by the proxy: before the wait, not after it.
        assert run.process.poll() is None
        assert notice.startswith("interrupted: finishing the deliveries in flight")
        assert "Ctrl-C again" in notice and "next sync" in notice
        run.interrupt()
        assert run.process.wait(timeout=60) == INTERRUPTED
        assert "abandoned" in run.line_with("abandoned")
    finally:
        for proxy in proxies.values():
            proxy.stop()
    done = as_json(cli("sync", "--json", expect=EXIT_OK))  # as the notice said: the next sync delivers it
    assert done["delivered"] == 1


def test_ctrl_c_during_an_upload_of_send_ends_the_progress_bar_and_says_the_file_never_reached_the_exports(
        cli, stack, tmp_path):
    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    path = tmp_path / "big.zip"
    path.write_bytes(b"\0" * (65 * 2**20))  # over the SDK's single-put size: uploaded in blocks, with a bar
    other = tmp_path / "after.csv"
    other.write_text("a\n")
    proxies = proxies_for(stack)
    try:
        # Two blocks go through (the bar shows), then every further block is held.
        held = proxies["EXPORT_STORAGE"].add(Fault("stall", when=match(method="PUT", path=r"/big\.zip$",
                                                                       comp="block"),
                                                   skip=2, stall=120, times=None))
        proxied = proxied_settings(stack, proxies)
        run = Running(env_file_with(cli, tmp_path, EXPORT_STORAGE=proxied["EXPORT_STORAGE"]),
                      "send", str(path), str(other))
        run.wait_for(held)
        run.interrupt()
        notice = run.line_with("interrupted")  # on a line of its own: the bar ("\r...") ended before it
        assert notice.startswith("interrupted: big.zip never reached the export container"), notice
        assert "run send again" in notice and "not sent: " + str(other) in notice
        run.interrupt()  # the upload's threads wait for their held blocks: abandon them
        assert run.process.wait(timeout=60) == INTERRUPTED
    finally:
        for proxy in proxies.values():
            proxy.stop()
    assert not exports_client(cli).get_blob_client("big.zip").exists()

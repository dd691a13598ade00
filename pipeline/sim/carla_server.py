"""A CARLA server process started from ``carla.server_cmd`` and owned by one CarlaEnv.

The command runs in its own process group, so stopping it ends both the launcher script
(``CarlaUE4.sh``) and the engine it starts, even when the launcher already exited.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable

from pipeline.errors import SemoreError
from pipeline.sim.base import SimulatorConnectionError

log = logging.getLogger(__name__)


class CarlaServerProcess:
    """Starts, stops and restarts the server of ``server_cmd`` (``{port}`` filled in)."""

    def __init__(self, server_cmd: str, host: str, port: int, start_wait_s: float):
        self.server_cmd, self.port, self.start_wait_s = server_cmd, port, start_wait_s
        self.address = f"{host}:{port}"
        self.process: subprocess.Popen | None = None

    def exited(self) -> bool:
        """True when a started server's process has ended (crashed or was killed)."""
        return self.process is not None and self.process.poll() is not None

    def start(self) -> None:
        try:
            cmd = self.server_cmd.format(port=self.port)
        except (KeyError, IndexError, ValueError):
            raise SemoreError(
                f"carla.server_cmd {self.server_cmd!r} is invalid: expected {{port}} as its "
                "only placeholder"
            ) from None
        log.info("starting a CARLA server: %s", cmd)
        try:
            # Own process group: stop() ends the launcher script and the engine it starts.
            self.process = subprocess.Popen(
                shlex.split(cmd),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as err:
            raise SemoreError(
                f"carla.server_cmd {cmd!r} cannot start ({err.strerror}): expected e.g. "
                "'/opt/carla/CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}'"
            ) from None

    def connect_when_ready(self, connect: Callable[[], None]) -> None:
        """Retry ``connect`` (which raises SimulatorConnectionError until the started
        server answers) for up to ``start_wait_s``."""
        deadline = time.monotonic() + self.start_wait_s
        while True:
            code = self.process.poll()
            if code:  # 0 may be a launcher that daemonised: keep trying
                raise SemoreError(
                    f"carla.server_cmd exited with code {code} before the CARLA server at "
                    f"{self.address} answered: expected it to keep a server running"
                )
            try:
                connect()
                return
            except SimulatorConnectionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def restart(self, connect: Callable[[], None]) -> None:
        """Stop the server, start it again and ``connect`` once it answers."""
        self.stop()
        self.start()
        self.connect_when_ready(connect)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s; a no-op when not started."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # the group, even if the launcher already exited
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.poll() is None:
            process.wait()

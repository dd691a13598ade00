"""The CARLA server: a process started from ``carla.server_cmd`` and owned by one CarlaEnv,
and the client's connection to a server (own or not) in synchronous mode.

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
from typing import Any, NamedTuple

from pipeline.errors import SemoreError
from pipeline.sim.base import SimulatorConnectionError
from pipeline.sim.configs import CarlaConfig

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


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


class Connection(NamedTuple):
    """A client's hold on a CARLA server's world (the ``carla`` module's objects)."""

    client: Any
    world: Any
    map: Any
    traffic_manager: Any
    original_settings: Any  # the world's settings before ours (None unless asked for)


def connect_world(
    carla: Any, cfg: CarlaConfig, host: str, port: int, tm_port: int, keep_settings: bool
) -> Connection:
    """Connect to the server at ``host:port``: ``cfg.town`` loaded if another map is up, the
    world and the Traffic Manager synchronous at ``cfg.fixed_delta_s``; the world's settings
    before that are kept when ``keep_settings``."""
    address = f"{host}:{port}"
    try:
        client = carla.Client(host, port)
        client.set_timeout(cfg.timeout_s)
        world = client.get_world()
        original = world.get_settings() if keep_settings else None
        if world.get_map().name.rsplit("/", 1)[-1] != cfg.town:
            log.info("loading %s on the CARLA server at %s", cfg.town, address)
            world = _load_town(client, cfg.town, address)
        traffic_manager = client.get_trafficmanager(tm_port)
        traffic_manager.set_synchronous_mode(True)
        traffic_manager.global_percentage_speed_difference(cfg.tm_speed_difference_pct)
        settings = world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = cfg.fixed_delta_s
        world.apply_settings(settings)
        town_map = world.get_map()
    except RuntimeError as err:
        if "time-out" in str(err):
            raise SimulatorConnectionError(
                f"cannot reach the CARLA server at {address} within {cfg.timeout_s:g} s: "
                f"expected a running server (start CarlaUE4.sh -carla-rpc-port={port}, "
                "or set carla.server_cmd)"
            ) from None
        raise SimulatorConnectionError(
            f"the CARLA server at {address} failed during connection set-up: {one_line(err)}"
        ) from None
    return Connection(client, world, town_map, traffic_manager, original)


def _load_town(client: Any, town: str, address: str) -> Any:
    try:
        return client.load_world(town)
    except RuntimeError as err:
        if "time-out" in str(err):
            raise
        raise SemoreError(
            f"carla.town {town!r} cannot be loaded by the CARLA server at {address} "
            f"({one_line(err)}): expected a map it has, e.g. Town04"
        ) from None

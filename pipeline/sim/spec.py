"""What stages need to know about a backend, answered in one place.

Stage code asks :func:`backend_spec` (frame size, action names, scenario, action repeat,
retry policy) instead of branching on the backend's name; a new backend adds one entry here
and one in :func:`pipeline.sim.make_env`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import SemoreError
from pipeline.sim.configs import BACKENDS, EnvConfig


@dataclass(frozen=True)
class BackendSpec:
    """Facts about one configured backend."""

    name: str
    scenario: str  # what the manifest and the dataset card call the task
    action_names: tuple[str, ...]  # meaning of each entry of action.npy, in [-1, 1]
    image_shape: tuple[int, int]  # (H, W) of the "rgb" frame (CARLA: the stitched panorama)
    # Simulator steps per agent decision that make 0.2 s, as in DBC: highway-env already
    # steps at 5 Hz, CARLA ticks at 20 Hz.
    default_action_repeat: int
    # Reconnect-and-rerun attempts after a lost server; 0 where nothing can be lost.
    max_retries: int
    # Whether one process can run a second, independent simulator for evaluation, so that
    # evaluating never touches the training episode (highway-env: yes; CARLA: one ego per
    # server, so evaluation borrows the training simulator and ends its episode).
    separate_eval_env: bool


# The card's "limitations" line per backend; readable from a manifest without a config.
LIMITATIONS = {
    "highway": "highway-env is a 2D kinematic simulator with a simple rendering; vehicle dynamics, "
    "traffic behaviour and visuals are simplified, so models need adaptation before real cameras.",
    "carla": "CARLA renders a fixed town with Traffic Manager traffic; there is no sensor noise model, "
    "and weather, lighting and traffic density are those of the recording config.",
}


def backend_spec(env: EnvConfig) -> BackendSpec:
    """The :class:`BackendSpec` of ``env``'s backend as configured."""
    if env.backend == "highway":
        hw = env.highway
        return BackendSpec(
            name="highway",
            scenario="highway-v0",
            action_names=("acceleration", "steering"),
            image_shape=(hw.image_height, hw.image_width),
            default_action_repeat=1,
            max_retries=0,
            separate_eval_env=True,
        )
    if env.backend == "carla":
        ca = env.carla
        return BackendSpec(
            name="carla",
            scenario=ca.town,
            action_names=("steer", "throttle_brake"),
            image_shape=(ca.image_height, ca.image_width * len(ca.camera_yaws_deg)),
            default_action_repeat=4,
            max_retries=ca.max_retries,
            separate_eval_env=False,
        )
    raise SemoreError(f"unknown backend {env.backend!r}: expected one of {', '.join(BACKENDS)}")


def limitations(backend: str) -> str:
    """The dataset card's simulator caveat for a backend name from a manifest."""
    return LIMITATIONS.get(backend, f"synthetic data from the `{backend}` backend.")

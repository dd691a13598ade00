"""Online captions of the agent's own frames, for guide batches drawn from the replay.

``guide.replay_every`` makes every n-th guide batch a batch of replayed frames. Their targets
must mean what the guide dataset's mean, so each stored step is annotated the way
``semore-annotate`` annotated the dataset: the scene captioner (the same wording version) on
the simulator's privileged state, its motion caption pairing the step with the one
``motion_gap_steps`` earlier (clipped at the episode start), captions carried over
``keyframe_stride`` steps, and both embedded by the text encoder the dataset's manifest
records (rebuilt from the annotate config stored there, and checked against its name and
dimension). The embeddings and the step's motion targets go into the replay slot
(:class:`semore.replay.ReplayBuffer` ``annotation_dims``); standardising them is the guide's
business (:func:`pipeline.finetune.guide.replay_guide_batch`).
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.scene import SCENE_VERSION, SceneCaptioner
from pipeline.annotate.text_encoders import CachedEncoder, TextEncoder, make_text_encoder
from pipeline.config import from_dict
from pipeline.data import schema
from pipeline.data.source import DatasetInfo
from pipeline.errors import SemoreError

log = logging.getLogger(__name__)

# What a replay slot stores for the guide: the keys a pretraining batch has them under.
EMB_SEM, EMB_MOT, MOTION = "emb_sem", "emb_mot", "motion"


class OnlineCaptions:
    """Annotates each stored step of an episode as ``semore-annotate`` did the dataset's."""

    def __init__(
        self,
        captioner: SceneCaptioner,
        encoder: TextEncoder,
        motion_gap_steps: int,
        keyframe_stride: int,
    ) -> None:
        self.captioner = captioner
        self.dim = int(encoder.dim)
        self.gap = int(motion_gap_steps)
        self.stride = int(keyframe_stride)
        # Each distinct caption is embedded once, as annotate's cache does (scene captions
        # repeat: rounded speeds and distances). One text per encoder call: an embedding is
        # then a function of its text alone, not of which captions shared a padded batch, so
        # a resumed run (empty cache) stores the same values as the uninterrupted one.
        self.encoder = CachedEncoder(encoder)
        self._history: deque[dict] = deque(maxlen=self.gap + 1)  # states, newest last
        self._step = 0  # of the open episode
        self._keyframe: tuple[int, np.ndarray, np.ndarray] | None = None  # step, sem, mot

    @property
    def annotation_dims(self) -> dict[str, int]:
        """What the replay stores per slot for these annotations (ReplayBuffer argument)."""
        return {EMB_SEM: self.dim, EMB_MOT: self.dim, MOTION: len(schema.MOTION_TARGETS)}

    @property
    def lookups(self) -> int:
        return self.encoder.lookups

    @property
    def hits(self) -> int:
        return self.encoder.hits

    def _embed(self, text: str) -> np.ndarray:
        return self.encoder.encode([text])[0].astype(np.float32)

    def start(self, state: dict | None) -> dict[str, np.ndarray]:
        """The annotations of an episode's first step (the reset state)."""
        self._history.clear()
        self._step, self._keyframe = 0, None
        return self._annotate(state)

    def step(self, state: dict | None) -> dict[str, np.ndarray]:
        """The annotations of the next step of the open episode."""
        self._step += 1
        return self._annotate(state)

    def _annotate(self, state: dict | None) -> dict[str, np.ndarray]:
        if not isinstance(state, dict) or not state:
            raise SemoreError(
                f"guide.replay_every: the simulator gave no state at step {self._step}: expected "
                "the privileged state the scene captioner writes captions from"
            )
        self._history.append(state)
        if self._keyframe is None or self._step - self._keyframe[0] >= self.stride:
            prev = self._history[0]  # gap steps earlier, or the episode's first state
            semantic = self._embed(self.captioner.semantic(state))
            motion = self._embed(self.captioner.motion(prev, state))
            self._keyframe = (self._step, semantic, motion)
        _, semantic, motion = self._keyframe
        targets = schema.motion_targets(state, f"guide.replay_every: step {self._step} ")
        return {EMB_SEM: semantic, EMB_MOT: motion, MOTION: targets.astype(np.float32)}


def online_captions(info: DatasetInfo, action_repeat: int) -> OnlineCaptions:
    """The online annotator for the guide dataset ``info``; a one-line SemoreError naming what
    cannot be reproduced online (a VLM or older captioner, an unknown text encoder, steps
    that are not the dataset's)."""
    where = f"guide.replay_every: guide dataset {info.root}"
    ann = info.manifest.get("ann") or {}
    wanted = f"scene-v{SCENE_VERSION}"
    if ann.get("captioner") != wanted:
        raise SemoreError(
            f"{where} was captioned by {ann.get('captioner')!r}: expected {wanted!r}, the scene "
            "captioner that can caption replayed frames online (or guide.replay_every 0)"
        )
    if tuple(info.motion_targets) != tuple(tuple(t) for t in schema.MOTION_TARGETS):
        raise SemoreError(
            f"{where} has motion targets {list(info.motion_targets)}: expected "
            f"{list(schema.MOTION_TARGETS)}, the ones replayed states give"
        )
    if action_repeat != 1:
        raise SemoreError(
            f"{where} records one simulator step per sample but action_repeat is "
            f"{action_repeat}: expected 1, so replayed steps, rewards and motion gaps are the "
            "dataset's (or guide.replay_every 0)"
        )
    try:
        cfg = from_dict(AnnotateConfig, ann.get("config") or {}, "ann.config")
    except (SemoreError, ValueError, TypeError) as err:
        raise SemoreError(f"{where}: its annotate config does not load ({err})") from None
    # CPU: per stored step at most two short captions, mostly cache hits; and the same values
    # on every machine a run may resume on.
    cfg.device = "cpu"
    encoder = make_text_encoder(cfg)
    recorded = (ann.get("text_encoder"), ann.get("embedding_dim"))
    if (encoder.name, encoder.dim) != recorded:
        raise SemoreError(
            f"{where} was embedded by {recorded[0]!r} ({recorded[1]}-d) but its annotate config "
            f"rebuilds {encoder.name!r} ({encoder.dim}-d): expected the same text encoder"
        )
    log.info("guide: replayed frames are captioned by %s and embedded by %s", wanted, encoder.name)
    return OnlineCaptions(
        SceneCaptioner(cfg.scene), encoder, cfg.motion_gap_steps, cfg.keyframe_stride
    )

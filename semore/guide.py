"""Guided fine-tuning: the pretraining terms stay on while RL trains the encoder end to end.

Every ``every``-th critic update also draws a batch of the annotated dataset the encoder was
pretrained on and adds ``scale x`` the pretraining loss (semantic and motion InfoNCE to the
caption embeddings, motion regression, reward regression; :class:`SemorePretrainLoss` with the
pretraining weights) to the critic loss, so one backward pass and one encoder step carry both:
a separate optimiser step would make the scale meaningless (Adam normalises each step). The
pretraining heads start from the export's (fresh ones when an old export has none) and train at
their own rate. The batches come from the caller (``semore/`` reads no data). The label-free
baseline's guide is the same with ATC's model and loss (:mod:`semore.atc`): its contrast of a
frame stack against the stack a step later, through the momentum encoder, which follows the
agent's encoder after every guided update (the SGI / ATC recipe of keeping the
representation loss on during RL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from semore.atc import ATCLoss, ATCModel
from semore.augment import RandomShift
from semore.heads import SemorePretrainModel
from semore.losses import SemorePretrainLoss

GUIDE_PREFIX = "guide_"  # update metrics of the guide terms: guide_loss, guide_sem_nce, ...
# A batch holding this key (any value) comes from the agent's own replayed frames rather than
# the dataset: its terms are logged apart, as guide_replay_loss, ..., so both can be read.
FROM_REPLAY = "from_replay"
REPLAY_PREFIX = f"{GUIDE_PREFIX}replay_"


class PretrainGuide(nn.Module):
    """The pretraining model (the agent's encoder + heads) and loss, on batches of ``batches``.

    ``batches(num_drawn)`` opens the batch stream (dicts as the pretraining Collate makes them:
    obs, action, emb_sem, emb_mot, motion, reward; or with "obs_tokens", the flat tokens of a
    frozen trunk, instead of obs: see :mod:`semore.trunk_cache`; and :data:`FROM_REPLAY` in a
    batch of replayed frames) after ``num_drawn`` batches already drawn, so
    a resumed run continues with a stream of its own instead of repeating the first batches.
    Registered on the agent (``SACAgent.guide``), its heads, temperatures and counters travel
    with the agent's checkpoints.
    """

    def __init__(
        self,
        model: SemorePretrainModel | ATCModel,
        loss: SemorePretrainLoss | ATCLoss,
        batches: Callable[[int], Iterator[dict[str, Tensor]]],
        scale: float,
        every: int,
        heads_lr: float,
        aug_pad: int,
        momentum_tau: float | None = None,
    ) -> None:
        super().__init__()
        self.momentum_tau = momentum_tau  # an ATC model's target rate (semore.atc)
        if scale <= 0 or every < 1 or heads_lr <= 0:
            raise ValueError(
                f"PretrainGuide scale={scale}, every={every}, heads_lr={heads_lr}; expected "
                "scale > 0 (0 is plain fine-tuning: no guide), every >= 1, heads_lr > 0"
            )
        self.model = model
        self.loss = loss
        self.scale = float(scale)
        self.every = int(every)
        self.aug = RandomShift(aug_pad)  # pretraining's DrQ shift on its training batches
        self._open = batches
        self._stream: Iterator[dict[str, Tensor]] | None = None
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_drawn", torch.zeros((), dtype=torch.int64))
        encoder_params = {id(p) for p in model.encoder.parameters()}
        # The heads that train (an ATC momentum encoder only follows its online encoder).
        heads = [p for p in model.parameters() if id(p) not in encoder_params and p.requires_grad]
        self.opt = torch.optim.Adam([*heads, *loss.parameters()], lr=heads_lr)
        self.metrics: dict[str, float] = {}

    def term(self) -> Tensor | None:
        """``scale x`` the pretraining loss on the next guide batch when one is due, else None.

        Call once per critic update before its backward pass; :meth:`step` after it.
        """
        due = int(self.num_calls) % self.every == 0
        self.num_calls += 1
        if not due:
            return None
        if self._stream is None:
            self._stream = self._open(int(self.num_drawn))
        device = self.num_calls.device
        batch = dict(next(self._stream))
        prefix = REPLAY_PREFIX if batch.pop(FROM_REPLAY, None) is not None else GUIDE_PREFIX
        batch = {key: value.to(device) for key, value in batch.items()}
        self.num_drawn += 1
        self.opt.zero_grad(set_to_none=True)
        outputs = self.model.guide_outputs(batch, self.aug)
        terms = self.loss(outputs, batch)
        self.metrics = {f"{prefix}{key}": value.item() for key, value in terms.items()}
        return self.scale * terms["loss"]

    def step(self) -> None:
        """Step the heads and temperatures on the gradients of the last :meth:`term` (after
        the agent stepped the encoder); an ATC model's momentum encoder then follows."""
        self.opt.step()
        if self.momentum_tau is not None:
            self.model.update_target(self.momentum_tau)

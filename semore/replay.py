"""Replay of single frames with frame stacking and n-step returns, and the matching FrameStack.

The buffer keeps each frame once (uint8, HWC) in a ring and rebuilds stacks of the latest
``frame_stack`` frames at sample time, so memory is ``capacity * H * W * 3`` bytes for frames
(100k frames of 84x84 = 2.1 GB; of 84x420 = 10.6 GB) plus small per-frame arrays, instead of
2K frames per transition. Frame ``i`` (counted since construction, "absolute index") lives in
slot ``i % capacity``; the transition that led *into* frame ``i`` (action, reward, terminal)
is stored in the same slot.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

# Candidate draws per round of rejection sampling, relative to the batch size: most stored
# frames are sampleable, so one or two rounds suffice.
_OVERDRAW = 2
_MAX_REJECTION_ROUNDS = 8


def stack_frames(frames: np.ndarray) -> np.ndarray:
    """(..., K, H, W, 3) uint8 -> (..., 3K, H, W), oldest frame first (channels of a frame adjacent)."""
    *lead, k, height, width, channels = frames.shape
    chw = np.moveaxis(frames, -1, -3)  # (..., K, 3, H, W)
    return np.ascontiguousarray(chw.reshape(*lead, k * channels, height, width))


def _annotation_arrays(capacity: int, dims: dict[str, int]) -> dict[str, np.ndarray]:
    if any(dim < 1 for dim in dims.values()):
        raise ValueError(f"ReplayBuffer annotation_dims={dims}; expected positive sizes")
    return {name: np.zeros((capacity, dim), np.float32) for name, dim in dims.items()}


class ReplayBuffer:
    """Ring buffer of frames with episode boundaries; samples stacked n-step transitions.

    ``add_first(frame)`` opens an episode; ``add(action, reward, next_frame, terminal)`` appends
    one step. A time-limit truncation needs no call: the next ``add_first`` closes the episode,
    and its last transitions bootstrap from its last frame. ``sample`` returns "discount" =
    gamma^j where j <= nstep is the number of rewards summed, or 0 when the episode
    terminated within those j steps, so the TD target is ``reward + discount * V(next_obs)``.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int, int],
        frame_stack: int,
        action_dim: int,
        motion_dim: int = 0,
        discount: float = 0.99,
        nstep: int = 1,
        feature_dim: int = 0,
        feature_dtype: type = np.float32,
        feature_key: str = "h",
        annotation_dims: dict[str, int] | None = None,
    ) -> None:
        if len(frame_shape) != 3 or frame_shape[2] != 3:
            raise ValueError(f"ReplayBuffer frame_shape={frame_shape}; expected (H, W, 3)")
        if frame_stack < 1 or nstep < 1 or action_dim < 1 or motion_dim < 0 or feature_dim < 0:
            raise ValueError(
                f"ReplayBuffer frame_stack={frame_stack}, nstep={nstep}, action_dim={action_dim}, "
                f"motion_dim={motion_dim}; expected frame_stack, nstep, action_dim >= 1, motion_dim >= 0"
            )
        if capacity <= frame_stack + nstep:
            raise ValueError(
                f"ReplayBuffer capacity={capacity}; expected > frame_stack + nstep = {frame_stack + nstep}"
            )
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.frame_stack = int(frame_stack)
        self.action_dim = int(action_dim)
        self.motion_dim = int(motion_dim)
        self.discount = float(discount)
        self.nstep = int(nstep)
        self.feature_dim = int(feature_dim)
        # Batches hold the stored features as "obs_<key>" / "next_obs_<key>": "h" for a frozen
        # encoder's representation, "tokens" for frozen lower layers' token grid (float16, 8 KB).
        self.feature_key = feature_key

        self._frames = np.zeros((capacity, *self.frame_shape), np.uint8)
        self._action = np.zeros(
            (capacity, action_dim), np.float32
        )  # action that led into the frame
        self._reward = np.zeros(capacity, np.float32)  # reward of the step into the frame
        self._terminal = np.zeros(
            capacity, bool
        )  # the step into the frame ended at a terminal state
        self._episode_start = np.zeros(
            capacity, np.int64
        )  # absolute index of the episode's first frame
        self._motion = np.zeros((capacity, motion_dim), np.float32)  # targets at the frame's time
        # A frozen encoder's features of the stack that ends at the frame (feature_dim > 0).
        self._features = np.zeros((capacity, feature_dim), feature_dtype)
        # Named float32 vectors per frame that the caller computes when it stores the frame
        # (guided fine-tuning: caption embeddings and motion targets of the frame's step),
        # returned by sample_annotated(); none by default.
        self.annotation_dims = {str(k): int(v) for k, v in (annotation_dims or {}).items()}
        self._annotations = _annotation_arrays(capacity, self.annotation_dims)
        self._num_added = 0  # frames ever added
        self._can_add = False  # an episode is open and has not terminated

    # ----------------------------------------------------------------------------- writing
    def _write(
        self,
        frame: np.ndarray,
        motion: np.ndarray | None,
        features: np.ndarray | None = None,
        annotations: dict[str, np.ndarray] | None = None,
    ) -> int:
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ValueError(
                f"ReplayBuffer frame has shape {frame.shape} dtype {frame.dtype}; "
                f"expected {self.frame_shape} uint8"
            )
        slot = self._num_added % self.capacity
        if self.motion_dim > 0:
            if motion is None or np.shape(motion) != (self.motion_dim,):
                raise ValueError(
                    f"ReplayBuffer motion={None if motion is None else np.shape(motion)}; "
                    f"expected shape ({self.motion_dim},) since motion_dim={self.motion_dim}"
                )
            self._motion[slot] = motion
        if features is not None:
            if self.feature_dim == 0 or np.shape(features) != (self.feature_dim,):
                raise ValueError(
                    f"ReplayBuffer features shape {np.shape(features)}; expected "
                    f"({self.feature_dim},) with feature_dim > 0"
                )
            self._features[slot] = features
        self._write_annotations(slot, annotations)
        self._frames[slot] = frame
        self._num_added += 1
        return slot

    def _write_annotations(self, slot: int, annotations: dict[str, np.ndarray] | None) -> None:
        if not self._annotations and not annotations:
            return
        shapes = {k: np.shape(v) for k, v in (annotations or {}).items()}
        expected = {k: (dim,) for k, dim in self.annotation_dims.items()}
        if shapes != expected:
            raise ValueError(
                f"ReplayBuffer annotations {shapes}; expected {expected} (annotation_dims)"
            )
        for name, value in annotations.items():
            self._annotations[name][slot] = value

    def add_first(
        self,
        frame: np.ndarray,
        motion: np.ndarray | None = None,
        features: np.ndarray | None = None,
        annotations: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Start a new episode with its first frame (HWC uint8), optionally with the features
        of its stacked observation and its annotations (see ``annotation_dims``)."""
        slot = self._write(frame, motion, features, annotations)
        self._episode_start[slot] = self._num_added - 1
        self._terminal[slot] = False
        self._reward[slot] = 0.0
        self._action[slot] = 0.0
        self._can_add = True

    def add(
        self,
        action: np.ndarray,
        reward: float,
        next_frame: np.ndarray,
        terminal: bool,
        motion: np.ndarray | None = None,
        features: np.ndarray | None = None,
        annotations: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append the step (action, reward) that led to ``next_frame``."""
        if not self._can_add:
            raise ValueError(
                "ReplayBuffer.add() without an open episode; call add_first() after a terminal step"
            )
        if np.shape(action) != (self.action_dim,):
            raise ValueError(
                f"ReplayBuffer action shape {np.shape(action)}; expected ({self.action_dim},)"
            )
        episode_start = self._episode_start[(self._num_added - 1) % self.capacity]
        slot = self._write(next_frame, motion, features, annotations)
        self._episode_start[slot] = episode_start
        self._action[slot] = action
        self._reward[slot] = reward
        self._terminal[slot] = terminal
        self._can_add = not terminal

    # ----------------------------------------------------------------------------- reading
    def _oldest(self) -> int:
        return max(0, self._num_added - self.capacity)

    def _transitions(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """n-step transition data for obs frames at absolute indices ``t``, with a validity mask."""
        cap = self.capacity
        oldest = self._oldest()
        episode = self._episode_start[t % cap]
        # The whole obs stack must still be in the ring (the next stack is newer, so it is too).
        valid = (t >= oldest) & (t < self._num_added)
        valid &= np.maximum(t - self.frame_stack + 1, episode) >= oldest

        ret = np.zeros(len(t), np.float64)
        gamma_pow = np.ones(len(t), np.float64)
        steps = np.zeros(len(t), np.int64)
        terminal = np.zeros(len(t), bool)
        pending = np.zeros(len(t), bool)
        running = np.ones(len(t), bool)  # still summing rewards
        for i in range(1, self.nstep + 1):
            nxt = t + i
            exists = nxt < self._num_added
            # A missing frame while still running means the episode is the open one: wait for it.
            pending |= running & ~exists
            slot = nxt % cap
            take = running & exists & (self._episode_start[slot] == episode)
            ret += np.where(take, gamma_pow * self._reward[slot], 0.0)
            gamma_pow = np.where(take, gamma_pow * self.discount, gamma_pow)
            steps += take
            terminal |= take & self._terminal[slot]
            running = take & ~self._terminal[slot]
        valid &= (steps >= 1) & ~pending
        return {
            "valid": valid,
            "episode": episode,
            "steps": steps,
            "reward": ret.astype(np.float32),
            "discount": np.where(terminal, 0.0, gamma_pow).astype(np.float32),
        }

    def _valid_indices(self) -> np.ndarray:
        t = np.arange(self._oldest(), self._num_added, dtype=np.int64)
        return t[self._transitions(t)["valid"]]

    def __len__(self) -> int:
        """Number of transitions that ``sample`` may return right now."""
        return int(len(self._valid_indices()))

    def _stack(self, t: np.ndarray, episode: np.ndarray) -> np.ndarray:
        offsets = np.arange(-self.frame_stack + 1, 1)  # oldest first
        # Frames before the episode start repeat its first frame.
        idx = np.maximum(t[:, None] + offsets, episode[:, None])  # (B, K)
        return stack_frames(self._frames[idx % self.capacity])  # (B, 3K, H, W)

    def sample(
        self, batch_size: int, generator: np.random.Generator, features: bool = False
    ) -> dict[str, torch.Tensor]:
        """Uniform batch of stacked n-step transitions as CPU tensors (see class docstring).

        "reward1" is the transition's one-step reward. With ``features`` the batch holds the
        stored features ("obs_h", "next_obs_h") instead of frame stacks.
        """
        t = self._draw(batch_size, generator)
        info = self._transitions(t)
        next_t = t + info["steps"]
        batch = {
            "action": self._action[(t + 1) % self.capacity],
            "reward": info["reward"],
            "reward1": self._reward[(t + 1) % self.capacity],
            "discount": info["discount"],
        }
        if features:
            batch[f"obs_{self.feature_key}"] = self._features[t % self.capacity]
            batch[f"next_obs_{self.feature_key}"] = self._features[next_t % self.capacity]
        else:
            batch["obs"] = self._stack(t, info["episode"])
            batch["next_obs"] = self._stack(next_t, info["episode"])
        if self.motion_dim > 0:
            batch["motion"] = self._motion[t % self.capacity]
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}

    def sample_annotated(
        self, batch_size: int, generator: np.random.Generator, features: bool = False
    ) -> dict[str, torch.Tensor]:
        """Uniform batch of single steps as a pretraining batch reads them: the stack ending
        at frame t ("obs", or the stored features "obs_<key>" with ``features``), the action
        taken at t and its one-step reward, and t's annotations under their names.

        The same frames as :meth:`sample` may return (those with a next step stored).
        """
        if not self._annotations:
            raise ValueError("ReplayBuffer.sample_annotated() without annotation_dims")
        t = self._draw(batch_size, generator)
        slot, nxt = t % self.capacity, (t + 1) % self.capacity
        batch = {"action": self._action[nxt], "reward": self._reward[nxt]}
        if features:
            batch[f"obs_{self.feature_key}"] = self._features[slot]
        else:
            batch["obs"] = self._stack(t, self._episode_start[slot])
        batch.update({name: values[slot] for name, values in self._annotations.items()})
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}

    def _draw(self, batch_size: int, generator: np.random.Generator) -> np.ndarray:
        """``batch_size`` sampleable absolute frame indices, uniformly."""
        # Rejection sampling keeps each draw O(batch) instead of O(capacity).
        chosen = np.zeros(0, np.int64)
        for _ in range(_MAX_REJECTION_ROUNDS if self._num_added > 0 else 0):
            t = generator.integers(self._oldest(), self._num_added, size=_OVERDRAW * batch_size)
            chosen = np.concatenate([chosen, t[self._transitions(t)["valid"]]])
            if len(chosen) >= batch_size:
                break
        if len(chosen) >= batch_size:
            t = chosen[:batch_size]
        else:  # sampleable transitions are rare (tiny buffer): draw from the exact set
            candidates = self._valid_indices()
            if len(candidates) == 0:
                raise ValueError(
                    "ReplayBuffer.sample() on a buffer with no complete transition; "
                    "expected at least one episode step after add_first()"
                )
            t = generator.choice(candidates, size=batch_size)
        return t

    # ----------------------------------------------------------------------------- checkpoint
    _ARRAYS = ("frames", "action", "reward", "terminal", "episode_start", "motion", "features")

    def target_stats(self) -> dict[str, np.ndarray]:
        """Mean and std of the one-step rewards and the motion targets stored so far (the
        standardisation of the agent's auxiliary targets)."""
        absolute = np.arange(self._oldest(), self._num_added, dtype=np.int64)
        slots = absolute % self.capacity
        # The first frame of an episode has no step (and no reward) leading into it.
        stepped = slots[self._episode_start[slots] != absolute]
        rewards = self._reward[stepped] if len(stepped) else np.zeros(1, np.float32)
        motion = self._motion[slots] if len(slots) else np.zeros((1, self.motion_dim), np.float32)
        return {
            "reward_mean": np.float32(rewards.mean()),
            "reward_std": np.float32(rewards.std()),
            "motion_mean": motion.mean(0),
            "motion_std": motion.std(0),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Filled part of the buffer as numpy arrays (views of the live buffer, not copies).

        Frames dominate: ``min(len_added, capacity) * H * W * 3`` bytes. Serialise right away
        (e.g. ``np.savez``) before adding more, since the arrays change with the buffer.
        """
        filled = min(self._num_added, self.capacity)
        state = {name: getattr(self, f"_{name}")[:filled] for name in self._ARRAYS}
        state.update({f"ann_{k}": v[:filled] for k, v in self._annotations.items()})
        state["num_added"] = np.array(self._num_added, np.int64)
        state["can_add"] = np.array(self._can_add)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state_dict` from a buffer built with the same arguments."""
        num_added = int(state["num_added"])
        filled = min(num_added, self.capacity)
        targets = {name: getattr(self, f"_{name}") for name in self._ARRAYS}
        targets.update({f"ann_{k}": v for k, v in self._annotations.items()})
        for name, target in targets.items():
            if name not in state:
                raise ValueError(
                    f"ReplayBuffer state lacks {name!r}: expected a buffer with the same "
                    "annotations (annotation_dims)"
                )
            expected = (filled, *target.shape[1:])
            if np.shape(state[name]) != expected:
                raise ValueError(
                    f"ReplayBuffer state {name!r} has shape {np.shape(state[name])}; expected "
                    f"{expected} (same capacity, frame shape, action and motion dims)"
                )
            target[:filled] = state[name]
        self._num_added = num_added
        self._can_add = bool(state["can_add"])


class FrameStack:
    """Online frame stacker producing the same (3K, H, W) stacks as :class:`ReplayBuffer`."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"FrameStack k={k}; expected an int >= 1")
        self.k = int(k)
        self._frames: deque[np.ndarray] = deque(maxlen=self.k)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Start an episode: the first frame fills all K slots."""
        self._frames.clear()
        self._frames.extend([frame] * self.k)
        return stack_frames(np.stack(self._frames))

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Push the newest frame and return the stack, oldest first."""
        if not self._frames:
            raise ValueError("FrameStack.step() before reset(); call reset(first_frame) first")
        self._frames.append(frame)
        return stack_frames(np.stack(self._frames))

"""Will it fit: the memory a configuration asks for, against this machine's, before work starts.

A size that cannot fit (a batch of 10^6 frame stacks, a replay buffer of 10^8 panoramas) would
otherwise end in the kernel's OOM killer or a torch allocator error minutes in. Each stage
estimates its largest buffers from the config and the frame size, and refuses with the
estimate when their sum exceeds the machine's RAM. Estimates count what certainly gets
allocated (frames, their float copies, the first layers' activations), so they are a floor of
the real use: what they refuse cannot run.
"""

from __future__ import annotations

import os

from pipeline.errors import SemoreError

GIB = 1 << 30
FLOAT32_BYTES = 4


def total_ram_bytes() -> int | None:
    """This machine's physical memory (psutil if installed, else sysconf); None if unknown."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().total)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def gib(num_bytes: float) -> str:
    """``num_bytes`` in GiB (MiB below one GiB), three digits at most after the point."""
    size = num_bytes / GIB
    if size < 1:
        return f"{num_bytes / (1 << 20):.3g} MiB"
    return f"{size:.0f} GiB" if size >= 100 else f"{size:.3g} GiB"


def check_fits(what: str, parts: dict[str, float], hint: str) -> None:
    """Refuse when ``parts`` (description -> bytes) add up to more than this machine's RAM.

    ``what`` names the run, ``hint`` what to lower; the message lists every part.
    """
    ram = total_ram_bytes()
    needed = sum(parts.values())
    if ram is None or needed <= ram:
        return
    detail = " + ".join(f"{name} {gib(size)}" for name, size in parts.items())
    raise SemoreError(
        f"{what} needs at least {gib(needed)} of memory ({detail}) but this machine has "
        f"{gib(ram)}: expected {hint}"
    )


def frame_bytes(height: int, width: int) -> int:
    """One uint8 RGB frame."""
    return height * width * 3

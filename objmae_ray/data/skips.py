"""Never let one bad file kill an epoch: substitute the next index, count it, warn once."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from objmae_ray.errors import ConfigError

log = logging.getLogger("objmae_ray.data")
T = TypeVar("T")

# What a corrupt, truncated or vanished image file (PIL: OSError/SyntaxError/ValueError) or a malformed
# annotation (pycocotools: KeyError/TypeError/IndexError) raises.
LOAD_ERRORS = (OSError, SyntaxError, ValueError, KeyError, TypeError, IndexError)


class SkipCounter:
    """Per-process count of unreadable samples (each DataLoader worker keeps its own)."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.skipped = 0
        self.warned = False

    def load(self, index: int, length: int, load_one: Callable[[int], T], describe: Callable[[int], str]) -> T:
        """`load_one(index)`, or on a load error the next readable index (deterministic: index+1, ...)."""
        for attempt in range(length):
            i = (index + attempt) % length
            try:
                return load_one(i)
            except LOAD_ERRORS as err:
                self.skipped += 1
                if not self.warned:
                    self.warned = True
                    log.warning("%s: skipping unreadable %s (%s); further skips are only counted",
                                self.dataset_name, describe(i), err)
        raise ConfigError(f"{self.dataset_name}: no readable image among {length} samples")

"""A worker's training data: batches from the good rows of its Ray Data shard, in step with the other workers,
with the position a checkpoint records."""

import logging
from collections.abc import Callable, Iterable, Iterator

from raylib.train.distributed import all_sum

logger = logging.getLogger(__name__)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items; a last, shorter list is dropped."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []


class ShardStream:
    """Batches made by `group` from the good rows (dicts) of a dataset shard; rows with an `_error` are counted
    in `bad_rows` and logged, never used. An epoch ends for every worker when the first one runs out, so all
    workers take the same number of steps; `position()` is what a checkpoint records, and a stream created
    with it goes on from there."""

    def __init__(self, shard, group: Callable[[Iterator[dict]], Iterator], epoch: int = 0, skip: int = 0):
        self.shard, self.group = shard, group
        self.bad_rows, self.epoch, self.taken_in_epoch = 0, epoch, 0
        self._start(skip)

    def _good_rows(self) -> Iterator[dict]:
        for batch in self.shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            for row in batch.to_pylist():
                if row["_error"] is None:
                    yield row
                else:
                    self.bad_rows += 1
                    logger.warning("skipped input row %s: %s", row.get("_where", ""), row["_error"])

    def _start(self, skip: int) -> None:
        self._iterator = self.group(self._good_rows())
        for _ in range(skip):
            self._next()

    def _next(self):
        item = next(self._iterator, None)
        if item is not None:
            self.taken_in_epoch += 1
        return item

    def take(self, count: int) -> list:
        """The next `count` batches, starting a new epoch on every worker when any one runs out."""
        items = [self._next() for _ in range(count)]
        if all_sum([float(any(item is None for item in items))])[0] == 0:
            return items
        self.epoch, self.taken_in_epoch = self.epoch + 1, 0
        self._start(0)
        items = [self._next() for _ in range(count)]
        if all_sum([float(any(item is None for item in items))])[0] > 0:
            raise RuntimeError("one epoch of a worker's data is shorter than one step; add data or lower the "
                               "batch size or optim.grad_accum")
        return items

    def position(self) -> dict:
        """Where the stream is: the keyword arguments that resume it."""
        return {"epoch": self.epoch, "skip": self.taken_in_epoch}

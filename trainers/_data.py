"""The trainer's data: the order of the images (one permutation per epoch, keyed by (seed,
epoch), so a resume needs only the step) and the uint8 batches on the device."""

from __future__ import annotations

import torch

from vaeprobe import data as vdata

RESIDENT_FRACTION = 0.25  # a tensor dataset moves to the GPU when it takes at most this much
#                           of the free memory; else it stays on the host, batches copied over


def resident_images(dataset, device: torch.device) -> torch.Tensor | None:
    """A tensor dataset's uint8 images on ``device`` when they fit (moved once: a step then
    indexes them there, with no copy from the host), else None."""
    if not isinstance(dataset, vdata.ImageTensorDataset):
        return None
    images = dataset.images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() * images.element_size() > RESIDENT_FRACTION * free:
            return None
    return images.to(device)


class DataMixin:
    """:class:`trainers.train.Trainer`'s data order and batches (reads ``config``, ``dataset``,
    ``images``, ``rank``, ``world``, ``device``)."""

    _epoch_order: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of the training set in ``epoch`` (drawn once per epoch; on the
        device with the images when they are resident)."""
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.dataset), generator=generator)
            if self.images is not None:
                order = order.to(self.images.device)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

    def batch_indices(self, step: int) -> torch.Tensor:
        """This rank's indices of the images of step ``step`` (the rank's rows of the global
        batch: the same images in all for any number of processes)."""
        batch = self.config.batch_size
        epoch, position = divmod(step, max(1, len(self.dataset) // batch))
        local = batch // self.world
        start = position * batch + self.rank * local
        return self.epoch_order(epoch)[start:start + local]

    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images of the training set at ``indices``, on the device."""
        if self.images is not None:
            return self.images.index_select(0, indices.to(self.images.device))
        return vdata.gather(self.dataset, indices).to(self.device, non_blocking=True)

    def batches(self, start: int):
        """Yield (indices, uint8 images on the device) for steps ``start``, ``start + 1``...

        A tensor dataset is resident (:func:`resident_images`); any other is read ahead by
        ``--workers`` loader processes into pinned memory. The order is ``batch_indices``'
        either way, so a resume is exact.
        """
        if self.images is not None:
            for step in range(start, self.config.steps):
                indices = self.batch_indices(step)
                yield indices, self.fetch(indices)
            return
        steps = (self.batch_indices(step) for step in range(start, self.config.steps))
        for indices, x in vdata.load_batches(self.dataset, steps, workers=self.config.workers,
                                             device=self.device):
            yield indices, x.to(self.device, non_blocking=True)

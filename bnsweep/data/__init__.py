"""The data: the datasets bnsweep knows (``catalog``: files, checksums, where they are found or
fetched; no torch), a user's own .npz or image folder (``sources``), and the LightningDataModules
that verify, cache, split and batch them (``modules``, ``cache``).

Imports the shared leaves only (``bnsweep.files``, ``bnsweep.terminal``). The DataModules load on
first use (``bnsweep.data.modules.MNISTDataModule``, the name the data configs give as ``_target_``), so the
config checks read the catalog without importing torch.
"""

from __future__ import annotations

from bnsweep import lazy

_EXPORTS = {
    "MNISTDataModule": "bnsweep.data.modules",
    "NpzDataModule": "bnsweep.data.modules",
    "ImageFolderDataModule": "bnsweep.data.modules",
    "ImageDataModule": "bnsweep.data.modules",
    "DataError": "bnsweep.data.catalog",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy(__name__, _EXPORTS)

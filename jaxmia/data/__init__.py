"""Data: TFDS builders (FaceScrub, CelebA top identities, Stanford Dogs, embedded MNIST) and grain batching.

`import jaxmia.data` is cheap: TFDS loads with the first `load_split` (TensorFlow is not needed), grain with the first
`batches`. Image ops and augmentations live in the submodules `jaxmia.data.image_ops` and
`jaxmia.data.augment` (import them explicitly).
"""
from jaxmia.data.pipeline import Split
from jaxmia.data.pipeline import batches
from jaxmia.data.pipeline import get_dataset_config
from jaxmia.data.pipeline import load_arrays
from jaxmia.data.pipeline import load_split

__all__ = ['Split', 'batches', 'get_dataset_config', 'load_arrays', 'load_split']

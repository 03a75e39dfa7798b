"""genfm's offline data layer: loaders, random-access sources and grain batching.

  from genfm.experiments import data
  src = data.load("fashion_mnist", "train")          # ArraySource, src.info, src[i]
  it = data.make_iterator(src, batch_size=128, seed=0)
  batch = next(it)                                    # {"image": [B,28,28,1], "label": [B]}
  text = data.load_text("shakespeare", "train")      # after running the fetch once:
  # python -m genfm.experiments.data.fetch

Nothing here touches the network; see `loader.load` for the data sets.
"""

from genfm.experiments.data.loader import IMAGE_NAMES
from genfm.experiments.data.loader import load
from genfm.experiments.data.loader import NAMES
from genfm.experiments.data.loader import SPLITS
from genfm.experiments.data.pipeline import make_iterator
from genfm.experiments.data.sources import ArraySource
from genfm.experiments.data.sources import DatasetInfo
from genfm.experiments.data.sources import WindowSource
from genfm.experiments.data.text import load_text
from genfm.experiments.data.text import TEXT_NAMES
from genfm.experiments.data.text import TEXT_SPLITS
from genfm.experiments.data.tfds_source import TfdsSource

__all__ = [
    "ArraySource", "DatasetInfo", "IMAGE_NAMES", "NAMES", "SPLITS", "TEXT_NAMES",
    "TEXT_SPLITS", "TfdsSource", "WindowSource", "load", "load_text", "make_iterator",
]

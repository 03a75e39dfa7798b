"""The user-facing error classes, re-exported for the experiments platform.

They live in `genfm.foundations.errors` so that the library areas (foundations, transformers,
diffusion, kernels) raise them without importing `genfm.experiments`: the layering runs one way.
"""

from genfm.foundations.errors import (CheckpointError, ConfigError, DataError,  # noqa: F401
                                      NonFiniteLossError, UserError, unknown_choice)

"""``ember.nn.functional`` (imported as ``F``): the stateless functions behind the layers.

Composites (softmax, log_softmax, layer_norm, gelu, cross_entropy, attention, ...) are plain
functions over primitives marked ``@composite`` (DESIGN.md), so their gradients come from the
primitives' and the compiler can fuse them.
"""

from .activation import *  # noqa: F403
from .attention import *  # noqa: F403
from .embedding import *  # noqa: F403
from .linear import *  # noqa: F403
from .loss import *  # noqa: F403
from .normalization import *  # noqa: F403

"""``ember.nn``: modules, layers, losses, initializers and functional forms, with PyTorch's API."""

from . import functional, init, utils
from .activation import *  # noqa: F403
from .attention import *  # noqa: F403
from .containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .conv import *  # noqa: F403
from .dropout import *  # noqa: F403
from .embedding import *  # noqa: F403
from .linear import *  # noqa: F403
from .loss import *  # noqa: F403
from .module import IncompatibleKeys, Module, StateDictError
from .norm import *  # noqa: F403
from .parameter import Parameter
from .pooling import *  # noqa: F403
from .rnn import *  # noqa: F403
from .transformer import *  # noqa: F403

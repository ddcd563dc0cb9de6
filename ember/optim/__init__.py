"""``ember.optim``: optimizers and learning-rate schedulers with PyTorch's API and update formulas.

```python
opt = ember.optim.AdamW(model.parameters(), lr=1e-3)
sched = ember.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=1000)
for x, y in loader:
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    sched.step()
```
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW, SparseAdam
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SparseAdam", "lr_scheduler"]

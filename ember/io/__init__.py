"""Checkpoints: safetensors files for state dicts, nested trees and whole training states.

``ember.save``/``ember.load`` are this package's ``save``/``load``. Loading never unpickles.
"""

from __future__ import annotations

from .checkpoint import load, load_checkpoint, load_metadata, load_tree, save, save_checkpoint, save_tree, write_atomic
from .tree import CheckpointError, CheckpointNotFoundError

__all__ = ["CheckpointError", "CheckpointNotFoundError", "load", "load_checkpoint", "load_metadata", "load_tree",
           "save", "save_checkpoint", "save_tree", "write_atomic"]

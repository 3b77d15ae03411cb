"""Admission queue of the router: priority classes, fair share, bounds (issue 14).

Pure discipline in :mod:`.classes`, :mod:`.fair`, :mod:`.discipline`, :mod:`.room`; the
asyncio side in :mod:`.gate`. On unless ``--max-running-per-replica 0``; each replica's
capacity is that flag when given, else what its engine declared.
"""

from .classes import CLASSES, QueueConfig, class_of
from .discipline import ModelQueue
from .fair import FairQueue, Waiter
from .gate import Admission, ModelGate, Shed
from .room import RoomEstimator

__all__ = ["CLASSES", "Admission", "FairQueue", "ModelGate", "ModelQueue", "QueueConfig",
           "RoomEstimator", "Shed", "Waiter", "class_of"]

"""Flower's own processes (SuperLink, SuperNode, the simulation runtime) started and stopped by PID.

Shared by the operator's side (``server/federation_ops.py``), a site's side (``client/site_ops.py``) and the
simulation driver: what both sides need lives in ``common/``, so neither reaches up into ``simulations/``.
No Flower imports.
"""

from common.runtime.processes import ProcessSet, descendants, free_port, terminate, wait_for_port
from common.runtime.service import ServiceError, flower_env, read_pid, run_foreground, start_detached, stop_pidfile

__all__ = ["ProcessSet", "ServiceError", "descendants", "flower_env", "free_port", "read_pid", "run_foreground",
           "start_detached", "stop_pidfile", "terminate", "wait_for_port"]

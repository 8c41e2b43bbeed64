"""The datapath seam: the one place where engine decisions become actions.

Every userspace datapath (``colo_proxy/datapath/``: NFQUEUE, qemu-socket) keeps
only its I/O: it reads frames, pushes them into the ``Engine`` and hands the
decisions to a ``Seam``.  The kernel datapath (``datapath/kernel.py``) has the
nf_colo node in the engine's place: the kernel releases and drops by itself, and
its checkpoint requests reach the same ``Seam`` (``KernelSeam``), policies,
counters and events.  The seam does the rest, the same way for every datapath:

* ``seam.py``: ``Seam`` -- routes decisions: releases and primary drops to the
  datapath's ``DatapathIO``, checkpoint requests to the checkpoint policy, and
  counts and reports everything;
* ``checkpoint.py``: the ``CheckpointPolicy`` protocol and the built-in
  policies (``flush``, ``cmd``).  The QMP agent (``colo_proxy/agent/``) plugs in
  here as another policy object;
* ``control.py``: push-style policies (``bind(control)``): the
  ``DatapathControl`` a policy drives the datapath with (fence, flush, unfence,
  solo, colo) and the engine-wrapper hook (the agent's epoch gate);
* ``counters.py``: ``SeamCounters``, the one set of datapath counters (a
  Prometheus exporter serves these);
* ``latency.py``: the match-to-release latency histogram (fixed buckets);
* ``events.py``: the JSON-lines event stream (``--events``), connection keys as
  data.

docs/datapaths.md ("The seam") documents the protocol and the event schema.
"""

from .checkpoint import CheckpointPolicy, CommandPolicy, FlushPolicy, Outcome
from .control import BindablePolicy, DatapathControl, EngineInput, EngineWrapper
from .counters import SeamCounters
from .events import EventWriter, key_record
from .latency import LATENCY_BUCKETS_MS, LatencyHistogram
from .seam import DatapathIO, Seam

__all__ = [
    "LATENCY_BUCKETS_MS",
    "BindablePolicy",
    "CheckpointPolicy",
    "CommandPolicy",
    "DatapathControl",
    "DatapathIO",
    "EngineInput",
    "EngineWrapper",
    "EventWriter",
    "FlushPolicy",
    "LatencyHistogram",
    "Outcome",
    "Seam",
    "SeamCounters",
    "key_record",
]

"""Views of the Grid Flower hands the ServerApp, through its public Grid API only.

:class:`DelegatingGrid` passes everything on; its subclasses change one thing each.
:class:`PollingGrid` waits for replies at its own pace; :class:`PartitionGrid` lists the online
nodes in partition order, for seeded sampling (server/sampling.py).

Flower 1.39's ``send_and_receive`` checks for replies every 3 s (a hard-coded sleep in
``flwr/superlink/grid/http_grid.py``), so every exchange ends up to 3 s after its last reply.
:class:`PollingGrid` wraps the Grid that Flower hands the ServerApp: everything is delegated,
except that ``send_and_receive`` is ``push_messages`` followed by ``pull_messages``, first every
``interval`` seconds, then, while nothing arrives, 1.5 times longer each time up to
:data:`MAX_INTERVAL`, and back to ``interval`` when a reply arrives. The back-off matters: on a
loaded 2-core machine, pulling every 0.1 s through a long round starved the SuperLink, and the
ServerApp's own heartbeats went unanswered until Flower failed the run ("No heartbeat received
from the task").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

MAX_INTERVAL = 1.0  # seconds between pulls after a while without replies
BACKOFF = 1.5


class DelegatingGrid(Grid):
    """A Grid that passes every call on to ``inner``, the Grid that Flower passed to the ServerApp."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run: Run) -> None:
        """Delegated."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """Delegated."""
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """Delegated."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegated."""
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegated."""
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegated."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Delegated."""
        return self.inner.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """Flower's Grid, checking for replies every ``interval`` seconds.

    Parameters
    ----------
    inner : Grid
        The Grid that Flower passed to the ServerApp.
    interval : float
        Seconds between two ``pull_messages`` calls while replies are outstanding.
    """

    def __init__(self, inner: Grid, interval: float) -> None:
        super().__init__(inner)
        self.interval = interval

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull replies every ``interval`` s until all came or ``timeout`` s passed."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = self.interval
        while pending:
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(msg.metadata.reply_to_message_id for msg in arrived)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            wait = self.interval if arrived else min(max(wait * BACKOFF, self.interval), MAX_INTERVAL)
            time.sleep(wait)
        return replies


class PartitionGrid(DelegatingGrid):
    """The Grid as a strategy sees it while it samples: the online nodes in the order of the partitions
    they serve (``partitions``: node id to partition id), those not known yet last, by node id.

    Flower samples positions in this list (``random.sample``); seeded alike (server/sampling.py),
    the same positions are the same partitions, whatever the node ids of this deployment.
    """

    def __init__(self, inner: Grid, partitions: Mapping[int, int]) -> None:
        super().__init__(inner)
        self.partitions = partitions

    def get_node_ids(self) -> Iterable[int]:
        """The online node ids, known partitions first and in their order."""
        known = self.partitions
        return sorted(self.inner.get_node_ids(), key=lambda node: (node not in known, known.get(node, 0), node))

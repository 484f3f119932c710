"""ClientApp: local training and evaluation on this node's own IMDB shard.

Each message's work is :mod:`client.task`'s. With ``warm-model`` the node's warm worker does it
(client/worker.py: the model, tokenizer and shard stay loaded across messages); otherwise this
process loads them itself. With ``dp = client-fixed`` the server's train messages carry a clipping
norm, and Flower's ``fixedclipping_mod`` clips the update before it leaves (:func:`clipping_mod`). With
``secure-aggregation = secaggplus`` Flower's ``secaggplus_mod`` answers the protocol's train messages and
masks the update (client/secure.py).
Keys: fedimdb/protocol.py.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client import task, worker
from client.secure import secure_mod
from fedimdb.config import RunConfig
from fedimdb.protocol import METRICS, PARTITION_ID, config_of

app = ClientApp()
FRESH = task.Loads()


def _reply(kind: str, msg: Message, context: Context) -> Message:
    """The reply to ``msg``: the work of ``kind`` done here, or by the node's warm worker."""
    if RunConfig.from_mapping(context.run_config).warm_model:
        content = worker.call(kind, msg.content, context)
    else:
        content = task.WORK[kind](msg.content, context, FRESH)
    return Message(content=content, reply_to=msg)


def clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` for a train message that carries a clipping norm (``dp = client-fixed``:
    Flower's client-side DP wrapper puts it in the config); other train messages pass as they are."""
    if KEY_CLIPPING_NORM in config_of(msg.content):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[secure_mod, clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the global model on the local train split; reply with weights and metrics."""
    return _reply(task.TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local validation split."""
    return _reply(task.EVALUATE, msg, context)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """The partition this node serves: the server samples partitions, not node ids (server/sampling.py)."""
    return Message(
        content=RecordDict({METRICS: MetricRecord({PARTITION_ID: task.partition_id(context)})}), reply_to=msg
    )

"""SecAgg+ on the client: Flower's ``secaggplus_mod`` around the train handler, in the legacy shape it expects.

With ``secure-aggregation = secaggplus`` a round's training is Flower's SecAggPlusWorkflow (server/secure.py):
four train messages, each carrying the protocol's configs. ``secaggplus_mod`` answers the key exchanges
itself; in the third stage it hands the global model on as a legacy ``FitIns``, then quantises, masks and
sends what comes back as a legacy ``FitRes``. :func:`secure_mod` puts fedimdb's handler behind it: the
``FitIns`` becomes a fedimdb train message (tensor names from :data:`~fedimdb.protocol.TENSOR_NAMES`), and
the reply's weights become the update (weights less the global model received), weighted by the example count.
The server learns the example-weighted sum of the updates, never one client's.
"""

from __future__ import annotations

import json
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedimdb.protocol import ARRAYS, CONFIG, NUM_EXAMPLES, TENSOR_NAMES, arrays_of, metrics_of


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the train messages of a securely aggregated round (they carry its configs);
    other train messages pass as they are."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda legacy, ctx: _update_reply(legacy, ctx, call_next))


def _update_reply(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train as for any round, on the legacy ``FitIns`` of ``msg``; reply with the update as a legacy ``FitRes``."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names: list[str] = json.loads(str(fitins.config[TENSOR_NAMES]))
    received = parameters_to_ndarrays(fitins.parameters)
    config = {k: v for k, v in fitins.config.items() if k != TENSOR_NAMES}
    arrays = ArrayRecord({name: Array(a) for name, a in zip(names, received, strict=True)})
    msg.content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(config)})  # type: ignore[arg-type]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained, metrics = arrays_of(reply.content), metrics_of(reply.content)
    update = [trained[name].numpy().astype(np.float32) - base for name, base in zip(names, received, strict=True)]
    examples = int(cast("int | float", metrics[NUM_EXAMPLES]))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), examples, dict(metrics))  # type: ignore[arg-type]
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=True)
    return reply

"""One batch through the handler: TorchServe and OIP v2 requests, answers in batch order.

A handler error fails only the request that caused it: the batch is retried one request at
a time (unless chunks of a streamed answer already went out).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from modelserve.ipc import STREAM_NEXT
from modelserve.worker import envelopes, streaming
from modelserve.worker.codec import StreamFound, decode_request, encode_response, error_response
from modelserve.worker.context import Context
from modelserve.worker.loader import Entry
from modelserve.worker.v2 import V2Runner

log = logging.getLogger("modelserve.worker")


class BatchRunner:
    """Runs batches through one copy of the handler, with its own context and streamer (one
    per batch lane)."""

    def __init__(self, entry: Entry, context: Context, streamer: streaming.Streamer,
                 envelope: str | None = None) -> None:
        # TorchServe's service_envelope wraps the handler's entry (modelserve.worker.envelopes)
        self.entry = envelopes.wrap(entry, envelope)
        self.context = context
        self.v2 = V2Runner(entry, streamer, ts_entry=self.entry)
        self.streamer = streamer

    def run_batch(self, reqs: list[list[Any]]) -> list[list[Any]]:
        """Run one batch; on a handler error, retry each request alone so one bad request
        cannot fail the others (unless chunks of a streamed answer already went out)."""
        try:
            return self._call(reqs)
        except streaming.StreamCancelled:
            return self.streamer.placeholders(len(reqs))
        except Exception as exc:  # the handler's own failure
            if self.streamer.active:
                log.warning("handler failed mid-stream: %s",
                            "".join(traceback.format_exception_only(exc)))
                return self.streamer.fail(exc, len(reqs))
            if len(reqs) == 1 or any(req[2] is None for req in reqs):
                # a continuous batch's step (requests without data) is not run again request by
                # request: that would step the others' state twice
                log.warning("handler failed: %s", "".join(traceback.format_exception_only(exc)))
                return [error_response(exc)] * len(reqs)
        out: list[list[Any]] = []
        for i, req in enumerate(reqs):
            self.streamer.offset, self.streamer.active = i, False
            try:
                out.extend(self._call([req]))
            except streaming.StreamCancelled:
                out.extend(self.streamer.placeholders(1))
            except Exception as exc:
                if self.streamer.active:
                    out.extend(self.streamer.fail(exc, 1))
                    continue
                log.warning("handler failed: %s", "".join(traceback.format_exception_only(exc)))
                out.append(error_response(exc))
        return out

    def _call(self, reqs: list[list[Any]]) -> list[list[Any]]:
        """TorchServe requests and OIP v2 requests (a fifth item) of one batch each go to
        the handler as their own batch; answers keep the batch's order."""
        v2 = [len(r) > 4 for r in reqs]
        if not any(v2):
            return self._call_ts(reqs)
        if all(v2):
            return self._call_v2(reqs)
        # each part streams at its requests' own positions; "chunks went out" (no retry-alone
        # of the batch) holds for the batch when it holds for either part
        streamer, streamed = self.streamer, self.streamer.active
        try:
            with streamer.subset([i for i, is_v2 in enumerate(v2) if not is_v2]):
                ts_out = iter(self._call_ts([r for r, is_v2 in zip(reqs, v2) if not is_v2]))
            streamed, streamer.active = streamed or streamer.active, False
            with streamer.subset([i for i, is_v2 in enumerate(v2) if is_v2]):
                v2_out = iter(self._call_v2([r for r, is_v2 in zip(reqs, v2) if is_v2]))
        finally:
            streamer.active = streamed or streamer.active
        return [next(v2_out) if is_v2 else next(ts_out) for is_v2 in v2]

    def _call_v2(self, reqs: list[list[Any]]) -> list[list[Any]]:
        self.context.begin_batch([r[0] for r in reqs], [r[3] for r in reqs])
        return self.v2.run([r[4] for r in reqs], self.context)

    def _call_ts(self, reqs: list[list[Any]]) -> list[list[Any]]:
        ctx = self.context
        ctx.begin_batch([r[0] for r in reqs], [r[3] for r in reqs])
        # no body: a continuous batch's request after its first step (its state is the
        # handler's), which TorchServe's backend hands over as an empty input
        data = [{} if body is None else decode_request(content_type, body)
                for _, content_type, body, _ in reqs]
        results = self.entry(data, ctx)
        if not isinstance(results, list):
            if streaming.is_stream(results):
                return self.streamer.run_steps(results, len(reqs), ctx)
            raise TypeError(f"handler returned {type(results).__name__}, expected a list")
        if len(results) != len(reqs):
            raise ValueError(
                f"handler returned {len(results)} results for a batch of {len(reqs)} requests"
            )
        if ctx.stopping_criteria:
            _stream_next(results, ctx)
        if self.streamer.active:  # it sent intermediate responses: these are the last chunks
            return self.streamer.finish(results, ctx)
        try:
            return [encode_response(result, idx, ctx) for idx, result in enumerate(results)]
        except StreamFound:  # some results are generators
            return self.streamer.run_list(results, ctx)


def _stream_next(results: list[Any], ctx: Context) -> None:
    """TorchServe's ``context.stopping_criteria``: a callable per request, given its result;
    False (more to come) or True sets its ``ts_stream_next`` answer header, None leaves it.
    Continuous batching keeps a request with ``ts_stream_next: true`` in the batch."""
    criteria = ctx.stopping_criteria
    for idx, result in enumerate(results):
        stop = criteria[idx](result) if idx < len(criteria) else None
        if stop is not None:
            ctx.set_response_header(idx, STREAM_NEXT, "false" if stop else "true")

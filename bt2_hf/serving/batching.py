"""Micro-batching of queries: concurrent queries share one pass of the work that they would each repeat.

Text queries (:class:`TextBatcher`): a text query's cost is its model's forward pass (milliseconds to tens of
milliseconds on a CPU, most of it the same whether it embeds one text or eight). Served one at a time, concurrent text
queries queue behind each other; here each model has one worker thread that embeds every text waiting for it in one
pass. The texts that arrive while a pass runs wait for the next one, so a batch forms by itself under load; on top of
that, once the last pass held more than one text (concurrent queries are arriving), the worker waits up to ``window``
seconds after the first text for more to join. A lone client never waits for the window.

The texts of a batch are padded to the longest one; the attention mask keeps the padding out of each embedding, so
an answer is the one-at-a-time answer up to float rounding.

Vector queries (:class:`VectorBatcher`): searched on the event loop, in the order they arrived. Every vector query
parsed in one turn of the loop joins one batch, searched at the end of that turn by one call
(:meth:`~bt2_hf.serving.service.GalleryService.search_vectors`). It never waits for a window: under load the queries
that arrived during a search form the next batch by themselves; a lone client's query is a batch of one. Searched one
by one, each request on arrival, the queries that arrived while the loop was busy were answered in the order the
loop happened to read their sockets, and under load some waited for two rounds of the others: at 8 clients the p90
was twice the p50.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)


class _Waiting:
    __slots__ = ("text", "arrived", "done", "vector", "error")

    def __init__(self, text: str):
        self.text, self.arrived, self.done = text, time.monotonic(), threading.Event()
        self.vector, self.error = None, None


class TextBatcher:
    """Embeds the text queries of one model in micro-batches, on one worker thread (started at the first query).

    Args:
        model (`BT2Model`): a text model (anything with ``encode(texts=..., batch_size=...)`` returning a tensor).
        window (`float`, *optional*, defaults to `0.002`): seconds a batch waits for more texts after its first one,
            once concurrent text queries have been seen (see the module docstring); 0 never waits.
        max_batch (`int`, *optional*, defaults to `64`): texts per forward pass at most.

    >>> batcher = TextBatcher(text_model)  # doctest: +SKIP
    >>> batcher.encode("a red shoe").shape  # called from many request threads at once  # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, model, window: float = 0.002, max_batch: int = 64):
        if window < 0 or max_batch < 1:
            raise ValueError(f"window must be ≥ 0 and max_batch ≥ 1, got {window!r} and {max_batch!r}.")
        self.model, self.window, self.max_batch = model, float(window), int(max_batch)
        self._condition = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._last_batch = 0
        self.batch_sizes = collections.deque(maxlen=10_000)  # the last passes' sizes, for the benchmark and the tests

    def encode(self, text: str) -> np.ndarray:
        """The model's embedding of ``text``, shape ``(1, width)``; blocks until its batch has run."""
        waiting = _Waiting(text)
        with self._condition:
            if self._stopped:
                raise RuntimeError("This TextBatcher was stopped.")
            self._waiting.append(waiting)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="text-batcher", daemon=True)
                self._thread.start()
            self._condition.notify()
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.vector

    def stop(self) -> None:
        """Stop the worker after the batch it is running; texts still waiting are refused."""
        with self._condition:
            self._stopped = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()

    def _next_batch(self) -> list[_Waiting]:
        with self._condition:
            while not self._waiting and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return []
            if self.window > 0 and self._last_batch > 1:
                deadline = self._waiting[0].arrived + self.window
                while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._condition.wait(left)
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            self._last_batch = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                break
            self.batch_sizes.append(len(batch))
            try:
                vectors = self._embed([waiting.text for waiting in batch])
                for waiting, vector in zip(batch, vectors):
                    waiting.vector = vector[None, :]
            except Exception:  # one text the model cannot take must not fail the others: each alone, for its error
                for waiting in batch:
                    try:
                        waiting.vector = self._embed([waiting.text])
                    except Exception as error:
                        waiting.error = error
            finally:
                for waiting in batch:
                    waiting.done.set()
        with self._condition:
            for waiting in self._waiting:
                waiting.error = RuntimeError("The service is stopping: the text query was not embedded.")
                waiting.done.set()
            self._waiting = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts=texts, batch_size=len(texts)).numpy()


class VectorBatcher:
    """Searches the vector queries parsed in one turn of the event loop in one call, in arrival order.

    Args:
        search_many (`Callable[[list[dict]], list]`): answers a list of queries with one answer or exception each
            (:meth:`~bt2_hf.serving.service.GalleryService.search_vectors`).
        max_batch (`int`, *optional*, defaults to `256`): queries per call at most (the rest go in the next one).

    Use from coroutines on one event loop: ``answer = await batcher.search({"vector": [...], "k": 10})``.
    """

    def __init__(self, search_many, max_batch: int = 256):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch!r}.")
        self.search_many, self.max_batch = search_many, int(max_batch)
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._scheduled = False
        self.batch_sizes = collections.deque(maxlen=10_000)  # the last calls' sizes, for the benchmark and the tests

    async def search(self, query: dict):
        """The answer to ``query`` (raises the exception that refuses it)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((query, future))
        if not self._scheduled:
            # call_soon runs after every callback already ready in this turn: the other requests parsed with this
            # one are handled first, and join the batch.
            self._scheduled = True
            loop.call_soon(self._run, loop)
        return await future

    def _run(self, loop) -> None:
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        self._scheduled = bool(self._waiting)
        if self._scheduled:
            loop.call_soon(self._run, loop)
        batch = [(query, future) for query, future in batch if not future.done()]  # a request cancelled meanwhile
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        try:
            answers = self.search_many([query for query, _ in batch])
        except Exception as error:  # a bug in the batch's search: every request of it fails with it (a 500)
            answers = [error] * len(batch)
        for (_, future), answer in zip(batch, answers):
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

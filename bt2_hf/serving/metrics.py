"""Prometheus text exposition (format 0.0.4), written by hand: request counts, latency histograms, gauges."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(pairs: dict) -> str:
    if not pairs:
        return ""
    escaped = (f'{key}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for key, value in sorted(pairs.items()))  # fmt: skip
    return "{" + ",".join(escaped).replace("\n", "\\n") + "}"


class Metrics:
    """Counters and histograms of the HTTP requests; gauges are passed in at render time (read from the service)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = defaultdict(int)
        self._buckets: dict[tuple, list[int]] = {}
        self._sums: dict[tuple, float] = defaultdict(float)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            key = (route, method)
            # each request counted in its own bucket (the first bound ≥ its time; +Inf last), summed at render time
            counts = self._buckets.setdefault(key, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def render(self, gauges: list[tuple[str, str, dict, float]] = ()) -> str:
        """The exposition text; ``gauges`` are ``(name, help, labels, value)``."""
        lines = ["# HELP bt2_http_requests_total HTTP requests by route, method and status.",
                 "# TYPE bt2_http_requests_total counter"]  # fmt: skip
        with self._lock:
            for (route, method, status), count in sorted(self._requests.items()):
                lines.append(f"bt2_http_requests_total{_labels({'route': route, 'method': method, 'status': status})} "
                             f"{count}")  # fmt: skip
            lines += ["# HELP bt2_http_request_duration_seconds Time to answer a request.",
                      "# TYPE bt2_http_request_duration_seconds histogram"]  # fmt: skip
            for (route, method), own in sorted(self._buckets.items()):
                base = {"route": route, "method": method}
                counts = list(itertools.accumulate(own))  # cumulative, as Prometheus buckets are
                for bound, count in zip(LATENCY_BUCKETS, counts):
                    lines.append(f"bt2_http_request_duration_seconds_bucket{_labels(dict(base, le=repr(bound)))} "
                                 f"{count}")  # fmt: skip
                lines.append(f"bt2_http_request_duration_seconds_bucket{_labels(dict(base, le='+Inf'))} {counts[-1]}")
                lines.append(f"bt2_http_request_duration_seconds_sum{_labels(base)} {self._sums[(route, method)]:.6f}")
                lines.append(f"bt2_http_request_duration_seconds_count{_labels(base)} {counts[-1]}")
        seen = set()
        for name, help_text, labels, value in sorted(gauges, key=lambda gauge: gauge[0]):  # one block per family
            if name not in seen:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                seen.add(name)
            lines.append(f"{name}{_labels(labels)} {float(value):.6g}")
        return "\n".join(lines) + "\n"

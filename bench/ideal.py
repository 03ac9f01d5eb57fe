"""The shortest possible makespan of a bulk copy under the service's two limits on copies.

HealthImaging limits the CopyImageSet request rate (0.25/s by default, burst 1) and the copies in
progress per data store (100 by default); AWS can raise both
(https://docs.aws.amazon.com/healthimaging/latest/devguide/endpoints-quotas.html). With N copies each
lasting D seconds, at rate r and at most C in progress, copy i can start no earlier than its turn in
the rate, nor before copy i - C has ended:

    start(1..C) = (i - 1) / r        start(i) = max((i - 1) / r, start(i - C) + D)

and the makespan (first copy accepted to last copy done) is start(N) + D. When r x D is well below C
that is (N - 1) / r + D; when it is above C, about N x D / C. The benchmarks print their makespan
over this.
"""

from __future__ import annotations


def ideal_makespan(rows: int, rate: float, copy_seconds: float, in_progress: int) -> float:
    """start(N) + D of the recurrence above, for ``rows`` copies of ``copy_seconds`` at ``rate`` per second."""
    if rows <= 0:
        return 0.0
    if rate <= 0 or in_progress <= 0:
        raise ValueError(f"rate ({rate}) and in_progress ({in_progress}) must be positive")
    starts: list[float] = []
    for i in range(rows):
        start = i / rate
        if i >= in_progress:
            start = max(start, starts[i - in_progress] + copy_seconds)
        starts.append(start)
    return starts[-1] + copy_seconds

"""ReadAhead: which chunks of an open version to fetch before they are asked for.

Pure: reads in (the chunks each one covers), chunks out (those to start fetching now). A read
that carries on from where the stream has got to is sequential: the window ahead of it doubles,
up to its limit, so a reader from the start has the next chunks on their way after a few reads.
The kernel reads ahead too, with a dozen reads of one stream in flight on several threads, so
they arrive out of order: a read up to twice `limit` chunks behind or ahead of where the stream
has got to still belongs to it (one behind it moves nothing). Any other read is random: the
window closes and nothing is fetched beyond what was asked for, until reads carry on from there.
"""

from __future__ import annotations


class ReadAhead:
    def __init__(self, limit: int, count: int) -> None:
        self.limit = limit  # chunks ahead at most
        self.count = count  # chunks in the version
        self.window = 0  # chunks ahead now (0: random reads)
        self.pos = -1  # the furthest chunk the stream has read
        self.ahead = -1  # the furthest chunk fetched ahead of it

    def read(self, first: int, last: int) -> range:
        """A read of chunks first..last: the chunks to start fetching ahead of it."""
        if abs(first - (self.pos + 1)) > 2 * self.limit:
            self.window, self.pos, self.ahead = 0, last, last
            return range(0)
        if last > self.pos:  # new ground: the stream goes on, and the window grows with it
            self.window = min(self.limit, max(2, 2 * self.window))
            self.pos = last
        end = min(self.count - 1, self.pos + self.window)
        start = max(self.ahead, self.pos) + 1
        self.ahead = max(self.ahead, end)
        return range(start, end + 1)

"""Experiments over methods and metrics: the paper's Table 1 (``table1``: the run, ``rows``:
its rows, ``report``: the table and its figures) and the locality analyses (``locality``)."""

"""Analysis of stored runs: efficiency, repeated-measures statistics, training dynamics, scaling laws.

- per-run and per-condition building blocks: :mod:`.efficiency`, :mod:`.stats`, :mod:`.comparisons`,
  :mod:`.returns`, :mod:`.dynamics`, :mod:`.tidy` and :mod:`.table_files` (tables in), :mod:`.render`;
- :mod:`.study`: the analysis of one study (``wattscale analyze``);
- :mod:`.laws`: scaling-law fits, intervals, checks, optima and energy plans (``wattscale fit``).

Import the modules themselves: the packages import nothing, so each command loads only what it needs.
"""

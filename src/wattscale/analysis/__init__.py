"""Analysis of stored runs: efficiency, repeated-measures statistics, training dynamics, scaling laws."""

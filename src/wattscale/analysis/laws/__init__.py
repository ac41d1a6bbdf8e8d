"""Scaling laws: fit a law form to (N, D, M, K, loss) points, with intervals, checks, optima and energy plans.

One module per concern (import them directly; this package imports nothing, so reading the law data
does not load torch):

- :mod:`.forms`: the law forms (Chinchilla, Kaplan, three-term), their closed-form optima, ``register_form``;
- :mod:`.data`: the input table (``LawData``) from a CSV file, a DataFrame or the store;
- :mod:`.optimiser`: the batched, box-constrained L-BFGS in torch;
- :mod:`.fit`: the Huber fit from a grid of starts (``fit_law``) and the AIC comparison of forms;
- :mod:`.bootstrap`: intervals by resampling runs (``bootstrap_law``);
- :mod:`.checks`: leave-the-largest-out validation and identifiability warnings;
- :mod:`.optima`: N*, D*, L*, C(L) and M*(D) with their intervals;
- :mod:`.plans`: energy-optimal plans from the measured joules per token;
- :mod:`.plot`: the figure of a fitted law;
- :mod:`.analysis`: everything above in one call (``analyze_law``).
"""

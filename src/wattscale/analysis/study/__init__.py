"""The analysis of a study (the runs of one experiment): efficiency, statistics, returns on tokens, dynamics.

One module per concern (import them directly; this package imports nothing, so the report can read
study data without the analysis extra):

- :mod:`.data`: what an analysis reads (``StudyData``) from the store or an exported runs table;
- :mod:`.analysis`: ``analyze_study``, the whole analysis of one study;
- :mod:`.dynamics`: training dynamics per condition and their RM-ANOVA across intervals;
- :mod:`.long_table`: repeated-measures statistics of any long-format table (``wattscale analyze --csv``).
"""

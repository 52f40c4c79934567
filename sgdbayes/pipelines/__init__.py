"""Study pipelines: one module per study, each with ``STAGES`` and ``write_report``
(see :mod:`sgdbayes.runner.orchestrate`)."""

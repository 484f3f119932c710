"""Sweeps: the grid of settings x repeats as one study, each cell an experiment of its own::

    results/<sweep-id>/
      sweep.json            the axes, the cells, the status: record.py
      <cell>/               an experiment (experiment.json, repeat-k/, summary.*): fedimdb/experiment.py
      sweep.csv             per cell: final accuracy, time to accuracy, weight bytes (mean, 95 % CI)
      sweep-tests.csv       paired tests between cells; sweep.md: both as tables: files.py, compare.py
      sweep-accuracy.png    accuracy per round per cell, with CI bands

grid.py: axes and cells; compare.py: the statistics (pure); files.py: the files; loop.py: the cells'
experiments one after another; command.py: ``orchestrate.py --sweep``.
"""

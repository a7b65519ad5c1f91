"""dataloupe: data-centric image classification.

Versioned dataset tables (Lance), a training engine, per-sample analysis and an
automated train -> analyse -> fix the data -> retrain loop.
"""

__version__ = "0.1.0"

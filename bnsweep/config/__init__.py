"""What a user may ask for, checked before any work: the command line of train.py and sweep.py
(``cli``; ``--help``: ``help``), the checks of a composed config that refuse a bad value in one line naming the key and
the value (``checks``; of several devices and bn.sync: ``parallel``; what they share: ``values``), which keys change what a run computes (``keys``) and the interpolations the
configs may use (``resolvers``).

Light on purpose (omegaconf, Hydra's parser; torch only to ask for a GPU), so ``--help`` and a
refusal come before the heavy imports. Imports the shared leaves, ``nn.architectures`` and
``nn.estimators``' names, ``data.catalog`` and ``data.sources``; never run, sweep or report.
"""

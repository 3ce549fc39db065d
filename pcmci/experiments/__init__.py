"""Studies built on the library, each a command: ``demo`` (the confounded synthetic benchmark end to end),
``ablate`` (stage variants over seeds) and ``diagnose`` (static-bias probes, flip rate, stage heatmaps).

They use ``pcmci.data``, ``pcmci.model``, ``pcmci.engine`` and ``pcmci.profiling``; nothing in those imports them.
"""

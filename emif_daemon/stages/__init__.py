"""One module per stage: generate, upscale, segment (segment_model holds the torch side).

Stages import only the core (``stage``, ``layout``, ``files``, ``sdapi``, …), never the
daemon's wiring; `daemon.build_stages` makes them.
"""

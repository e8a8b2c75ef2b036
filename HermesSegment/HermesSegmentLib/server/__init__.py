"""``hermes-segment serve``: segmentation as a service for Slicer panels and CLIs on other computers.

    protocol.py   what server and clients agree on (standard library only)
    settings.py   ServerSettings: address, token, models, devices, limits
    uploads.py    an upload onto disk, checked (format, bytes, voxels) before a job is queued
    engine.py     models loaded once per device; job options -> segment_image -> result files
    jobs.py       the fair queue, the workers, progress, cancel, expiry of results
    app.py        the FastAPI routes, the token check, one-line JSON errors
    client.py     the client (requests only): ``segment --server``, the console API, the Slicer panel

This file imports nothing, so that ``server.client`` works where FastAPI and torch are not installed.
"""

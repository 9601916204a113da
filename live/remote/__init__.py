"""Talking to an mra-serve worker (the networks on another machine): :mod:`.protocol` (the wire
format, strictly decoded; mra-serve in :mod:`live.serve` speaks it too) and :mod:`.client`
(:class:`~live.remote.client.RemoteEngine`, the Engine that ``--worker`` builds)."""

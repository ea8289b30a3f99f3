"""The module library (pure): named adapters + routing gates that a run keeps beside its trunk.

* :mod:`potluck.modules.record` -- the signed module record, its decoding and validation.
* :mod:`potluck.modules.library` -- which records a node keeps: name ownership, versions.
* :mod:`potluck.modules.announce` -- "I hold module X" announcements, name claims, who owns a name.
* :mod:`potluck.modules.routing` -- the per-token top-k routing rule and the merged alternative.

See docs/modules.md.
"""

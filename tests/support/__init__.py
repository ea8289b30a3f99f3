"""What the tests share: one copy of each helper.

* :mod:`tests.support.cli`: run the ``potluck`` command line in a subprocess, as a user would.
* :mod:`tests.support.swarm`: the connected local swarm behind the multi-process tests' ``swarm`` fixtures.
* :mod:`tests.support.attacks`: attackers that speak hivemind's DHT or serve bad bytes.
* :mod:`tests.support.spawned`: run a function in a fresh interpreter (for attackers with a DHT).
* :mod:`tests.support.netns`: hosts in network namespaces, for tests that cut cables.

A run on disk is :func:`potluck.runfiles.write_run`; nodes, publishing and round timing are
:mod:`potluck.localswarm` (the demo and the benches use them too).
"""

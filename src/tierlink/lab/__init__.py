"""NAT lab: namespaces, NAT presets verified by probes, a connectivity matrix and its reports.

Needs root, ``ip``, ``nft``, ``turnserver`` (coturn) and ``dhtnode``. Modules:

* :mod:`tierlink.lab.netns` - one run's namespaces and processes, cleanup, ``cleanup_stale``;
* :mod:`tierlink.lab.nat` - preset definitions and their nftables rulesets;
* :mod:`tierlink.lab.services` - coturn, the DHT node (launcher command line) and the probe
  server;
* :mod:`tierlink.lab.topology` - :class:`~tierlink.lab.topology.Lab`, sites, probes;
* :mod:`tierlink.lab.probe` - the UDP probe programs run inside namespaces;
* :mod:`tierlink.lab.runner` - ``run_matrix`` and the expected outcome of each cell (path and,
  with the Node driver, the tier that delivers the cell's test message);
* :mod:`tierlink.lab.icepeer` / :mod:`tierlink.lab.peer` - peer processes (raw ICE / Node with
  one tiered ``node.send`` per attempt);
* :mod:`tierlink.lab.report` - ``matrix.json``, ``matrix.md``, ``matrix.png``;
* :mod:`tierlink.lab.command` - ``run_lab_cli`` and ``run_cleanup_stale``, behind
  ``tierlink lab`` (the one lab command line).

Nothing is imported here on purpose: probe and peer programs start with ``python -m`` inside
namespaces and should not pay for matplotlib or the runner.
"""

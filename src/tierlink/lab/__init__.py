"""NAT lab: namespaces, NAT presets verified by probes, a connectivity matrix and its reports.

Needs root, ``ip``, ``nft``, ``turnserver`` (coturn) and ``dhtnode``. Modules:

* :mod:`tierlink.lab.netns` - one run's namespaces and processes, cleanup, ``cleanup_stale``;
* :mod:`tierlink.lab.nat` - preset definitions and the classic presets' nftables rulesets;
* :mod:`tierlink.lab.worlds` / :mod:`tierlink.lab.firewalls` - the real-world presets (CGN,
  UDP-blocking firewall, short UDP timeouts, IPv6, path-MTU black hole), their rulesets and
  the probes that prove them;
* :mod:`tierlink.lab.services` - coturn (UDP/TCP/TLS, lab CA), the DHT node (launcher
  command line) and the probe server;
* :mod:`tierlink.lab.profiles` / :mod:`tierlink.lab.links` / :mod:`tierlink.lab.linkemu` -
  link profiles, emulated WAN links (TAP pair moved by a user-space delay process; loss and
  rate in the kernel) and the emulator process;
* :mod:`tierlink.lab.linkcheck` - the emulator's measured accuracy and capacity;
* :mod:`tierlink.lab.topology` / :mod:`tierlink.lab.site` / :mod:`tierlink.lab.site_probes` -
  :class:`~tierlink.lab.topology.Lab`, its sites and their probes;
* :mod:`tierlink.lab.probe` / :mod:`tierlink.lab.worldprobe` / :mod:`tierlink.lab.linkprobe` -
  the probe programs run inside namespaces;
* :mod:`tierlink.lab.expectations` - the expected outcome of each cell (path and, with the
  Node driver, the tier that delivers the cell's test message) and the pair lists;
* :mod:`tierlink.lab.runner` - ``run_matrix``;
* :mod:`tierlink.lab.icepeer` / :mod:`tierlink.lab.peer` - peer processes (raw ICE / Node with
  one tiered ``node.send`` per attempt);
* :mod:`tierlink.lab.faults` / :mod:`tierlink.lab.faultrun` / :mod:`tierlink.lab.faultpeer` /
  :mod:`tierlink.lab.faultstream` - faults injected mid-stream (address change, NAT rebinding
  and reboot, link flaps, receiver SIGKILL, DHT and TURN restarts, clock skew), the fault
  matrix runner, its peers and the sender's message streams; :mod:`tierlink.lab.faultmsg` /
  :mod:`tierlink.lab.faultreport` - the fault messages, the receiver's log, the reports;
* :mod:`tierlink.lab.report` - ``matrix.json``, ``matrix.md`` (with the fault matrix),
  ``matrix.png``;
* :mod:`tierlink.lab.command` - ``run_lab_cli`` and ``run_cleanup_stale``, behind
  ``tierlink lab`` (the one lab command line).

Nothing is imported here on purpose: probe and peer programs start with ``python -m`` inside
namespaces and should not pay for matplotlib or the runner.
"""

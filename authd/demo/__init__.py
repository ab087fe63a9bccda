"""``authd demo``: the gateway-plus-mesh topology of deploy/local on one machine, started,
walked through and stopped. A process mode above the daemon: it runs ``authd run``, Envoy
and the demo services as processes, and drives authd only through its CLI."""

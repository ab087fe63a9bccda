"""authd: a SPIFFE certificate authority and Envoy ext_authz decision point in one daemon."""

import os

# Set before grpc is first imported (grpc core reads them once). Measured here with h2load
# against the ext_authz Check service: grpcio's EventEngine listener costs ~10% more CPU per
# call than the older iomgr path, for ~10-18% fewer checks per second. The user's own
# settings win. GRPC_VERBOSITY=ERROR keeps grpc core's informational lines off the CLI's
# one-line errors.
os.environ.setdefault(
    "GRPC_EXPERIMENTS", "-event_engine_listener,-event_engine_for_all_other_endpoints"
)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

"""Policy engines behind one protocol (``base.Policy``), and their hot reload.

- ``rules``: declarative YAML rule sets (the default engine);
- ``rego``: Rego run in-process by regopy, with OPA-Envoy's input and results;
- ``opa``: an OPA server asked over its REST Data API;
- ``result``: the OPA-Envoy result mapping the last two share;
- ``reload``: ``PolicyHolder``, which swaps in a rebuilt policy when its files change;
- ``opa_bundle``, ``opa_bundle_signing``: reading and verifying OPA bundles (``.tar.gz``);
- ``bundle_download``, ``bundle_policy``, ``bundle_source``: bundles from disk or a bundle
  server (ETag polling), activated only once read, verified and compiled in full.

The engines are imported from their modules, so that choosing one never loads the others'
dependencies (aiohttp for ``opa``, the rego-cpp library for ``rego``).
"""

from authd.policy.base import InputDocument, Policy, PolicyError

__all__ = ["InputDocument", "Policy", "PolicyError"]

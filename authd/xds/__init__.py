"""The native fast path: the rules compiled into Envoy's RBAC filter and served over ECDS.

``rbac_compiler`` (pure) turns a rule set into an RBAC matcher tree and says, rule by rule,
what runs natively and what is left to ext_authz; ``rbac_validation`` (pure) refuses what
would abort Envoy; ``publisher`` keeps the config in force, recompiled when the policy or
the revocations change; ``ecds`` is the ExtensionConfigDiscoveryService that pushes it.
"""

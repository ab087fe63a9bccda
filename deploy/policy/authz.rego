# authd example Rego policy, in OPA-Envoy's shape: an existing OPA-Envoy policy runs unchanged.
#
# Configure with policy_engine = "rego", rego_files = ["authz.rego"] and the entrypoint
# "envoy/authz/allow" (the default). authd compiles it once and reloads it when it changes.
#
# input: the OPA-Envoy input (input.attributes.request.http.{method,path,headers,...},
# input.parsed_path, input.parsed_query, input.parsed_body, input.truncated_body, input.version)
# plus input.authd, the identities authd has already verified:
#   input.authd.caller        the calling workload's SPIFFE ID (JWT-SVID subject, else mTLS peer)
#   input.authd.peer, .workload, .peer_serial, .api_key, .authenticated
#   input.authd.user          {issuer, subject, claims} of a verified end-user token, or null
#
# Verify nothing here: authd has checked signatures, expiry, audiences and revocation. Some OPA
# builtins are missing in the embedded engine (net.cidr_contains, http.send) and
# time.parse_rfc3339_ns rejects a "Z" zone; a failing builtin makes a rule undefined, i.e. deny.
#
# Result: a boolean, or an object {"allowed": bool, "headers": {...}, "http_status": 4xx,
# "body": "...", "response_headers_to_add": {...}, "request_headers_to_remove": [...],
# "query_parameters_to_set": {...}, "query_parameters_to_remove": [...],
# "dynamic_metadata": {...}}. Use the object form with the entrypoint "envoy/authz/response".

package envoy.authz

import rego.v1

default allow := false

# Anyone may read public content.
allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

# Mesh: workloads of the prod namespace may call the orders API.
allow if {
	startswith(input.authd.caller, "spiffe://example.org/ns/prod/")
	input.parsed_path[0] == "orders"
}

# End users whose (verified) token grants orders:read may read orders.
allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "orders"
	"orders:read" in split(input.authd.user.claims.scope, " ")
}

# The object form: tell the upstream who called, and explain a deny to the client.
default response := {"allowed": false, "http_status": 403, "body": "denied by policy"}

response := {
	"allowed": true,
	"headers": caller_headers,
	"request_headers_to_remove": ["authorization"],
} if allow

# input.authd.caller is null when no workload identity was verified (an end user, say).
default caller_headers := {}

caller_headers := {"x-authd-caller": input.authd.caller} if is_string(input.authd.caller)

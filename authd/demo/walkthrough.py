"""``authd demo``: the local topology walked through step by step, saying what happened and
why, and failing (non-zero exit) when a step does not behave as it should.

Each step is a function of the running :class:`Topology` that prints its story and returns
whether it behaved: the status the client got, the hop that decided (the Envoy whose access
log carries the decision id) and the reason in authd's decision log, as
tests/envoy/test_local_topology.py asserts them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authd.demo.calls import (
    AccessLogs,
    DecisionLog,
    Reply,
    arrived,
    call,
    certificate_thumbprint,
    describe,
    hop,
    mtls,
    user_token,
)
from authd.demo.processes import DemoError
from authd.demo.topology import SERVICES, Topology, spiffe_id

Say = Callable[[str], None]


PATH = "/orders/42"
USER_SCOPE = "orders:read pay"
DEVICE = "device/alice"  # the SPIFFE ID path of alice's client certificate (step 5)


class Walkthrough:
    def __init__(self, topology: Topology, say: Say = print) -> None:
        self.topology = topology
        self.layout = topology.layout
        self.ports = topology.layout.ports
        self.log = DecisionLog(topology.layout.decision_log)
        self.access = AccessLogs({s: topology.layout.access_log(s) for s in SERVICES})
        self.say = say
        self.failures: list[str] = []

    # --- output ----------------------------------------------------------------------------

    def step(self, number: int, title: str) -> None:
        self.say(f"\n{number}. {title}")

    def show(self, text: str) -> None:
        self.say(f"   {text}")

    def verdict(self, ok: bool, expected: str) -> bool:
        if ok:
            self.show(f"ok: {expected}")
        else:
            self.show(f"FAILED: expected {expected}")
            self.failures.append(expected)
        return ok

    def decisions(self, decisions: list[dict[str, Any]]) -> None:
        self.access.annotate(decisions)
        self.show("decision log (one line per hop that asked authd):")
        for decision in decisions:
            self.show(f"  {describe(decision)}")

    def reply(self, reply: Reply) -> None:
        doc = reply.json()
        reason = doc.get("error") if isinstance(doc, dict) else None
        self.show(f"-> {reply.status}" + (f" {reason}" if reason else ""))

    def token_cmd(self, query: str) -> None:
        self.show(
            f"$ TOKEN=$(curl -s -X POST 'http://127.0.0.1:{self.ports.idp}/token?{query}'"
            " | jq -r .access_token)"
        )

    def through(self, mark: int, count: int) -> list[dict[str, Any]]:
        """The ``count`` decisions of the first transaction after ``mark``, in order."""
        decisions = self.log.wait(mark, count)
        txn = decisions[0].get("txn")
        return [d for d in decisions if d.get("txn") == txn] if txn else decisions[:1]

    def svid(self, name: str) -> Path:
        out = self.layout.state_dir / "certs" / name.replace("/", "-")
        if not (out / "svid.pem").exists():
            self.topology.cli("x509", "mint", "--spiffe-id", spiffe_id(name), "--out", str(out))
        return out

    # --- the steps -------------------------------------------------------------------------

    def run(self) -> bool:
        self.say("\nThe topology: client -> gateway -> orders -> payments, one policy for all")
        self.say(f"(policy: {self.layout.deploy_dir / 'policy.yaml'})")
        self.anonymous_refused()
        token, txn = self.user_allowed()
        self.trace_by_txn(txn)
        self.bypass_refused()
        self.bound_token_replayed()
        self.widened_scope_refused()
        self.revoked_refused(token)
        self.say("")
        if self.failures:
            self.say(f"authd demo: {len(self.failures)} step(s) did not behave as expected")
            return False
        self.say("authd demo: every step behaved as expected")
        return True

    def anonymous_refused(self) -> bool:
        self.step(1, "An anonymous call at the front door is refused")
        self.show(f"$ curl http://127.0.0.1:{self.ports.front_door}{PATH}")
        mark = self.log.mark()
        reply = call(self.ports.front_door, PATH)
        self.reply(reply)
        decisions = self.log.wait(mark, 1)
        self.decisions(decisions)
        first = decisions[0]
        self.show("why: the gateway's rules want an end user's JWT (local IdP) or an API key")
        return self.verdict(
            reply.status == 401
            and hop(first) == "gateway"
            and first["reason"] == "missing_credentials",
            "401 at the gateway, reason missing_credentials",
        )

    def user_allowed(self) -> tuple[str, str]:
        self.step(2, "A user's call goes through gateway -> orders -> payments, one transaction")
        token = user_token(self.ports.idp, "alice", scope=USER_SCOPE)
        self.token_cmd("sub=alice&scope=orders:read+pay")
        self.show(
            f'$ curl -H "authorization: Bearer $TOKEN" http://127.0.0.1:{self.ports.front_door}'
            f"{PATH}"
        )
        mark = self.log.mark()
        reply = call(self.ports.front_door, PATH, {"authorization": f"Bearer {token}"})
        self.reply(reply)
        hops = self.through(mark, 3)
        self.decisions(hops)
        txn = str(hops[0].get("txn") or "")
        self.show(f"(the three lines share the transaction id: txn {txn})")
        at_orders, at_payments = arrived(reply)
        for service, seen in (("orders", at_orders), ("payments", at_payments)):
            claims = seen.get("txn_token") or {}
            self.show(
                f"{service} got a Txn-Token: txn={claims.get('txn')} sub={claims.get('sub')} "
                f"scope={claims.get('scope')!r} req_wl={claims.get('req_wl')}; "
                f"end-user credentials: {', '.join(seen.get('credentials') or []) or 'none'}"
            )
        self.show(
            "why: the gateway verified alice's JWT (scope 'orders:read pay') and minted a "
            "Txn-Token, signed by authd, in place of her credential; orders' sidecar admits it "
            "from the gateway and narrows it to 'pay' (all payments needs); payments' sidecar "
            "admits it from orders because it may pay"
        )
        tokens = [at_orders.get("txn_token") or {}, at_payments.get("txn_token") or {}]
        self.verdict(
            reply.status == 200
            and [hop(d) for d in hops] == ["gateway", "orders", "payments"]
            and all(d["decision"] == "allow" for d in hops)
            and hops[0]["user"] == "alice"
            and hops[1]["caller"] == spiffe_id("gateway")
            and hops[2]["caller"] == spiffe_id("orders")
            and all(t.get("txn") == txn and t.get("sub") == "alice" for t in tokens)
            and all(t.get("scope") == "pay" for t in tokens)
            and not at_orders.get("credentials")
            and not at_payments.get("credentials"),
            "200, allowed at each of the three hops in one txn; no user credential in the mesh",
        )
        return token, txn

    def trace_by_txn(self, txn: str) -> bool:
        self.step(3, "Follow one transaction across hops by its txn")
        self.show(f"$ authd log --txn {txn}")
        for line in self.topology.cli("log", "--txn", txn or "-").stdout.splitlines():
            self.show(f"  {line}")
        records = json.loads(self.topology.cli("log", "--txn", txn or "-", "--json").stdout)
        rules = [r.get("rule") for r in records["records"]]
        self.show("why: every hop's decision log record carries the txn of the Txn-Token")
        return self.verdict(
            bool(txn) and rules == ["user-reads-orders", "gateway-to-orders", "orders-to-payments"],
            "authd log --txn shows the transaction's three decisions, door to last hop",
        )

    def bypass_refused(self) -> bool:
        self.step(4, "A call straight to payments from inside the mesh is refused")
        ok = True
        for name in ("orders", "intruder"):
            out = self.svid(name)
            self.show(
                f"$ authd x509 mint --spiffe-id {spiffe_id(name)} --out {out}  "
                f"# then call payments with it"
            )
            mark = self.log.mark()
            reply = call(
                self.ports.payments_inbound, "/payments/42", tls=mtls(out, out / "bundle.pem")
            )
            self.reply(reply)
            decisions = self.log.wait(mark, 1)
            self.decisions(decisions)
            ok &= self.verdict(
                reply.status == 403
                and hop(decisions[0]) == "payments"
                and decisions[0]["caller"] == spiffe_id(name)
                and decisions[0]["reason"] == "call-path",
                f"403 at payments for {name}, reason call-path",
            )
        ok &= self.explain_at_payments()
        self.show("$ curl --cacert bundle.pem https://127.0.0.1:...  # no client certificate")
        bundle = self.svid("intruder") / "bundle.pem"
        try:
            reply = call(self.ports.payments_inbound, "/payments/42", tls=mtls(None, bundle))
            refused = False
            self.reply(reply)
        except OSError as exc:
            refused = True
            self.show(f"-> TLS refused by payments' Envoy ({type(exc).__name__})")
        self.show(
            "why: being inside the mesh earns nothing, not even with orders' own certificate: "
            "payments admits only a transaction the gateway minted (a Txn-Token), from orders"
        )
        return self.verdict(refused, "no client certificate: refused in the TLS handshake") and ok

    def explain_at_payments(self) -> bool:
        """``authd policy check --at``: the same call, explained by the one policy."""
        call_file = self.layout.state_dir / "call.json"
        http = {"method": "GET", "host": "127.0.0.1", "path": "/payments/42", "headers": {}}
        document = {
            "attributes": {
                "source": {"principal": spiffe_id("orders")},
                "request": {"http": http},
            }
        }
        call_file.write_text(json.dumps(document))
        at = spiffe_id("payments")
        self.show(f"$ authd policy check --at {at} --input {call_file}  # orders' call, explained")
        done = self.topology.cli(
            "policy", "check", "--at", at, "--input", str(call_file), check=False
        )
        lines = done.stdout.splitlines()
        for line in lines:
            if (
                line.startswith("DENY")
                or line.startswith("ALLOW")
                or "'orders-to-payments'" in line
            ):
                self.show(f"  {line.strip()}")
        return self.verdict(
            bool(lines)
            and lines[0].startswith("DENY 403  reason=call-path  rule=orders-to-payments"),
            "authd policy check at payments: DENY call-path, by rule orders-to-payments",
        )

    def bound_token_replayed(self) -> bool:
        self.step(5, "A certificate-bound token replayed without its certificate is refused")
        device = self.svid(DEVICE)
        thumbprint = certificate_thumbprint(device / "svid.pem")
        self.show(f"$ authd x509 mint --spiffe-id {spiffe_id(DEVICE)} --out {device}")
        self.token_cmd(f"sub=alice&scope=orders:read+pay&x5t={thumbprint}")
        self.show("  # the token carries cnf.x5t#S256: the SHA-256 of alice's certificate")
        url = f"https://127.0.0.1:{self.ports.front_door_tls}{PATH}"
        token = user_token(self.ports.idp, "alice", scope=USER_SCOPE, x5t=thumbprint)
        headers = {"authorization": f"Bearer {token}"}
        results = []
        for cert_dir in (None, device):
            with_cert = f"--cert {device}/svid.pem --key {device}/svid.key " if cert_dir else ""
            self.show(
                f'$ curl --cacert {device}/bundle.pem {with_cert}-H "authorization: Bearer '
                f'$TOKEN" {url}'
            )
            mark = self.log.mark()
            context = mtls(cert_dir, device / "bundle.pem")
            reply = call(self.ports.front_door_tls, PATH, headers, tls=context)
            self.reply(reply)
            decisions = self.log.wait(mark, 1)
            self.decisions(decisions[:1])
            results.append((reply.status, hop(decisions[0]), decisions[0]["reason"]))
        self.show(
            "why: a stolen bound token is worth nothing without the private key of the "
            "certificate it names (RFC 8705); with it, the call goes through"
        )
        return self.verdict(
            results[0] == (401, "gateway", "invalid_credentials") and results[1][0] == 200,
            "401 at the gateway without the certificate (invalid_credentials), 200 with it",
        )

    def widened_scope_refused(self) -> bool:
        self.step(6, "A hop that would widen the transaction's scope is refused")
        token = user_token(self.ports.idp, "bob", scope="orders:read")
        self.token_cmd("sub=bob&scope=orders:read")
        self.show(
            f'$ curl -H "authorization: Bearer $TOKEN" http://127.0.0.1:{self.ports.front_door}'
            f"{PATH}"
        )
        mark = self.log.mark()
        reply = call(self.ports.front_door, PATH, {"authorization": f"Bearer {token}"})
        self.reply(reply)
        hops = self.through(mark, 2)
        self.decisions(hops)
        self.show(
            "why: orders' rule sends the transaction on with scope 'pay', but bob's carries only "
            "'orders:read'; a hop may narrow a transaction, never widen it"
        )
        refusal = hops[-1]
        return self.verdict(
            reply.status == 403
            and [hop(d) for d in hops] == ["gateway", "orders"]
            and refusal["reason"] == "txn_scope_widened",
            "403 at orders, reason txn_scope_widened",
        )

    def revoked_refused(self, token: str) -> bool:
        self.step(7, "A workload is revoked, and refused within a second")
        target = spiffe_id("orders")
        self.show(f"$ authd revoke spiffe-id {target} --reason key-compromise")
        self.topology.cli("revoke", "spiffe-id", target, "--reason", "key-compromise")
        revoked_at = time.monotonic()
        mark = self.log.mark()
        headers = {"authorization": f"Bearer {token}"}
        reply = call(self.ports.front_door, PATH, headers)
        while reply.status == 200 and time.monotonic() - revoked_at < 5:
            time.sleep(0.05)
            reply = call(self.ports.front_door, PATH, headers)
        elapsed = time.monotonic() - revoked_at
        doc = reply.json() or {}
        payments = doc.get("payments", {}) if isinstance(doc, dict) else {}
        self.show(
            f"-> {reply.status} after {elapsed:.2f}s (payments answered orders with "
            f"{payments.get('status')})"
        )
        refusal = self.log.find(mark, lambda d: d["decision"] == "deny")
        if refusal is not None:
            self.decisions([refusal])
        else:
            self.show("no deny in the decision log: refused in a TLS handshake (CRL over SDS)")
        self.show(
            "why: the revocation reached authd's view at once: payments' check of orders' "
            "certificate fails"
        )
        return self.verdict(
            reply.status != 200
            and elapsed < 1.0
            and refusal is not None
            and hop(refusal) == "payments"
            and refusal["reason"] == "revoked",
            "refused within a second, at payments, reason revoked",
        )


def walk(topology: Topology, say: Say = print) -> bool:
    """Run every step against a topology that is up; True if each behaved."""
    try:
        return Walkthrough(topology, say).run()
    except (DemoError, OSError) as exc:
        say(f"authd demo: {exc}")
        return False


__all__ = ["SERVICES", "Walkthrough", "walk"]

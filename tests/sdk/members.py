"""Reads every live customer's members back through polar-sdk 1.0.2 (API
2026-10), by id and by external id, and compares them with polarsim's
expected.json. Loading a page through the SDK checks the Member shape.

    python3 members.py EXPECTED_JSON API_URL TOKEN

Prints one line per mismatch and a last line `members: M/N customers match`;
exits 1 on any mismatch.
"""

import json
import sys

from polar.v2026_10 import Polar
from polar.v2026_10.errors import ResourceNotFound


def main() -> int:
    expected_path, api, token = sys.argv[1:4]
    with open(expected_path) as f:
        expected = json.load(f)
    client = Polar(token, base_url=api.rstrip("/"))
    matched = total = 0
    for external_id, customer in expected["customers"].items():
        total += 1
        problems = []
        want = sorted(
            m["member_id"] for m in customer["members"] if not m["deleted"]
        )
        try:
            by_id = client.customers.members.list(customer["customer_id"], limit=100)
            by_external = client.customers.members.list_external(external_id, limit=100)
        except ResourceNotFound:
            if not customer["deleted"]:
                problems.append("404 for a live customer")
        else:
            if customer["deleted"]:
                problems.append("listed a deleted customer's members")
            for how, page in (("by id", by_id), ("by external id", by_external)):
                got = sorted(m.id for m in page.items)
                if got != want:
                    problems.append(f"{how}: {got} != {want}")
                for member in page.items:
                    if member.customer_id != customer["customer_id"]:
                        problems.append(f"{member.id} names customer {member.customer_id}")
        if problems:
            print(f"{external_id}: " + "; ".join(problems))
        else:
            matched += 1
    print(f"members: {matched}/{total} customers match")
    return 0 if matched == total else 1


if __name__ == "__main__":
    sys.exit(main())

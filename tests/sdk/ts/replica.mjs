// Reads hookstream's read replica through Polar's TypeScript SDK
// (@polar-sh/sdk 1.0.1), in each API version it has, and checks what comes
// back against polarsim's ground truth (expected.json). The SDK does no
// runtime validation, so every check is on the fields themselves.
//
//     node replica.mjs EXPECTED_JSON API_URL TOKEN
//
// Prints one line per failed check and a last line
// `ts-sdk: C checks, F failed`; exits 1 on any failure.

import { readFileSync } from "node:fs";

const VERSIONS = ["2026-04", "2026-10", "2027-01"];
const [expectedPath, api, token] = process.argv.slice(2);
if (!token) {
    console.error("usage: node replica.mjs EXPECTED_JSON API_URL TOKEN");
    process.exit(2);
}
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
const customers = Object.entries(expected.customers).map(([externalId, c]) => ({
    ...c,
    external_id: externalId,
}));
const live = customers.filter((c) => !c.deleted);
const gone = customers.filter((c) => c.deleted);

let checks = 0;
let failures = 0;
function check(version, what, ok, detail = "") {
    checks += 1;
    if (!ok) {
        failures += 1;
        console.log(`[${version}] ${what}${detail ? `: ${detail}` : ""}`);
    }
}
const sorted = (values) => [...values].sort();
const same = (a, b) => JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));

async function all(iterator) {
    const items = [];
    for await (const item of iterator) items.push(item);
    return items;
}

// The SDK's error for a status, or null when the call succeeded.
async function failure(call) {
    try {
        await call();
        return null;
    } catch (error) {
        return { name: error.name, status: error.statusCode ?? error.status, error };
    }
}

// A seat-based price, in the shape this version has.
function seatPriceIsInShape(version, price) {
    if (version === "2027-01") {
        return (
            price.seat_tiers === undefined &&
            Array.isArray(price.tiers?.tiers) &&
            typeof price.tiers.tiers[0].unit_amount === "string" &&
            "minimum_units" in price &&
            "maximum_units" in price
        );
    }
    return (
        price.tiers === undefined &&
        Array.isArray(price.seat_tiers?.tiers) &&
        typeof price.seat_tiers.tiers[0].price_per_seat === "number" &&
        typeof price.seat_tiers.minimum_seats === "number"
    );
}

async function readAs(version) {
    const { createPolar } = await import(`@polar-sh/sdk/${version}`);
    const polar = createPolar({ accessToken: token, baseUrl: api.replace(/\/$/, "") });
    const ok = (what, condition, detail) => check(version, what, condition, detail);

    // Customers: the list, by id, by external id; a deleted one is not found.
    const listed = await all(polar.customers.iterList({ limit: 100 }));
    ok(
        "customers.list holds every live customer",
        same(
            listed.map((c) => c.id),
            live.map((c) => c.customer_id),
        ),
        `${listed.length} listed, ${live.length} live`,
    );
    for (const c of live.slice(0, 10)) {
        const byId = await polar.customers.get(c.customer_id);
        ok("customers.get", byId.id === c.customer_id && byId.email === c.email, byId.email);
        const byExternal = await polar.customers.getExternal(c.external_id);
        ok("customers.getExternal", byExternal.id === c.customer_id, byExternal.id);
    }
    for (const c of gone.slice(0, 3)) {
        const err = await failure(() => polar.customers.get(c.customer_id));
        ok("customers.get of a deleted customer is ResourceNotFound", err?.status === 404 && err.name === "ResourceNotFound", JSON.stringify(err?.name));
    }

    // Members of a team, and one by the two external ids.
    const team = live.find((c) => c.members.filter((m) => !m.deleted).length > 1);
    if (team) {
        const members = await polar.customers.members.list(team.customer_id, { limit: 100 });
        ok(
            "customers.members.list",
            same(
                members.items.map((m) => m.id),
                team.members.filter((m) => !m.deleted).map((m) => m.member_id),
            ),
        );
        const member = team.members.find((m) => !m.deleted && m.external_id);
        const got = await polar.customers.members.getExternal(team.external_id, member.external_id);
        ok("customers.members.getExternal", got.id === member.member_id && got.email === member.email, got.id);
    }

    // Subscriptions: each customer's active ones, through the filters.
    for (const c of live.filter((c) => c.active_subscriptions.length > 0).slice(0, 10)) {
        const page = await polar.subscriptions.list({ customer_id: c.customer_id, active: true, limit: 100 });
        ok(
            "subscriptions.list(customer_id, active)",
            same(
                page.items.map((s) => s.id),
                c.active_subscriptions.map((s) => s.id),
            ),
            c.external_id,
        );
        for (const s of page.items) {
            ok("a subscription names its customer", s.customer.id === c.customer_id && s.customer_id === c.customer_id);
        }
    }
    const bogus = await failure(() => polar.subscriptions.list({ status: "bogus" }));
    ok("subscriptions.list(status=bogus) is a 422", bogus?.status === 422, JSON.stringify(bogus?.name));

    // Products and benefits: the catalog, seat prices in this version's shape.
    const products = await all(polar.products.iterList({ limit: 100 }));
    ok(
        "products.list",
        same(
            products.map((p) => p.id),
            expected.products.map((p) => p.id),
        ),
    );
    const seatPrices = products.flatMap((p) => p.prices).filter((p) => p.amount_type === "seat_based");
    ok("a seat-based price is listed", seatPrices.length > 0);
    for (const price of seatPrices) {
        ok("seat-based price in this version's shape", seatPriceIsInShape(version, price), JSON.stringify(price).slice(0, 200));
    }
    const product = await polar.products.get(expected.products[0].id);
    ok("products.get", product.name === expected.products[0].name, product.name);
    const benefits = await all(polar.benefits.iterList({ limit: 100 }));
    ok(
        "benefits.list",
        same(
            benefits.map((b) => b.id),
            expected.benefits.map((b) => b.id),
        ),
    );

    // Grants: every granted one, and one benefit's.
    const granted = await all(polar.benefitGrants.iterList({ is_granted: true, limit: 100 }));
    const wantGranted = customers.flatMap((c) => c.granted_grant_ids ?? []);
    ok("benefitGrants.list(is_granted)", same(granted.map((g) => g.id), wantGranted), `${granted.length} vs ${wantGranted.length}`);
    const benefit = expected.benefits[0];
    const ofBenefit = await polar.benefits.grants(benefit.id, { is_granted: true, limit: 100 });
    ok(
        "benefits.grants",
        ofBenefit.items.every((g) => g.benefit_id === benefit.id && g.is_granted) &&
            ofBenefit.pagination.total_count === granted.filter((g) => g.benefit_id === benefit.id).length,
    );

    // Orders, checkouts, refunds, discounts.
    const orders = await polar.orders.list({ limit: 5 });
    ok("orders.list", orders.items.length > 0 && orders.pagination.total_count >= orders.items.length);
    const order = await polar.orders.get(orders.items[0].id);
    ok("orders.get", order.id === orders.items[0].id && order.customer.id === order.customer_id);
    const checkouts = await polar.checkouts.list({ limit: 5 });
    ok("checkouts.list", checkouts.items.length > 0);
    const checkout = await polar.checkouts.get(checkouts.items[0].id);
    ok("checkouts.get", checkout.id === checkouts.items[0].id && typeof checkout.status === "string");
    const refunds = await all(polar.refunds.iterList({ limit: 100 }));
    ok(
        "refunds.list",
        same(
            refunds.map((r) => `${r.id}:${r.order_id}:${r.amount}:${r.status}`),
            expected.refunds.map((r) => `${r.id}:${r.order_id}:${r.amount}:${r.status}`),
        ),
    );
    const discounts = await all(polar.discounts.iterList({ limit: 100 }));
    const liveDiscounts = expected.discounts.filter((d) => !d.deleted);
    ok(
        "discounts.list",
        same(
            discounts.map((d) => `${d.id}:${d.code}:${d.redemptions_count}`),
            liveDiscounts.map((d) => `${d.id}:${d.code}:${d.redemptions_count}`),
        ),
    );
    if (liveDiscounts[0]) {
        const discount = await polar.discounts.get(liveDiscounts[0].id);
        ok("discounts.get", discount.name === liveDiscounts[0].name, discount.name);
    }

    // Seats of a team's subscription: the claimed and pending ones.
    const seated = live.find((c) => (c.seats ?? []).some((s) => s.status === "claimed"));
    if (seated) {
        const subscriptionId = seated.seats.find((s) => s.status === "claimed").subscription_id;
        const seats = await polar.customerSeats.listSeats({ subscription_id: subscriptionId });
        const held = (list) => list.filter((s) => s.status !== "revoked").map((s) => `${s.id ?? s.seat_id}:${s.status}`);
        ok(
            "customerSeats.listSeats",
            same(held(seats.seats), held(seated.seats.filter((s) => s.subscription_id === subscriptionId))) &&
                typeof seats.available_seats === "number" &&
                typeof seats.total_seats === "number",
        );
    }

    // Meters: none are simulated, so empty lists in Polar's shape.
    const meters = await polar.meters.list({ limit: 10 });
    ok("meters.list", Array.isArray(meters.items) && meters.pagination.total_count === meters.items.length);
    const customerMeters = await polar.customerMeters.list({ limit: 10 });
    ok("customerMeters.list", Array.isArray(customerMeters.items));

    // What only Polar serves is a 501 that says so, never a 404. (The SDK
    // keeps a 5xx's status and body only in its message.)
    const write = await failure(() => polar.customers.create({ email: "new@example.com" }));
    ok(
        "a write is 501 NotServed",
        write?.name === "PolarServerError" && /\b501\b.*NotServed/.test(write.error.message),
        write?.error?.message,
    );
}

for (const version of VERSIONS) {
    try {
        await readAs(version);
    } catch (error) {
        check(version, "reading through the SDK", false, `${error.name}: ${error.message}`);
    }
}
console.log(`ts-sdk: ${checks} checks, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);

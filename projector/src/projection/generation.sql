-- One generation of projections, after its object tables. `{schema}` is
-- replaced with the generation's schema name. Bump DDL_VERSION in
-- generation.rs when this or a family's table changes: existing generations
-- are then rebuilt by `projector replay`, never migrated in place.
--
-- The object tables (customers, subscriptions, grants, members, seats...)
-- are created first from their families' declarations (families/*.rs): each
-- keeps the latest full snapshot, the version it came from (see version.rs)
-- and the columns that queries filter on. What follows reads across them.

-- The newest customer.state_changed per customer: what was active as of
-- `state_at` (the envelope timestamp), including by omission.
create table {schema}.customer_states (
    customer_id text primary key,
    state_at    timestamptz not null,
    v_seq       bigint      not null,
    snapshot    jsonb       not null
);

-- Events that could not be applied, with the reason; the partition moved on.
create table {schema}.apply_failures (
    seq        bigint primary key,
    webhook_id text not null,
    event_type text,
    reason     text not null
);

-- Who has what right now, by the rule of DESIGN.md guarantee 3: a grant or
-- subscription row decides for itself unless the customer's newest state is
-- strictly newer than the row, in which case the state decides (listed =
-- active, omitted = ended). Items are in CustomerState's shapes.
--
-- They read only the customer's own rows (grants, subscriptions, state), so
-- recomputing a customer whenever one of those changes keeps the
-- materialised tables below exact whatever the order events arrive in.
-- The benefit's current type and metadata are joined in at read time.
--
-- A grant's member (whose grant it is) comes from its row; a grant only a
-- state lists has none until its own event arrives.
create view {schema}.effective_grants_v as
    select g.customer_id, g.id as grant_id, g.benefit_id, g.created_at,
           g.member_id, g.subscription_id, g.v_at,
           jsonb_build_object(
               'id', g.snapshot -> 'id',
               'created_at', g.snapshot -> 'created_at',
               'modified_at', g.snapshot -> 'modified_at',
               'granted_at', g.snapshot -> 'granted_at',
               'benefit_id', g.snapshot -> 'benefit_id',
               'benefit_type', g.snapshot -> 'benefit' -> 'type',
               'benefit_metadata', coalesce(g.snapshot -> 'benefit' -> 'metadata', '{}'::jsonb),
               'properties', coalesce(g.snapshot -> 'properties', '{}'::jsonb)
           ) as item
    from {schema}.benefit_grants g
    left join {schema}.customer_states cs on cs.customer_id = g.customer_id
    where g.is_granted and not g.is_revoked
      and (cs.state_at is null or cs.state_at <= g.v_at)
  union all
    select cs.customer_id, listed.item ->> 'id', listed.item ->> 'benefit_id',
           (listed.item ->> 'created_at')::timestamptz,
           older.member_id, older.subscription_id, cs.state_at, listed.item
    from {schema}.customer_states cs
    cross join lateral jsonb_array_elements(cs.snapshot -> 'granted_benefits') as listed(item)
    left join {schema}.benefit_grants older on older.id = listed.item ->> 'id'
    where not exists (
        select 1 from {schema}.benefit_grants g
        where g.id = listed.item ->> 'id' and g.v_at >= cs.state_at
    );

create view {schema}.effective_subscriptions_v as
    select s.customer_id, s.id as subscription_id, s.created_at,
           jsonb_build_object(
               'id', s.snapshot -> 'id',
               'created_at', s.snapshot -> 'created_at',
               'modified_at', s.snapshot -> 'modified_at',
               'custom_field_data', coalesce(s.snapshot -> 'custom_field_data', '{}'::jsonb),
               'metadata', coalesce(s.snapshot -> 'metadata', '{}'::jsonb),
               'status', s.snapshot -> 'status',
               'amount', s.snapshot -> 'amount',
               'currency', s.snapshot -> 'currency',
               'recurring_interval', s.snapshot -> 'recurring_interval',
               'current_period_start', s.snapshot -> 'current_period_start',
               'current_period_end', s.snapshot -> 'current_period_end',
               'trial_start', s.snapshot -> 'trial_start',
               'trial_end', s.snapshot -> 'trial_end',
               'cancel_at_period_end', s.snapshot -> 'cancel_at_period_end',
               'canceled_at', s.snapshot -> 'canceled_at',
               'started_at', s.snapshot -> 'started_at',
               'ends_at', s.snapshot -> 'ends_at',
               'product_id', s.snapshot -> 'product_id',
               'discount_id', s.snapshot -> 'discount_id',
               'seats', s.snapshot -> 'seats',
               'units', s.snapshot -> 'units',
               -- CustomerState's meters are the subscription's without the
               -- embedded meter object.
               'meters', coalesce(
                   (select jsonb_agg(m - 'meter') from jsonb_array_elements(s.snapshot -> 'meters') m),
                   '[]'::jsonb)
           ) as item
    from {schema}.subscriptions s
    left join {schema}.customer_states cs on cs.customer_id = s.customer_id
    where s.status in ('active', 'trialing')
      and (cs.state_at is null or cs.state_at <= s.v_at)
  union all
    select cs.customer_id, listed.item ->> 'id',
           (listed.item ->> 'created_at')::timestamptz, listed.item
    from {schema}.customer_states cs
    cross join lateral jsonb_array_elements(cs.snapshot -> 'active_subscriptions') as listed(item)
    where not exists (
        select 1 from {schema}.subscriptions s
        where s.id = listed.item ->> 'id' and s.v_at >= cs.state_at
    );

-- The views above, materialised per customer after every batch that touches
-- the customer's subscriptions, grants or state: reads are then one index probe.
create table {schema}.effective_grants (
    customer_id text        not null,
    grant_id    text        not null,
    benefit_id  text        not null,
    created_at  timestamptz not null,
    -- Whose grant it is, its subscription and the time of the evidence (the
    -- grant's version, or the state's), for the member check's seat rule.
    member_id       text,
    subscription_id text,
    v_at            timestamptz not null,
    item        jsonb       not null,
    primary key (customer_id, grant_id)
);
create index on {schema}.effective_grants (customer_id, benefit_id);

create table {schema}.effective_subscriptions (
    customer_id     text        not null,
    subscription_id text        not null,
    created_at      timestamptz not null,
    item            jsonb       not null,
    primary key (customer_id, subscription_id)
);

-- Each customer's meters as its newest state lists them (`active_meters`),
-- one row per customer and meter. Polar recomputes meters with a debounce
-- and only then sends the state, so a balance here can lag Polar's.
create view {schema}.customer_meters as
    select cs.customer_id, m.item ->> 'meter_id' as meter_id, cs.state_at, m.item
    from {schema}.customer_states cs
    cross join lateral jsonb_array_elements(
        case jsonb_typeof(cs.snapshot -> 'active_meters')
            when 'array' then cs.snapshot -> 'active_meters' else '[]'::jsonb end
    ) as m(item);
